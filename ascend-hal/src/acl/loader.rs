//! Finding and opening `libascendcl.so`, in the documented order, never panicking, and saying
//! everything that was tried.
//!
//! Order: an explicit path; `ASCEND_HAL_ACL_LIB`; `$ASCEND_TOOLKIT_HOME/lib64`;
//! `$ASCEND_HOME_PATH/lib64`; `/usr/local/Ascend/ascend-toolkit/latest/lib64`;
//! `/usr/local/Ascend/cann-<version>/lib64` (newest first); `$HOME/Ascend/ascend-toolkit/latest/lib64`
//! (non-root installs); then the system search path (`LD_LIBRARY_PATH`, `ldconfig`).

use std::path::{Path, PathBuf};

use crate::error::LoadAttempt;

/// The library's file name.
pub const LIBRARY_NAME: &str = "libascendcl.so";

/// Where to look for the ACL runtime.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Try this path first.
    pub path: Option<PathBuf>,
    /// Also look where the environment and the default install layouts say (true for
    /// [`AclBackend::load`](super::AclBackend::load)).
    pub search: bool,
}

/// One candidate: where it came from, and a path (absolute) or a bare name for the system search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) origin: String,
    pub(crate) target: PathBuf,
    /// A bare name resolved by the dynamic linker; it is not checked for existence first.
    pub(crate) system: bool,
}

impl Candidate {
    pub(crate) fn file(origin: impl Into<String>, target: PathBuf) -> Self {
        Candidate {
            origin: origin.into(),
            target,
            system: false,
        }
    }

    pub(crate) fn place(&self) -> String {
        format!("{}: {}", self.origin, self.target.display())
    }
}

/// The candidates for `options`, in order; `env` reads an environment variable, `root` is the
/// file-system root (`/` except in tests).
pub(crate) fn candidates(
    options: &LoadOptions,
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
) -> Vec<Candidate> {
    candidates_for(LIBRARY_NAME, "ASCEND_HAL_ACL_LIB", options, env, root)
}

/// The candidates for another library of the toolkit's `lib64` (the ACLNN libraries), in the
/// same order, with `variable` as the override.
pub(crate) fn candidates_for(
    library: &str,
    variable: &'static str,
    options: &LoadOptions,
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(p) = &options.path {
        out.push(Candidate::file("explicit path", p.clone()));
    }
    if !options.search {
        return out;
    }
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(p) = set(variable) {
        out.push(Candidate::file(variable, PathBuf::from(p)));
    }
    for var in ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"] {
        if let Some(home) = set(var) {
            out.push(Candidate::file(
                var,
                Path::new(&home).join("lib64").join(library),
            ));
        }
    }
    let ascend = root.join("usr/local/Ascend");
    out.push(Candidate::file(
        "default install",
        ascend.join("ascend-toolkit/latest/lib64").join(library),
    ));
    let mut cann: Vec<PathBuf> = std::fs::read_dir(&ascend)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("cann"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    cann.sort_by_key(|p| std::cmp::Reverse(version_key(p)));
    for dir in cann {
        out.push(Candidate::file(
            "CANN install",
            dir.join("lib64").join(library),
        ));
    }
    if let Some(home) = set("HOME") {
        out.push(Candidate::file(
            "user install",
            Path::new(&home)
                .join("Ascend/ascend-toolkit/latest/lib64")
                .join(library),
        ));
    }
    out.push(Candidate {
        origin: "system search path (LD_LIBRARY_PATH, ldconfig)".into(),
        target: PathBuf::from(library),
        system: true,
    });
    out
}

/// Sorts `cann-8.5.0` after `cann-8.0.0` and `cann-10.0` after both.
fn version_key(path: &Path) -> Vec<u64> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Opens the first candidate that loads; `Err` lists every attempt.
///
/// The library is never unloaded: the CANN runtime (like CUDA's) keeps threads and thread-local
/// state that must not outlive its code, so it stays for the life of the process. `aclFinalize`
/// is still called when the last backend handle goes away.
pub(crate) fn open(
    candidates: &[Candidate],
) -> Result<(&'static libloading::Library, String), Vec<LoadAttempt>> {
    let mut tried = Vec::new();
    for c in candidates {
        if !c.system && !c.target.exists() {
            tried.push(LoadAttempt {
                place: c.place(),
                outcome: "no such file".into(),
            });
            continue;
        }
        // SAFETY: loading a shared library runs its initialisers. `libascendcl.so` and the fake of
        // it are plain C-ABI libraries whose initialisers only set up their own state; loading
        // them is the documented way to use the ACL runtime.
        match unsafe { libloading::Library::new(&c.target) } {
            Ok(lib) => return Ok((keep_loaded(&c.target, lib), c.target.display().to_string())),
            Err(e) => tried.push(LoadAttempt {
                place: c.place(),
                outcome: format!(
                    "{}{}",
                    error_chain(&e),
                    if error_chain(&e).contains("cannot open shared object file") && !c.system {
                        " (a library it needs is missing: LD_LIBRARY_PATH lacks the toolkit's \
                         lib64 or the driver's lib64/driver; set_env.sh sets both)"
                    } else {
                        ""
                    }
                ),
            }),
        }
    }
    Err(tried)
}

/// Libraries opened so far, kept for the life of the process (see [`open`]); a path loaded
/// again reuses its entry instead of leaking another handle.
static LOADED: std::sync::Mutex<Vec<(PathBuf, &'static libloading::Library)>> =
    std::sync::Mutex::new(Vec::new());

fn keep_loaded(path: &Path, lib: libloading::Library) -> &'static libloading::Library {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&(_, kept)) = loaded.iter().find(|(p, _)| p == path) {
        // `lib` is another reference to the same loaded object; dropping it only lowers the
        // dynamic loader's count, which `kept` still holds above zero.
        drop(lib);
        return kept;
    }
    let kept: &'static libloading::Library = Box::leak(Box::new(lib));
    loaded.push((path.to_path_buf(), kept));
    kept
}

/// An error and its sources (libloading keeps the `dlerror()` text in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn candidate_order_follows_the_design() {
        let root = std::env::temp_dir().join(format!("ascend-hal-loader-{}", std::process::id()));
        for d in ["cann-8.0.0", "cann-10.0.1", "cann-8.5.0", "driver"] {
            std::fs::create_dir_all(root.join("usr/local/Ascend").join(d)).unwrap();
        }
        let env: HashMap<&str, &str> = [
            ("ASCEND_HAL_ACL_LIB", "/opt/fake/libascendcl.so"),
            ("ASCEND_TOOLKIT_HOME", "/tk"),
            ("ASCEND_HOME_PATH", "/home-path"),
            ("HOME", "/root"),
        ]
        .into();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let options = LoadOptions {
            path: Some("/explicit/libascendcl.so".into()),
            search: true,
        };
        let got: Vec<String> = candidates(&options, &lookup, &root)
            .iter()
            .map(|c| c.place().replace(&root.display().to_string(), ""))
            .collect();
        assert_eq!(
            got,
            [
                "explicit path: /explicit/libascendcl.so",
                "ASCEND_HAL_ACL_LIB: /opt/fake/libascendcl.so",
                "ASCEND_TOOLKIT_HOME: /tk/lib64/libascendcl.so",
                "ASCEND_HOME_PATH: /home-path/lib64/libascendcl.so",
                "default install: /usr/local/Ascend/ascend-toolkit/latest/lib64/libascendcl.so",
                "CANN install: /usr/local/Ascend/cann-10.0.1/lib64/libascendcl.so",
                "CANN install: /usr/local/Ascend/cann-8.5.0/lib64/libascendcl.so",
                "CANN install: /usr/local/Ascend/cann-8.0.0/lib64/libascendcl.so",
                "user install: /root/Ascend/ascend-toolkit/latest/lib64/libascendcl.so",
                "system search path (LD_LIBRARY_PATH, ldconfig): libascendcl.so",
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn explicit_only_when_not_searching() {
        let options = LoadOptions {
            path: Some("/x.so".into()),
            search: false,
        };
        let c = candidates(&options, &|_| Some("/ignored".into()), Path::new("/"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn open_reports_each_missing_file() {
        let c = [
            Candidate::file("explicit path", "/nonexistent/a/libascendcl.so".into()),
            Candidate::file(
                "ASCEND_TOOLKIT_HOME",
                "/nonexistent/b/libascendcl.so".into(),
            ),
        ];
        let tried = open(&c).unwrap_err();
        assert_eq!(tried.len(), 2);
        assert!(tried.iter().all(|t| t.outcome == "no such file"));
        assert!(tried[1].place.contains("ASCEND_TOOLKIT_HOME"));
    }
}
