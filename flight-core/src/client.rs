//! A small Rust client for a node (used by the operator and by tests).

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::{Action, FlightClient, FlightDescriptor, FlightInfo};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};
use crate::manifest::PutResult;
use crate::name::DatasetId;
use crate::protocol::{DatasetRef, LoadRequest, PreloadRequest, PreloadResult};
use crate::protocol::{CONTRACT_HEADER, TTL_HEADER};

/// Client for one node (or a Service in front of several).
#[derive(Debug)]
pub struct NodeClient {
    inner: FlightClient,
}

fn status(e: arrow_flight::error::FlightError) -> Error {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => {
            let msg = s.message().to_string();
            match s.code() {
                tonic::Code::NotFound => Error::NotFound(msg),
                tonic::Code::InvalidArgument => Error::InvalidArgument(msg),
                tonic::Code::Unauthenticated => Error::Unauthenticated(msg),
                tonic::Code::PermissionDenied => Error::PermissionDenied(msg),
                tonic::Code::ResourceExhausted => Error::ResourceExhausted(msg),
                tonic::Code::Unimplemented => Error::Unimplemented(msg),
                code => Error::Internal(format!("{code:?}: {msg}")),
            }
        }
        other => Error::Internal(other.to_string()),
    }
}

impl NodeClient {
    /// Connects to `grpc://host:port` (or `http://`), with an optional bearer token.
    pub async fn connect(uri: &str, token: Option<&str>) -> Result<Self> {
        Self::connect_with(uri, token, None).await
    }

    /// Connects to `grpc://` or, with TLS, `grpc+tls://host:port`, trusting `ca_pem` (PEM
    /// certificates) or else the system's roots.
    pub async fn connect_with(
        uri: &str,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        let (http, tls) = if let Some(rest) = uri.strip_prefix("grpc+tls://") {
            (format!("https://{rest}"), true)
        } else if let Some(rest) = uri
            .strip_prefix("grpc://")
            .or_else(|| uri.strip_prefix("grpc+tcp://"))
        {
            (format!("http://{rest}"), false)
        } else {
            (uri.to_string(), uri.starts_with("https://"))
        };
        let mut endpoint = Endpoint::from_shared(http)
            .map_err(|e| Error::invalid(format!("invalid node URI {uri:?}: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if tls {
            // Several TLS back-ends are linked in; choose one for the process.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = match ca_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Error::invalid(format!("invalid TLS settings for {uri}: {e}")))?;
        }
        let channel: Channel = endpoint.connect().await.map_err(|e| {
            // tonic's transport error says little on its own; its sources say why.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            Error::Internal(format!("failed to connect to {uri}: {why}"))
        })?;
        let mut inner = FlightClient::new(channel);
        if let Some(t) = token {
            inner
                .add_header("authorization", &format!("Bearer {t}"))
                .map_err(|e| Error::invalid(format!("invalid token: {e}")))?;
        }
        Ok(Self { inner })
    }

    /// Uploads batches as a new version of `id`.
    pub async fn put(
        &mut self,
        id: &DatasetId,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        ttl: Option<&str>,
        contract: Option<&str>,
    ) -> Result<PutResult> {
        let mut client = self.inner.clone_with_headers(ttl, contract)?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_dictionary_handling(DictionaryHandling::Resend)
            .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
                id.namespace().into(),
                id.name().into(),
            ])))
            .build(futures::stream::iter(batches.into_iter().map(Ok)));
        let mut results = client.do_put(stream).await.map_err(status)?;
        let first = results
            .next()
            .await
            .ok_or_else(|| Error::Internal("the node sent no PutResult".into()))?
            .map_err(status)?;
        parse_json(&first.app_metadata)
    }

    /// Downloads the batches a ticket names.
    pub async fn get(&mut self, ticket: &str) -> Result<Vec<RecordBatch>> {
        let stream = self
            .inner
            .do_get(arrow_flight::Ticket::new(ticket.to_string()))
            .await
            .map_err(status)?;
        stream.try_collect().await.map_err(status)
    }

    pub async fn flight_info(&mut self, id: &DatasetId) -> Result<FlightInfo> {
        self.inner
            .get_flight_info(FlightDescriptor::new_path(vec![
                id.namespace().into(),
                id.name().into(),
            ]))
            .await
            .map_err(status)
    }

    async fn action<T: DeserializeOwned>(&mut self, kind: &str, body: Vec<u8>) -> Result<T> {
        let mut results = self
            .inner
            .do_action(Action::new(kind, body))
            .await
            .map_err(status)?;
        let first = results
            .next()
            .await
            .ok_or_else(|| Error::Internal(format!("action {kind} returned nothing")))?
            .map_err(status)?;
        parse_json(&first)
    }

    /// `load`: ingest an object of the node's storage as a new version.
    pub async fn load(&mut self, req: &LoadRequest) -> Result<PutResult> {
        self.action("load", to_vec(req)?).await
    }

    /// `evict`: drop from the node's memory; returns how many versions were dropped.
    pub async fn evict(&mut self, id: &DatasetId, version: Option<u64>) -> Result<u64> {
        let v: serde_json::Value = self
            .action("evict", to_vec(&dataset_ref(id, version))?)
            .await?;
        Ok(v["evicted"].as_u64().unwrap_or(0))
    }

    /// `delete`: remove from storage and memory; returns the deleted versions.
    pub async fn delete(&mut self, id: &DatasetId, version: Option<u64>) -> Result<Vec<u64>> {
        let v: serde_json::Value = self
            .action("delete", to_vec(&dataset_ref(id, version))?)
            .await?;
        Ok(v["deleted"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default())
    }

    /// `preload`: bring a version (the newest by default) into the pool's memory, each part
    /// on its owner; says how much of it is held now.
    pub async fn preload(&mut self, id: &DatasetId, version: Option<u64>) -> Result<PreloadResult> {
        let body = PreloadRequest {
            namespace: id.namespace().into(),
            name: id.name().into(),
            version,
            parts: None,
        };
        self.action("preload", to_vec(&body)?).await
    }

    /// `preload` of the given parts of a version, on this node only.
    pub async fn preload_parts(
        &mut self,
        id: &DatasetId,
        version: u64,
        parts: Vec<u32>,
    ) -> Result<PreloadResult> {
        let body = PreloadRequest {
            namespace: id.namespace().into(),
            name: id.name().into(),
            version: Some(version),
            parts: Some(parts),
        };
        self.action("preload", to_vec(&body)?).await
    }

    /// `stats`: the node's cache figures as JSON.
    pub async fn stats(&mut self) -> Result<serde_json::Value> {
        self.action("stats", Vec::new()).await
    }

    /// `renew`: extend a version's lease by `ttl` from now.
    pub async fn renew(&mut self, ticket: &str, ttl: &str) -> Result<PutResult> {
        let body = serde_json::json!({ "ticket": ticket, "ttl": ttl });
        self.action("renew", to_vec(&body)?).await
    }
}

trait WithHeaders {
    fn clone_with_headers(&self, ttl: Option<&str>, contract: Option<&str>)
        -> Result<FlightClient>;
}

impl WithHeaders for FlightClient {
    fn clone_with_headers(
        &self,
        ttl: Option<&str>,
        contract: Option<&str>,
    ) -> Result<FlightClient> {
        let mut c = FlightClient::new_from_inner(self.inner().clone());
        *c.metadata_mut() = self.metadata().clone();
        for (k, v) in [(TTL_HEADER, ttl), (CONTRACT_HEADER, contract)] {
            if let Some(v) = v {
                c.add_header(k, v)
                    .map_err(|e| Error::invalid(format!("invalid {k} header: {e}")))?;
            }
        }
        Ok(c)
    }
}

fn dataset_ref(id: &DatasetId, version: Option<u64>) -> DatasetRef {
    DatasetRef {
        namespace: id.namespace().into(),
        name: id.name().into(),
        version,
    }
}

fn to_vec<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("failed to encode JSON: {e}")))
}

fn parse_json<T: DeserializeOwned>(b: &Bytes) -> Result<T> {
    serde_json::from_slice(b)
        .map_err(|e| Error::Internal(format!("failed to decode the node's JSON answer: {e}")))
}
