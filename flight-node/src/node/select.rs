//! Reads of part of a version: some columns (`?columns=`), the first rows (`?limit=`), or
//! both (see [`crate::ticket::Selection`]).
//!
//! A selected read takes the part's cached messages and decodes only the chosen columns of
//! each record batch (the other columns' buffers are skipped, never copied), cuts the rows
//! past the limit and encodes what is left. Without a column choice, the batches before the
//! limit are sent as they are cached and only the batch the limit falls in is re-encoded.
//! Parts past the limit are not read at all.

use std::collections::HashMap;

use arrow::array::ArrayRef;
use arrow::buffer::Buffer;
use arrow::datatypes::Schema;
use arrow::ipc::reader::{read_dictionary, read_record_batch};
use arrow::ipc::{root_as_message, MessageHeader};

use super::serve::{deleted_or, holding};
use super::*;
use crate::cache::encode_for_stream;
use crate::ticket::Selection;

/// A selection checked against one version.
#[derive(Debug)]
pub struct Plan {
    /// The version's schema, as its stream's schema message carries it.
    stored: SchemaRef,
    /// Column indices, in the order wanted; `None` is every column.
    projection: Option<Vec<usize>>,
    /// The schema of what is sent.
    selected: SchemaRef,
    limit: Option<u64>,
}

impl Plan {
    /// Checks `select` against the version: every column must exist.
    pub fn new(manifest: &Manifest, select: &Selection) -> Result<Self> {
        let head = manifest.schema_flight_data()?;
        let schema: SchemaRef = Arc::new(
            Schema::try_from(&head).map_err(|e| Error::data("read the version's schema", e))?,
        );
        let projection = match &select.columns {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| column_index(&schema, n))
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let selected = match &projection {
            Some(p) => Arc::new(
                schema
                    .project(p)
                    .map_err(|e| Error::data("select the columns", e))?,
            ),
            None => schema.clone(),
        };
        Ok(Self {
            stored: schema,
            projection,
            selected,
            limit: select.limit,
        })
    }

    /// The chosen columns' indices in the version's schema, in the order wanted; `None`
    /// when every column is read.
    pub fn columns(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    /// The schema of what the read returns.
    pub fn schema(&self) -> &SchemaRef {
        &self.selected
    }

    /// The parts to read (of `part`, or of the whole version) and how many rows each may
    /// give; parts past the limit are left out.
    pub fn parts(&self, manifest: &Manifest, part: Option<u32>) -> Vec<(u32, Option<u64>)> {
        let all = 0..u32::try_from(manifest.parts.len()).unwrap_or(u32::MAX);
        let range = match part {
            Some(p) => p..p.saturating_add(1),
            None => all,
        };
        let mut left = self.limit;
        let mut out = Vec::new();
        for p in range {
            let rows = manifest.parts.get(p as usize).map_or(0, |i| i.rows);
            match left {
                Some(0) if !out.is_empty() => break,
                Some(n) => {
                    out.push((p, Some(n.min(rows))));
                    left = Some(n - n.min(rows));
                }
                None => out.push((p, None)),
            }
        }
        out
    }

    /// Rows the read returns (of `part`, or of the whole version).
    pub fn rows(&self, manifest: &Manifest, part: Option<u32>) -> u64 {
        self.parts(manifest, part)
            .iter()
            .map(|(p, limit)| {
                let rows = manifest.parts.get(*p as usize).map_or(0, |i| i.rows);
                limit.map_or(rows, |l| l.min(rows))
            })
            .sum()
    }

    /// Roughly the Arrow bytes the read returns: the part's bytes scaled by the share of
    /// rows and of columns read.
    pub fn bytes(&self, manifest: &Manifest, part: Option<u32>) -> u64 {
        let columns = self.stored.fields().len().max(1) as f64;
        let chosen = self.projection.as_ref().map_or(columns, |p| p.len() as f64);
        self.parts(manifest, part)
            .iter()
            .map(|(p, limit)| {
                let info = manifest.parts.get(*p as usize);
                let (rows, bytes) = info.map_or((0, 0), |i| (i.rows, i.bytes));
                let share = match limit {
                    Some(l) if rows > 0 => (*l).min(rows) as f64 / rows as f64,
                    _ => 1.0,
                };
                (bytes as f64 * share * chosen / columns) as u64
            })
            .sum()
    }

    /// The selected messages of one part, from its messages as cached (dictionaries and
    /// record batches, no schema), giving at most `limit` rows. CPU-bound.
    pub fn select_part(
        &self,
        messages: Vec<Message>,
        limit: Option<u64>,
        max_message: usize,
    ) -> Result<EncodedPart> {
        let bad = |e: arrow::error::ArrowError| Error::data("read a cached part", e);
        let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
        // Messages sent as cached (no column choice, before the limit) ...
        let mut kept: Vec<Message> = Vec::new();
        // ... dictionaries waiting for the batch they belong to ...
        let mut waiting: Vec<Message> = Vec::new();
        // ... and batches to encode.
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut rows: u64 = 0;
        for m in messages {
            if limit.is_some_and(|l| rows >= l) {
                break;
            }
            let header = root_as_message(&m.data.data_header)
                .map_err(|e| Error::Internal(format!("a cached message is not IPC: {e}")))?;
            match header.header_type() {
                MessageHeader::DictionaryBatch => {
                    let dict = header.header_as_dictionary_batch().ok_or_else(|| {
                        Error::Internal("a cached dictionary message has no batch".into())
                    })?;
                    let body = Buffer::from(m.data.data_body.clone());
                    read_dictionary(
                        &body,
                        dict,
                        &self.stored,
                        &mut dictionaries,
                        &header.version(),
                    )
                    .map_err(bad)?;
                    waiting.push(m);
                }
                MessageHeader::RecordBatch => {
                    let batch = header.header_as_record_batch().ok_or_else(|| {
                        Error::Internal("a cached record batch message has no batch".into())
                    })?;
                    let n = u64::try_from(batch.length()).unwrap_or(0);
                    let fits = limit.is_none_or(|l| rows + n <= l);
                    if self.projection.is_none() && fits {
                        kept.append(&mut waiting);
                        kept.push(m);
                        rows += n;
                        continue;
                    }
                    waiting.clear();
                    let body = Buffer::from(m.data.data_body.clone());
                    let decoded = read_record_batch(
                        &body,
                        batch,
                        self.stored.clone(),
                        &dictionaries,
                        self.projection.as_deref(),
                        &header.version(),
                    )
                    .map_err(bad)?;
                    let take = limit.map_or(n, |l| (l - rows).min(n));
                    let decoded = if take < n {
                        decoded.slice(0, usize::try_from(take).unwrap_or(usize::MAX))
                    } else {
                        decoded
                    };
                    rows += take;
                    batches.push(decoded);
                }
                _ => {}
            }
        }
        let mut encoded = encode_for_stream(&self.selected, batches, max_message)?;
        let kept_bytes: usize = kept
            .iter()
            .map(|m| m.data.data_header.len() + m.data.data_body.len())
            .sum();
        kept.append(&mut encoded.messages);
        Ok(EncodedPart {
            messages: kept,
            rows,
            bytes: encoded.bytes + kept_bytes,
        })
    }
}

impl Node {
    /// The selected messages of a part that is not kept in memory, reading only the chosen
    /// columns from storage; `None` when the plan chooses no columns (the whole part is
    /// read then, as any read of it would).
    pub(super) async fn selected_from_storage(
        &self,
        manifest: &Manifest,
        part: u32,
        plan: &Plan,
        limit: Option<u64>,
    ) -> Result<Option<BoxStream<'static, Result<Message>>>> {
        let Some(columns) = plan.columns().map(<[usize]>::to_vec) else {
            return Ok(None);
        };
        let info = manifest
            .parts
            .get(part as usize)
            .ok_or_else(|| Error::Internal(format!("the manifest has no part {part}")))?;
        // The file, the chosen columns decoded, and their messages until sent.
        let chosen = usize::try_from(plan.bytes(manifest, Some(part))).unwrap_or(usize::MAX);
        let stored = usize::try_from(info.stored_bytes).unwrap_or(usize::MAX);
        let mut permit = self
            .budgets
            .reserve(
                stored.saturating_add(chosen.saturating_mul(2)),
                "a read of some columns of a version not in memory",
            )
            .await?;
        let schema = plan.selected.clone();
        let read = crate::parts::read_part_columns(
            &self.storage,
            info,
            READ_BATCH_ROWS,
            columns,
            schema.clone(),
            limit,
        )
        .await;
        let batches = match read {
            Ok(b) => b,
            Err(e) => return Err(deleted_or(&self.versions, manifest, e).await),
        };
        let target = self.limits.message_target();
        let mut encoded =
            tokio::task::spawn_blocking(move || encode_for_stream(&schema, batches, target))
                .await
                .map_err(|e| Error::Internal(format!("encoding a part failed: {e}")))??;
        permit.shrink_to(encoded.bytes);
        let messages = std::mem::take(&mut encoded.messages);
        Ok(Some(
            holding(stream::iter(messages.into_iter().map(Ok)), permit).boxed(),
        ))
    }
}

/// The index of a column by name; a clear error naming the columns there are otherwise.
fn column_index(schema: &Schema, name: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let shown = names
            .iter()
            .take(20)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if names.len() > 20 { ", ..." } else { "" };
        Error::invalid(format!(
            "the version has no column {name:?}; its columns are: {shown}{more}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{metric, node, node_with_memory};
    use super::*;
    use crate::ticket::Selection;
    use arrow::array::{Array, DictionaryArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int32Type};
    use arrow_flight::decode::FlightRecordBatchStream;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use std::time::Duration;

    fn schema() -> SchemaRef {
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", dict, true),
        ]))
    }

    /// 40,000 rows in several parts (x = row number, s = "s{x}", d = one of 3 words),
    /// evicted.
    async fn upload(node: &Node) -> Manifest {
        let words = ["red", "green", "blue"];
        let batches: Vec<Result<RecordBatch>> = (0..4)
            .map(|k| {
                let x = Int64Array::from_iter_values(k * 10_000..(k + 1) * 10_000);
                let s: StringArray = x.values().iter().map(|v| Some(format!("s{v}"))).collect();
                let d: DictionaryArray<Int32Type> = x
                    .values()
                    .iter()
                    .map(|v| words[(*v % 3) as usize])
                    .collect();
                Ok(
                    RecordBatch::try_new(schema(), vec![Arc::new(x), Arc::new(s), Arc::new(d)])
                        .unwrap(),
                )
            })
            .collect();
        let id = DatasetId::new("ns", "t").unwrap();
        let m = node
            .put(
                id.clone(),
                PutOptions::default(),
                schema(),
                stream::iter(batches),
            )
            .await
            .unwrap();
        assert!(m.parts.len() >= 4, "{} parts", m.parts.len());
        node.evict(&id, None);
        m
    }

    /// Parts needed for the first `rows` rows.
    fn parts_for(m: &Manifest, rows: u64) -> usize {
        let mut seen = 0;
        m.parts
            .iter()
            .take_while(|p| {
                let before = seen;
                seen += p.rows;
                before < rows
            })
            .count()
    }

    async fn read(
        node: &Arc<Node>,
        m: &Manifest,
        part: Option<u32>,
        s: &Selection,
    ) -> Vec<RecordBatch> {
        let messages = node.read(m, part, s).await.unwrap().map(|m| {
            m.map(|m| m.data)
                .map_err(|e| arrow_flight::error::FlightError::ExternalError(Box::new(e)))
        });
        FlightRecordBatchStream::new_from_flight_data(messages)
            .try_collect()
            .await
            .unwrap()
    }

    fn column<T: 'static>(batches: &[RecordBatch], i: usize) -> Vec<&T> {
        batches
            .iter()
            .map(|b| b.column(i).as_any().downcast_ref::<T>().unwrap())
            .collect()
    }

    fn select(columns: Option<&[&str]>, limit: Option<u64>) -> Selection {
        Selection::new(
            columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            limit,
        )
        .unwrap()
    }

    /// Checks a read of `columns=d,x`: those columns in that order, `d` still a dictionary.
    /// Returns the values of `x`.
    fn d_then_x(got: &[RecordBatch]) -> Vec<i64> {
        let schema = got[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["d", "x"]);
        assert!(matches!(
            schema.field(0).data_type(),
            DataType::Dictionary(..)
        ));
        column::<Int64Array>(got, 1)
            .iter()
            .flat_map(|a| a.values().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn chosen_columns_come_in_the_order_asked_with_their_dictionaries() {
        let node = node(Arc::new(InMemory::new()), Duration::ZERO);
        let m = upload(&node).await;
        for _ in 0..2 {
            // From storage, then from memory.
            let got = read(&node, &m, None, &select(Some(&["d", "x"]), None)).await;
            let x = d_then_x(&got);
            assert_eq!(x, (0..40_000).collect::<Vec<_>>());
            let words: Vec<String> = column::<DictionaryArray<Int32Type>>(&got, 0)
                .iter()
                .flat_map(|a| {
                    let values = a.values().as_any().downcast_ref::<StringArray>().unwrap();
                    a.keys()
                        .values()
                        .iter()
                        .map(|k| values.value(*k as usize).to_string())
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(words.len(), 40_000);
            assert!(words
                .iter()
                .zip(&x)
                .all(|(w, v)| w == ["red", "green", "blue"][(*v % 3) as usize]));
        }
    }

    #[tokio::test]
    async fn a_limit_reads_only_the_parts_it_needs() {
        let node = node(Arc::new(InMemory::new()), Duration::ZERO);
        let m = upload(&node).await;
        let got = read(&node, &m, None, &select(None, Some(15_000))).await;
        let x: Vec<i64> = column::<Int64Array>(&got, 0)
            .iter()
            .flat_map(|a| a.values().to_vec())
            .collect();
        assert_eq!(x, (0..15_000).collect::<Vec<_>>());
        let s = column::<StringArray>(&got, 1);
        assert_eq!(s.iter().map(|a| a.len()).sum::<usize>(), 15_000);
        assert_eq!(s.last().map(|a| a.value(a.len() - 1)), Some("s14999"));
        let needed = parts_for(&m, 15_000) as u64;
        assert!(needed < m.parts.len() as u64);
        assert_eq!(
            metric(&node, "flight_storage_loads_total{result=\"ok\"}"),
            needed
        );
        // Columns and a limit; one part and a limit; nothing at all.
        let first: u64 = m.parts[..3].iter().map(|p| p.rows).sum();
        let got = read(&node, &m, Some(3), &select(Some(&["s"]), Some(2))).await;
        let s = column::<StringArray>(&got, 0);
        let want = (format!("s{first}"), format!("s{}", first + 1));
        assert_eq!((s.len(), s[0].len()), (1, 2));
        assert_eq!(
            (s[0].value(0), s[0].value(1)),
            (want.0.as_str(), want.1.as_str())
        );
        let got = read(&node, &m, None, &select(Some(&["x"]), Some(0))).await;
        assert_eq!(got.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    }

    /// A version larger than the cache: only the chosen columns are read from storage, and
    /// nothing is kept in memory.
    #[tokio::test]
    async fn chosen_columns_of_a_version_not_kept_come_from_storage() {
        let node = node_with_memory(Arc::new(InMemory::new()), Duration::ZERO, 400_000);
        let m = upload(&node).await;
        assert!(!node.cache().fits(m.bytes as usize));
        let got = read(&node, &m, None, &select(Some(&["d", "x"]), None)).await;
        assert_eq!(d_then_x(&got), (0..40_000).collect::<Vec<_>>());
        let d = column::<DictionaryArray<Int32Type>>(&got, 0);
        let first = d[0]
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(first.value(d[0].keys().value(1) as usize), "green");
        let got = read(&node, &m, None, &select(Some(&["s"]), Some(12_345))).await;
        let s = column::<StringArray>(&got, 0);
        assert_eq!(s.iter().map(|a| a.len()).sum::<usize>(), 12_345);
        assert_eq!(s.last().map(|a| a.value(a.len() - 1)), Some("s12344"));
        assert!(node.cache().entries().is_empty());
    }

    /// (I2) A selected read from storage racing a delete whose sweep removed the parts
    /// answers NOT_FOUND, like any read of a deleted version: never another table, never
    /// an internal error.
    #[tokio::test]
    async fn a_selected_read_racing_a_delete_is_not_found() {
        let store = Arc::new(InMemory::new());
        let node = node_with_memory(store.clone(), Duration::ZERO, 400_000);
        let m = upload(&node).await;
        let id = m.dataset().unwrap();
        node.delete(&id, Some(m.version)).await.unwrap();
        for p in &m.parts {
            store
                .delete(&object_store::path::Path::from(p.path.as_str()))
                .await
                .unwrap();
        }
        let messages: Vec<Result<Message>> = node
            .read(&m, None, &select(Some(&["x"]), None))
            .await
            .unwrap()
            .collect()
            .await;
        let err = messages
            .into_iter()
            .find_map(|r| r.err())
            .expect("the read failed");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    }

    #[tokio::test]
    async fn plans_count_parts_rows_and_refuse_unknown_columns() {
        let node = node(Arc::new(InMemory::new()), Duration::ZERO);
        let m = upload(&node).await;
        let rows: Vec<u64> = m.parts.iter().map(|p| p.rows).collect();
        let limit = rows[0] + rows[1] + 7;
        let plan = Plan::new(&m, &select(None, Some(limit))).unwrap();
        assert_eq!(
            plan.parts(&m, None),
            [(0, Some(rows[0])), (1, Some(rows[1])), (2, Some(7))]
        );
        assert_eq!(plan.rows(&m, None), limit);
        assert_eq!(plan.parts(&m, Some(3)), [(3, Some(rows[3].min(limit)))]);
        let all = Plan::new(&m, &select(Some(&["x"]), None)).unwrap();
        assert_eq!(all.parts(&m, None).len(), m.parts.len());
        assert_eq!(all.rows(&m, None), 40_000);
        assert!(all.bytes(&m, None) < m.bytes / 2);
        let err = Plan::new(&m, &select(Some(&["x", "nope"]), None)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.to_string().contains("\"nope\"") && err.to_string().contains("x, s, d"),
            "{err}"
        );
    }
}
