//! Version manifests (the commit point of an upload) and the `PutResult` answer.
//!
//! A manifest is JSON stored at `<ns>/<name>/v<version>.manifest.json`. It is written
//! create-only after all parts are durable; a version without a manifest does not exist.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::{IpcMessage, SchemaAsIpc};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::consumers::Consumers;
use crate::contract::type_to_string;
use crate::error::{Error, Result};
use crate::name::DatasetId;
use crate::ticket::{Ticket, TicketSigner};

/// How a version's parts are stored.
///
/// Parquet is the default: compact, and readable by every data tool. It cannot hold every
/// Arrow type exactly (unions, run-end encoding, intervals with days and nanoseconds,
/// maps' field names, nested or unsigned-key dictionaries, view and list-view layouts,
/// extension types' storage), so a version whose schema holds any type outside
/// `flight_node::encode::parquet_holds` is stored as Arrow IPC files instead, which keep every type, name
/// and metadata as uploaded. The choice is per version and recorded in its manifest; the
/// part's file extension says it too (`.parquet` or `.arrow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartFormat {
    #[default]
    Parquet,
    ArrowIpc,
}

impl PartFormat {
    /// The file extension of a part in this format.
    pub fn extension(self) -> &'static str {
        match self {
            PartFormat::Parquet => "parquet",
            PartFormat::ArrowIpc => "arrow",
        }
    }

    /// The format of a part file, from its name.
    pub fn of_path(path: &str) -> Self {
        if path.ends_with(".arrow") {
            PartFormat::ArrowIpc
        } else {
            PartFormat::Parquet
        }
    }

    pub fn is_parquet(&self) -> bool {
        *self == PartFormat::Parquet
    }
}

/// Identifies the manifest format; bumped on incompatible changes.
pub const MANIFEST_FORMAT: &str = "arrow.trinity.io/manifest-v1";

/// One Parquet object of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartInfo {
    /// Object path relative to the storage root.
    pub path: String,
    pub rows: u64,
    /// Arrow (in-memory) bytes of the part.
    pub bytes: u64,
    /// Size of the Parquet object.
    pub stored_bytes: u64,
}

/// One column, for humans reading the manifest; the authoritative schema is `schema`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// The committed description of one dataset version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub namespace: String,
    pub name: String,
    pub version: u64,
    /// The upload that produced the parts (a ULID).
    pub upload_id: String,
    /// Arrow schema as a base64 Arrow IPC schema message (keeps metadata such as pandas').
    pub schema: String,
    pub columns: Vec<ColumnInfo>,
    pub rows: u64,
    /// Arrow (in-memory) bytes of the whole version.
    pub bytes: u64,
    /// Total size of the Parquet parts.
    pub stored_bytes: u64,
    pub parts: Vec<PartInfo>,
    /// How the parts are stored: `parquet` (absent) or `arrow-ipc`.
    #[serde(default, skip_serializing_if = "PartFormat::is_parquet")]
    pub part_format: PartFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Where the data came from: `flight` (DoPut), `http` (CSV upload) or a source URL.
    pub source: String,
    /// Declared consumers and their releases (see [`crate::consumers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Consumers>,
}

impl Manifest {
    pub fn dataset(&self) -> Result<DatasetId> {
        DatasetId::new(self.namespace.as_str(), self.name.as_str())
    }

    pub fn ticket(&self) -> Result<Ticket> {
        Ok(Ticket::new(self.dataset()?, self.version))
    }

    /// Decodes the stored Arrow schema.
    pub fn arrow_schema(&self) -> Result<SchemaRef> {
        decode_schema(&self.schema)
    }

    /// The stored schema as an encapsulated IPC message (what `FlightInfo.schema` and
    /// `SchemaResult` carry).
    pub fn schema_ipc(&self) -> Result<bytes::Bytes> {
        STANDARD
            .decode(&self.schema)
            .map(bytes::Bytes::from)
            .map_err(|e| Error::Internal(format!("failed to decode stored schema: {e}")))
    }

    /// The schema message that starts a `DoGet` stream: the schema exactly as the uploader
    /// sent it, so that what Arrow implementations disagree on when decoding a schema
    /// (union nullability, map field names, field metadata) comes back as sent.
    pub fn schema_flight_data(&self) -> Result<arrow_flight::FlightData> {
        let ipc = self.schema_ipc()?;
        let header = flatbuffer_of(&ipc)
            .ok_or_else(|| Error::Internal("the stored schema is not an IPC message".into()))?;
        Ok(arrow_flight::FlightData {
            data_header: header,
            ..Default::default()
        })
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        crate::ttl::is_expired(self.expires_at, now)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Internal(format!("failed to encode manifest: {e}")))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Internal(format!("failed to decode manifest: {e}")))
    }

    /// The answer sent for the upload that created this version.
    pub fn put_result(&self, signer: Option<&TicketSigner>) -> Result<PutResult> {
        Ok(PutResult {
            ticket: self.ticket()?.encode(signer),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            version: self.version,
            rows: self.rows,
            bytes: self.bytes,
            expires_at: self.expires_at,
            consumers: self.consumers.as_ref().map(Consumers::view),
        })
    }
}

/// JSON sent as `PutResult.app_metadata` (DoPut) and as the body of the HTTP upload and the
/// `load` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutResult {
    pub ticket: String,
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub rows: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Who has yet to release the version (versions uploaded with consumers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<crate::consumers::ConsumersView>,
}

/// Stores a schema message exactly as a client sent it (a `FlightData.data_header`: the
/// flatbuffer of an IPC Schema message), encapsulated and base64-encoded as
/// [`encode_schema`] does. `None` when the bytes are not a Schema message.
pub fn encode_schema_message(header: &[u8]) -> Option<String> {
    let message = arrow::ipc::root_as_message(header).ok()?;
    message.header_as_schema()?;
    let padded = header.len().div_ceil(8) * 8;
    let mut out = Vec::with_capacity(8 + padded);
    out.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    out.extend_from_slice(&u32::try_from(padded).ok()?.to_le_bytes());
    out.extend_from_slice(header);
    out.resize(8 + padded, 0);
    Some(STANDARD.encode(&out))
}

/// The flatbuffer inside an encapsulated IPC message (continuation marker, length, body).
fn flatbuffer_of(ipc: &bytes::Bytes) -> Option<bytes::Bytes> {
    let (len, start): (&[u8], usize) = match ipc.get(..4)? {
        [0xFF, 0xFF, 0xFF, 0xFF] => (ipc.get(4..8)?, 8),
        legacy => (legacy, 4),
    };
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let end = start.checked_add(len)?;
    (end <= ipc.len()).then(|| ipc.slice(start..end))
}

/// Encodes a schema as base64 of its Arrow IPC message.
pub fn encode_schema(schema: &Schema) -> Result<String> {
    let msg = IpcMessage::try_from(SchemaAsIpc::new(schema, &IpcWriteOptions::default()))?;
    Ok(STANDARD.encode(&msg.0))
}

/// Inverse of [`encode_schema`].
pub fn decode_schema(text: &str) -> Result<SchemaRef> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| Error::Internal(format!("failed to decode stored schema: {e}")))?;
    let schema = Schema::try_from(IpcMessage(bytes.into()))?;
    Ok(Arc::new(schema))
}

/// Human-readable columns of a schema.
pub fn columns(schema: &Schema) -> Vec<ColumnInfo> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnInfo {
            name: f.name().clone(),
            data_type: type_to_string(f.data_type()),
            nullable: f.is_nullable(),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use arrow::datatypes::{DataType, Field, TimeUnit};
    use std::collections::HashMap;

    /// A small valid manifest for tests.
    pub(crate) fn sample(version: u64) -> Manifest {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ])
        .with_metadata(HashMap::from([("pandas".to_string(), "{}".to_string())]));
        Manifest {
            format: MANIFEST_FORMAT.into(),
            namespace: "analytics".into(),
            name: "sales".into(),
            version,
            upload_id: "01J00000000000000000000000".into(),
            schema: encode_schema(&schema).unwrap(),
            columns: columns(&schema),
            rows: 10,
            bytes: 160,
            stored_bytes: 400,
            parts: vec![PartInfo {
                path: "analytics/sales/parts/x/part-0.parquet".into(),
                rows: 10,
                bytes: 160,
                stored_bytes: 400,
            }],
            part_format: PartFormat::Parquet,
            contract: None,
            created_at: Utc::now(),
            ttl_seconds: Some(60),
            expires_at: None,
            source: "flight".into(),
            consumers: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    #[test]
    fn json_and_schema_round_trip() {
        let m = sample(3);
        let back = Manifest::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);
        let schema = back.arrow_schema().unwrap();
        assert_eq!(schema.field(1).name(), "ts");
        assert_eq!(
            schema.metadata().get("pandas").map(String::as_str),
            Some("{}")
        );
        assert_eq!(back.columns[1].data_type, "timestamp[ms, UTC]");
        let json: serde_json::Value = serde_json::from_slice(&m.to_json().unwrap()).unwrap();
        assert_eq!(json["storedBytes"], 400);
        assert_eq!(json["ttlSeconds"], 60);
    }

    #[test]
    fn put_result_json() {
        let r = sample(3).put_result(None).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ticket"], "ads1:analytics/sales@3");
        assert_eq!(json["version"], 3);
        assert_eq!(json["rows"], 10);
        assert_eq!(json["bytes"], 160);
        assert_eq!(json["namespace"], "analytics");
        assert_eq!(json["name"], "sales");
    }
}
