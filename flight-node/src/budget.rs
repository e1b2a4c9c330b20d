//! What requests may hold beyond the cache: request memory and upload slots.
//!
//! The cache is bounded by `--memory-limit`. Everything else a node holds for requests is
//! bounded here, so that slow or hostile clients cannot grow the process without limit:
//!
//! * **Request memory** (`--request-memory`, a quarter of `--memory-limit` by default; half
//!   for reads, half for uploads, so that neither kind of client can take the other's):
//!   versions being loaded from storage, parts of a version too large for the cache that a
//!   cold `DoGet` streams, parts a cold export reads, and the batches of uploads until their
//!   part is stored (twice their bytes: the batches and the encoded file). An upload that
//!   finds the budget in use first stores what it holds, so a waiting upload holds nothing
//!   and uploads cannot wait for each other in a circle. Work reserves its bytes before it
//!   reads; when the budget is in use it waits up to `--budget-wait`, then is refused with
//!   RESOURCE_EXHAUSTED naming the budget. A reservation is released when the data is sent
//!   or the request ends (a stalled reader is ended by `--stream-stall-timeout`).
//! * **Upload slots** (`--max-uploads` per node, `--max-uploads-per-token`): each upload
//!   (DoPut, HTTP CSV, `load`) holds a slot for its lifetime; past either cap it is refused
//!   at once with RESOURCE_EXHAUSTED.
//!
//! Reads of cached versions reserve nothing: they send the cache's own buffers. What an
//! upload keeps for the cache holds room in the cache itself (`cache::Reservation`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Request memory is counted in KiB (a semaphore takes at most `u32` permits at once).
const UNIT: usize = 1024;

/// One half of request memory.
#[derive(Debug)]
struct Pool {
    sem: Arc<Semaphore>,
    units: usize,
    /// What it is for, in messages ("reads", "uploads").
    purpose: &'static str,
}

impl Pool {
    fn new(bytes: usize, purpose: &'static str) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(units)),
            units,
            purpose,
        }
    }

    fn units_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT).clamp(1, self.units)).unwrap_or(u32::MAX)
    }

    fn used(&self) -> usize {
        (self.units - self.sem.available_permits().min(self.units)) * UNIT
    }
}

/// The node's budgets.
#[derive(Debug)]
pub struct Budgets {
    /// Request memory for reads (loads, cold streams, exports) and for uploads, half each,
    /// so that neither kind of client can take the other's.
    reads: Pool,
    upload_memory: Pool,
    wait: Duration,
    max_uploads: usize,
    max_uploads_per_token: usize,
    uploads: Mutex<Uploads>,
    refused_memory: AtomicU64,
    refused_uploads: AtomicU64,
    stalled_streams: AtomicU64,
}

#[derive(Debug, Default)]
struct Uploads {
    total: usize,
    per_token: HashMap<String, usize>,
}

/// Figures for `stats` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStats {
    pub request_memory_used: u64,
    pub request_memory_limit: u64,
    pub uploads_active: u64,
    pub max_uploads: u64,
    /// Requests refused because request memory stayed in use for `--budget-wait`.
    pub refused_memory: u64,
    /// Uploads refused at `--max-uploads` or `--max-uploads-per-token`.
    pub refused_uploads: u64,
    /// Streams ended because their client read nothing for `--stream-stall-timeout`.
    pub stalled_streams: u64,
}

/// Bytes of request memory held until dropped.
#[derive(Debug)]
pub struct MemoryPermit {
    _permit: OwnedSemaphorePermit,
}

impl MemoryPermit {
    /// Holds `other`'s bytes too.
    pub fn merge(&mut self, other: MemoryPermit) {
        self._permit.merge(other._permit);
    }

    /// Gives back all but `bytes` of the reservation (after a load, what is kept is smaller
    /// than what loading it took).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT).max(1);
        if self._permit.num_permits() > keep {
            drop(self._permit.split(self._permit.num_permits() - keep));
        }
    }
}

/// An upload's slot, given back when dropped.
#[derive(Debug)]
pub struct UploadSlot {
    budgets: Arc<Budgets>,
    token: Option<String>,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        let mut u = self
            .budgets
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        u.total = u.total.saturating_sub(1);
        if let Some(t) = &self.token {
            if let Some(n) = u.per_token.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    u.per_token.remove(t);
                }
            }
        }
    }
}

impl Budgets {
    pub fn new(
        request_memory: usize,
        wait: Duration,
        max_uploads: usize,
        max_uploads_per_token: usize,
    ) -> Self {
        Self {
            reads: Pool::new(request_memory / 2, "reads"),
            upload_memory: Pool::new(request_memory - request_memory / 2, "uploads"),
            wait,
            max_uploads: max_uploads.max(1),
            max_uploads_per_token: max_uploads_per_token.max(1),
            uploads: Mutex::default(),
            refused_memory: AtomicU64::new(0),
            refused_uploads: AtomicU64::new(0),
            stalled_streams: AtomicU64::new(0),
        }
    }

    /// Reserves `bytes` of the reads' request memory for `what` (a phrase such as "a cold
    /// read"), waiting up to `--budget-wait`. Work larger than the whole budget takes all of
    /// it, so it runs alone rather than never.
    pub async fn reserve(&self, bytes: usize, what: &str) -> Result<MemoryPermit> {
        self.reserve_in(&self.reads, bytes, what).await
    }

    /// The same from the uploads' request memory.
    pub async fn reserve_upload(&self, bytes: usize, what: &str) -> Result<MemoryPermit> {
        self.reserve_in(&self.upload_memory, bytes, what).await
    }

    /// Reserves `bytes` of the uploads' request memory if they are free now.
    pub fn try_reserve_upload(&self, bytes: usize) -> Option<MemoryPermit> {
        Arc::clone(&self.upload_memory.sem)
            .try_acquire_many_owned(self.upload_memory.units_for(bytes))
            .ok()
            .map(|permit| MemoryPermit { _permit: permit })
    }

    async fn reserve_in(&self, pool: &Pool, bytes: usize, what: &str) -> Result<MemoryPermit> {
        let acquire = Arc::clone(&pool.sem).acquire_many_owned(pool.units_for(bytes));
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(MemoryPermit { _permit: permit }),
            Ok(Err(_)) => Err(Error::Internal(
                "the request memory budget is closed".into(),
            )),
            Err(_) => {
                self.refused_memory.fetch_add(1, Ordering::Relaxed);
                Err(Error::Busy(format!(
                    "{what} needs {} of request memory, and the node's {} for {} (half of \
                     --request-memory) stayed in use for {}s (--budget-wait); retry later",
                    human(bytes.min(pool.units * UNIT)),
                    human(pool.units * UNIT),
                    pool.purpose,
                    self.wait.as_secs_f64()
                )))
            }
        }
    }

    /// Takes an upload slot for the caller holding `token` (None without authentication).
    pub fn upload_slot(self: &Arc<Self>, token: Option<&str>) -> Result<UploadSlot> {
        let mut u = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if u.total >= self.max_uploads {
            drop(u);
            self.refused_uploads.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Busy(format!(
                "the node already runs {} uploads (--max-uploads); retry later",
                self.max_uploads
            )));
        }
        if let Some(t) = token {
            let n = u.per_token.get(t).copied().unwrap_or(0);
            if n >= self.max_uploads_per_token {
                drop(u);
                self.refused_uploads.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Busy(format!(
                    "this token already runs {} uploads on this node (--max-uploads-per-token); \
                     retry when one has finished",
                    self.max_uploads_per_token
                )));
            }
            u.per_token.insert(t.to_string(), n + 1);
        }
        u.total += 1;
        Ok(UploadSlot {
            budgets: Arc::clone(self),
            token: token.map(str::to_string),
        })
    }

    /// Counts a stream ended for not being read.
    pub fn record_stall(&self) {
        self.stalled_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> BudgetStats {
        BudgetStats {
            request_memory_used: (self.reads.used() + self.upload_memory.used()) as u64,
            request_memory_limit: ((self.reads.units + self.upload_memory.units) * UNIT) as u64,
            uploads_active: self.uploads.lock().unwrap_or_else(|p| p.into_inner()).total as u64,
            max_uploads: self.max_uploads as u64,
            refused_memory: self.refused_memory.load(Ordering::Relaxed),
            refused_uploads: self.refused_uploads.load(Ordering::Relaxed),
            stalled_streams: self.stalled_streams.load(Ordering::Relaxed),
        }
    }
}

fn human(bytes: usize) -> String {
    bytesize::ByteSize::b(bytes as u64).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_reserved_waited_for_and_refused_with_the_budget_named() {
        let b = Budgets::new(20 << 20, Duration::from_millis(100), 4, 2);
        let first = b.reserve(6 << 20, "a cold read").await.unwrap();
        assert_eq!(b.stats().request_memory_used, 6 << 20);
        // Reads and uploads each have half: a read holding most of its half leaves the
        // uploads' half free.
        let upload = b.reserve_upload(8 << 20, "an upload").await.unwrap();
        assert!(b.try_reserve_upload(4 << 20).is_none());
        drop(upload);
        // Larger than the whole budget: takes all of it once the first is gone.
        let big = tokio::spawn({
            let b = Arc::new(Budgets::new(20 << 20, Duration::from_secs(5), 4, 2));
            async move {
                let held = b.reserve(6 << 20, "x").await.unwrap();
                let waiting = tokio::spawn({
                    let b = Arc::clone(&b);
                    async move { b.reserve(100 << 20, "y").await.map(|_| ()) }
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(!waiting.is_finished());
                drop(held);
                waiting.await.unwrap()
            }
        });
        let err = b.reserve(6 << 20, "a cold read").await.unwrap_err();
        assert!(matches!(err, Error::Busy(_)), "{err}");
        assert!(err.to_string().contains("--request-memory"), "{err}");
        assert_eq!(b.stats().refused_memory, 1);
        drop(first);
        assert_eq!(b.stats().request_memory_used, 0);
        b.reserve(6 << 20, "a cold read").await.unwrap();
        big.await.unwrap().unwrap();
    }

    #[test]
    fn upload_slots_are_capped_per_node_and_per_token() {
        let b = Arc::new(Budgets::new(1 << 20, Duration::ZERO, 3, 2));
        let a1 = b.upload_slot(Some("a")).unwrap();
        let _a2 = b.upload_slot(Some("a")).unwrap();
        let err = b.upload_slot(Some("a")).unwrap_err();
        assert!(err.to_string().contains("--max-uploads-per-token"), "{err}");
        let _b1 = b.upload_slot(Some("b")).unwrap();
        let err = b.upload_slot(None).unwrap_err();
        assert!(err.to_string().contains("--max-uploads)"), "{err}");
        drop(a1);
        assert_eq!(b.stats().uploads_active, 2);
        let _a3 = b.upload_slot(Some("a")).unwrap();
        assert_eq!(b.stats().refused_uploads, 2);
    }
}
