//! Giving memory back to the operating system after large work.
//!
//! An upload or a load from storage allocates and frees several copies of a table on the
//! way into the cache. Some allocators keep freed memory for reuse, so the node's resident
//! size would stay well above the data it caches. The binary registers a function that
//! returns such memory (glibc's `malloc_trim`); the library calls it after large work.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers the function that returns freed memory to the OS (once, at start-up).
pub fn set_release_hook(hook: fn()) {
    let _ = RELEASE.set(hook);
}

/// Returns freed memory to the OS, off the async runtime; a no-op without a hook.
pub fn release() {
    if let Some(hook) = RELEASE.get().copied() {
        tokio::task::spawn_blocking(hook);
    }
}
