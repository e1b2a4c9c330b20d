//! `flight-node`: parse flags, set up logging, serve until SIGTERM or Ctrl-C.

use clap::Parser;
use flight_node::Config;

/// Tables come and go in large buffers. jemalloc keeps pages freed by one request for the
/// next (with glibc, an upload of 10 MB faulted in four times its size of fresh pages, most
/// of its time) and gives unused pages back to the OS from a background thread after a
/// second. After large work the library asks for them back at once (`purge_free_pages`),
/// so the resident size stays within about 1.15x the cached bytes (see bench/README.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options, read when it starts: idle pages go back after a second, straight to
/// the OS (not first to "muzzy" pages the OS may reclaim later, which still count as
/// resident).
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    register_memory_release();
    let config = Config::parse();
    flight_node::process::init_logging(&config.log_format, "info");
    match flight_node::server::run(config, flight_node::process::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "flight-node stopped");
            eprintln!("flight-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_env = "msvc"))]
fn register_memory_release() {
    flight_node::memory::set_release_hook(purge_free_pages);
}

/// Returns the free pages of every jemalloc arena to the OS.
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code)]
fn purge_free_pages() {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes no input and writes no output (all
    // pointers null, length 0); jemalloc allows it from any thread.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(target_env = "msvc")]
fn register_memory_release() {}
