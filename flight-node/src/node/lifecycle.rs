//! A version's life after its upload, as this node sees it: listing, delete, evict, renew,
//! consumers' releases, and the reads in flight that a delete waits for.

use super::*;

impl Node {
    /// Newest unexpired version of every dataset, of the given namespaces or of all. A
    /// dataset whose records cannot be read is left out (and logged), so one damaged
    /// dataset does not hide the others.
    pub async fn list(&self, namespaces: Option<&[String]>) -> Result<Vec<Arc<Manifest>>> {
        let ids = match namespaces {
            None => self.versions.datasets(None).await?,
            Some(list) => {
                let mut ids = Vec::new();
                for ns in list {
                    ids.extend(self.versions.datasets(Some(ns)).await?);
                }
                ids
            }
        };
        let mut out = Vec::new();
        for id in ids {
            match self.latest(&id).await {
                Ok(m) => out.push(m),
                Err(Error::NotFound(_)) => {}
                Err(e @ (Error::Storage { .. } | Error::Shared(_))) => return Err(e),
                Err(e) => {
                    tracing::warn!(dataset = %id, error = %e, "left out of the listing: its records cannot be read")
                }
            }
        }
        Ok(out)
    }

    /// Deletes one version or the whole dataset from storage and memory.
    pub async fn delete(&self, id: &DatasetId, version: Option<u64>) -> Result<Vec<u64>> {
        let deleted = match version {
            Some(v) => {
                if !self.versions.delete_version(id, v).await? {
                    self.evict(id, version);
                    return Err(Error::not_found(format!(
                        "version {v} of dataset {id} was already deleted"
                    )));
                }
                vec![v]
            }
            None => self.versions.delete_dataset(id).await?,
        };
        self.evict(id, version);
        tracing::info!(dataset = %id, versions = ?deleted, "deleted");
        Ok(deleted)
    }

    /// Drops a dataset (or one version) from memory only.
    pub fn evict(&self, id: &DatasetId, version: Option<u64>) -> usize {
        let mut manifests = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<CacheKey> = manifests
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|(d, v)| d == id && version.is_none_or(|want| *v == want))
            .collect();
        for k in keys {
            manifests.pop(&k);
        }
        drop(manifests);
        self.cache.evict(id, version)
    }

    /// Extends the lease of a version to `expires_at`; refused once it has expired.
    pub async fn renew(&self, ticket: &Ticket, expires_at: DateTime<Utc>) -> Result<Arc<Manifest>> {
        let current = self.resolve(ticket).await?;
        if expires_at <= self.now() {
            return Err(Error::invalid(
                "the new expiration time must be in the future",
            ));
        }
        let (m, etag) = self
            .versions
            .renew(&ticket.dataset, current.version, expires_at, self.now())
            .await?;
        tracing::info!(dataset = %ticket.dataset, version = ticket.version, %expires_at, "renewed lease");
        Ok(self.remember((ticket.dataset.clone(), ticket.version), m, etag))
    }

    /// The `release` action: a consumer is done with a version. The release that
    /// completes its consumers schedules its deletion after `--release-grace`.
    pub async fn release(
        self: &Arc<Self>,
        ticket: &Ticket,
        consumer: Option<&str>,
    ) -> Result<Arc<Manifest>> {
        let current = self.resolve(ticket).await?;
        let grace = self.limits.release_grace;
        let (m, completed) = self
            .versions
            .release(
                &ticket.dataset,
                current.version,
                consumer,
                grace,
                self.now(),
            )
            .await?;
        let key = (ticket.dataset.clone(), current.version);
        let m = self.remember(key.clone(), m, None);
        self.metrics.record_release(completed);
        if completed {
            tracing::info!(dataset = %key.0, version = key.1, grace_seconds = grace.as_secs_f64(), "released by every consumer; deleting after the grace period");
            let node = Arc::clone(self);
            tokio::spawn(async move { node.delete_released(key, grace).await });
        }
        Ok(m)
    }

    /// Deletes a version released by all its consumers once `grace` has passed and no read
    /// of it is in flight on this node. (Its record already expires then, so other nodes
    /// refuse new reads of it, and a node that stops before this runs leaves it to the TTL
    /// clean-up.)
    pub(super) async fn delete_released(&self, key: CacheKey, grace: Duration) {
        tokio::time::sleep(grace).await;
        let started = std::time::Instant::now();
        let mut logged = false;
        while self.reading(&key) {
            if !logged && started.elapsed() > Duration::from_secs(5) {
                tracing::info!(dataset = %key.0, version = key.1, "waiting for reads in flight before deleting a released version");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.versions.delete_version(&key.0, key.1).await {
            Ok(deleted) => {
                if deleted {
                    self.metrics.record_release_delete();
                }
                tracing::info!(dataset = %key.0, version = key.1, "deleted a version released by every consumer");
            }
            Err(e) => {
                tracing::warn!(dataset = %key.0, version = key.1, error = %e, "failed to delete a released version; its expiry leaves it to the TTL clean-up")
            }
        }
        self.cache.evict(&key.0, Some(key.1));
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop(&key);
    }

    /// Whether a read of this version is in flight on this node.
    pub fn reading(&self, key: &CacheKey) -> bool {
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Counts a read of `key` until the guard is dropped.
    pub(super) fn read_guard(&self, key: CacheKey) -> ReadGuard {
        *self
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert(0) += 1;
        ReadGuard {
            reads: Arc::clone(&self.reads),
            key,
        }
    }
}
