//! The version lifecycle: the one place that allocates, commits, renews, deletes and sweeps
//! versions. The node and the operator both go through it, so its rules cover every writer.
//!
//! # The promise
//!
//! * **(I1)** An acknowledged ticket reads back the identical table until its version
//!   expires or is explicitly deleted, whatever happens to the client's call, the network
//!   to storage, or any node.
//! * **(I2)** A `(namespace, name, version)` names at most one table, ever: numbers are never
//!   reused, also after deletes.
//! * **(I3)** An unacknowledged upload is either complete or invisible.
//! * **(I4)** A deleted version never comes back, through any path (renew, a cache, another
//!   node).
//! * **(I5)** Namespace isolation is the callers' part (the node's `auth` module); this module only ever
//!   touches the dataset it is given.
//!
//! # How
//!
//! A version's **record** lives at `<ns>/<name>/v<n>.manifest.json`. It is created once,
//! create-only (`If-None-Match: *`), as the live [`Manifest`]: that write both allocates the
//! number and commits the upload. Deleting a version *replaces* the record with a
//! [`Tombstone`]; records are never removed, so a number once taken stays taken (I2), and
//! the highest record is the high-water mark the next allocation starts above.
//!
//! * **Commit** runs on a task of its own ([`Versions::commit`]): if the client's call goes
//!   away, the commit still finishes and storage stays consistent (the client merely misses
//!   the answer). The writer moves on from number `n` only once `n` is proven to hold
//!   another upload's record. When the create-only write reports the number taken, the
//!   record is read: our own upload id means our earlier attempt landed (a lost answer,
//!   retried by the HTTP client) and the commit succeeded. When the outcome stays unknown
//!   (storage unreachable), the same number is retried; if that never settles, the client
//!   gets UNAVAILABLE and the parts are **kept**: a commit whose outcome is uncertain never
//!   deletes parts. Only an upload that never sent its record removes its own parts.
//! * **Renew** and **delete** are compare-and-swap writes on the record's ETag
//!   ([`Storage::replace`]): a renew based on a record that was deleted meanwhile fails
//!   instead of bringing the version back (I4), and a delete never loses to a renew.
//! * **Reads** check the record's ETag in storage before serving a cached copy
//!   ([`Versions::current`]), so a version deleted through another node (or by the
//!   operator) is not served from memory either.
//! * **Uploads in flight** refresh a marker (`parts/<upload-id>/upload.json`) while they
//!   run, from upload start until their commit settles. The **sweep** removes only objects
//!   of uploads proven dead: referenced by a tombstone, or referenced by no record and with
//!   nothing written (marker included) for longer than the grace period. Every node
//!   sharing a storage must use the same grace (the operator sets one per pool).
//! * **Delete of a dataset** tombstones the versions committed when it runs and removes
//!   their parts; it does not touch uploads in flight. Such an upload commits afterwards as
//!   a new version (with a higher number than any deleted one), which the delete did not
//!   cover: deleting a dataset is not a lock against writers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{Manifest, MANIFEST_FORMAT};
use crate::name::{validate_label, DatasetId};
use crate::storage::{Created, Storage};

/// Identifies a tombstone record.
pub const TOMBSTONE_FORMAT: &str = "arrow.trinity.io/tombstone-v1";

/// Numbers taken by other uploads that a commit moves past before giving up.
const MAX_TAKEN: u32 = 256;
/// Attempts at one number whose outcome stayed unknown (each already retried by the
/// object store client) before the commit reports storage unavailable.
const MAX_UNCERTAIN: u32 = 4;
/// Attempts at a compare-and-swap that keeps losing to concurrent writers.
const MAX_SWAPS: u32 = 16;

/// What is left of a deleted version: enough to refuse its number for ever and to finish
/// removing its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    pub format: String,
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub upload_id: String,
    pub deleted_at: DateTime<Utc>,
}

/// The record of a version number.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Live(Box<Manifest>),
    Deleted(Tombstone),
}

impl Record {
    fn decode(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        let format: Format = serde_json::from_slice(bytes)
            .map_err(|e| Error::Internal(format!("failed to decode a version record: {e}")))?;
        match format.format.as_str() {
            MANIFEST_FORMAT => Manifest::from_json(bytes).map(|m| Record::Live(Box::new(m))),
            TOMBSTONE_FORMAT => serde_json::from_slice(bytes)
                .map(Record::Deleted)
                .map_err(|e| Error::Internal(format!("failed to decode a tombstone: {e}"))),
            other => Err(Error::Internal(format!(
                "unknown version record format {other:?}"
            ))),
        }
    }

    pub fn upload_id(&self) -> &str {
        match self {
            Record::Live(m) => &m.upload_id,
            Record::Deleted(t) => &t.upload_id,
        }
    }
}

/// A version's record as read, with the ETag that later compare-and-swaps are based on.
#[derive(Debug, Clone)]
pub struct Tagged {
    pub record: Record,
    pub etag: Option<String>,
}

/// What storage says about a version a node holds a copy of.
#[derive(Debug, Clone, PartialEq)]
pub enum Current {
    /// The record is the one the caller has (same ETag).
    Unchanged,
    /// The record changed (a renew): here is the new manifest and its ETag.
    Changed(Box<Manifest>, Option<String>),
    /// The version was deleted (or never existed).
    Gone(String),
}

/// The version lifecycle over one storage (cheap to clone).
#[derive(Debug, Clone)]
pub struct Versions {
    storage: Storage,
}

impl Versions {
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    // ----- reading ----------------------------------------------------------------------

    /// Every number ever taken in a dataset (live or deleted), ascending.
    pub async fn numbers(&self, id: &DatasetId) -> Result<Vec<u64>> {
        let mut numbers: Vec<u64> = self
            .storage
            .list_files(&Storage::dataset_prefix(id))
            .await?
            .iter()
            .filter_map(|f| Storage::parse_manifest_name(f))
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// The record of a version; `None` when the number was never taken.
    pub async fn record(&self, id: &DatasetId, version: u64) -> Result<Option<Tagged>> {
        let path = Storage::manifest_path(id, version);
        let Some((bytes, etag)) = self.storage.get_tagged(&path).await? else {
            return Ok(None);
        };
        let record = Record::decode(&bytes)
            .map_err(|e| Error::Internal(format!("the record {path} cannot be read: {e}")))?;
        Ok(Some(Tagged { record, etag }))
    }

    /// The live manifest of a version, with its ETag; `NotFound` when it was never committed
    /// or was deleted.
    pub async fn read(&self, id: &DatasetId, version: u64) -> Result<(Manifest, Option<String>)> {
        match self.record(id, version).await? {
            Some(Tagged {
                record: Record::Live(m),
                etag,
            }) => Ok((*m, etag)),
            Some(Tagged {
                record: Record::Deleted(_),
                ..
            }) => Err(Error::not_found(format!(
                "version {version} of dataset {id} was deleted"
            ))),
            None => Err(Error::not_found(format!(
                "dataset {id} has no version {version}"
            ))),
        }
    }

    /// Whether a copy of a version with record ETag `etag` is still current. One HEAD;
    /// the record is read only when its ETag changed.
    pub async fn current(
        &self,
        id: &DatasetId,
        version: u64,
        etag: Option<&str>,
    ) -> Result<Current> {
        let path = Storage::manifest_path(id, version);
        let now = self.storage.etag(&path).await?;
        match (&now, etag) {
            (None, _) => {
                return Ok(Current::Gone(format!(
                    "dataset {id} has no version {version}"
                )))
            }
            (Some(a), Some(b)) if a == b => return Ok(Current::Unchanged),
            _ => {}
        }
        match self.read(id, version).await {
            Ok((m, etag)) => Ok(Current::Changed(Box::new(m), etag)),
            Err(Error::NotFound(why)) => Ok(Current::Gone(why)),
            Err(e) => Err(e),
        }
    }

    /// The live manifests of a dataset, ascending by version.
    pub async fn live(&self, id: &DatasetId) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for v in self.numbers(id).await? {
            if let Some(Tagged {
                record: Record::Live(m),
                ..
            }) = self.record(id, v).await?
            {
                out.push(*m);
            }
        }
        Ok(out)
    }

    /// The newest live version that has not expired at `now`; `NotFound` if there is none.
    pub async fn latest(
        &self,
        id: &DatasetId,
        now: DateTime<Utc>,
    ) -> Result<(Manifest, Option<String>)> {
        for v in self.numbers(id).await?.into_iter().rev() {
            if let Some(Tagged {
                record: Record::Live(m),
                etag,
            }) = self.record(id, v).await?
            {
                if !m.is_expired(now) {
                    return Ok((*m, etag));
                }
            }
        }
        Err(Error::not_found(format!("dataset {id} not found")))
    }

    /// Datasets that have taken at least one version number (live or deleted), optionally
    /// in one namespace. Callers that need live versions read them.
    pub async fn datasets(&self, namespace: Option<&str>) -> Result<Vec<DatasetId>> {
        let mut out = Vec::new();
        for id in self.dataset_dirs(namespace).await? {
            if !self.numbers(&id).await?.is_empty() {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every `<ns>/<name>` directory, with or without records.
    async fn dataset_dirs(&self, namespace: Option<&str>) -> Result<Vec<DatasetId>> {
        let namespaces = match namespace {
            Some(ns) => vec![ns.to_string()],
            None => self.storage.child_dirs(None).await?,
        };
        let mut out = Vec::new();
        for ns in namespaces {
            if validate_label("namespace", &ns).is_err() {
                continue;
            }
            let ns_path = Path::from(ns.as_str());
            for name in self.storage.child_dirs(Some(&ns_path)).await? {
                if let Ok(id) = DatasetId::new(ns.as_str(), name) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    // ----- writing ----------------------------------------------------------------------

    /// Starts an upload: a fresh upload id, and a task that refreshes the upload's marker
    /// every `refresh` for as long as the returned [`Upload`] lives (the first refresh after
    /// one interval, so short uploads write no marker at all).
    pub fn begin(&self, id: &DatasetId, refresh: Duration) -> Upload {
        let upload_id = ulid::Ulid::new().to_string();
        let marker = Storage::upload_marker_path(id, &upload_id);
        let storage = self.storage.clone();
        let refresh = refresh.max(Duration::from_millis(10));
        let body =
            serde_json::json!({ "uploadId": upload_id, "refreshSeconds": refresh.as_secs_f64() });
        let body = Bytes::from(body.to_string());
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                if let Err(e) = storage.put(&marker, body.clone()).await {
                    tracing::warn!(path = %marker, error = %e, "failed to refresh an upload's marker");
                }
            }
        });
        Upload {
            id: id.clone(),
            upload_id,
            keeper: keeper.abort_handle(),
        }
    }

    /// Commits `manifest` (its parts durable, its upload id that of `upload`) as the next
    /// version and returns it with its number set. Runs on its own task: dropping the
    /// returned future does not stop the commit. See the module docs for the rules.
    pub async fn commit(&self, upload: Upload, mut manifest: Manifest) -> Result<Manifest> {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let outcome = this.commit_inner(&mut manifest).await;
            if let Err((e, sent)) = &outcome {
                if !*sent {
                    // No record was ever sent: nothing can reference the parts.
                    this.remove_upload(&upload).await;
                } else {
                    tracing::warn!(
                        dataset = %upload.id, upload = %upload.upload_id, error = %e,
                        "commit outcome unknown; the upload's parts are kept (the sweep removes them if no record references them)"
                    );
                }
            }
            drop(upload);
            outcome.map(|()| manifest).map_err(|(e, _)| e)
        });
        task.await
            .map_err(|e| Error::Internal(format!("the commit task failed: {e}")))?
    }

    /// The commit protocol. The error says whether a record may have been written.
    async fn commit_inner(
        &self,
        manifest: &mut Manifest,
    ) -> std::result::Result<(), (Error, bool)> {
        let id = manifest.dataset().map_err(|e| (e, false))?;
        let mut version = self
            .numbers(&id)
            .await
            .map_err(|e| (e, false))?
            .last()
            .copied()
            .unwrap_or(0)
            + 1;
        let mut sent = false;
        let mut taken = 0;
        let mut uncertain = 0;
        loop {
            manifest.version = version;
            let path = Storage::manifest_path(&id, version);
            let body = Bytes::from(manifest.to_json().map_err(|e| (e, sent))?);
            sent = true;
            let outcome = match self.storage.create(&path, body).await {
                Ok(Created::Created) => return Ok(()),
                Ok(Created::AlreadyExists) => self.record(&id, version).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Some(Tagged { record, .. })) if record.upload_id() == manifest.upload_id => {
                    return match record {
                        // Our own earlier attempt landed; its answer was lost.
                        Record::Live(_) => Ok(()),
                        Record::Deleted(_) => Err((
                            Error::not_found(format!(
                                "the upload was committed as version {version} of {id}, which was deleted before the answer was sent"
                            )),
                            true,
                        )),
                    };
                }
                Ok(Some(_)) => {
                    taken += 1;
                    if taken >= MAX_TAKEN {
                        return Err((
                            Error::Aborted(format!(
                                "failed to allocate a version of {id}: {taken} numbers were taken by concurrent uploads; retry the upload"
                            )),
                            true,
                        ));
                    }
                    version += 1;
                }
                // The number was reported taken but no record is there: unknown, try again.
                Ok(None) | Err(_) => {
                    let e = match outcome {
                        Err(e) => e,
                        _ => {
                            Error::Internal(format!("{path} was reported taken but cannot be read"))
                        }
                    };
                    uncertain += 1;
                    if uncertain >= MAX_UNCERTAIN {
                        return Err((
                            Error::Storage {
                                action: format!(
                                    "confirm the commit of version {version} of {id} (the upload may have been committed; retry reading it before uploading again)"
                                ),
                                source: match e {
                                    Error::Storage { source, .. } => source,
                                    other => object_store::Error::Generic {
                                        store: "storage",
                                        source: other.to_string().into(),
                                    },
                                },
                            },
                            true,
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200 << uncertain)).await;
                }
            }
        }
    }

    /// Removes the objects of an upload that never committed (best effort; the sweep
    /// retries what fails).
    async fn remove_upload(&self, upload: &Upload) {
        let prefix = Storage::upload_prefix(&upload.id, &upload.upload_id);
        match self.storage.list(&prefix).await {
            Ok(objects) => {
                let paths: Vec<Path> = objects.into_iter().map(|o| o.location).collect();
                self.storage.delete_quietly(&paths).await;
            }
            Err(e) => {
                tracing::warn!(prefix = %prefix, error = %e, "failed to list an abandoned upload; the sweep will remove it")
            }
        }
    }

    /// Sets a live version's expiry. A compare-and-swap on the record: refused with
    /// `NotFound` when the version was deleted or has expired, never resurrecting it.
    pub async fn renew(
        &self,
        id: &DatasetId,
        version: u64,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(Manifest, Option<String>)> {
        let (m, _) = self
            .update_live(id, version, now, MAX_SWAPS, ("renew", "renewed"), |m| {
                m.expires_at = Some(expires_at);
                Ok(Some(()))
            })
            .await?;
        // The new ETag is read back by the next check of this record.
        Ok((m, None))
    }

    /// Records a consumer's release of a live version (see [`crate::consumers`]). A
    /// compare-and-swap on the record, so concurrent releases through any nodes all count.
    /// The release that completes the set brings the expiry forward to `grace` from now.
    /// Returns the record as written and whether this call completed the set.
    pub async fn release(
        &self,
        id: &DatasetId,
        version: u64,
        consumer: Option<&str>,
        grace: Duration,
        now: DateTime<Utc>,
    ) -> Result<(Manifest, bool)> {
        // Many consumers may release at once; each lost swap re-reads and retries.
        let attempts = MAX_SWAPS * 4;
        let (m, completed) = self
            .update_live(id, version, now, attempts, ("release", "released"), |m| {
                let Some(consumers) = m.consumers.as_mut() else {
                    return Err(Error::FailedPrecondition(format!(
                        "version {version} of dataset {id} declared no consumers; only \
                         versions uploaded with x-flight-consumers are released"
                    )));
                };
                if !consumers.release(consumer, now)? {
                    return Ok(None);
                }
                let completed = consumers.is_done();
                if completed {
                    let end = crate::ttl::expires_at(now, grace).unwrap_or(now);
                    m.expires_at = Some(m.expires_at.map_or(end, |e| e.min(end)));
                }
                Ok(Some(completed))
            })
            .await?;
        Ok((m, completed.unwrap_or(false)))
    }

    /// A compare-and-swap on a live, unexpired version's record: `change` edits what was
    /// read (or returns `None`: nothing to write), and the record is replaced only if it
    /// is still the one read; otherwise it is read again, up to `attempts` times. A record
    /// deleted or expired meanwhile is `NotFound`, so no change brings a version back.
    /// `verb` names the operation in errors (`("renew", "renewed")`).
    async fn update_live<T>(
        &self,
        id: &DatasetId,
        version: u64,
        now: DateTime<Utc>,
        attempts: u32,
        verb: (&str, &str),
        mut change: impl FnMut(&mut Manifest) -> Result<Option<T>>,
    ) -> Result<(Manifest, Option<T>)> {
        let path = Storage::manifest_path(id, version);
        for _ in 0..attempts {
            let (mut m, etag) = self.read(id, version).await?;
            if m.is_expired(now) {
                return Err(Error::not_found(format!(
                    "version {version} of dataset {id} has expired"
                )));
            }
            let Some(changed) = change(&mut m)? else {
                return Ok((m, None));
            };
            let Some(etag) = etag else {
                return Err(Error::Internal(format!(
                    "the store gave no ETag for {path}; cannot {} safely",
                    verb.0
                )));
            };
            if self
                .storage
                .replace(&path, Bytes::from(m.to_json()?), &etag)
                .await?
            {
                return Ok((m, Some(changed)));
            }
        }
        Err(Error::Aborted(format!(
            "version {version} of {id} kept changing while it was {}; retry",
            verb.1
        )))
    }

    /// Deletes one version: its record becomes a tombstone (the point of deletion), then
    /// its parts are removed. `Ok(false)` when it was already deleted; `NotFound` when the
    /// number was never taken.
    pub async fn delete_version(&self, id: &DatasetId, version: u64) -> Result<bool> {
        let path = Storage::manifest_path(id, version);
        for _ in 0..MAX_SWAPS {
            let Some(Tagged { record, etag }) = self.record(id, version).await? else {
                return Err(Error::not_found(format!(
                    "dataset {id} has no version {version}"
                )));
            };
            let manifest = match record {
                Record::Deleted(t) => {
                    // Finish what an interrupted delete may have left.
                    self.remove_parts(id, &t.upload_id).await;
                    return Ok(false);
                }
                Record::Live(m) => *m,
            };
            let Some(etag) = etag else {
                return Err(Error::Internal(format!(
                    "the store gave no ETag for {path}; cannot delete safely"
                )));
            };
            let tombstone = Tombstone {
                format: TOMBSTONE_FORMAT.into(),
                namespace: id.namespace().into(),
                name: id.name().into(),
                version,
                upload_id: manifest.upload_id.clone(),
                deleted_at: Utc::now(),
            };
            let body = serde_json::to_vec_pretty(&tombstone)
                .map_err(|e| Error::Internal(format!("failed to encode a tombstone: {e}")))?;
            if self
                .storage
                .replace(&path, Bytes::from(body), &etag)
                .await?
            {
                self.remove_parts(id, &manifest.upload_id).await;
                return Ok(true);
            }
        }
        Err(Error::Aborted(format!(
            "version {version} of {id} kept changing while it was deleted; retry"
        )))
    }

    /// Deletes every version committed when it runs; returns the versions this call
    /// deleted. Uploads in flight are left alone (see the module docs).
    pub async fn delete_dataset(&self, id: &DatasetId) -> Result<Vec<u64>> {
        let mut deleted = Vec::new();
        for v in self.numbers(id).await? {
            match self.delete_version(id, v).await {
                Ok(true) => deleted.push(v),
                Ok(false) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Removes the objects of a deleted version's upload (best effort: the tombstone keeps
    /// naming the upload, so the sweep finishes what fails here).
    async fn remove_parts(&self, id: &DatasetId, upload_id: &str) {
        let prefix = Storage::upload_prefix(id, upload_id);
        match self.storage.list(&prefix).await {
            Ok(objects) => {
                let paths: Vec<Path> = objects.into_iter().map(|o| o.location).collect();
                self.storage.delete_quietly(&paths).await;
            }
            Err(e) => {
                tracing::warn!(prefix = %prefix, error = %e, "failed to list a deleted version's parts; the sweep will remove them")
            }
        }
    }

    /// Removes the objects of uploads proven dead: those of deleted versions, and those no
    /// record references with nothing written for longer than `grace`. Returns how many
    /// objects were removed.
    pub async fn sweep(&self, grace: Duration, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let mut removed = 0;
        for id in self.dataset_dirs(None).await? {
            // Objects first, records second: an upload whose newest object was already
            // older than the grace when listed had settled its commit before that, so its
            // record (if any) is visible to the reads below.
            let parts_prefix = Storage::dataset_prefix(&id).join("parts");
            let mut uploads: HashMap<String, (DateTime<Utc>, Vec<Path>)> = HashMap::new();
            for o in self.storage.list(&parts_prefix).await? {
                let Some(upload) = o
                    .location
                    .prefix_match(&parts_prefix)
                    .and_then(|mut rest| rest.next())
                    .map(|p| p.as_ref().to_string())
                else {
                    continue;
                };
                let entry = uploads
                    .entry(upload)
                    .or_insert((DateTime::<Utc>::MIN_UTC, Vec::new()));
                entry.0 = entry.0.max(o.last_modified);
                entry.1.push(o.location);
            }
            if uploads.is_empty() {
                continue;
            }
            let mut live = HashSet::new();
            let mut dead = HashSet::new();
            for v in self.numbers(&id).await? {
                match self.record(&id, v).await {
                    Ok(Some(Tagged { record, .. })) => {
                        let set = match record {
                            Record::Live(_) => &mut live,
                            Record::Deleted(_) => &mut dead,
                        };
                        set.insert(record.upload_id().to_string());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Without every record, nothing here is proven dead.
                        tracing::warn!(dataset = %id, version = v, error = %e, "sweep skips a dataset with an unreadable record");
                        live.insert(String::new());
                        uploads.clear();
                    }
                }
            }
            for (upload, (newest, paths)) in uploads {
                if live.contains(&upload) || !(dead.contains(&upload) || newest < cutoff) {
                    continue;
                }
                removed += paths.len();
                self.storage.delete_quietly(&paths).await;
            }
        }
        Ok(removed)
    }
}

/// An upload in progress: its id, and the marker refresher that keeps sweeps away from it
/// until it is dropped (after its commit settled, or when it is abandoned).
#[derive(Debug)]
pub struct Upload {
    id: DatasetId,
    upload_id: String,
    keeper: tokio::task::AbortHandle,
}

impl Upload {
    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }

    pub fn dataset(&self) -> &DatasetId {
        &self.id
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests_support::sample;
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt};
    use std::sync::Arc;

    fn id() -> DatasetId {
        DatasetId::new("analytics", "sales").unwrap()
    }

    /// A manifest for `upload` with one part, whose object is written.
    async fn uploaded(v: &Versions, upload: &Upload) -> Manifest {
        let mut m = sample(0);
        m.upload_id = upload.upload_id().to_string();
        let part = Storage::part_path(
            &id(),
            upload.upload_id(),
            0,
            crate::manifest::PartFormat::Parquet,
        );
        v.storage()
            .put(&part, Bytes::from_static(b"p"))
            .await
            .unwrap();
        m.parts[0].path = part.to_string();
        m
    }

    async fn commit_one(v: &Versions) -> Manifest {
        let upload = v.begin(&id(), Duration::from_secs(3600));
        let m = uploaded(v, &upload).await;
        v.commit(upload, m).await.unwrap()
    }

    fn stores() -> Vec<(Versions, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let file = Storage::open(&crate::storage::StorageConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap();
        vec![
            (Versions::new(Storage::in_memory()), None),
            (Versions::new(file), Some(dir)),
        ]
    }

    #[tokio::test]
    async fn numbers_are_allocated_in_order_and_never_reused() {
        for (v, _dir) in stores() {
            let a = commit_one(&v).await;
            let b = commit_one(&v).await;
            assert_eq!((a.version, b.version), (1, 2));
            assert!(v.delete_version(&id(), 2).await.unwrap());
            assert!(
                !v.delete_version(&id(), 2).await.unwrap(),
                "a repeated delete is a no-op"
            );
            // The newest number was deleted: the next upload still gets a new one.
            assert_eq!(commit_one(&v).await.version, 3);
            assert_eq!(v.delete_dataset(&id()).await.unwrap(), vec![1, 3]);
            assert_eq!(commit_one(&v).await.version, 4);
            let err = v.read(&id(), 3).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound);
            assert!(err.to_string().contains("was deleted"), "{err}");
            assert_eq!(
                v.live(&id())
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.version)
                    .collect::<Vec<_>>(),
                vec![4]
            );
        }
    }

    /// A store whose first create-only write of a manifest lands but answers "already
    /// exists", as the S3 client's retry of a write whose answer was lost does.
    #[derive(Debug)]
    struct LostAnswer {
        inner: InMemory,
        lost: std::sync::atomic::AtomicBool,
    }

    impl std::fmt::Display for LostAnswer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "LostAnswer")
        }
    }

    #[tonic::async_trait]
    impl ObjectStore for LostAnswer {
        async fn put_opts(
            &self,
            location: &Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            let create = matches!(opts.mode, object_store::PutMode::Create);
            let result = self.inner.put_opts(location, payload, opts).await?;
            if create
                && location.as_ref().ends_with(".manifest.json")
                && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "412 from the retry of a write that landed".into(),
                });
            }
            Ok(result)
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    /// The create-only write of the record landed, its answer was lost, and the client's
    /// retry was told the number is taken: the commit recognises its own record instead of
    /// committing the upload a second time under the next number.
    #[tokio::test]
    async fn a_commit_whose_answer_was_lost_is_recognised_as_ours() {
        let store = Arc::new(LostAnswer {
            inner: InMemory::new(),
            lost: false.into(),
        });
        let v = Versions::new(Storage::from_store(store.clone(), "memory://"));
        let committed = commit_one(&v).await;
        assert!(store.lost.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(committed.version, 1, "committed twice");
        assert_eq!(v.numbers(&id()).await.unwrap(), vec![1]);
        assert_eq!(commit_one(&v).await.version, 2);
    }

    #[tokio::test]
    async fn a_number_taken_by_another_upload_moves_the_writer_on() {
        let v = Versions::new(Storage::in_memory());
        let first = commit_one(&v).await;
        // A racing writer took v2 after we listed.
        let mut racer = sample(2);
        racer.upload_id = "racer".into();
        v.storage()
            .put(
                &Storage::manifest_path(&id(), 2),
                Bytes::from(racer.to_json().unwrap()),
            )
            .await
            .unwrap();
        let second = commit_one(&v).await;
        assert_eq!((first.version, second.version), (1, 3));
        assert_eq!(v.read(&id(), 2).await.unwrap().0.upload_id, "racer");
    }

    #[tokio::test]
    async fn renew_never_brings_a_deleted_version_back() {
        for (v, _dir) in stores() {
            let m = commit_one(&v).await;
            let later = Utc::now() + chrono::Duration::hours(1);
            let (renewed, _) = v.renew(&id(), m.version, later, Utc::now()).await.unwrap();
            assert_eq!(renewed.expires_at, Some(later));
            assert_eq!(
                v.read(&id(), m.version).await.unwrap().0.expires_at,
                Some(later)
            );
            // A node read the record (and its ETag), then the version was deleted elsewhere.
            let (_, stale_etag) = v.read(&id(), m.version).await.unwrap();
            assert!(v.delete_version(&id(), m.version).await.unwrap());
            let path = Storage::manifest_path(&id(), m.version);
            let swapped = v
                .storage()
                .replace(
                    &path,
                    Bytes::from(m.to_json().unwrap()),
                    &stale_etag.unwrap(),
                )
                .await
                .unwrap();
            assert!(!swapped, "a stale compare-and-swap overwrote the tombstone");
            let err = v
                .renew(&id(), m.version, later, Utc::now())
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound);
            assert!(v.read(&id(), m.version).await.is_err());
            assert_eq!(
                v.current(&id(), m.version, None).await.unwrap(),
                Current::Gone(format!(
                    "version {} of dataset {} was deleted",
                    m.version,
                    id()
                ))
            );
        }
    }

    #[tokio::test]
    async fn current_notices_a_changed_record() {
        let v = Versions::new(Storage::in_memory());
        let m = commit_one(&v).await;
        let (_, etag) = v.read(&id(), m.version).await.unwrap();
        assert_eq!(
            v.current(&id(), m.version, etag.as_deref()).await.unwrap(),
            Current::Unchanged
        );
        let later = Utc::now() + chrono::Duration::hours(1);
        v.renew(&id(), m.version, later, Utc::now()).await.unwrap();
        match v.current(&id(), m.version, etag.as_deref()).await.unwrap() {
            Current::Changed(m, _) => assert_eq!(m.expires_at, Some(later)),
            other => panic!("{other:?}"),
        }
    }

    /// The sweep removes abandoned and deleted uploads, never a live upload that keeps its
    /// marker fresh, and never a committed version's parts.
    #[tokio::test]
    async fn the_sweep_removes_only_dead_uploads() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let v = Versions::new(Storage::from_store(Arc::clone(&store), "memory://"));
        let kept = commit_one(&v).await;
        let deleted = commit_one(&v).await;
        // An upload in flight whose marker is refreshed every 20 ms.
        let in_flight = v.begin(&id(), Duration::from_millis(20));
        let in_flight_part = Storage::part_path(
            &id(),
            in_flight.upload_id(),
            0,
            crate::manifest::PartFormat::Parquet,
        );
        v.storage()
            .put(&in_flight_part, Bytes::from_static(b"x"))
            .await
            .unwrap();
        // An abandoned upload.
        let abandoned =
            Storage::part_path(&id(), "abandoned", 0, crate::manifest::PartFormat::Parquet);
        v.storage()
            .put(&abandoned, Bytes::from_static(b"x"))
            .await
            .unwrap();
        // A delete whose part removal failed: the tombstone still names the upload.
        let path = Storage::manifest_path(&id(), deleted.version);
        let (_, etag) = v.read(&id(), deleted.version).await.unwrap();
        let tomb = Tombstone {
            format: TOMBSTONE_FORMAT.into(),
            namespace: "analytics".into(),
            name: "sales".into(),
            version: deleted.version,
            upload_id: deleted.upload_id.clone(),
            deleted_at: Utc::now(),
        };
        let body = Bytes::from(serde_json::to_vec(&tomb).unwrap());
        assert!(v
            .storage()
            .replace(&path, body, &etag.unwrap())
            .await
            .unwrap());

        // Young: only the deleted version's part goes.
        assert_eq!(
            v.sweep(Duration::from_millis(200), Utc::now())
                .await
                .unwrap(),
            1
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Now the abandoned upload is old; the one in flight refreshed its marker.
        assert_eq!(
            v.sweep(Duration::from_millis(200), Utc::now())
                .await
                .unwrap(),
            1
        );
        assert!(store.head(&abandoned).await.is_err());
        assert!(store.head(&in_flight_part).await.is_ok());
        assert!(store
            .head(&Path::from(kept.parts[0].path.as_str()))
            .await
            .is_ok());
        assert!(store
            .head(&Path::from(deleted.parts[0].path.as_str()))
            .await
            .is_err());
        // Once the upload is gone (dropped without committing), it ages out too.
        drop(in_flight);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            v.sweep(Duration::from_millis(200), Utc::now())
                .await
                .unwrap(),
            2
        );
        assert!(store
            .head(&Path::from(kept.parts[0].path.as_str()))
            .await
            .is_ok());
    }

    /// An upload whose record was never sent removes its own parts.
    #[tokio::test]
    async fn a_commit_that_never_sent_its_record_cleans_up() {
        let v = Versions::new(Storage::in_memory());
        let upload = v.begin(&id(), Duration::from_secs(3600));
        let mut m = uploaded(&v, &upload).await;
        m.namespace = "Not A Label".into();
        let part = Path::from(m.parts[0].path.as_str());
        assert!(v.commit(upload, m).await.is_err());
        assert!(v.storage().object_store().head(&part).await.is_err());
    }
}
