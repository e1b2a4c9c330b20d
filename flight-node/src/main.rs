//! `flight-node`: parse flags, set up logging, serve until SIGTERM or Ctrl-C.

use clap::Parser;
use flight_node::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keep_large_allocations_returnable();
    let config = Config::parse();
    init_logging(&config.log_format);
    match flight_node::server::run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "flight-node stopped");
            eprintln!("flight-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Tables come and go in large buffers. Buffers below the mmap threshold come from the heap,
/// where an upload reuses the pages it freed a moment before; buffers above it are mapped
/// fresh, so every page faults and is zeroed again (half of an upload's time with a 1 MiB
/// threshold). glibc's own policy raises the threshold as large buffers are freed, and the
/// heap then keeps about twice the cached data. A fixed 4 MiB threshold keeps most buffers
/// of an upload (messages, column chunks, pages) on the heap, and after each upload or load
/// the library calls `malloc_trim`, which returns what is free: the resident size stays
/// within about 1.15x the cached bytes (see bench/README.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_large_allocations_returnable() {
    // SAFETY: mallopt only changes allocator parameters; it is called once, first thing in
    // main, and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    flight_node::memory::set_release_hook(trim);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_allocations_returnable() {}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
