//! Serving reads: resolving tickets to manifests, streaming a version's parts from memory
//! or storage (one load per part, shared by every reader), and `preload`.

use super::select::Plan;
use super::*;
use crate::cache::schema_message;
use crate::ticket::Selection;

impl Node {
    /// The manifest a ticket pins; `NotFound` when it does not exist, was deleted or has
    /// expired. A manifest held in memory is checked against its record in storage first
    /// (one HEAD), so a version deleted or renewed through another node is seen at once;
    /// when storage cannot be reached, the copy in memory is used.
    pub async fn resolve(&self, ticket: &Ticket) -> Result<Arc<Manifest>> {
        let key = (ticket.dataset.clone(), ticket.version);
        let known = self
            .manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let manifest = match known {
            Some((m, etag)) => match self.versions.current(&key.0, key.1, etag.as_deref()).await {
                Ok(Current::Unchanged) => m,
                Ok(Current::Changed(m, etag)) => self.remember(key.clone(), *m, etag),
                Ok(Current::Gone(why)) => {
                    self.evict(&key.0, Some(key.1));
                    return Err(Error::NotFound(why));
                }
                Err(e) => {
                    tracing::debug!(dataset = %key.0, version = key.1, error = %e, "storage unreachable; serving the version from memory");
                    m
                }
            },
            None => {
                let (m, etag) = self.versions.read(&key.0, key.1).await?;
                self.remember(key.clone(), m, etag)
            }
        };
        if manifest.is_expired(self.now()) {
            return Err(Error::not_found(format!(
                "version {} of dataset {} expired at {}",
                key.1,
                key.0,
                manifest
                    .expires_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            )));
        }
        if let Some(part) = ticket.part {
            if part as usize >= manifest.parts.len() {
                return Err(Error::not_found(format!(
                    "version {} of dataset {} has no part {part}",
                    key.1, key.0
                )));
            }
        }
        Ok(manifest)
    }

    /// The newest unexpired version of a dataset.
    pub async fn latest(&self, id: &DatasetId) -> Result<Arc<Manifest>> {
        let (m, etag) = self.versions.latest(id, self.now()).await?;
        Ok(self.remember((id.clone(), m.version), m, etag))
    }

    /// The Flight messages of a version (or one part), schema first. Each part is served
    /// from memory; on a miss it is loaded from storage once (concurrent readers wait for
    /// that one load, which outlives them) and cached, the next parts loading while the
    /// first is sent. A whole version too large for the cache (or a part too large) streams
    /// from storage one part at a time, under the request-memory budget, and is not cached.
    pub async fn stream(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        self.read(manifest, part, &Selection::default()).await
    }

    /// Like [`Node::stream`], returning only what `select` chooses: some columns, the
    /// first rows (see [`super::select`]).
    pub async fn read(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
        select: &Selection,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        // Counted as a read in flight until the stream is dropped.
        let guard = self.read_guard((manifest.dataset()?, manifest.version));
        let messages = if select.is_all() {
            self.stream_messages(manifest, part)?
        } else {
            self.selected_messages(manifest, part, Plan::new(manifest, select)?)?
        };
        Ok(holding(messages, guard).boxed())
    }

    /// The messages of a selected read: the selection's schema, then each part's selected
    /// messages, encoded on a blocking thread under the request-memory budget, the next
    /// part selected while one is sent.
    fn selected_messages(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
        plan: Plan,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        let head = Message::from(schema_message(plan.schema())?);
        let parts = plan.parts(manifest, part);
        let cold = part.is_none()
            && !self
                .cache
                .fits(usize::try_from(manifest.bytes).unwrap_or(usize::MAX));
        let (node, manifest, plan) = (Arc::clone(self), Arc::new(manifest.clone()), Arc::new(plan));
        let body = stream::iter(parts)
            .map(move |(p, limit)| {
                let (node, manifest, plan) =
                    (Arc::clone(&node), Arc::clone(&manifest), Arc::clone(&plan));
                async move {
                    let bytes = manifest
                        .parts
                        .get(p as usize)
                        .map_or(0, |i| usize::try_from(i.bytes).unwrap_or(usize::MAX));
                    // A part in memory is read from there, even in a version too large
                    // to keep whole.
                    let held = node
                        .cache
                        .peek(&(manifest.dataset()?, manifest.version, p))
                        .is_some();
                    if !held && (cold || !node.cache.fits(bytes)) {
                        // Not kept in memory: only the chosen columns are decoded.
                        if let Some(stream) = node
                            .selected_from_storage(&manifest, p, &plan, limit)
                            .await?
                        {
                            return Ok(stream);
                        }
                    }
                    let messages: Vec<Message> = node
                        .part_messages(&manifest, p, cold && !held)
                        .await?
                        .try_collect()
                        .await?;
                    // What is selected is new memory until it is sent.
                    let mut permit = node
                        .budgets
                        .reserve(
                            plan.bytes(&manifest, Some(p)).min(bytes as u64) as usize,
                            "a read of some columns or rows",
                        )
                        .await?;
                    let target = node.limits.message_target();
                    let mut selected = tokio::task::spawn_blocking(move || {
                        plan.select_part(messages, limit, target)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("selecting a part failed: {e}")))??;
                    permit.shrink_to(selected.bytes);
                    let messages = std::mem::take(&mut selected.messages);
                    Ok::<_, Error>(
                        holding(stream::iter(messages.into_iter().map(Ok)), permit).boxed(),
                    )
                }
            })
            .buffered(LOAD_PARALLELISM)
            .try_flatten();
        Ok(stream::once(async { Ok(head) }).chain(body).boxed())
    }

    pub(super) fn stream_messages(
        self: &Arc<Self>,
        manifest: &Manifest,
        part: Option<u32>,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        let head = Message::from(manifest.schema_flight_data()?);
        let range = match part {
            Some(p) => p..p + 1,
            None => 0..u32::try_from(manifest.parts.len()).unwrap_or(u32::MAX),
        };
        // A whole version larger than the cache would only push out everything else.
        let cold = part.is_none()
            && !self
                .cache
                .fits(usize::try_from(manifest.bytes).unwrap_or(usize::MAX));
        let node = Arc::clone(self);
        let manifest = Arc::new(manifest.clone());
        let body = stream::iter(range)
            .map(move |p| {
                let node = Arc::clone(&node);
                let manifest = Arc::clone(&manifest);
                async move { node.part_messages(&manifest, p, cold).await }
            })
            .buffered(if cold { 1 } else { LOAD_PARALLELISM })
            .try_flatten();
        Ok(stream::once(async { Ok(head) }).chain(body).boxed())
    }

    /// The messages of one part: from memory, or loaded into it, or (`cold`, or a part
    /// larger than the cache) read from storage for this stream alone.
    pub(super) async fn part_messages(
        self: &Arc<Self>,
        manifest: &Arc<Manifest>,
        part: u32,
        cold: bool,
    ) -> Result<BoxStream<'static, Result<Message>>> {
        let info = manifest
            .parts
            .get(part as usize)
            .ok_or_else(|| Error::Internal(format!("the manifest has no part {part}")))?;
        let bytes = usize::try_from(info.bytes).unwrap_or(usize::MAX);
        if !cold && self.cache.fits(bytes) {
            let cached = self.cached_part(manifest, part, true).await?;
            return Ok(stream::iter(EncodedPart::messages(cached).map(Ok)).boxed());
        }
        // Reading takes about twice the part (its file and its messages); the messages are
        // held until sent.
        let mut permit = self
            .budgets
            .reserve(
                bytes.saturating_mul(2),
                "a cold read of a version larger than the cache",
            )
            .await?;
        let schema = manifest.arrow_schema()?;
        let target = self.limits.message_target();
        let loaded =
            crate::parts::load_part(&self.storage, info, READ_BATCH_ROWS, schema, target).await;
        let mut encoded = match loaded {
            Ok(e) => e,
            Err(e) => return Err(deleted_or(&self.versions, manifest, e).await),
        };
        permit.shrink_to(encoded.bytes);
        let messages = std::mem::take(&mut encoded.messages);
        // The reservation lives as long as the part's messages are unsent.
        Ok(holding(stream::iter(messages.into_iter().map(Ok)), permit).boxed())
    }

    /// One part of a version in memory, loading it from storage once if it is missing
    /// (other readers of the part share that load, which runs on its own task: a reader
    /// that goes away does not stop it). `count` says whether the look-up counts as a cache
    /// hit or miss (reads do, preloads do not).
    pub(super) async fn cached_part(
        self: &Arc<Self>,
        manifest: &Arc<Manifest>,
        part: u32,
        count: bool,
    ) -> Result<Arc<EncodedPart>> {
        let key = (manifest.dataset()?, manifest.version, part);
        let found = if count {
            self.cache.get(&key)
        } else {
            self.cache.peek(&key)
        };
        if let Some(p) = found {
            return Ok(p);
        }
        let mut progress = self.start_load(manifest, key)?;
        let outcome = progress
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Internal("loading the part stopped".into()))?
            .clone();
        match outcome {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(Error::Shared(e)),
            None => Err(Error::Internal("loading the part stopped".into())),
        }
    }

    /// Starts loading a part into memory, or joins the load in progress.
    pub(super) fn start_load(
        self: &Arc<Self>,
        manifest: &Arc<Manifest>,
        key: PartKey,
    ) -> Result<LoadWatch> {
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock the finished load takes to leave the map.
        if let Some(p) = self.cache.peek(&key) {
            return Ok(watch::channel(Some(Ok(p))).1);
        }
        if let Some(progress) = loading.get(&key) {
            return Ok(progress.clone());
        }
        let info = manifest
            .parts
            .get(key.2 as usize)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("the manifest has no part {}", key.2)))?;
        let (tx, rx) = watch::channel(None);
        loading.insert(key.clone(), rx.clone());
        drop(loading);
        let node = Arc::clone(self);
        let manifest = Arc::clone(manifest);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            // What a load holds until its part is in the cache.
            let bytes = usize::try_from(info.bytes).unwrap_or(usize::MAX);
            let result = match node
                .budgets
                .reserve(bytes, "loading a version from storage")
                .await
            {
                Ok(permit) => {
                    let r = node.load_part(&manifest, &info).await;
                    drop(permit);
                    r
                }
                Err(e) => Err(e),
            };
            let outcome = {
                let mut loading = node.loading.lock().unwrap_or_else(|p| p.into_inner());
                let secs = started.elapsed().as_secs_f64();
                node.metrics
                    .record_load(secs, result.as_ref().ok().map(|p| p.bytes as u64));
                let outcome = match result {
                    Ok(part) => {
                        tracing::debug!(
                            dataset = %key.0, version = key.1, part = key.2, bytes = part.bytes,
                            seconds = secs, "loaded a part from storage into memory"
                        );
                        let part = Arc::new(part);
                        node.cache.insert(key.clone(), Arc::clone(&part));
                        Ok(part)
                    }
                    Err(e) => {
                        tracing::warn!(dataset = %key.0, version = key.1, part = key.2, error = %e, "failed to load a part from storage");
                        Err(Arc::new(e))
                    }
                };
                loading.remove(&key);
                outcome
            };
            crate::memory::release_after(info.bytes);
            tx.send_replace(Some(outcome));
        });
        Ok(rx)
    }

    pub(super) async fn load_part(
        &self,
        manifest: &Manifest,
        info: &PartInfo,
    ) -> Result<EncodedPart> {
        let schema = manifest.arrow_schema()?;
        let target = self.limits.message_target();
        match crate::parts::load_part(&self.storage, info, READ_BATCH_ROWS, schema, target).await {
            Ok(part) => Ok(part),
            Err(e) => Err(deleted_or(&self.versions, manifest, e).await),
        }
    }

    /// One version of a dataset, or its newest unexpired one.
    pub async fn version(&self, id: &DatasetId, version: Option<u64>) -> Result<Arc<Manifest>> {
        match version {
            Some(v) => self.resolve(&Ticket::new(id.clone(), v)).await,
            None => self.latest(id).await,
        }
    }

    /// The `preload` action: brings a version (the newest by default) into memory ahead of
    /// its first read: the given parts, or every part this node owns (all of them on a
    /// standalone node). Returns the manifest and how many of those parts are now cached
    /// (parts larger than the cache are not).
    pub async fn preload(
        self: &Arc<Self>,
        id: &DatasetId,
        version: Option<u64>,
        parts: Option<&[u32]>,
    ) -> Result<(Arc<Manifest>, Preloaded)> {
        let manifest = self.version(id, version).await?;
        let count = u32::try_from(manifest.parts.len()).unwrap_or(u32::MAX);
        let wanted: Vec<u32> = match parts {
            Some(list) => {
                if let Some(p) = list.iter().find(|p| **p >= count) {
                    return Err(Error::not_found(format!(
                        "version {} of dataset {id} has no part {p}",
                        manifest.version
                    )));
                }
                list.to_vec()
            }
            None => (0..count)
                .filter(|p| self.placement.owns(id, manifest.version, *p))
                .collect(),
        };
        let node = Arc::clone(self);
        let m = Arc::clone(&manifest);
        let cached = stream::iter(wanted.clone())
            .map(move |p| {
                let node = Arc::clone(&node);
                let m = Arc::clone(&m);
                async move {
                    let bytes = usize::try_from(m.parts[p as usize].bytes).unwrap_or(usize::MAX);
                    if !node.cache.fits(bytes) {
                        return Ok(false);
                    }
                    node.cached_part(&m, p, false).await?;
                    Ok::<_, Error>(node.cache.contains(&(m.dataset()?, m.version, p)))
                }
            })
            .buffered(LOAD_PARALLELISM)
            .try_fold(0u32, |n, ok| async move { Ok(n + u32::from(ok)) })
            .await?;
        Ok((
            manifest,
            Preloaded {
                parts: u32::try_from(wanted.len()).unwrap_or(u32::MAX),
                cached,
            },
        ))
    }

    /// Record batches of a version (for the HTTP export), part by part.
    pub fn batches(&self, manifest: &Manifest) -> BoxStream<'static, Result<RecordBatch>> {
        let guard = manifest
            .dataset()
            .ok()
            .map(|id| self.read_guard((id, manifest.version)));
        holding(self.batches_of(manifest), guard).boxed()
    }

    pub(super) fn batches_of(
        &self,
        manifest: &Manifest,
    ) -> BoxStream<'static, Result<RecordBatch>> {
        let storage = self.storage.clone();
        let budgets = Arc::clone(&self.budgets);
        let head = manifest.schema_flight_data().map_err(Arc::new);
        // The parts held in memory now; the others are read from storage as they come.
        let id = manifest.dataset().ok();
        let parts: Vec<(PartInfo, Option<Arc<EncodedPart>>)> = manifest
            .parts
            .iter()
            .enumerate()
            .map(|(i, info)| {
                let cached = id.as_ref().and_then(|id| {
                    let p = u32::try_from(i).ok()?;
                    self.cache.get(&(id.clone(), manifest.version, p))
                });
                (info.clone(), cached)
            })
            .collect();
        stream::iter(parts)
            .then(move |(info, cached)| {
                let storage = storage.clone();
                let budgets = Arc::clone(&budgets);
                let head = head.clone();
                async move {
                    if let Some(part) = cached {
                        // Decoded one message at a time as the consumer asks: the batches
                        // are views of the cached buffers, not copies.
                        let head = head.map_err(Error::Shared)?;
                        let messages = stream::iter(
                            std::iter::once(head)
                                .chain(EncodedPart::messages(part).map(|m| m.data)),
                        )
                        .map(Ok);
                        return Ok::<_, Error>(
                            FlightDataDecoder::new(messages)
                                .filter_map(|d| {
                                    futures::future::ready(match d {
                                        Ok(d) => match d.payload {
                                            DecodedPayload::RecordBatch(b) => Some(Ok(b)),
                                            _ => None,
                                        },
                                        Err(e) => Some(Err(Error::from(e))),
                                    })
                                })
                                .boxed(),
                        );
                    }
                    // Reading holds the file and its decoded batches; the batches stay until
                    // written out.
                    let bytes = usize::try_from(info.bytes).unwrap_or(usize::MAX);
                    let mut permit = budgets
                        .reserve(
                            bytes.saturating_mul(2),
                            "an export of a version not in memory",
                        )
                        .await?;
                    let batches = crate::parts::read_part(&storage, &info, READ_BATCH_ROWS).await?;
                    permit.shrink_to(batches.iter().map(batch_size).sum());
                    // Held until the part's batches are written out.
                    Ok(holding(stream::iter(batches.into_iter().map(Ok)), permit).boxed())
                }
            })
            .try_flatten()
            .boxed()
    }
}

/// `items`, keeping `held` (a budget reservation, a read guard) until the stream is done or
/// dropped.
pub(super) fn holding<S, H>(items: S, held: H) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
    H: Send + 'static,
{
    items.map(move |item| {
        let _held = &held;
        item
    })
}

/// A part found missing while reading a version: `NotFound` when the version was deleted
/// meanwhile (a read racing a delete), otherwise the error as it is (the part is damaged).
pub(super) async fn deleted_or(versions: &Versions, manifest: &Manifest, e: Error) -> Error {
    if !matches!(e, Error::MissingPart(_)) {
        return e;
    }
    let Ok(id) = manifest.dataset() else {
        return e;
    };
    match versions.current(&id, manifest.version, None).await {
        Ok(Current::Gone(why)) => Error::NotFound(why),
        _ => e,
    }
}
