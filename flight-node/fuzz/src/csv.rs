//! Drives `flight_node::csv::parse` (the HTTP upload's and the `load` action's CSV reader)
//! on a byte slice, and reads the same bytes with arrow's plain CSV reader for comparison.

use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::csv::reader::Format;
use arrow::csv::ReaderBuilder;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio::sync::{mpsc, oneshot};

/// Delimiters the fuzz targets choose from.
pub const DELIMITERS: [u8; 4] = *b",;\t|";

/// What the node's parser produced.
#[derive(Debug)]
pub struct Parsed {
    /// The schema it sent, or why it refused before any row.
    pub schema: Result<SchemaRef, String>,
    /// Its batches, then the error that ended them, if any.
    pub batches: Vec<RecordBatch>,
    pub error: Option<String>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
    })
}

/// Runs the node's CSV parser over `body` as the HTTP upload does: on a blocking thread,
/// with the schema and batches read from its channels as they come.
pub fn parse(body: &[u8], schema: Option<SchemaRef>, delimiter: u8) -> Parsed {
    let (schema_tx, schema_rx) = oneshot::channel();
    let (tx, mut rx) = mpsc::channel(4);
    std::thread::scope(|scope| {
        let parser = scope.spawn(move || {
            let _rt = runtime().enter();
            flight_node::csv::parse(body, schema, delimiter, schema_tx, tx)
        });
        let schema = match schema_rx.blocking_recv() {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the parser ended without a schema".to_string()),
        };
        let mut batches = Vec::new();
        let mut error = None;
        while let Some(item) = rx.blocking_recv() {
            match item {
                Ok(b) => batches.push(b),
                Err(e) => error = Some(e.to_string()),
            }
        }
        let returned = parser
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        if let (Ok(_), Err(e)) = (&schema, returned) {
            panic!("parse returned an error ({e}) after sending a schema");
        }
        Parsed {
            schema,
            batches,
            error,
        }
    })
}

/// arrow's own reader over the whole body, with the node's schema: what cutting the body
/// into blocks must not change.
pub fn reference(
    body: &[u8],
    schema: SchemaRef,
    delimiter: u8,
) -> Result<Vec<RecordBatch>, String> {
    let reader = ReaderBuilder::new(schema)
        .with_format(
            Format::default()
                .with_header(true)
                .with_delimiter(delimiter),
        )
        .with_batch_size(1024)
        .build(std::io::Cursor::new(body))
        .map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// arrow's own reader over rows without a header.
pub fn reference_rows(
    rows: &[u8],
    schema: SchemaRef,
    delimiter: u8,
) -> Result<Vec<RecordBatch>, String> {
    ReaderBuilder::new(schema)
        .with_format(Format::default().with_delimiter(delimiter))
        .with_batch_size(1024)
        .build(std::io::Cursor::new(rows))
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The rows of `batches` as one batch (`None` for no rows).
pub fn rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Option<RecordBatch> {
    concat_batches(schema, batches)
        .ok()
        .filter(|b| b.num_rows() > 0)
}

/// Schemas a contract could impose (`None` lets the parser infer one).
pub fn schema(choice: u8) -> Option<SchemaRef> {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    match choice % 4 {
        0 => None,
        1 => Some(Arc::new(Schema::new(vec![
            f("id", DataType::Int64),
            f("s", DataType::Utf8),
        ]))),
        2 => Some(Arc::new(Schema::new(vec![
            f("a", DataType::Utf8),
            f("b", DataType::Utf8),
            f("c", DataType::Utf8),
        ]))),
        _ => Some(Arc::new(Schema::new(vec![
            f("x", DataType::Float64),
            f("flag", DataType::Boolean),
            f("day", DataType::Date32),
            f("t", DataType::Utf8),
        ]))),
    }
}

/// The number of fields of the first record (the header) as arrow's reader splits it.
/// The node ignores the header's fields when a schema is given; arrow's reader checks
/// their number, so bodies whose header does not match the schema are not compared.
pub fn header_fields(body: &[u8], delimiter: u8) -> usize {
    let mut reader = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    let mut out = vec![0u8; body.len() + 1];
    let mut ends = vec![0usize; body.len() + 2];
    let mut input = body;
    loop {
        let (res, nin, _, nend) = reader.read_record(input, &mut out, &mut ends);
        input = &input[nin..];
        match res {
            csv_core::ReadRecordResult::Record => return nend,
            csv_core::ReadRecordResult::End => return 0,
            // The buffers hold any record of the body; an empty input ends the last one.
            _ => {
                if nin == 0 && !input.is_empty() {
                    return 0;
                }
                if input.is_empty() {
                    let (res, _, _, nend) = reader.read_record(&[], &mut out, &mut ends);
                    return if res == csv_core::ReadRecordResult::Record {
                        nend
                    } else {
                        0
                    };
                }
            }
        }
    }
}
