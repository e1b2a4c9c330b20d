//! The HTTP side port: probes, metrics, CSV upload and CSV/JSON export.
//!
//! * `GET /healthz` — the process is alive.
//! * `GET /readyz` — the storage answers.
//! * `GET /metrics` — Prometheus text.
//! * `POST /v1/datasets/{namespace}/{name}` — body `text/csv` with a header row, streamed
//!   into a new version (never held whole in memory). Query: `ttl`, `contract`,
//!   `delimiter` (the `x-flight-ttl` / `x-flight-contract` headers work too). Answers
//!   `201` with the same JSON as a Flight `PutResult`.
//! * `GET /v1/datasets/{namespace}/{name}?format=csv|json[&version=N][&columns=a,b][&limit=N]`
//!   — exports the newest (or a given) version as CSV or a JSON array of records, streamed;
//!   `columns` (comma-separated, in the order wanted) and `limit` (the first rows) narrow
//!   it, as a ticket's selection does.
//!
//! Authentication is the same bearer token as on the Flight port.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::auth::Auth;
use crate::error::{Error, Result};
use crate::name::DatasetId;
use crate::node::{Node, Plan, PutOptions};
use crate::service::{CONSUMERS_HEADER, CONTRACT_HEADER, TTL_HEADER};
use crate::ticket::{Selection, Ticket};

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    auth: Arc<Auth>,
}

/// The HTTP router.
pub fn router(node: Arc<Node>, auth: Arc<Auth>) -> Router {
    let counted = crate::request_metrics::RequestMetricsLayer::http(Arc::clone(&node));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/datasets/{namespace}/{name}", get(export).post(upload))
        .with_state(AppState { node, auth })
        .layer(counted)
}

struct HttpError(Error);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self.0, "HTTP request failed");
        }
        let body = serde_json::json!({ "error": self.0.to_string(), "code": format!("{:?}", self.0.code()) });
        (status, Json(body)).into_response()
    }
}

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    let store = s.node.storage().object_store();
    match tokio::time::timeout(Duration::from_secs(5), store.list_with_delimiter(None)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "storage unavailable: {}\n",
                crate::error::explain_storage(&e)
            ),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage did not answer within 5s\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = s
        .node
        .metrics()
        .render(&s.node.cache().stats(), &s.node.budgets().stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn authorize(s: &AppState, headers: &HeaderMap, namespace: &str) -> Result<()> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    s.auth.authenticate(h)?.check(namespace)
}

#[derive(Deserialize)]
struct UploadQuery {
    ttl: Option<String>,
    contract: Option<String>,
    delimiter: Option<char>,
    consumers: Option<String>,
}

async fn upload(
    State(s): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<Response, HttpError> {
    let id = DatasetId::new(namespace, name)?;
    authorize(&s, &headers, id.namespace())?;
    let caller = s.auth.caller_key(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let _slot = s.node.budgets().upload_slot(caller.as_deref())?;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let ttl = q.ttl.or_else(|| header_text(TTL_HEADER));
    let contract = q.contract.or_else(|| header_text(CONTRACT_HEADER));
    let consumers = q
        .consumers
        .or_else(|| header_text(CONSUMERS_HEADER))
        .map(|c| crate::consumers::Consumers::parse(&c))
        .transpose()?;
    let delimiter = q.delimiter.unwrap_or(',');
    if !delimiter.is_ascii() {
        return Err(Error::invalid("the delimiter must be one ASCII character").into());
    }
    let opts = PutOptions {
        ttl: ttl.as_deref().map(crate::ttl::parse_ttl).transpose()?,
        contract,
        source: "http".into(),
        schema_message: None,
        consumers,
    };
    let stream = crate::cancel::idle_timeout(
        body.into_data_stream(),
        s.node.limits().upload_idle_timeout,
        |d| {
            axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the upload sent nothing for {}s; it is abandoned (--upload-idle-timeout)",
                    d.as_secs_f64()
                ),
            ))
        },
    );
    let manifest = s.node.put_csv(id, opts, delimiter as u8, stream).await?;
    let put = manifest.put_result(s.node.signer())?;
    Ok((StatusCode::CREATED, Json(put)).into_response())
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
    version: Option<u64>,
    columns: Option<String>,
    limit: Option<u64>,
}

async fn export(
    State(s): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<ExportQuery>,
    headers: HeaderMap,
) -> std::result::Result<Response, HttpError> {
    let id = DatasetId::new(namespace, name)?;
    authorize(&s, &headers, id.namespace())?;
    let manifest = match q.version {
        Some(v) => s.node.resolve(&Ticket::new(id, v)).await?,
        None => s.node.latest(&id).await?,
    };
    let format = q.format.as_deref().unwrap_or("csv");
    let select = Selection::new(
        q.columns
            .as_deref()
            .map(|c| c.split(',').map(str::to_owned).collect()),
        q.limit,
    )?;
    let projection = Plan::new(&manifest, &select)?
        .columns()
        .map(<[usize]>::to_vec);
    // Rows still to send: once the limit is reached nothing more is read.
    let left = q.limit.unwrap_or(u64::MAX);
    let batches = futures::stream::unfold(
        (s.node.batches(&manifest), projection, left),
        |(mut inner, projection, left)| async move {
            if left == 0 {
                return None;
            }
            let selected = match inner.next().await? {
                Ok(b) => match &projection {
                    Some(p) => b
                        .project(p)
                        .map_err(|e| Error::data("select the columns", e)),
                    None => Ok(b),
                },
                Err(e) => Err(e),
            };
            match selected {
                Ok(b) => {
                    let rows = (b.num_rows() as u64).min(left);
                    let b = b.slice(0, usize::try_from(rows).unwrap_or(usize::MAX));
                    Some((Ok(b), (inner, projection, left - rows)))
                }
                Err(e) => Some((Err(e), (inner, projection, 0))),
            }
        },
    )
    .map_ok(|b| {
        let rows = b.num_rows();
        futures::stream::iter(
            (0..rows)
                .step_by(EXPORT_ROWS)
                .map(move |at| Ok(b.slice(at, EXPORT_ROWS.min(rows - at)))),
        )
    })
    .try_flatten()
    .boxed();
    let chunks = match format {
        "csv" => csv_chunks(batches),
        "json" => json_chunks(batches),
        other => {
            return Err(Error::invalid(format!("unknown format {other:?}; use csv or json")).into())
        }
    };
    let content_type = if format == "csv" {
        "text/csv"
    } else {
        "application/json"
    };
    let node = Arc::clone(&s.node);
    let chunks = crate::cancel::end_when_stalled(
        chunks,
        s.node.limits().stream_stall_timeout,
        |d| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the export was not read for {}s (--stream-stall-timeout)",
                    d.as_secs_f64()
                ),
            ))
        },
        move || node.budgets().record_stall(),
    );
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Rows turned into text at a time by an export.
const EXPORT_ROWS: usize = 8192;

type Chunks = futures::stream::BoxStream<'static, std::io::Result<Bytes>>;

fn csv_chunks(batches: futures::stream::BoxStream<'static, Result<RecordBatch>>) -> Chunks {
    let mut first = true;
    let stream = batches.map(move |b| {
        let batch = b?;
        let mut out = Vec::new();
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(first)
            .build(&mut out);
        w.write(&batch)?;
        drop(w);
        first = false;
        Ok::<_, Error>(Bytes::from(out))
    });
    stream
        .map_err(|e| std::io::Error::other(e.to_string()))
        .boxed()
}

fn json_chunks(batches: futures::stream::BoxStream<'static, Result<RecordBatch>>) -> Chunks {
    let mut first = true;
    let records = batches.map(move |b| {
        let batch = b?;
        let mut out = Vec::new();
        let mut w = arrow::json::ArrayWriter::new(&mut out);
        w.write(&batch)?;
        w.finish()?;
        drop(w);
        // Each batch is written as `[...]`; splice them into one array.
        let inner = out
            .strip_prefix(b"[")
            .and_then(|o| o.strip_suffix(b"]"))
            .unwrap_or(&out);
        let mut chunk = Vec::with_capacity(inner.len() + 1);
        if !inner.is_empty() {
            if !first {
                chunk.push(b',');
            }
            first = false;
            chunk.extend_from_slice(inner);
        }
        Ok::<_, Error>(Bytes::from(chunk))
    });
    let stream = futures::stream::once(async { Ok(Bytes::from_static(b"[")) })
        .chain(records)
        .chain(futures::stream::once(async {
            Ok(Bytes::from_static(b"]"))
        }));
    stream
        .map_err(|e: Error| std::io::Error::other(e.to_string()))
        .boxed()
}
