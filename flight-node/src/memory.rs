//! Giving memory back to the operating system after large work.
//!
//! An upload or a load from storage allocates and frees several copies of a table on the
//! way into the cache. The binary's allocator keeps freed pages for a moment so the next
//! request reuses them instead of faulting in fresh ones (page faults were most of a small
//! upload's time), and returns them when idle. After large work, and when a large cached
//! part is freed, waiting would leave the node's resident size well above the data it
//! caches, or above its memory limit while an evicted table makes room for a new one: the
//! binary registers a function that returns free memory at once, and the library calls it
//! then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Work of at least this many bytes returns its free memory when it ends.
const RELEASE_AFTER_BYTES: u64 = 32 << 20;

static RELEASE: OnceLock<fn()> = OnceLock::new();
static PENDING: AtomicBool = AtomicBool::new(false);

/// Registers the function that returns freed memory to the OS (once, at start-up).
pub fn set_release_hook(hook: fn()) {
    let _ = RELEASE.set(hook);
}

/// Returns freed memory to the OS after work on `bytes` bytes ends (or their memory is
/// freed), when that is large; smaller work leaves it to the allocator.
pub fn release_after(bytes: u64) {
    if bytes >= RELEASE_AFTER_BYTES {
        release();
    }
}

/// Returns freed memory to the OS, off the async runtime when called on it; a no-op
/// without a hook. Calls made while one is waiting to run share it.
pub fn release() {
    let Some(hook) = RELEASE.get().copied() else {
        return;
    };
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    let run = move || {
        // Cleared first: memory freed while the hook runs asks for another pass.
        PENDING.store(false, Ordering::Release);
        hook();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(run);
        }
        Err(_) => run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        std::thread::sleep(Duration::from_millis(50));
        CALLS.fetch_add(1, Ordering::SeqCst);
    }

    /// Outside a runtime the hook runs in place; on a runtime it runs on a blocking thread,
    /// and calls made while one waits share it.
    #[test]
    fn release_runs_the_hook_once_per_burst() {
        set_release_hook(count);
        release();
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..10 {
                release();
            }
            for _ in 0..100 {
                if CALLS.load(Ordering::SeqCst) > 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    }
}
