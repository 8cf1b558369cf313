//! Lays out a directory as a CANN toolkit over the ACL fake (see `ascendcl_fake::toolkit`) and
//! prints the `export` line that points the ACL backend at it.
//!
//! ```text
//! acl-fake-toolkit [--kernels PATH] DIR
//! ```
//! The fake library is the one built beside this program; `--kernels` is the host build of the
//! Ascend C kernels (`libascendc_kernels_host.so`, which `scripts/acl-fake-env.sh` finds).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut dir, mut kernels) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kernels" => kernels = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: acl-fake-toolkit [--kernels PATH] DIR");
                return ExitCode::SUCCESS;
            }
            _ if a.starts_with('-') => {
                eprintln!(
                    "error: unknown option {a}\nusage: acl-fake-toolkit [--kernels PATH] DIR"
                );
                return ExitCode::from(2);
            }
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: acl-fake-toolkit [--kernels PATH] DIR");
        return ExitCode::from(2);
    };
    let Some(fake) = ascendcl_fake::library_path() else {
        eprintln!(
            "error: {} is not beside this program; build it with `cargo build -p acl-fake`",
            ascendcl_fake::LIBRARY_FILE
        );
        return ExitCode::FAILURE;
    };
    match ascendcl_fake::toolkit::install(&dir, &fake, kernels.as_deref()) {
        Ok(dir) => {
            let dir = dir.canonicalize().unwrap_or(dir);
            println!("export ASCEND_TOOLKIT_HOME={}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
