//! Prints the absolute path of the etcd binary that the `etcd-bin-vendored` crate ships, so
//! `tests/k8s/control-plane` can start etcd without downloading anything.
use std::process::ExitCode;

fn main() -> ExitCode {
    match etcd_bin_vendored::etcd_bin_path() {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etcd-path: no vendored etcd binary: {e}");
            ExitCode::FAILURE
        }
    }
}
