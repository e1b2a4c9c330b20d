//! Prints the operator's CRDs as YAML, or writes one file per CRD with `--out-dir`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let out_dir = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--out-dir"), Some(dir)) => Some(PathBuf::from(dir)),
        _ => {
            eprintln!("usage: crdgen [--out-dir DIR]");
            return ExitCode::from(2);
        }
    };
    let rendered = match flight_operator::crd::render_all() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for (file, yaml) in rendered {
        let result = match &out_dir {
            Some(dir) => std::fs::write(dir.join(&file), &yaml),
            None => std::io::stdout().write_all(format!("---\n{yaml}").as_bytes()),
        };
        if let Err(e) = result {
            eprintln!("failed to write {file}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
