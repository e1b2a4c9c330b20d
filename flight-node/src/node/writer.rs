//! The part-writing pipeline of an upload: batches are cut into row groups and parts,
//! encoded (Parquet or Arrow IPC) on the encode pool, and written to storage while the
//! next part is received, within the upload's share of request memory.

use super::*;

/// A part being encoded and stored: its description and, if cacheable, its messages.
pub(super) type PartTask = tokio::task::JoinHandle<Result<(PartInfo, Option<EncodedPart>)>>;

/// Rows (or bytes) of an upload handed to the part's encoder at a time: one row group.
pub(super) const STREAM_GROUP_ROWS: usize = 128 * 1024;
pub(super) const STREAM_GROUP_BYTES: usize = 16 << 20;

/// The encoder of the part being received, on a blocking thread. Each message is a row
/// group; `true` marks the part's last batches, cut into one row group per core.
pub(super) struct EncoderTask {
    tx: tokio::sync::mpsc::Sender<(Vec<RecordBatch>, bool)>,
    handle: tokio::task::JoinHandle<Result<EncodedForStorage>>,
}

/// Accumulates an upload into Parquet parts.
pub(super) struct PartWriter<'a> {
    node: &'a Node,
    id: DatasetId,
    upload_id: String,
    schema: SchemaRef,
    /// How the parts are stored, chosen from the schema.
    pub(super) format: PartFormat,
    contract: Option<Arc<Contract>>,
    /// Batches not yet handed to the encoder.
    pending: Vec<RecordBatch>,
    pending_bytes: usize,
    pending_rows: usize,
    /// Arrow bytes of the part being received.
    part_bytes: usize,
    encoder: Option<EncoderTask>,
    batches: u64,
    pub(super) rows: u64,
    arrow_bytes: u64,
    pub(super) parts: Vec<PartInfo>,
    written: Vec<Path>,
    /// Encoded parts for the cache while the upload still fits it.
    pub(super) encoded: Option<Vec<EncodedPart>>,
    /// Cache room held for the encoded parts (they count against `--memory-limit`).
    pub(super) cache_room: Option<Reservation<'a>>,
    /// Request memory held for the part being received, and for the part being stored.
    receiving: Option<MemoryPermit>,
    storing: Option<MemoryPermit>,
    /// Set once the manifest references the parts; until then dropping the writer (an
    /// error, or the client cancelling the call) removes them.
    pub(super) committed: bool,
    /// The part being encoded and stored in the background.
    in_flight: Option<PartTask>,
}

impl Drop for PartWriter<'_> {
    fn drop(&mut self) {
        let in_flight = self.in_flight.take();
        if self.committed || (self.written.is_empty() && in_flight.is_none()) {
            return;
        }
        let storage = self.node.storage.clone();
        let mut paths = std::mem::take(&mut self.written);
        paths.push(Storage::upload_marker_path(&self.id, &self.upload_id));
        tracing::info!(dataset = %self.id, parts = paths.len(), "upload not committed; removing its parts");
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    // Let a part still being written land first, or it would outlive the
                    // clean-up as an orphan.
                    if let Some(task) = in_flight {
                        let _ = task.await;
                    }
                    storage.delete_quietly(&paths).await
                });
            }
            Err(_) => tracing::warn!("no runtime to remove parts; the orphan sweep will"),
        }
    }
}

impl<'a> PartWriter<'a> {
    pub(super) fn new(
        node: &'a Node,
        id: DatasetId,
        upload_id: String,
        schema: SchemaRef,
        contract: Option<Arc<Contract>>,
    ) -> Self {
        Self {
            node,
            id,
            upload_id,
            format: crate::encode::format_for(&schema),
            schema,
            contract,
            pending: Vec::new(),
            pending_bytes: 0,
            pending_rows: 0,
            part_bytes: 0,
            encoder: None,
            batches: 0,
            rows: 0,
            arrow_bytes: 0,
            parts: Vec::new(),
            written: Vec::new(),
            encoded: Some(Vec::new()),
            cache_room: Some(node.cache.reserve()),
            receiving: None,
            storing: None,
            committed: false,
            in_flight: None,
        }
    }

    /// Accepts one batch; a batch larger than a part is cut (without copying) so that
    /// parts, and the endpoints clients fetch in parallel, stay near the part size.
    pub(super) async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        check_batch_rows(&batch)?;
        let size = upload_size(&batch);
        self.check_upload_size(size)?;
        let part_size = self.node.limits.part_size;
        if size > part_size && batch.num_rows() > 1 {
            let pieces = size.div_ceil(part_size);
            let rows = batch.num_rows().div_ceil(pieces).max(1);
            let mut offset = 0;
            while offset < batch.num_rows() {
                let len = rows.min(batch.num_rows() - offset);
                self.push_one(batch.slice(offset, len)).await?;
                offset += len;
            }
            return Ok(());
        }
        self.push_one(batch).await
    }

    /// Refuses the upload if `more` bytes would take it past `--max-upload-size`.
    pub(super) fn check_upload_size(&self, more: usize) -> Result<()> {
        let max = self.node.limits.max_upload_size;
        if self.arrow_bytes.saturating_add(more as u64) > max {
            return Err(Error::ResourceExhausted(format!(
                "upload exceeds the maximum upload size of {max} bytes (--max-upload-size; \
                 every row counts at least one byte)"
            )));
        }
        Ok(())
    }

    pub(super) async fn push_one(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::invalid(
                "a record batch's schema differs from the upload's schema; one upload has one schema",
            ));
        }
        if let Some(c) = &self.contract {
            c.check_batch(&batch)?;
        }
        self.batches += 1;
        let limits = &self.node.limits;
        if self.batches > limits.max_upload_batches {
            return Err(Error::ResourceExhausted(format!(
                "upload has more than {} record batches; send fewer, larger batches",
                limits.max_upload_batches
            )));
        }
        let size = upload_size(&batch);
        self.check_upload_size(size)?;
        self.hold(size).await?;
        self.arrow_bytes += size as u64;
        self.rows += batch.num_rows() as u64;
        self.pending_bytes += size;
        self.pending_rows += batch.num_rows();
        self.part_bytes += size;
        self.pending.push(batch);
        if self.part_bytes >= limits.part_size {
            self.flush().await?;
        } else if self.pending_rows >= STREAM_GROUP_ROWS || self.pending_bytes >= STREAM_GROUP_BYTES
        {
            self.send_group(false).await?;
        }
        Ok(())
    }

    /// Reserves request memory for a batch of `size` bytes until its part is stored (twice:
    /// the batch and its share of the encoded file). When the budget is in use, the upload
    /// first stores what it holds, then waits for the rest (`--budget-wait`).
    pub(super) async fn hold(&mut self, size: usize) -> Result<()> {
        let bytes = size.saturating_mul(2);
        let budgets = Arc::clone(&self.node.budgets);
        let permit = match budgets.try_reserve_upload(bytes) {
            Some(p) => p,
            None => {
                if self.part_bytes > 0 {
                    self.flush().await?;
                }
                self.wait_for_part().await?;
                budgets.reserve_upload(bytes, "an upload").await?
            }
        };
        match &mut self.receiving {
            Some(held) => held.merge(permit),
            None => self.receiving = Some(permit),
        }
        Ok(())
    }

    /// Hands the pending batches to the part's encoder (started on the part's first group).
    pub(super) async fn send_group(&mut self, last: bool) -> Result<()> {
        let batches = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_rows = 0;
        if batches.is_empty() {
            return Ok(());
        }
        let encoder = match &mut self.encoder {
            Some(e) => e,
            None => self.encoder.insert(self.start_encoder()),
        };
        if encoder.tx.send((batches, last)).await.is_err() {
            // The encoder stopped on an error; report it.
            if let Some(e) = self.encoder.take() {
                e.handle
                    .await
                    .map_err(|e| Error::Internal(format!("part encoder failed: {e}")))??;
            }
            return Err(Error::Internal("the part encoder stopped".into()));
        }
        Ok(())
    }

    pub(super) fn start_encoder(&self) -> EncoderTask {
        let schema = self.schema.clone();
        let format = self.format;
        let want_flight = self.encoded.is_some();
        let target = self.node.limits.message_target();
        let threads = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<RecordBatch>, bool)>(1);
        let handle = tokio::task::spawn_blocking(move || {
            let mut encoder = PartEncoder::new(schema, format, want_flight, target, threads)?;
            while let Some((batches, last)) = rx.blocking_recv() {
                if last {
                    for group in encoder.groups(batches) {
                        encoder.add(group)?;
                    }
                } else {
                    encoder.add(batches)?;
                }
            }
            encoder.finish()
        });
        EncoderTask { tx, handle }
    }

    /// Ends the part being received: its last batches go to its encoder, and a background
    /// task waits for the encoding and stores the file while the upload goes on receiving
    /// the next part. At most one part is stored at a time, so memory stays bounded by
    /// about two parts.
    pub(super) async fn flush(&mut self) -> Result<()> {
        self.send_group(true).await?;
        self.part_bytes = 0;
        let Some(EncoderTask { tx, handle }) = self.encoder.take() else {
            return Ok(());
        };
        drop(tx);
        self.wait_for_part().await?;
        self.storing = self.receiving.take();
        let path = Storage::part_path(&self.id, &self.upload_id, self.written.len(), self.format);
        self.written.push(path.clone());
        let storage = self.node.storage.clone();
        self.in_flight = Some(tokio::spawn(async move {
            let EncodedForStorage {
                file,
                rows,
                bytes,
                flight,
            } = handle
                .await
                .map_err(|e| Error::Internal(format!("part encoder failed: {e}")))??;
            let stored_bytes = file.content_length() as u64;
            storage.put(&path, file).await?;
            let info = PartInfo {
                path: path.to_string(),
                rows,
                bytes,
                stored_bytes,
            };
            Ok((info, flight))
        }));
        Ok(())
    }

    /// Waits for the part in flight, if any, and records it.
    pub(super) async fn wait_for_part(&mut self) -> Result<()> {
        // Awaited in place: if this call is dropped (the client went away), the writer
        // still holds the task, and its clean-up waits for the part before deleting it.
        let Some(task) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let joined = task.await;
        self.in_flight = None;
        self.storing = None;
        let (info, encoded) =
            joined.map_err(|e| Error::Internal(format!("part writer task failed: {e}")))??;
        self.parts.push(info);
        if let (Some(list), Some(part)) = (self.encoded.as_mut(), encoded) {
            // Kept for the cache only if the cache has room for it (evicting older tables);
            // otherwise the version is served from storage.
            if self.cache_room.as_mut().is_some_and(|r| r.grow(part.bytes)) {
                list.push(part);
            } else {
                self.encoded = None;
                self.cache_room = None;
            }
        }
        Ok(())
    }

    /// Writes what is pending and waits until every part is durable.
    pub(super) async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        self.wait_for_part().await
    }
}
