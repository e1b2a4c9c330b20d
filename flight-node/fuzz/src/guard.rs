//! The server turns a panic inside the IPC decoder into `INVALID_ARGUMENT`
//! (`catch_unwind` around `FlightDataDecoder` in `service.rs`). libFuzzer's panic hook
//! aborts on every panic, caught or not; this hook lets panics through to `catch_unwind`
//! only while [`guarded`] code runs, and aborts on every other panic as before.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();
/// Panics caught in guarded code since start-up.
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// Installs the hook (once); call from the target's `init`, after libFuzzer's hook.
/// With `FUZZ_SHOW_CAUGHT=1` in the environment, each caught panic is printed.
pub fn install() {
    INSTALL.call_once(|| {
        let show = std::env::var_os("FUZZ_SHOW_CAUGHT").is_some_and(|v| v == "1");
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let n = CAUGHT.fetch_add(1, Ordering::Relaxed) + 1;
                if show {
                    eprintln!("caught (as the server does) #{n}: {info}");
                }
                return;
            }
            previous(info)
        }));
    });
}

/// Runs `f` with panics allowed to unwind to a `catch_unwind` inside it.
pub fn guarded<T>(f: impl FnOnce() -> T) -> T {
    let before = GUARDED.with(|g| g.replace(true));
    let out = f();
    GUARDED.with(|g| g.set(before));
    out
}

/// Panics caught in guarded code so far.
pub fn caught() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}
