//! Streaming CSV to Arrow, for the HTTP upload and the `load` action.
//!
//! Runs on a blocking thread: bytes arrive from an async body through a bridge, batches
//! leave through a bounded channel, so memory holds a megabyte of text and a few batches.

use std::io::{BufRead, BufReader, Cursor, Read};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::reader::Format;
use arrow::csv::ReaderBuilder;
use arrow::datatypes::SchemaRef;
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::SyncIoBridge;

use crate::error::{Error, Result};

/// Bytes read before inferring the schema.
const SNIFF_BYTES: usize = 1 << 20;
/// Rows per Arrow batch.
const BATCH_ROWS: usize = 64 * 1024;

/// Parses CSV from `reader`, sends the schema once, then batches, then returns.
/// Parse errors are sent to whichever channel is waiting, as `InvalidArgument`.
pub fn parse<R>(
    reader: R,
    schema: Option<SchemaRef>,
    delimiter: u8,
    schema_tx: oneshot::Sender<Result<SchemaRef>>,
    tx: mpsc::Sender<Result<RecordBatch>>,
) -> Result<()>
where
    R: AsyncRead + Unpin + Send,
{
    let mut input = BufReader::with_capacity(SNIFF_BYTES, SyncIoBridge::new(reader));
    let prepared = sniff(&mut input, schema, delimiter);
    let (head, schema, format) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            let _ = schema_tx.send(Err(e));
            return Err(Error::invalid(msg));
        }
    };
    if schema_tx.send(Ok(schema.clone())).is_err() {
        return Ok(());
    }
    let reader = ReaderBuilder::new(schema)
        .with_format(format)
        .with_batch_size(BATCH_ROWS)
        .build(Cursor::new(head).chain(input))
        .map_err(|e| Error::invalid(format!("failed to read CSV: {e}")));
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return Ok(());
        }
    };
    for batch in reader {
        let batch = batch.map_err(|e| Error::invalid(format!("failed to parse CSV: {e}")));
        let stop = batch.is_err();
        if tx.blocking_send(batch).is_err() || stop {
            break;
        }
    }
    Ok(())
}

fn sniff<R: Read>(
    input: &mut BufReader<R>,
    schema: Option<SchemaRef>,
    delimiter: u8,
) -> Result<(Vec<u8>, SchemaRef, Format)> {
    let mut head = Vec::new();
    let mut eof = false;
    while head.len() < SNIFF_BYTES {
        let buf = input
            .fill_buf()
            .map_err(|e| Error::invalid(format!("failed to read the CSV body: {e}")))?;
        if buf.is_empty() {
            eof = true;
            break;
        }
        let take = buf.len().min(SNIFF_BYTES - head.len());
        head.extend_from_slice(&buf[..take]);
        input.consume(take);
    }
    if head.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(
            "the CSV body is empty; expected a header row",
        ));
    }
    let format = Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    let schema = match schema {
        Some(s) => s,
        None => {
            // Infer from whole lines only.
            let cut = if eof {
                head.len()
            } else {
                head.iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(head.len(), |p| p + 1)
            };
            let (s, _) = format
                .infer_schema(Cursor::new(&head[..cut]), Some(10_000))
                .map_err(|e| Error::invalid(format!("failed to infer the CSV schema: {e}")))?;
            Arc::new(s)
        }
    };
    if schema.fields().is_empty() {
        return Err(Error::invalid("the CSV header names no columns"));
    }
    Ok((head, schema, format))
}
