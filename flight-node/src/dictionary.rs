//! Keeps dictionary columns (pandas categoricals) exact across Parquet.
//!
//! The Parquet writer re-encodes a dictionary column with the values in order of first
//! appearance, so a categorical's categories (and, for an ordered categorical, their
//! meaning) would change after a round trip through storage. The writer therefore records
//! each top-level dictionary's values in the part's key-value metadata, and the reader maps
//! the decoded keys back onto them. Dictionaries larger than [`MAX_RECORDED`] are not
//! recorded; those columns keep the values but may come back in a different order.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayData, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, SortField};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use parquet::file::metadata::KeyValue;

use crate::error::{Error, Result};

/// Metadata key prefix; the column index follows.
const KEY_PREFIX: &str = "trinity.dictionary.";
/// Largest dictionary (in memory bytes) recorded in a part's metadata.
pub const MAX_RECORDED: usize = 4 << 20;

/// Key-value entries recording the dictionaries of a part's top-level dictionary columns.
pub fn capture(batch: &RecordBatch) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    for (i, col) in batch.columns().iter().enumerate() {
        let Some(dict) = col.as_any_dictionary_opt() else {
            continue;
        };
        let values = dict.values();
        if values.get_array_memory_size() > MAX_RECORDED {
            continue;
        }
        let schema = Arc::new(Schema::new(vec![Field::new(
            "v",
            values.data_type().clone(),
            true,
        )]));
        let one = RecordBatch::try_new(schema.clone(), vec![Arc::clone(values)])?;
        let mut buf = Vec::new();
        let mut w = StreamWriter::try_new(&mut buf, &schema)?;
        w.write(&one)?;
        w.finish()?;
        drop(w);
        out.push(KeyValue::new(
            format!("{KEY_PREFIX}{i}"),
            STANDARD.encode(&buf),
        ));
    }
    Ok(out)
}

/// For a part made of several batches: keeps the recorded dictionaries of `first` that
/// `other` shares. A part's dictionaries are recorded only when all its batches share them
/// (as batches cut from one upload do); otherwise the column keeps its values but not
/// necessarily their order.
pub fn retain_shared(kv: &mut Vec<KeyValue>, first: &RecordBatch, other: &RecordBatch) {
    kv.retain(|kv| {
        let Some(i) = kv
            .key
            .strip_prefix(KEY_PREFIX)
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return false;
        };
        let values = |b: &RecordBatch| {
            b.columns()
                .get(i)
                .and_then(|c| c.as_any_dictionary_opt())
                .map(|d| d.values().to_data())
        };
        values(first) == values(other)
    });
}

/// Reads the recorded dictionaries back, by column index.
pub fn recorded(kv: Option<&Vec<KeyValue>>) -> Result<HashMap<usize, ArrayRef>> {
    let mut out = HashMap::new();
    for entry in kv.into_iter().flatten() {
        let Some(index) = entry.key.strip_prefix(KEY_PREFIX) else {
            continue;
        };
        let (Ok(index), Some(value)) = (index.parse::<usize>(), entry.value.as_ref()) else {
            continue;
        };
        let bytes = STANDARD
            .decode(value)
            .map_err(|e| Error::Internal(format!("failed to decode a recorded dictionary: {e}")))?;
        let mut reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        if let Some(batch) = reader.next().transpose()? {
            out.insert(index, Arc::clone(batch.column(0)));
        }
    }
    Ok(out)
}

/// Maps the dictionary columns of a decoded batch back onto the recorded dictionaries.
pub fn restore(batch: RecordBatch, recorded: &HashMap<usize, ArrayRef>) -> Result<RecordBatch> {
    if recorded.is_empty() {
        return Ok(batch);
    }
    let mut columns = batch.columns().to_vec();
    for (i, original) in recorded {
        let Some(col) = columns.get(*i) else { continue };
        let Some(dict) = col.as_any_dictionary_opt() else {
            continue;
        };
        let read = dict.values();
        if read.data_type() != original.data_type() {
            continue;
        }
        // Position of every decoded value in the original dictionary.
        let converter = RowConverter::new(vec![SortField::new(original.data_type().clone())])?;
        let original_rows = converter.convert_columns(&[Arc::clone(original)])?;
        let position: HashMap<_, i64> = original_rows
            .iter()
            .enumerate()
            .map(|(p, row)| (row, p as i64))
            .collect();
        let read_rows = converter.convert_columns(&[Arc::clone(read)])?;
        let mapping: Int64Array = read_rows
            .iter()
            .map(|row| position.get(&row).copied())
            .collect();
        let DataType::Dictionary(key_type, _) = col.data_type() else {
            continue;
        };
        let mapping = cast(&mapping, key_type)?;
        let keys = take(mapping.as_ref(), dict.keys(), None)?;
        // Only values that rows reference must be in the recorded dictionary: the reader
        // may decode a dictionary with values no row uses (for a column whose rows are all
        // null, a placeholder), and those map to nothing.
        if keys.null_count() != dict.keys().null_count() {
            return Err(Error::Internal(format!(
                "column {i} holds a value missing from its recorded dictionary"
            )));
        }
        let keys = keys.to_data();
        let data = ArrayData::builder(col.data_type().clone())
            .len(keys.len())
            .offset(keys.offset())
            .nulls(keys.nulls().cloned())
            .buffers(keys.buffers().to_vec())
            .child_data(vec![original.to_data()])
            .build()?;
        columns[*i] = make_array(data);
    }
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `batch` through Parquet with its dictionaries recorded, reads it back and
    /// restores them.
    fn round_trip(batch: &RecordBatch) -> RecordBatch {
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(capture(batch).unwrap()))
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(buf)).unwrap();
        let rec = recorded(builder.metadata().file_metadata().key_value_metadata()).unwrap();
        let read = builder.build().unwrap().next().unwrap().unwrap();
        restore(read, &rec).unwrap()
    }

    /// A categorical whose rows are all missing (pandas: `pd.Categorical([None, None],
    /// categories=["a", "b"])`), and one with categories no row uses.
    #[test]
    fn all_null_and_unreferenced_categories_survive_parquet() {
        let values = Arc::new(StringArray::from(vec!["a", "b"]));
        for keys in [
            arrow::array::Int8Array::from(vec![None, None, None]),
            arrow::array::Int8Array::from(vec![Some(1), None, Some(1)]),
        ] {
            let dict = DictionaryArray::<Int8Type>::try_new(keys, values.clone()).unwrap();
            let schema = Arc::new(Schema::new(vec![Field::new(
                "c",
                dict.data_type().clone(),
                true,
            )]));
            let batch = RecordBatch::try_new(schema, vec![Arc::new(dict)]).unwrap();
            let back = round_trip(&batch);
            let d = back.column(0).as_dictionary::<Int8Type>();
            assert_eq!(d.values().to_data(), values.to_data());
            assert_eq!(back, batch);
        }
    }
    use arrow::array::{DictionaryArray, StringArray};
    use arrow::datatypes::Int8Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    #[test]
    fn categories_keep_their_order_through_parquet() {
        let values = Arc::new(StringArray::from(vec!["red", "green", "blue", "unused"]));
        let keys = arrow::array::Int8Array::from(vec![Some(2), Some(0), None, Some(1), Some(2)]);
        let dict = DictionaryArray::<Int8Type>::try_new(keys, values).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "c",
            dict.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(dict)]).unwrap();

        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(capture(&batch).unwrap()))
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();

        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(buf)).unwrap();
        let rec = recorded(builder.metadata().file_metadata().key_value_metadata()).unwrap();
        let read: Vec<_> = builder
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        // Array equality is logical; compare the dictionaries and keys themselves.
        let parts = |b: &RecordBatch| {
            let d = b.column(0).as_dictionary::<Int8Type>();
            (d.values().to_data(), d.keys().to_data())
        };
        // Without restoring, the order differs (first appearance: blue, red, green).
        assert_ne!(parts(&read[0]).0, parts(&batch).0);
        let back = restore(read[0].clone(), &rec).unwrap();
        assert_eq!(parts(&back), parts(&batch));
    }
}
