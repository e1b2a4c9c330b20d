//! Encoding one part of an upload: Parquet for storage and, when the version may be
//! cached, the Flight messages `DoGet` will send.
//!
//! Both encodings of a part run at once, and the Parquet columns are encoded in parallel
//! with the low-level writer of the `parquet` crate (`ArrowColumnWriter`, one column chunk
//! per task): an upload is acknowledged only once its parts are durable, so the time spent
//! here is time the client waits. The file is the same one `ArrowWriter` would write:
//! same schema metadata, same row groups, same encodings.

use std::collections::VecDeque;
use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::cache::{encode_part, EncodedPart};
use crate::error::{Error, Result};

/// Parts whose batches average fewer rows than this are concatenated into one batch.
const COALESCE_BELOW_ROWS: usize = 16 * 1024;
/// A part is cut into at least one row group per thread (so that its widest column is
/// encoded by several threads), but row groups stay at least this long.
const MIN_GROUP_ROWS: usize = 64 * 1024;

/// What one part becomes.
#[derive(Debug)]
pub struct EncodedForStorage {
    pub parquet: Bytes,
    pub rows: u64,
    /// Arrow bytes of the part.
    pub bytes: u64,
    /// The part's Flight messages, when asked for.
    pub flight: Option<EncodedPart>,
}

/// Encodes a part as Parquet (and as Flight messages when `want_flight`). CPU-bound: call
/// from a blocking thread; it uses up to `threads` threads.
pub fn encode_for_storage(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    want_flight: bool,
    message_target: usize,
    threads: usize,
) -> Result<EncodedForStorage> {
    // Coalesce small batches (a flood of one-row batches); large ones are written as they
    // are, without another copy.
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let batches = if batches.len() > 1 && rows / batches.len() < COALESCE_BELOW_ROWS {
        vec![concat_batches(schema, &batches)?]
    } else {
        batches
    };
    let bytes: u64 = batches
        .iter()
        .map(|b| crate::node::batch_size(b) as u64)
        .sum();
    let props = properties(schema, &batches)?;
    let max_rows = group_rows(
        rows,
        props.max_row_group_row_count().unwrap_or(usize::MAX),
        threads,
    );
    // Sized up front: growing the buffer would copy it several times.
    let out = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0) / 2 + (1 << 20));
    let writer = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
    let (mut file, factory) = writer.into_serialized_writer()?;

    // The tasks: the Flight encoding (the longest, first) and one per column chunk.
    let groups = row_groups(&batches, max_rows);
    let mut tasks: VecDeque<Task> = VecDeque::new();
    if want_flight {
        tasks.push_back(Task::Flight);
    }
    let mut chunk_count = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let writers = factory.create_column_writers(g)?;
        let mut leaves: Vec<Vec<_>> = writers.iter().map(|_| Vec::new()).collect();
        for batch in group {
            let mut leaf = 0;
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                for l in compute_leaves(field, column)? {
                    leaves
                        .get_mut(leaf)
                        .ok_or_else(|| Error::Internal("more leaf columns than writers".into()))?
                        .push(l);
                    leaf += 1;
                }
            }
        }
        chunk_count.push(writers.len());
        for (c, (writer, leaves)) in writers.into_iter().zip(leaves).enumerate() {
            tasks.push_back(Task::Column {
                group: g,
                column: c,
                writer: Box::new(writer),
                leaves,
            });
        }
    }
    let total = tasks.len();
    let queue = Mutex::new(tasks);
    let results: Mutex<Vec<Done>> = Mutex::new(Vec::with_capacity(total));
    let run = || -> Result<()> {
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
            let Some(task) = next else {
                return Ok(());
            };
            let done = match task {
                Task::Flight => Done::Flight(encode_part(schema, &batches, message_target)?),
                Task::Column {
                    group,
                    column,
                    mut writer,
                    leaves,
                } => {
                    for l in &leaves {
                        writer.write(l)?;
                    }
                    Done::Column(group, column, Box::new(writer.close()?))
                }
            };
            results.lock().unwrap_or_else(|p| p.into_inner()).push(done);
        }
    };
    let workers = threads.clamp(1, total.max(1));
    std::thread::scope(|scope| -> Result<()> {
        let helpers: Vec<_> = (1..workers).map(|_| scope.spawn(run)).collect();
        let mut outcome = run();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("an encoder thread panicked".into())));
            outcome = outcome.and(r);
        }
        outcome
    })?;

    let mut flight = None;
    let mut chunks: Vec<Vec<Option<ArrowColumnChunk>>> = chunk_count
        .iter()
        .map(|n| (0..*n).map(|_| None).collect())
        .collect();
    for done in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        match done {
            Done::Flight(p) => flight = Some(p),
            Done::Column(g, c, chunk) => chunks[g][c] = Some(*chunk),
        }
    }
    for group in chunks {
        let mut rg = file.next_row_group()?;
        for chunk in group {
            chunk
                .ok_or_else(|| Error::Internal("a column chunk was not encoded".into()))?
                .append_to_row_group(&mut rg)?;
        }
        rg.close()?;
    }
    let parquet = Bytes::from(file.into_inner()?);
    Ok(EncodedForStorage {
        parquet,
        rows: rows as u64,
        bytes,
        flight,
    })
}

enum Task {
    Flight,
    Column {
        group: usize,
        column: usize,
        writer: Box<ArrowColumnWriter>,
        leaves: Vec<parquet::arrow::arrow_writer::ArrowLeafColumn>,
    },
}

enum Done {
    Flight(EncodedPart),
    Column(usize, usize, Box<ArrowColumnChunk>),
}

/// Writer settings: Snappy, chunk statistics, dictionary encoding for strings only, and the
/// part's dictionaries recorded so that their order survives (see `dictionary`).
fn properties(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<WriterProperties> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Dictionary encoding pays off for strings; on numbers it mostly costs hashing
        // every value before falling back.
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_key_value_metadata(Some(crate::dictionary::capture_all(batches)?));
    for field in schema.fields() {
        if matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
        ) {
            props =
                props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true);
        }
    }
    Ok(props.build())
}

/// Rows per row group: at most `max_rows`, and few enough that each thread gets a group
/// when the part is long enough.
fn group_rows(rows: usize, max_rows: usize, threads: usize) -> usize {
    let groups = rows
        .div_ceil(max_rows.max(1))
        .max((rows / MIN_GROUP_ROWS).min(threads))
        .max(1);
    rows.div_ceil(groups).clamp(1, max_rows.max(1))
}

/// Splits batches into row groups of at most `max_rows` rows (slices, no copies).
fn row_groups(batches: &[RecordBatch], max_rows: usize) -> Vec<Vec<RecordBatch>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut in_current = 0;
    for batch in batches {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let take = (max_rows - in_current).min(batch.num_rows() - offset);
            current.push(batch.slice(offset, take));
            in_current += take;
            offset += take;
            if in_current == max_rows {
                groups.push(std::mem::take(&mut current));
                in_current = 0;
            }
        }
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Int32Type, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn batch(schema: &SchemaRef, start: i64, n: usize) -> RecordBatch {
        let ids: Vec<i64> = (start..start + n as i64).collect();
        let keys = Int32Array::from_iter_values(ids.iter().map(|i| (*i % 3) as i32));
        let dict = DictionaryArray::<Int32Type>::try_new(
            keys,
            Arc::new(StringArray::from(vec!["red", "green", "blue"])),
        )
        .unwrap();
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Float64Array::from_iter(
                    ids.iter().map(|i| (i % 7 != 0).then_some(*i as f64 / 2.0)),
                )),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("s{i}")),
                )),
                Arc::new(dict),
            ],
        )
        .unwrap()
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, false),
            Field::new(
                "colour",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
        ]))
    }

    /// The parallel writer's file reads back as the input, in order, with the row groups
    /// `ArrowWriter` would have made, and its Flight messages decode to the same rows.
    #[test]
    fn parallel_encoding_round_trips_in_order() {
        let schema = schema();
        let batches = vec![batch(&schema, 0, 80_000), batch(&schema, 80_000, 60_000)];
        for threads in [1, 2, 5] {
            let out = encode_for_storage(&schema, batches.clone(), true, 1 << 20, threads).unwrap();
            assert_eq!(out.rows, 140_000);
            let reader = ParquetRecordBatchReaderBuilder::try_new(out.parquet.clone()).unwrap();
            let groups = if threads == 1 { 1 } else { 2 }; // 140,000 rows: two groups at most
            assert_eq!(reader.metadata().num_row_groups(), groups);
            let got: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
            let got = concat_batches(&got[0].schema(), &got).unwrap();
            let want = concat_batches(&schema, &batches).unwrap();
            for c in 0..3 {
                assert_eq!(
                    got.column(c).as_ref(),
                    want.column(c).as_ref(),
                    "column {c}"
                );
            }
            let flight = out.flight.unwrap();
            assert_eq!(flight.rows, 140_000);
            assert!(
                flight.messages.len() > 1,
                "messages are cut near the target size"
            );
        }
    }

    #[test]
    fn row_groups_follow_the_configured_maximum() {
        let schema = schema();
        let batches = vec![batch(&schema, 0, 10), batch(&schema, 10, 25)];
        let sizes = |g: Vec<Vec<RecordBatch>>| -> Vec<usize> {
            g.iter()
                .map(|b| b.iter().map(RecordBatch::num_rows).sum())
                .collect()
        };
        assert_eq!(sizes(row_groups(&batches, 12)), vec![12, 12, 11]);
        assert_eq!(sizes(row_groups(&batches, 35)), vec![35]);
        assert_eq!(sizes(row_groups(&[], 35)), vec![0]);
        // One group per thread once a part is long enough; never above the maximum.
        assert_eq!(group_rows(1_000, 1 << 20, 2), 1_000);
        assert_eq!(group_rows(200_000, 1 << 20, 2), 100_000);
        assert_eq!(group_rows(200_000, 1 << 20, 8), 66_667);
        assert_eq!(group_rows(3_000_000, 1 << 20, 2), 1_000_000);
        assert_eq!(group_rows(0, 1 << 20, 2), 1);
    }
}
