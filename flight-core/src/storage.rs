//! Object storage: where versions live durably, and the only place that builds object paths.
//!
//! Layout under the storage URL:
//!
//! ```text
//! <namespace>/<name>/parts/<upload-id>/part-<k>.parquet   written while the upload streams in
//!                                                         (`.arrow`: an Arrow IPC file, for
//!                                                         types Parquet cannot hold)
//! <namespace>/<name>/v<version>.manifest.json              the commit point, written create-only
//! ```
//!
//! This module reads and writes objects; what a version is, and the rules that keep
//! versions consistent (allocation, commit, renew, delete, sweep), live in
//! [`crate::versions`]. It offers the two conditional writes those rules need: create-only
//! ([`Storage::create`]) and compare-and-swap on an object's ETag ([`Storage::replace`]).
//! S3 and memory stores do both natively (`If-None-Match: *`, `If-Match`); on `file://`
//! object_store creates atomically but cannot compare-and-swap, so a replace there holds an
//! exclusive lock on `<root>/.locks/records.lock` (shared by every process on that
//! directory) while it compares and renames.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::error::{Error, Result};
use crate::manifest::{PartFormat, PartInfo};
use crate::name::DatasetId;

/// How to reach the object store. Field names follow object_store's S3 options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageConfig {
    /// `s3://bucket/prefix`, `file:///abs/path`, `file://./relative` or `memory://`.
    pub url: String,
    /// S3 endpoint for MinIO and other S3-compatible servers (`http://minio:9000`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints (MinIO in a cluster usually needs this).
    pub allow_http: bool,
}

/// The durable side of the node (and of the operator's garbage collector).
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// The directory of a `file://` store, where replace takes its lock.
    local_root: Option<PathBuf>,
}

/// The outcome of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Something was already there (possibly our own earlier attempt).
    AlreadyExists,
}

impl Storage {
    /// Opens the store named by `config.url`.
    pub fn open(config: &StorageConfig) -> Result<Self> {
        let url = config.url.trim();
        let bad = |why: String| Error::Config(format!("invalid storage URL {url:?}: {why}"));
        let mut local_root = None;
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(bad("expected s3://<bucket>[/<prefix>]".into()));
            }
            // The standard AWS_* environment (AWS_ENDPOINT_URL or AWS_ENDPOINT,
            // AWS_ALLOW_HTTP, AWS_REGION, keys, AWS_SESSION_TOKEN, web identity) applies;
            // a flag given explicitly wins.
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if config.allow_http {
                b = b.with_allow_http(true);
            }
            if let Some(e) = &config.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(r) = &config.region {
                b = b.with_region(r);
            }
            if let Some(k) = &config.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(s) = &config.secret_access_key {
                b = b.with_secret_access_key(s);
            }
            let s3 = b.build().map_err(|e| bad(e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else if let Some(rest) = url.strip_prefix("file://") {
            let dir = std::path::PathBuf::from(if rest.is_empty() { "." } else { rest });
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(format!("failed to create {}: {e}", dir.display())))?;
            let dir = dir
                .canonicalize()
                .map_err(|e| bad(format!("failed to resolve {}: {e}", dir.display())))?;
            local_root = Some(dir.clone());
            Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?)
        } else if url == "memory://" || url.starts_with("memory://") {
            Arc::new(InMemory::new())
        } else {
            return Err(bad("expected s3://, file:// or memory://".into()));
        };
        Ok(Self {
            store,
            url: url.to_string(),
            local_root,
        })
    }

    /// Checks that the store can be used: it answers a listing (the bucket exists and the
    /// credentials work) and, when `write`, a scratch object can be written and removed.
    /// The error is a sentence naming the setting to change.
    pub async fn check(&self, write: bool) -> Result<()> {
        let fail = |what: &str, e: object_store::Error| {
            Error::Config(format!(
                "storage {} is not usable ({what}): {}",
                self.url,
                crate::error::explain_storage(&e)
            ))
        };
        self.store
            .list_with_delimiter(None)
            .await
            .map_err(|e| fail("listing failed", e))?;
        if write {
            let path = Path::from(format!(
                ".flight-node/check-{}",
                ulid::Ulid::new().to_string().to_lowercase()
            ));
            self.store
                .put(&path, PutPayload::from_static(b"ok"))
                .await
                .map_err(|e| fail("writing a scratch object failed", e))?;
            self.store
                .delete(&path)
                .await
                .map_err(|e| fail("deleting a scratch object failed", e))?;
        }
        Ok(())
    }

    /// Storage over any object store (tests wrap stores to slow them down or count calls).
    pub fn from_store(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            store,
            url: url.into(),
            local_root: None,
        }
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            url: "memory://".into(),
            local_root: None,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    pub(crate) fn dataset_prefix(id: &DatasetId) -> Path {
        Path::from_iter([id.namespace(), id.name()])
    }

    /// Where part `k` of an upload is written.
    pub fn part_path(id: &DatasetId, upload_id: &str, k: usize, format: PartFormat) -> Path {
        Path::from_iter([
            id.namespace(),
            id.name(),
            "parts",
            upload_id,
            &format!("part-{k}.{}", format.extension()),
        ])
    }

    /// Where the objects of one upload live: its parts and its liveness marker.
    pub fn upload_prefix(id: &DatasetId, upload_id: &str) -> Path {
        Path::from_iter([id.namespace(), id.name(), "parts", upload_id])
    }

    /// The marker an upload in progress refreshes so that no sweep takes it for dead.
    pub fn upload_marker_path(id: &DatasetId, upload_id: &str) -> Path {
        Self::upload_prefix(id, upload_id).join("upload.json")
    }

    /// Where the manifest of a version is committed.
    pub fn manifest_path(id: &DatasetId, version: u64) -> Path {
        Path::from_iter([
            id.namespace(),
            id.name(),
            &format!("v{version}.manifest.json"),
        ])
    }

    pub(crate) fn parse_manifest_name(file: &str) -> Option<u64> {
        let v = file.strip_prefix('v')?.strip_suffix(".manifest.json")?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok().filter(|v| *v > 0)
    }

    /// Writes one object (a Parquet part); durable when this returns.
    pub async fn put(&self, path: &Path, payload: impl Into<PutPayload>) -> Result<()> {
        self.store
            .put(path, payload.into())
            .await
            .map(|_| ())
            .map_err(|e| Error::storage(format!("write {path}"), e))
    }

    /// Writes `payload` only if nothing exists at `path` (`If-None-Match: *` on S3). An
    /// error means the outcome is unknown: the object may or may not have been written.
    pub async fn create(&self, path: &Path, payload: Bytes) -> Result<Created> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(payload), opts)
            .await
        {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(Error::storage(format!("write {path}"), e)),
        }
    }

    /// An object and its ETag; `None` when it does not exist.
    pub async fn get_tagged(&self, path: &Path) -> Result<Option<(Bytes, Option<String>)>> {
        let got = match self.store.get(path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::storage(format!("read {path}"), e)),
        };
        let etag = got.meta.e_tag.clone();
        let bytes = got
            .bytes()
            .await
            .map_err(|e| Error::storage(format!("read {path}"), e))?;
        Ok(Some((bytes, etag)))
    }

    /// The current ETag of an object; `None` when it does not exist.
    pub async fn etag(&self, path: &Path) -> Result<Option<String>> {
        match self.store.head(path).await {
            Ok(m) => Ok(m.e_tag),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::storage(format!("read {path}"), e)),
        }
    }

    /// Replaces the object at `path` only if its ETag is still `etag` (compare-and-swap).
    /// Returns false when it changed or vanished meanwhile.
    pub async fn replace(&self, path: &Path, payload: Bytes, etag: &str) -> Result<bool> {
        if let Some(root) = &self.local_root {
            return self.replace_locked(root.clone(), path, payload, etag).await;
        }
        let opts = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: Some(etag.to_string()),
                version: None,
            }),
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(payload), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::storage(format!("replace {path}"), e)),
        }
    }

    /// [`Storage::replace`] on `file://`: compare and rename under an exclusive file lock,
    /// which every node and operator on the same directory takes.
    async fn replace_locked(
        &self,
        root: PathBuf,
        path: &Path,
        payload: Bytes,
        etag: &str,
    ) -> Result<bool> {
        let lock_error = |e: std::io::Error| {
            Error::Internal(format!(
                "failed to lock {}/.locks/records.lock: {e}",
                root.display()
            ))
        };
        let dir = root.join(".locks");
        let file = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("records.lock"))?;
            f.lock()?;
            Ok::<_, std::io::Error>(f)
        })
        .await
        .map_err(|e| Error::Internal(format!("lock task failed: {e}")))?
        .map_err(lock_error)?;
        // The lock is released when `file` is dropped, after the rename.
        let outcome = match self.etag(path).await? {
            Some(current) if current == etag => {
                self.put(path, payload).await?;
                true
            }
            _ => false,
        };
        drop(file);
        Ok(outcome)
    }

    /// Every object under `prefix`, recursively.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| Error::storage(format!("list {prefix}"), e))
    }

    /// Names of the objects directly under `prefix` (not recursing).
    pub async fn list_files(&self, prefix: &Path) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| Error::storage(format!("list {prefix}"), e))?;
        Ok(listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect())
    }

    pub(crate) async fn child_dirs(&self, prefix: Option<&Path>) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| Error::storage("list datasets", e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Deletes the given objects, best effort (used to undo a failed upload).
    pub async fn delete_quietly(&self, paths: &[Path]) {
        for p in paths {
            if let Err(e) = self.delete_ignoring_missing(p).await {
                tracing::warn!(path = %p, error = %e, "failed to delete object; the orphan sweep will retry");
            }
        }
    }

    pub(crate) async fn delete_ignoring_missing(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::storage(format!("delete {path}"), e)),
        }
    }

    /// The bytes of one part of a committed version; a part missing from storage is
    /// [`Error::MissingPart`].
    pub async fn get_part(&self, part: &PartInfo) -> Result<(Path, Bytes)> {
        let path = Path::from(part.path.as_str());
        let bytes = self.get_object(&path).await.map_err(|e| match e {
            Error::NotFound(_) => Error::MissingPart(format!(
                "part {path} of a committed version is missing from storage"
            )),
            e => e,
        })?;
        Ok((path, bytes))
    }

    /// Reads a whole object (a source file for the `load` action). Paths are relative to the
    /// storage root.
    pub async fn get_object(&self, path: &Path) -> Result<Bytes> {
        match self.store.get(path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| Error::storage(format!("read {path}"), e)),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::not_found(format!("source object {path} not found")))
            }
            Err(e) => Err(Error::storage(format!("read {path}"), e)),
        }
    }

    /// Size of an object.
    pub async fn object_size(&self, path: &Path) -> Result<u64> {
        match self.store.head(path).await {
            Ok(m) => Ok(m.size),
            Err(object_store::Error::NotFound { .. }) => {
                Err(Error::not_found(format!("source object {path} not found")))
            }
            Err(e) => Err(Error::storage(format!("read {path}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        let id = DatasetId::new("ns", "ds").unwrap();
        assert_eq!(
            Storage::part_path(&id, "U", 3, PartFormat::Parquet).as_ref(),
            "ns/ds/parts/U/part-3.parquet"
        );
        assert_eq!(
            Storage::manifest_path(&id, 12).as_ref(),
            "ns/ds/v12.manifest.json"
        );
        assert_eq!(Storage::parse_manifest_name("v12.manifest.json"), Some(12));
        for bad in [
            "v.manifest.json",
            "v0.manifest.json",
            "v1.json",
            "x1.manifest.json",
            "v-1.manifest.json",
        ] {
            assert_eq!(Storage::parse_manifest_name(bad), None, "{bad}");
        }
        for bad in ["ftp://x", "s3://", "s3://ab", "relative/dir"] {
            let cfg = StorageConfig {
                url: bad.into(),
                ..Default::default()
            };
            assert!(Storage::open(&cfg).is_err(), "{bad}");
        }
    }
}
