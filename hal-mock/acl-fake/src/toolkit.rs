//! The fake dressed as a CANN toolkit: a directory whose `lib64/` holds the libraries the ACL
//! backend loads (`libascendcl.so`, `libnnopbase.so`, `libopapi.so`, `libhccl.so`), all links
//! to this fake, and `libascendc_kernels.so`, a link to the host build of the Ascend C kernels.
//! One variable then points every loader at it, as on an NPU machine:
//! `ASCEND_TOOLKIT_HOME=<dir>` (the runtime is found in `<dir>/lib64`, the ACLNN and HCCL
//! libraries and the kernels library beside it).
//!
//! ```text
//! cargo run -p acl-fake --bin acl-fake-toolkit -- --kernels <libascendc_kernels_host.so> <dir>
//! export ASCEND_TOOLKIT_HOME=<dir> ASCEND_HAL_BACKEND=acl
//! ```
//! (`scripts/acl-fake-env.sh` does both and finds the kernels library.) Every link names the
//! same file, so the process loads one fake, whichever name a loader asks for.

use std::io;
use std::path::{Path, PathBuf};

/// The library names a toolkit's `lib64` holds that the fake stands in for.
pub const FAKED_LIBRARIES: [&str; 4] = [
    "libascendcl.so",
    "libnnopbase.so",
    "libopapi.so",
    "libhccl.so",
];

/// Lays out `dir` as a toolkit over the fake library at `fake` (see the module docs), with the
/// kernels library at `host_kernels` if given; links already there are replaced. Returns `dir`.
///
/// # Errors
/// The filesystem's: `fake` or `host_kernels` missing, `dir` not writable.
pub fn install(dir: &Path, fake: &Path, host_kernels: Option<&Path>) -> io::Result<PathBuf> {
    let lib64 = dir.join("lib64");
    std::fs::create_dir_all(&lib64)?;
    let link = |name: &str, target: &Path| -> io::Result<()> {
        let target = target
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", target.display())))?;
        let at = lib64.join(name);
        match std::fs::remove_file(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&target, &at)
        }
        #[cfg(not(unix))]
        {
            std::fs::copy(&target, &at).map(|_| ())
        }
    };
    for name in FAKED_LIBRARIES {
        link(name, fake)?;
    }
    if let Some(k) = host_kernels {
        link("libascendc_kernels.so", k)?;
    }
    Ok(dir.to_path_buf())
}
