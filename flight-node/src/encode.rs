//! Encoding one part of an upload: a file for storage (Parquet, or an Arrow IPC file for
//! schemas Parquet cannot hold exactly; see [`PartFormat`]) and, when the version may be
//! cached, the Flight messages `DoGet` will send.
//!
//! A part is encoded row group by row group while the upload streams in; within a row group
//! the Flight messages and the Parquet column chunks are parallel tasks, through the
//! low-level writer of the `parquet` crate (`ArrowColumnWriter`). An upload is acknowledged
//! only once its parts are durable, so the time spent here after the last batch is time
//! the client waits. The file is what `ArrowWriter` writes: same schema metadata and
//! encodings, one row group per group of batches.

use std::collections::VecDeque;
use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::FileWriter;
use object_store::{PutPayload, PutPayloadMut};
use parquet::arrow::arrow_writer::{
    compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn,
    ArrowRowGroupWriterFactory,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use crate::cache::{encode_part, EncodedPart};
use crate::error::{Error, Result};

/// Parts whose batches average fewer rows than this are concatenated into one batch.
const COALESCE_BELOW_ROWS: usize = 16 * 1024;
/// A part is cut into at least one row group per thread (so that its widest column is
/// encoded by several threads), but row groups stay at least this long.
const MIN_GROUP_ROWS: usize = 64 * 1024;

pub use crate::manifest::PartFormat;

/// A Parquet error while encoding an upload's data.
pub fn parquet_error(e: parquet::errors::ParquetError) -> Error {
    Error::data("process Parquet data", e)
}

/// The format that stores `schema` without changing it: Parquet when
/// [`parquet_holds`] it, Arrow IPC otherwise.
pub fn format_for(schema: &Schema) -> PartFormat {
    if parquet_holds(schema) {
        PartFormat::Parquet
    } else {
        PartFormat::ArrowIpc
    }
}

/// Whether Parquet (with the Arrow schema the writer embeds, and the dictionaries
/// [`crate::dictionary`] records) gives back exactly this schema and its values. A
/// conservative list: anything not known to round-trip goes to Arrow IPC.
pub fn parquet_holds(schema: &Schema) -> bool {
    let mut names = std::collections::HashSet::new();
    schema
        .fields()
        .iter()
        .all(|f| names.insert(f.name().as_str()) && field_holds(f, true))
}

fn field_holds(field: &Field, top_level: bool) -> bool {
    use DataType::*;
    if field.metadata().contains_key("ARROW:extension:name") {
        return false;
    }
    match field.data_type() {
        Null
        | Boolean
        | Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Float16
        | Float32
        | Float64
        | Utf8
        | LargeUtf8
        | Binary
        | LargeBinary
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _)
        | Decimal128(_, _)
        | Decimal256(_, _)
        | FixedSizeBinary(_) => true,
        List(child) | LargeList(child) | FixedSizeList(child, _) => field_holds(child, false),
        Struct(children) => {
            let mut names = std::collections::HashSet::new();
            !children.is_empty()
                && children
                    .iter()
                    .all(|c| names.insert(c.name().as_str()) && field_holds(c, false))
        }
        // Top-level dictionaries with signed keys are restored exactly (see `dictionary`).
        Dictionary(key, value) => {
            top_level
                && matches!(**key, Int8 | Int16 | Int32 | Int64)
                && matches!(**value, Utf8 | LargeUtf8 | Binary | LargeBinary)
        }
        _ => false,
    }
}

/// What one part becomes.
#[derive(Debug)]
pub struct EncodedForStorage {
    /// The part's file (Parquet or Arrow IPC), in the chunks it was written in.
    pub file: PutPayload,
    pub rows: u64,
    /// Arrow bytes of the part.
    pub bytes: u64,
    /// The part's Flight messages, when asked for.
    pub flight: Option<EncodedPart>,
}

/// Encodes one part row group by row group, as its batches arrive: an upload's part is
/// mostly encoded by the time its last batch comes in.
pub struct PartEncoder {
    schema: SchemaRef,
    sink: Sink,
    max_group_rows: usize,
    groups: usize,
    flight: Option<EncodedPart>,
    message_target: usize,
    threads: usize,
    rows: u64,
    bytes: u64,
    /// The first batch (kept while the schema has dictionary columns) and the dictionaries
    /// every batch so far shared with it.
    dictionaries: Option<(RecordBatch, Vec<KeyValue>)>,
}

impl std::fmt::Debug for PartEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartEncoder")
            .field("groups", &self.groups)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// Where a part's file is written.
enum Sink {
    Parquet {
        file: Box<SerializedFileWriter<Chunks>>,
        factory: Box<ArrowRowGroupWriterFactory>,
    },
    Ipc(Box<FileWriter<Chunks>>),
}

impl PartEncoder {
    pub fn new(
        schema: SchemaRef,
        format: PartFormat,
        want_flight: bool,
        message_target: usize,
        threads: usize,
    ) -> Result<Self> {
        let (sink, max_group_rows) = match format {
            PartFormat::Parquet => {
                let props = properties(&schema);
                let max_group_rows = props.max_row_group_row_count().unwrap_or(usize::MAX).max(1);
                let writer = ArrowWriter::try_new(Chunks::default(), schema.clone(), Some(props))
                    .map_err(parquet_error)?;
                let (file, factory) = writer.into_serialized_writer().map_err(parquet_error)?;
                let sink = Sink::Parquet {
                    file: Box::new(file),
                    factory: Box::new(factory),
                };
                (sink, max_group_rows)
            }
            PartFormat::ArrowIpc => {
                let writer = FileWriter::try_new(Chunks::default(), &schema)?;
                (Sink::Ipc(Box::new(writer)), 1024 * 1024)
            }
        };
        Ok(Self {
            schema,
            sink,
            max_group_rows,
            groups: 0,
            flight: want_flight.then(EncodedPart::default),
            message_target,
            threads: threads.max(1),
            rows: 0,
            bytes: 0,
            dictionaries: None,
        })
    }

    /// Cuts the last batches of a part into row groups: one per thread when the part is
    /// long enough, so that its widest column is encoded by several threads.
    pub fn groups(&self, batches: Vec<RecordBatch>) -> Vec<Vec<RecordBatch>> {
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        row_groups(
            &batches,
            group_rows(rows, self.max_group_rows, self.threads),
        )
    }

    /// Encodes `batches` as the next row group (several when longer than the maximum).
    pub fn add(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 {
            return Ok(());
        }
        // Coalesce small batches (a flood of one-row batches); large ones are encoded as
        // they are, without another copy.
        let batches = if batches.len() > 1 && rows / batches.len() < COALESCE_BELOW_ROWS {
            vec![concat_batches(&self.schema, &batches)?]
        } else {
            batches
        };
        if let Sink::Ipc(w) = &mut self.sink {
            // Arrow IPC keeps every batch as it is; the Flight messages are made alongside.
            for b in &batches {
                w.write(b)?;
            }
            self.rows += rows as u64;
            self.bytes += batches
                .iter()
                .map(|b| crate::cache::batch_size(b) as u64)
                .sum::<u64>();
            if let Some(f) = self.flight.as_mut() {
                let mut p = encode_part(&self.schema, &batches, self.message_target)?;
                f.rows += p.rows;
                f.bytes += p.bytes;
                f.messages.append(&mut p.messages);
            }
            return Ok(());
        }
        self.track_dictionaries(&batches)?;
        self.rows += rows as u64;
        self.bytes += batches
            .iter()
            .map(|b| crate::cache::batch_size(b) as u64)
            .sum::<u64>();
        for group in row_groups(&batches, self.max_group_rows) {
            self.add_group(&group)?;
        }
        Ok(())
    }

    fn track_dictionaries(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let has_dictionaries = self
            .schema
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::Dictionary(_, _)));
        if !has_dictionaries {
            return Ok(());
        }
        for batch in batches {
            match &mut self.dictionaries {
                None => {
                    self.dictionaries = Some((batch.clone(), crate::dictionary::capture(batch)?));
                }
                Some((first, kv)) => crate::dictionary::retain_shared(kv, first, batch),
            }
        }
        Ok(())
    }

    /// Encodes one row group: its column chunks and its Flight messages as parallel tasks.
    fn add_group(&mut self, group: &[RecordBatch]) -> Result<()> {
        let Sink::Parquet { file, factory } = &mut self.sink else {
            return Err(Error::Internal("a row group for an Arrow IPC part".into()));
        };
        let writers = factory
            .create_column_writers(self.groups)
            .map_err(parquet_error)?;
        self.groups += 1;
        let mut leaves: Vec<Vec<ArrowLeafColumn>> = writers.iter().map(|_| Vec::new()).collect();
        for batch in group {
            let mut leaf = 0;
            for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
                for l in compute_leaves(field, column).map_err(parquet_error)? {
                    leaves
                        .get_mut(leaf)
                        .ok_or_else(|| Error::Internal("more leaf columns than writers".into()))?
                        .push(l);
                    leaf += 1;
                }
            }
        }
        let columns = writers.len();
        let mut tasks: VecDeque<Task> = VecDeque::with_capacity(columns + 1);
        if self.flight.is_some() {
            tasks.push_back(Task::Flight); // the longest: first
        }
        for (c, (writer, leaves)) in writers.into_iter().zip(leaves).enumerate() {
            tasks.push_back(Task::Column {
                column: c,
                writer: Box::new(writer),
                leaves,
            });
        }
        let total = tasks.len();
        let queue = Mutex::new(tasks);
        let results: Mutex<Vec<Done>> = Mutex::new(Vec::with_capacity(total));
        let (schema, target) = (&self.schema, self.message_target);
        let run = || -> Result<()> {
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(task) = next else {
                    return Ok(());
                };
                let done = match task {
                    Task::Flight => Done::Flight(encode_part(schema, group, target)?),
                    Task::Column {
                        column,
                        mut writer,
                        leaves,
                    } => {
                        for l in &leaves {
                            writer.write(l).map_err(parquet_error)?;
                        }
                        Done::Column(column, Box::new(writer.close().map_err(parquet_error)?))
                    }
                };
                results.lock().unwrap_or_else(|p| p.into_inner()).push(done);
            }
        };
        let workers = self.threads.clamp(1, total.max(1));
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

        let mut chunks: Vec<Option<ArrowColumnChunk>> = (0..columns).map(|_| None).collect();
        for done in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match done {
                Done::Flight(mut p) => {
                    if let Some(f) = self.flight.as_mut() {
                        f.rows += p.rows;
                        f.bytes += p.bytes;
                        f.messages.append(&mut p.messages);
                    }
                }
                Done::Column(c, chunk) => chunks[c] = Some(*chunk),
            }
        }
        let mut rg = file.next_row_group().map_err(parquet_error)?;
        for chunk in chunks {
            chunk
                .ok_or_else(|| Error::Internal("a column chunk was not encoded".into()))?
                .append_to_row_group(&mut rg)
                .map_err(parquet_error)?;
        }
        rg.close().map_err(parquet_error)?;
        Ok(())
    }

    /// Writes the footer; returns the file and the part's messages.
    pub fn finish(mut self) -> Result<EncodedForStorage> {
        let file = match self.sink {
            Sink::Parquet { mut file, .. } => {
                if let Some((_, kv)) = self.dictionaries.take() {
                    for entry in kv {
                        file.append_key_value_metadata(entry);
                    }
                }
                file.into_inner().map_err(parquet_error)?.finish()
            }
            Sink::Ipc(mut w) => {
                w.finish()?;
                w.into_inner()?.finish()
            }
        };
        Ok(EncodedForStorage {
            file,
            rows: self.rows,
            bytes: self.bytes,
            flight: self.flight,
        })
    }
}

/// A file written into chunks of at most 1 MiB (object_store's `PutPayloadMut`): a growing
/// buffer would copy the file several times over as it doubles, and fault in twice its size.
#[derive(Debug)]
pub struct Chunks(PutPayloadMut);

impl Default for Chunks {
    fn default() -> Self {
        Self(PutPayloadMut::new().with_block_size(Self::SIZE))
    }
}

impl Chunks {
    const SIZE: usize = 1 << 20;

    /// The chunks written, as an object store payload.
    pub fn finish(self) -> PutPayload {
        self.0.freeze()
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // In pieces of at most a block, so that no block grows past it.
        for piece in buf.chunks(Self::SIZE) {
            self.0.extend_from_slice(piece);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Task {
    Flight,
    Column {
        column: usize,
        writer: Box<ArrowColumnWriter>,
        leaves: Vec<ArrowLeafColumn>,
    },
}

enum Done {
    Flight(EncodedPart),
    Column(usize, Box<ArrowColumnChunk>),
}

/// Writer settings: Snappy, chunk statistics, and dictionary encoding for strings only. The
/// part's dictionaries are recorded in the footer when it is finished (see `dictionary`).
fn properties(schema: &SchemaRef) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Dictionary encoding pays off for strings; on numbers it mostly costs hashing
        // every value before falling back.
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for field in schema.fields() {
        if matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _)
        ) {
            props =
                props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true);
        }
    }
    props.build()
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
    use bytes::Bytes;
    use std::sync::Arc;

    use arrow::array::{DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Int32Type, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// The file in one buffer, as a reader wants it.
    fn contiguous(payload: &PutPayload) -> Bytes {
        payload
            .iter()
            .flat_map(|chunk| chunk.iter().copied())
            .collect()
    }

    #[test]
    fn chunks_hold_exactly_what_was_written() {
        use std::io::Write;
        let data: Vec<u8> = (0..3 * Chunks::SIZE + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = Chunks::default();
        // Writes that straddle chunk ends, one larger than a chunk, and empty ones.
        for piece in [
            &data[..10],
            &data[10..10],
            &data[10..Chunks::SIZE + 5],
            &data[Chunks::SIZE + 5..],
        ] {
            w.write_all(piece).unwrap();
        }
        let payload = w.finish();
        assert_eq!(payload.content_length(), data.len());
        assert!(payload
            .iter()
            .all(|c| c.len() <= Chunks::SIZE && !c.is_empty()));
        assert_eq!(contiguous(&payload), data);
        assert_eq!(Chunks::default().finish().content_length(), 0);
    }

    /// A whole part at once, as the upload path ends a part: its last batches cut into one
    /// row group per thread.
    fn encode_for_storage(
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        want_flight: bool,
        message_target: usize,
        threads: usize,
    ) -> Result<EncodedForStorage> {
        let mut encoder = PartEncoder::new(
            schema.clone(),
            PartFormat::Parquet,
            want_flight,
            message_target,
            threads,
        )?;
        for group in encoder.groups(batches) {
            encoder.add(group)?;
        }
        encoder.finish()
    }

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
            let reader = ParquetRecordBatchReaderBuilder::try_new(contiguous(&out.file)).unwrap();
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
