//! Shared fixture: a node serving on loopback ports chosen by the OS, with a Flight client.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use flight_node::server::{start, RunningNode};
use flight_node::Config;
use futures::{StreamExt, TryStreamExt};
use tempfile::TempDir;
use tonic::transport::Channel;

pub struct TestNode {
    pub running: Option<RunningNode>,
    pub dir: TempDir,
    pub config: Config,
}

impl TestNode {
    /// A node on `file://<tempdir>`; `tweak` adjusts the flags.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(&format!("file://{}", dir.path().display()));
        tweak(&mut config);
        let running = start(config.clone()).await.unwrap();
        Self {
            running: Some(running),
            dir,
            config,
        }
    }

    pub fn running(&self) -> &RunningNode {
        self.running.as_ref().unwrap()
    }

    pub async fn client(&self) -> FlightClient {
        let uri = format!("http://{}", self.running().grpc_addr);
        let channel = Channel::from_shared(uri).unwrap().connect().await.unwrap();
        FlightClient::new(channel)
    }

    pub async fn client_with_token(&self, token: &str) -> FlightClient {
        let mut c = self.client().await;
        c.add_header("authorization", &format!("Bearer {token}"))
            .unwrap();
        c
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

/// `rows` rows starting at `start`; distinct starts give distinct tables.
pub fn batch(start: i64, rows: usize) -> RecordBatch {
    let ids: Vec<i64> = (start..start + rows as i64).collect();
    let names: Vec<String> = ids.iter().map(|i| format!("row-{i}")).collect();
    let scores: Vec<f64> = ids.iter().map(|i| *i as f64 * 0.5).collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(StringArray::from(names)),
        Arc::new(Float64Array::from(scores)),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

pub fn descriptor(ns: &str, name: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![ns.to_string(), name.to_string()])
}

/// Uploads batches; returns the PutResult JSON or the status.
pub async fn put(
    client: &mut FlightClient,
    desc: FlightDescriptor,
    batches: Vec<RecordBatch>,
) -> Result<serde_json::Value, tonic::Status> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(schema);
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(desc))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let mut results = client.do_put(stream).await.map_err(status)?;
    let first = results.next().await.expect("a PutResult").map_err(status)?;
    Ok(serde_json::from_slice(&first.app_metadata).unwrap())
}

pub async fn get(
    client: &mut FlightClient,
    ticket: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let stream = client
        .do_get(arrow_flight::Ticket::new(ticket.to_string()))
        .await
        .map_err(status)?;
    stream.try_collect().await.map_err(status)
}

pub fn status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::internal(other.to_string()),
    }
}

/// Concatenates batches for comparison.
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    let schema = batches[0].schema();
    arrow::compute::concat_batches(&schema, batches).unwrap()
}

/// Files under the dataset's directory in the temp store.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
