//! Reading the parts of a committed version back from storage: one GET per part, decoded
//! off the async runtime (an Arrow IPC file as written, a Parquet file with the
//! dictionaries its writer recorded restored).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::path::Path;
use std::sync::Arc;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::cache::{encode_batches, EncodedPart};
use crate::error::{Error, Result};
use crate::manifest::{PartFormat, PartInfo};
use crate::storage::Storage;

/// Reads one part whole. Memory is bounded by the part size, which the writer bounds.
pub async fn read_part(
    storage: &Storage,
    part: &PartInfo,
    batch_size: usize,
) -> Result<Vec<RecordBatch>> {
    let (path, bytes) = storage.get_part(part).await?;
    tokio::task::spawn_blocking(move || part_batches(path, bytes, batch_size)?.collect())
        .await
        .map_err(|e| Error::Internal(format!("part decoder task failed: {e}")))?
}

/// Reads one part into Flight messages of about `max_message` bytes: one GET for the whole
/// object, then batches are decoded and encoded one at a time off the async runtime, so
/// only one decoded batch is in memory besides the file and the messages.
pub async fn load_part(
    storage: &Storage,
    part: &PartInfo,
    batch_size: usize,
    schema: SchemaRef,
    max_message: usize,
) -> Result<EncodedPart> {
    let (path, bytes) = storage.get_part(part).await?;
    tokio::task::spawn_blocking(move || {
        let batches = part_batches(path, bytes, batch_size)?;
        encode_batches(&schema, batches, max_message)
    })
    .await
    .map_err(|e| Error::Internal(format!("part decoder task failed: {e}")))?
}

/// Reads only some columns of one part (`columns`: indices into the version's schema, in
/// the order wanted; `schema`: theirs), at most `limit` rows: the other columns are not
/// decoded. For reads of some columns of a version that is not kept in memory.
pub async fn read_part_columns(
    storage: &Storage,
    part: &PartInfo,
    batch_size: usize,
    columns: Vec<usize>,
    schema: SchemaRef,
    limit: Option<u64>,
) -> Result<Vec<RecordBatch>> {
    let (path, bytes) = storage.get_part(part).await?;
    tokio::task::spawn_blocking(move || {
        // Files give columns in their own order; `order` puts them in the order asked.
        let mut stored: Vec<usize> = columns.clone();
        stored.sort_unstable();
        stored.dedup();
        let order: Vec<usize> = columns
            .iter()
            .map(|c| stored.binary_search(c).unwrap_or_default())
            .collect();
        let mut left = limit.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for batch in batches_of(path, bytes, batch_size, Some(stored))? {
            if left == 0 {
                break;
            }
            let batch = batch?;
            let rows = (batch.num_rows() as u64).min(left);
            left -= rows;
            let picked = order.iter().map(|i| Arc::clone(batch.column(*i))).collect();
            let batch = RecordBatch::try_new(schema.clone(), picked)
                .map_err(|e| Error::data("select the columns", e))?;
            out.push(batch.slice(0, usize::try_from(rows).unwrap_or(usize::MAX)));
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Internal(format!("part decoder task failed: {e}")))?
}

/// The batches of a part, decoded as they are pulled.
pub fn part_batches(
    path: Path,
    bytes: Bytes,
    batch_size: usize,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'static>> {
    batches_of(path, bytes, batch_size, None)
}

/// The batches of a part with only the columns `stored` (ascending indices), or all.
fn batches_of(
    path: Path,
    bytes: Bytes,
    batch_size: usize,
    stored: Option<Vec<usize>>,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'static>> {
    if PartFormat::of_path(path.as_ref()) == PartFormat::ArrowIpc {
        let reader =
            arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), stored.clone())
                .map_err(|e| Error::data(format!("open Arrow part {path}"), e))?;
        return Ok(Box::new(reader.map(move |b| {
            b.map_err(|e| Error::data(format!("decode Arrow part {path}"), e))
        })));
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| Error::data(format!("open Parquet part {path}"), e))?;
    let mut dictionaries =
        crate::dictionary::recorded(builder.metadata().file_metadata().key_value_metadata())?;
    let mut builder = builder.with_batch_size(batch_size);
    if let Some(stored) = stored {
        // Recorded dictionaries are by column index; here the index among those read.
        dictionaries = stored
            .iter()
            .enumerate()
            .filter_map(|(at, c)| dictionaries.get(c).map(|d| (at, Arc::clone(d))))
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), stored);
        builder = builder.with_projection(mask);
    }
    let reader = builder
        .build()
        .map_err(|e| Error::data(format!("read Parquet part {path}"), e))?;
    Ok(Box::new(reader.map(move |b| {
        let b = b.map_err(|e| Error::data(format!("decode Parquet part {path}"), e))?;
        crate::dictionary::restore(b, &dictionaries)
    })))
}
