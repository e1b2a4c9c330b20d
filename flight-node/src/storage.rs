//! Object storage: where versions live durably, and the only place that builds object paths.
//!
//! Layout under the storage URL:
//!
//! ```text
//! <namespace>/<name>/parts/<upload-id>/part-<k>.parquet   written while the upload streams in
//! <namespace>/<name>/v<version>.manifest.json              the commit point, written create-only
//! ```
//!
//! The manifest is written with `PutMode::Create`: the first writer of `v<n>` wins and a
//! loser takes `n+1`, so concurrent uploads never overwrite each other and never share part
//! files (each has its own upload id).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::cache::{encode_batches, EncodedPart};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, PartInfo};
use crate::name::{validate_label, DatasetId};

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
}

/// Attempts at allocating a version number before giving up (a very busy dataset).
const MAX_COMMIT_ATTEMPTS: u32 = 64;

impl Storage {
    /// Opens the store named by `config.url`.
    pub fn open(config: &StorageConfig) -> Result<Self> {
        let url = config.url.trim();
        let bad = |why: String| Error::Config(format!("invalid storage URL {url:?}: {why}"));
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(bad("expected s3://<bucket>[/<prefix>]".into()));
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_allow_http(config.allow_http);
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
            Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?)
        } else if url == "memory://" || url.starts_with("memory://") {
            Arc::new(InMemory::new())
        } else {
            return Err(bad("expected s3://, file:// or memory://".into()));
        };
        Ok(Self {
            store,
            url: url.to_string(),
        })
    }

    /// Storage over any object store (tests wrap stores to slow them down or count calls).
    pub fn from_store(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            store,
            url: url.into(),
        }
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            url: "memory://".into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    fn dataset_prefix(id: &DatasetId) -> Path {
        Path::from_iter([id.namespace(), id.name()])
    }

    /// Where part `k` of an upload is written.
    pub fn part_path(id: &DatasetId, upload_id: &str, k: usize) -> Path {
        Path::from_iter([
            id.namespace(),
            id.name(),
            "parts",
            upload_id,
            &format!("part-{k}.parquet"),
        ])
    }

    /// Where the manifest of a version is committed.
    pub fn manifest_path(id: &DatasetId, version: u64) -> Path {
        Path::from_iter([
            id.namespace(),
            id.name(),
            &format!("v{version}.manifest.json"),
        ])
    }

    fn parse_manifest_name(file: &str) -> Option<u64> {
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

    /// Commits a manifest, allocating its version with a create-only write: starts after
    /// the newest existing version and moves on when another writer took the number.
    /// On return `manifest.version` holds the committed version.
    pub async fn commit(&self, manifest: &mut Manifest) -> Result<()> {
        let id = manifest.dataset()?;
        let mut version = self.versions(&id).await?.last().copied().unwrap_or(0) + 1;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            manifest.version = version;
            let path = Self::manifest_path(&id, version);
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(manifest.to_json()?), opts)
                .await
            {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => version += 1,
                Err(e) => return Err(Error::storage(format!("commit manifest {path}"), e)),
            }
        }
        Err(Error::Aborted(format!(
            "failed to allocate a version of {id} after {MAX_COMMIT_ATTEMPTS} attempts; retry the upload"
        )))
    }

    /// Rewrites an existing manifest in place (only the lease/expiry may change).
    pub async fn rewrite_manifest(&self, manifest: &Manifest) -> Result<()> {
        let path = Self::manifest_path(&manifest.dataset()?, manifest.version);
        self.store
            .put(&path, PutPayload::from(manifest.to_json()?))
            .await
            .map(|_| ())
            .map_err(|e| Error::storage(format!("rewrite manifest {path}"), e))
    }

    /// Committed versions of a dataset, ascending.
    pub async fn versions(&self, id: &DatasetId) -> Result<Vec<u64>> {
        let prefix = Self::dataset_prefix(id);
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| Error::storage(format!("list {prefix}"), e))?;
        let mut versions: Vec<u64> = listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename().and_then(Self::parse_manifest_name))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// Reads one version's manifest; `NotFound` if it was never committed.
    pub async fn read_manifest(&self, id: &DatasetId, version: u64) -> Result<Manifest> {
        let path = Self::manifest_path(id, version);
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match bytes {
            Ok(b) => Manifest::from_json(&b),
            Err(object_store::Error::NotFound { .. }) => Err(Error::not_found(format!(
                "dataset {id} has no version {version}"
            ))),
            Err(e) => Err(Error::storage(format!("read manifest {path}"), e)),
        }
    }

    /// All manifests of a dataset, ascending by version.
    pub async fn list_manifests(&self, id: &DatasetId) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for v in self.versions(id).await? {
            match self.read_manifest(id, v).await {
                Ok(m) => out.push(m),
                // Deleted between listing and reading.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The newest version that has not expired at `now`; `NotFound` if there is none.
    pub async fn latest_manifest(&self, id: &DatasetId, now: DateTime<Utc>) -> Result<Manifest> {
        for v in self.versions(id).await?.into_iter().rev() {
            match self.read_manifest(id, v).await {
                Ok(m) if !m.is_expired(now) => return Ok(m),
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::not_found(format!("dataset {id} not found")))
    }

    /// Datasets that have at least one committed version, optionally in one namespace.
    pub async fn list_datasets(&self, namespace: Option<&str>) -> Result<Vec<DatasetId>> {
        let namespaces = match namespace {
            Some(ns) => vec![ns.to_string()],
            None => self.child_dirs(None).await?,
        };
        let mut out = Vec::new();
        for ns in namespaces {
            if validate_label("namespace", &ns).is_err() {
                continue;
            }
            let ns_path = Path::from(ns.as_str());
            for name in self.child_dirs(Some(&ns_path)).await? {
                let Ok(id) = DatasetId::new(ns.as_str(), name) else {
                    continue;
                };
                if !self.versions(&id).await?.is_empty() {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn child_dirs(&self, prefix: Option<&Path>) -> Result<Vec<String>> {
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

    /// Deletes one version: first its manifest (so it stops existing), then its parts.
    pub async fn delete_version(&self, id: &DatasetId, version: u64) -> Result<()> {
        let manifest = self.read_manifest(id, version).await?;
        let path = Self::manifest_path(id, version);
        self.delete_ignoring_missing(&path).await?;
        for part in &manifest.parts {
            self.delete_ignoring_missing(&Path::from(part.path.as_str()))
                .await?;
        }
        Ok(())
    }

    /// Deletes every version and every object of a dataset; returns the deleted versions.
    pub async fn delete_dataset(&self, id: &DatasetId) -> Result<Vec<u64>> {
        let versions = self.versions(id).await?;
        for v in &versions {
            self.delete_ignoring_missing(&Self::manifest_path(id, *v))
                .await?;
        }
        let prefix = Self::dataset_prefix(id);
        let rest: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| Error::storage(format!("list {prefix}"), e))?;
        for p in rest {
            self.delete_ignoring_missing(&p).await?;
        }
        Ok(versions)
    }

    /// Deletes the given objects, best effort (used to undo a failed upload).
    pub async fn delete_quietly(&self, paths: &[Path]) {
        for p in paths {
            if let Err(e) = self.delete_ignoring_missing(p).await {
                tracing::warn!(path = %p, error = %e, "failed to delete object; the orphan sweep will retry");
            }
        }
    }

    async fn delete_ignoring_missing(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::storage(format!("delete {path}"), e)),
        }
    }

    /// Removes part files that no manifest references and that are older than `grace`
    /// (uploads still in flight are younger). Returns how many objects were removed.
    pub async fn clean_orphans(&self, grace: Duration, now: DateTime<Utc>) -> Result<usize> {
        let cutoff = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let mut removed = 0;
        for id in self.all_dataset_dirs().await? {
            let referenced: std::collections::HashSet<String> = self
                .list_manifests(&id)
                .await?
                .into_iter()
                .flat_map(|m| m.parts.into_iter().map(|p| p.path))
                .collect();
            let parts_prefix = Self::dataset_prefix(&id).join("parts");
            let objects: Vec<_> = self
                .store
                .list(Some(&parts_prefix))
                .try_collect()
                .await
                .map_err(|e| Error::storage(format!("list {parts_prefix}"), e))?;
            for o in objects {
                if o.last_modified < cutoff && !referenced.contains(o.location.as_ref()) {
                    self.delete_ignoring_missing(&o.location).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Every `<ns>/<name>` directory, with or without committed versions.
    async fn all_dataset_dirs(&self) -> Result<Vec<DatasetId>> {
        let mut out = Vec::new();
        for ns in self.child_dirs(None).await? {
            let ns_path = Path::from(ns.as_str());
            for name in self.child_dirs(Some(&ns_path)).await? {
                if let Ok(id) = DatasetId::new(ns.as_str(), name) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Reads one Parquet part: one GET for the whole object, decoded off the async runtime.
    /// Memory is bounded by the part size, which the writer bounds.
    pub async fn read_part(&self, part: &PartInfo, batch_size: usize) -> Result<Vec<RecordBatch>> {
        let (path, bytes) = self.get_part(part).await?;
        tokio::task::spawn_blocking(move || part_batches(path, bytes, batch_size)?.collect())
            .await
            .map_err(|e| Error::Internal(format!("Parquet decoder task failed: {e}")))?
    }

    /// Reads one Parquet part into Flight messages of about `max_message` bytes: one GET for
    /// the whole object, then batches are decoded and encoded one at a time off the async
    /// runtime, so only one decoded batch is in memory besides the file and the messages.
    pub async fn load_part(
        &self,
        part: &PartInfo,
        batch_size: usize,
        schema: SchemaRef,
        max_message: usize,
    ) -> Result<EncodedPart> {
        let (path, bytes) = self.get_part(part).await?;
        tokio::task::spawn_blocking(move || {
            let batches = part_batches(path, bytes, batch_size)?;
            encode_batches(&schema, batches, max_message)
        })
        .await
        .map_err(|e| Error::Internal(format!("Parquet decoder task failed: {e}")))?
    }

    async fn get_part(&self, part: &PartInfo) -> Result<(Path, Bytes)> {
        let path = Path::from(part.path.as_str());
        let bytes = self.get_object(&path).await.map_err(|e| match e {
            Error::NotFound(_) => Error::Internal(format!(
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

/// The batches of a Parquet part, decoded as they are pulled, with the dictionaries the
/// writer recorded restored.
fn part_batches(
    path: Path,
    bytes: Bytes,
    batch_size: usize,
) -> Result<impl Iterator<Item = Result<RecordBatch>> + Send + 'static> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| Error::data(format!("open Parquet part {path}"), e))?;
    let dictionaries =
        crate::dictionary::recorded(builder.metadata().file_metadata().key_value_metadata())?;
    let reader = builder
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| Error::data(format!("read Parquet part {path}"), e))?;
    Ok(reader.map(move |b| {
        let b = b.map_err(|e| Error::data(format!("decode Parquet part {path}"), e))?;
        crate::dictionary::restore(b, &dictionaries)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests_support::sample;

    #[tokio::test]
    async fn versions_are_allocated_create_only() {
        let s = Storage::in_memory();
        let mut a = sample(0);
        let mut b = sample(0);
        s.commit(&mut a).await.unwrap();
        s.commit(&mut b).await.unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        let id = a.dataset().unwrap();
        assert_eq!(s.versions(&id).await.unwrap(), vec![1, 2]);
        assert_eq!(s.read_manifest(&id, 2).await.unwrap(), b);
        assert_eq!(s.latest_manifest(&id, Utc::now()).await.unwrap().version, 2);
        assert_eq!(s.list_datasets(None).await.unwrap(), vec![id.clone()]);
        assert_eq!(s.list_datasets(Some("other")).await.unwrap(), vec![]);
        let err = s.read_manifest(&id, 9).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn a_taken_number_moves_the_writer_on() {
        let s = Storage::in_memory();
        let mut a = sample(0);
        s.commit(&mut a).await.unwrap();
        // Simulate a racing writer that committed v2 after we listed: pre-create it.
        let id = a.dataset().unwrap();
        let mut racer = sample(2);
        racer.upload_id = "racer".into();
        s.store
            .put(
                &Storage::manifest_path(&id, 2),
                PutPayload::from(racer.to_json().unwrap()),
            )
            .await
            .unwrap();
        let mut b = sample(0);
        s.commit(&mut b).await.unwrap();
        assert_eq!(b.version, 3);
        assert_eq!(s.read_manifest(&id, 2).await.unwrap().upload_id, "racer");
    }

    #[tokio::test]
    async fn expired_versions_are_skipped_by_latest() {
        let s = Storage::in_memory();
        let mut a = sample(0);
        s.commit(&mut a).await.unwrap();
        let mut b = sample(0);
        b.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
        s.commit(&mut b).await.unwrap();
        let id = a.dataset().unwrap();
        assert_eq!(s.latest_manifest(&id, Utc::now()).await.unwrap().version, 1);
    }

    #[tokio::test]
    async fn delete_and_orphans() {
        let s = Storage::in_memory();
        let mut m = sample(0);
        let id = m.dataset().unwrap();
        let part = Storage::part_path(&id, "u1", 0);
        m.parts[0].path = part.to_string();
        s.put(&part, Bytes::from_static(b"x")).await.unwrap();
        s.commit(&mut m).await.unwrap();
        let orphan = Storage::part_path(&id, "u2", 0);
        s.put(&orphan, Bytes::from_static(b"y")).await.unwrap();

        // Young orphans survive; old ones go; referenced parts always stay.
        assert_eq!(
            s.clean_orphans(Duration::from_secs(3600), Utc::now())
                .await
                .unwrap(),
            0
        );
        let later = Utc::now() + chrono::Duration::hours(2);
        assert_eq!(
            s.clean_orphans(Duration::from_secs(3600), later)
                .await
                .unwrap(),
            1
        );
        assert!(s.store.head(&orphan).await.is_err());
        assert!(s.store.head(&part).await.is_ok());

        s.delete_version(&id, 1).await.unwrap();
        assert!(s.versions(&id).await.unwrap().is_empty());
        assert!(s.store.head(&part).await.is_err());
    }

    #[test]
    fn paths_and_urls() {
        let id = DatasetId::new("ns", "ds").unwrap();
        assert_eq!(
            Storage::part_path(&id, "U", 3).as_ref(),
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
