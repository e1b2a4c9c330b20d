//! DoPut's decode path as `service.rs` runs it, and what the node then does with the
//! batches it accepted.
//!
//! `decode` mirrors `do_put_inner`: arrow-flight's `FlightDataDecoder` behind
//! `catch_unwind` (a panic there becomes an error, as in the server), the stream ends at
//! its first error, the first payload must be a schema whose types arrays can have
//! (`node::check_schema`), a second schema is refused, and
//! every column of every batch passes `ArrayData::validate_full` (the server's `validate`)
//! and has the upload's fields (the node's `push_one`).
//!
//! `use_batches` then does with accepted batches what the node and its clients do: concat,
//! IPC encode, the node's hot-path encoding (`cache::encode_part`, what `DoGet` serves,
//! decoded again and compared), and the node's storage encoding (`encode::PartEncoder`).
//! Any panic in there is a panic the server does not guard against.

use std::panic::AssertUnwindSafe;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, SchemaAsIpc};
use futures::executor::block_on;
use futures::StreamExt;

use flight_node::encode::{PartEncoder, PartFormat};

use crate::guard;

/// The node's smallest message target (`Limits::message_target` is at least 64 KiB).
pub const MESSAGE_TARGET: usize = 64 * 1024;

/// The upload size limit the target runs with (`--max-upload-size`; the node's default is
/// 16 GiB). Uploads count at least one byte per row (`node::upload_size`), so this also
/// bounds the rows of batches whose columns take no space, which once let a few hundred
/// bytes claim 10^12 rows (`artifacts-found/doput_decode-*-rows*`).
pub const MAX_UPLOAD_SIZE: usize = 64 << 20;

/// Why an upload was refused (any refusal is a correct answer to bad input).
#[derive(Debug)]
pub struct Refused(pub String);

/// An accepted upload: its schema and its validated batches.
#[derive(Debug)]
pub struct Accepted {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Decodes a DoPut stream as the server does; `Err` is what the server refuses.
pub fn decode(messages: Vec<FlightData>) -> Result<Accepted, Refused> {
    let input = futures::stream::iter(messages.into_iter().map(Ok::<_, FlightError>));
    let mut decoder = AssertUnwindSafe(FlightDataDecoder::new(input))
        .catch_unwind()
        .map(|r| match r {
            Ok(item) => item,
            Err(_) => Err(FlightError::DecodeError(
                "the IPC message could not be decoded (panic)".into(),
            )),
        });
    let mut next = move || guard::guarded(|| block_on(decoder.next()));
    let schema = loop {
        match next() {
            Some(Ok(d)) => match d.payload {
                DecodedPayload::Schema(s) => break s,
                DecodedPayload::None => continue,
                DecodedPayload::RecordBatch(_) => {
                    return Err(Refused("record batch before the schema message".into()))
                }
            },
            Some(Err(e)) => return Err(Refused(e.to_string())),
            None => return Err(Refused("stream ended before a schema message".into())),
        }
    };
    // The server's schema check (its `catch_unwind` is guarded like the decoder's).
    guard::guarded(|| flight_node::node::check_schema(&schema))
        .map_err(|e| Refused(e.to_string()))?;
    let mut batches = Vec::new();
    let mut size = 0usize;
    loop {
        match next() {
            None => break,
            Some(Ok(d)) => match d.payload {
                DecodedPayload::RecordBatch(b) => {
                    validate(&b)?;
                    // The node's `push`: a row limit per batch, and the upload size.
                    flight_node::node::check_batch_rows(&b).map_err(|e| Refused(e.to_string()))?;
                    size = size.saturating_add(flight_node::node::upload_size(&b));
                    if size > MAX_UPLOAD_SIZE {
                        return Err(Refused("upload exceeds the maximum upload size".into()));
                    }
                    if b.schema().fields() != schema.fields() {
                        return Err(Refused("a batch's schema differs".into()));
                    }
                    batches.push(b);
                }
                DecodedPayload::None => {}
                DecodedPayload::Schema(_) => {
                    return Err(Refused("the schema changed mid-stream".into()))
                }
            },
            Some(Err(e)) => return Err(Refused(e.to_string())),
        }
    }
    Ok(Accepted { schema, batches })
}

/// The server's `validate`: every column passes `validate_full`.
pub fn validate(batch: &RecordBatch) -> Result<(), Refused> {
    for (i, c) in batch.columns().iter().enumerate() {
        c.to_data()
            .validate_full()
            .map_err(|e| Refused(format!("column {i}: {e}")))?;
    }
    Ok(())
}

/// What happened to accepted batches on their way through the node.
#[derive(Debug, Default)]
pub struct Used {
    pub rows: usize,
    pub hot_round_trip: bool,
    pub stored: Option<PartFormat>,
    pub store_error: Option<String>,
}

/// Uses accepted batches as the node and its clients do. Panics (and fails the fuzz
/// target) where the node would panic, or where a version read back hot differs from the
/// accepted batches.
pub fn use_batches(a: &Accepted) -> Used {
    let mut used = Used {
        rows: a.batches.iter().map(RecordBatch::num_rows).sum(),
        ..Used::default()
    };
    let whole = concat_batches(&a.schema, &a.batches).ok();
    // What a client re-sending the batches would encode.
    let _ = arrow_flight::utils::batches_to_flight_data(&a.schema, &a.batches);
    for b in &a.batches {
        let _ = flight_node::cache::batch_size(b);
    }

    // The hot copy: the messages DoGet sends while the version is cached.
    if let Ok(part) = flight_node::cache::encode_part(&a.schema, &a.batches, MESSAGE_TARGET) {
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let mut messages = vec![FlightData::from(SchemaAsIpc::new(&a.schema, &options))];
        messages.extend(part.messages.iter().map(|m| m.data.clone()));
        let back = read_back(messages).unwrap_or_else(|e| {
            panic!("the node's own DoGet messages do not decode: {e}");
        });
        assert_eq!(
            back.iter().map(RecordBatch::num_rows).sum::<usize>(),
            used.rows,
            "DoGet messages hold another number of rows than were accepted"
        );
        if let (Some(whole), Ok(back)) = (&whole, concat_batches(&a.schema, &back)) {
            assert!(
                whole.columns() == back.columns(),
                "a hot read differs from the accepted batches:\nsent {whole:?}\nread {back:?}"
            );
        }
        used.hot_round_trip = true;
    }

    // The stored copy: Parquet, or Arrow IPC for types Parquet cannot hold.
    let format = flight_node::encode::format_for(&a.schema);
    let stored = PartEncoder::new(a.schema.clone(), format, true, MESSAGE_TARGET, 1).and_then(
        |mut encoder| {
            for group in encoder.groups(a.batches.clone()) {
                encoder.add(group)?;
            }
            encoder.finish()
        },
    );
    match stored {
        Ok(_) => used.stored = Some(format),
        Err(e) => used.store_error = Some(e.to_string()),
    }
    used
}

/// Decodes messages the node made itself (no guard: these must simply work).
fn read_back(messages: Vec<FlightData>) -> Result<Vec<RecordBatch>, FlightError> {
    let input = futures::stream::iter(messages.into_iter().map(Ok::<_, FlightError>));
    let mut decoder = FlightDataDecoder::new(input);
    let mut out = Vec::new();
    while let Some(d) = block_on(decoder.next()) {
        if let DecodedPayload::RecordBatch(b) = d?.payload {
            out.push(b);
        }
    }
    Ok(out)
}
