//! Reading the parts of a committed version back from storage: one GET per part, decoded
//! off the async runtime (an Arrow IPC file as written, a Parquet file with the
//! dictionaries its writer recorded restored).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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

/// The batches of a part, decoded as they are pulled.
pub fn part_batches(
    path: Path,
    bytes: Bytes,
    batch_size: usize,
) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'static>> {
    if PartFormat::of_path(path.as_ref()) == PartFormat::ArrowIpc {
        let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::data(format!("open Arrow part {path}"), e))?;
        return Ok(Box::new(reader.map(move |b| {
            b.map_err(|e| Error::data(format!("decode Arrow part {path}"), e))
        })));
    }
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| Error::data(format!("open Parquet part {path}"), e))?;
    let dictionaries =
        crate::dictionary::recorded(builder.metadata().file_metadata().key_value_metadata())?;
    let reader = builder
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| Error::data(format!("read Parquet part {path}"), e))?;
    Ok(Box::new(reader.map(move |b| {
        let b = b.map_err(|e| Error::data(format!("decode Parquet part {path}"), e))?;
        crate::dictionary::restore(b, &dictionaries)
    })))
}
