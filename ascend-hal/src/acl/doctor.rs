//! Checks of the things that break most Ascend deployments, for the `npu_info` report: the CANN
//! environment (`set_env.sh`), the driver install and its device nodes, and the variables
//! torch_npu and HCCL read.
//!
//! Every check reads the environment through a closure and files under a root directory, so it
//! can be tested without an NPU.

use std::fmt;
use std::path::Path;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// For information.
    Info,
    /// Probably wrong, not fatal.
    Warn,
    /// Will break the runtime.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found, and what to do when it is not fine.
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// `key=value` lines of a CANN `version.info` file.
fn read_key(path: &Path, keys: &[&str]) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    keys.iter().find_map(|k| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim().eq_ignore_ascii_case(k)).then(|| value.trim().to_string())
        })
    })
}

/// Runs every check; `env` reads a variable, `root` is `/` outside tests.
pub fn run_checks(env: &dyn Fn(&str) -> Option<String>, root: &Path) -> Vec<Check> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut out = Vec::new();

    // The variables set_env.sh exports.
    let missing: Vec<&str> = ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH"]
        .into_iter()
        .filter(|k| var(k).is_none())
        .collect();
    out.push(if missing.is_empty() {
        check(
            "set_env.sh",
            Status::Ok,
            "ASCEND_TOOLKIT_HOME, ASCEND_HOME_PATH, ASCEND_OPP_PATH set",
        )
    } else {
        check(
            "set_env.sh",
            Status::Warn,
            format!(
                "{} not set: run `source /usr/local/Ascend/ascend-toolkit/set_env.sh` (or your \
                 CANN's set_env.sh) in this shell",
                missing.join(", ")
            ),
        )
    });

    // Toolkit version.
    if let Some(home) = var("ASCEND_TOOLKIT_HOME").or_else(|| var("ASCEND_HOME_PATH")) {
        let home = Path::new(&home);
        let version = read_key(&home.join("opp/version.info"), &["Version"]).or_else(|| {
            ["x86_64-linux", "aarch64-linux"].iter().find_map(|arch| {
                read_key(
                    &home.join(arch).join("ascend_toolkit_install.info"),
                    &["version"],
                )
            })
        });
        out.push(match version {
            Some(v) => check(
                "toolkit",
                Status::Ok,
                format!("CANN {v} at {}", home.display()),
            ),
            None => check(
                "toolkit",
                Status::Warn,
                format!(
                    "no version.info under {}: is it a CANN toolkit?",
                    home.display()
                ),
            ),
        });
    }

    // Driver install.
    let driver = root.join("usr/local/Ascend/driver");
    out.push(
        match read_key(
            &driver.join("version.info"),
            &["package_version", "Version"],
        ) {
            Some(v) => check(
                "driver",
                Status::Ok,
                format!("driver {v} at {}", driver.display()),
            ),
            None if driver.is_dir() => check(
                "driver",
                Status::Warn,
                format!(
                    "{} exists but has no readable version.info",
                    driver.display()
                ),
            ),
            None => check(
                "driver",
                Status::Fail,
                format!(
                    "{} not found: install the NPU driver on the host; in a container, mount it \
                 (-v /usr/local/Ascend/driver:/usr/local/Ascend/driver:ro)",
                    driver.display()
                ),
            ),
        },
    );

    // Device nodes.
    let dev = root.join("dev");
    let mut cards: Vec<String> = std::fs::read_dir(&dev)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.strip_prefix("davinci").is_some_and(|rest| {
                        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    cards.sort();
    let control: Vec<&str> = ["davinci_manager", "devmm_svm", "hisi_hdc"]
        .into_iter()
        .filter(|n| !dev.join(n).exists())
        .collect();
    out.push(if !cards.is_empty() && control.is_empty() {
        check(
            "device nodes",
            Status::Ok,
            format!("/dev/{}", cards.join(", /dev/")),
        )
    } else {
        check(
            "device nodes",
            Status::Fail,
            format!(
                "{}{}: in a container pass --device=/dev/davinci0 (one per NPU) \
                 --device=/dev/davinci_manager --device=/dev/devmm_svm --device=/dev/hisi_hdc",
                if cards.is_empty() {
                    "no /dev/davinciN"
                } else {
                    ""
                },
                if control.is_empty() {
                    String::new()
                } else {
                    format!(
                        "{}missing /dev/{}",
                        if cards.is_empty() { "; " } else { "" },
                        control.join(", /dev/")
                    )
                }
            ),
        )
    });

    // LD_LIBRARY_PATH.
    let ld = var("LD_LIBRARY_PATH").unwrap_or_default();
    let has_driver = ld.split(':').any(|p| p.contains("driver/lib64"));
    let has_toolkit = ld
        .split(':')
        .any(|p| p.ends_with("lib64") && !p.contains("driver"));
    out.push(if has_driver && has_toolkit {
        check(
            "LD_LIBRARY_PATH",
            Status::Ok,
            "has the toolkit's and the driver's lib64",
        )
    } else {
        check(
            "LD_LIBRARY_PATH",
            Status::Warn,
            format!(
                "lacks {}: libascendcl.so loads but its dependencies may not; set_env.sh adds them",
                match (has_toolkit, has_driver) {
                    (false, false) =>
                        "the toolkit's lib64 and /usr/local/Ascend/driver/lib64/driver",
                    (false, true) => "the toolkit's lib64",
                    _ => "/usr/local/Ascend/driver/lib64/driver",
                }
            ),
        )
    });

    // ASCEND_RT_VISIBLE_DEVICES.
    if let Some(v) = var("ASCEND_RT_VISIBLE_DEVICES") {
        let ids: Option<Vec<u32>> = v.split(',').map(|s| s.trim().parse().ok()).collect();
        out.push(match ids {
            Some(ids) if ids.windows(2).all(|w| w[0] < w[1]) => check(
                "ASCEND_RT_VISIBLE_DEVICES",
                Status::Ok,
                format!("{v} (logical devices 0..{} map to these)", ids.len()),
            ),
            _ => check(
                "ASCEND_RT_VISIBLE_DEVICES",
                Status::Fail,
                format!(
                    "{v:?}: must be unique device ids in ascending order, comma separated; the \
                     runtime reports no device otherwise (207004)"
                ),
            ),
        });
    }

    // torch_npu's task queue.
    out.push(match var("TASK_QUEUE_ENABLE").as_deref() {
        None => check(
            "TASK_QUEUE_ENABLE",
            Status::Info,
            "unset (torch_npu defaults to 1); read only by torch_npu, not by this crate",
        ),
        Some(v @ ("0" | "1" | "2")) => check(
            "TASK_QUEUE_ENABLE",
            Status::Ok,
            format!(
                "{v} (torch_npu only: 0 off, 1 two-stage launch, 2 also moves workspace tasks)"
            ),
        ),
        Some(v) => check(
            "TASK_QUEUE_ENABLE",
            Status::Warn,
            format!("{v:?} is not 0, 1 or 2; torch_npu will reject or ignore it"),
        ),
    });

    // HCCL buffers.
    const BUFFSIZE_ADVICE: &str = "deployment guides use 256 MB for 7B-14B models served \
        tensor-parallel and 1024 MB for 70B and DeepSeek-class models; a buffer too small shows \
        as throughput that stops scaling with ranks and jitters under concurrency";
    out.push(match var("HCCL_BUFFSIZE") {
        None => check(
            "HCCL_BUFFSIZE",
            Status::Info,
            format!(
                "unset: HCCL uses 200 MB buffers, 400 MB of device memory per communicator; \
                 {BUFFSIZE_ADVICE}"
            ),
        ),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(mb) if mb >= 1 => check(
                "HCCL_BUFFSIZE",
                if mb < 200 { Status::Warn } else { Status::Ok },
                format!(
                    "{mb} MB: {} MB of device memory per communicator{}",
                    2 * mb,
                    if mb < 200 {
                        format!("; below HCCL's 200 MB default: {BUFFSIZE_ADVICE}")
                    } else {
                        String::new()
                    }
                ),
            ),
            _ => check(
                "HCCL_BUFFSIZE",
                Status::Fail,
                format!("{v:?}: must be a whole number of MB, at least 1"),
            ),
        },
    });

    // torch_npu's allocator configuration.
    out.push(match var("PYTORCH_NPU_ALLOC_CONF") {
        None => check(
            "PYTORCH_NPU_ALLOC_CONF",
            Status::Info,
            "unset: long-running torch_npu services usually want expandable_segments:True",
        ),
        Some(v) => {
            const KNOWN: [&str; 5] = [
                "expandable_segments",
                "max_split_size_mb",
                "garbage_collection_threshold",
                "page_size",
                "segment_size_mb",
            ];
            let unknown: Vec<&str> = v
                .split(',')
                .filter_map(|kv| {
                    kv.split_once(':')
                        .map(|(k, _)| k.trim())
                        .or(Some(kv.trim()))
                })
                .filter(|k| !k.is_empty() && !KNOWN.contains(k))
                .collect();
            if unknown.is_empty() {
                check("PYTORCH_NPU_ALLOC_CONF", Status::Ok, v)
            } else {
                check(
                    "PYTORCH_NPU_ALLOC_CONF",
                    Status::Warn,
                    format!("{v}: unknown key(s) {}", unknown.join(", ")),
                )
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(env: &[(&str, &str)], root: &Path) -> HashMap<&'static str, Check> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run_checks(&|k| env.get(k).cloned(), root)
            .into_iter()
            .map(|c| (c.name, c))
            .collect()
    }

    #[test]
    fn bare_machine_fails_driver_and_device_checks() {
        let root = std::env::temp_dir().join(format!("doctor-bare-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let c = run(&[], &root);
        assert_eq!(c["driver"].status, Status::Fail);
        assert!(
            c["driver"].detail.contains("mount it"),
            "{}",
            c["driver"].detail
        );
        assert_eq!(c["device nodes"].status, Status::Fail);
        assert!(c["device nodes"]
            .detail
            .contains("--device=/dev/davinci_manager"));
        assert_eq!(c["set_env.sh"].status, Status::Warn);
        assert!(c["set_env.sh"].detail.contains("source /usr/local/Ascend"));
        assert_eq!(c["HCCL_BUFFSIZE"].status, Status::Info);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn installed_machine_passes_and_values_are_checked() {
        let root = std::env::temp_dir().join(format!("doctor-ok-{}", std::process::id()));
        let driver = root.join("usr/local/Ascend/driver");
        std::fs::create_dir_all(&driver).unwrap();
        std::fs::write(
            driver.join("version.info"),
            "Version=24.1.rc2\npackage_version=24.1.rc2.2\n",
        )
        .unwrap();
        let tk = root.join("tk");
        std::fs::create_dir_all(tk.join("opp")).unwrap();
        std::fs::write(tk.join("opp/version.info"), "Version=8.0.0.1\n").unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        for n in [
            "davinci0",
            "davinci1",
            "davinci_manager",
            "devmm_svm",
            "hisi_hdc",
        ] {
            std::fs::write(root.join("dev").join(n), "").unwrap();
        }
        let tk_s = tk.display().to_string();
        let c = run(
            &[
                ("ASCEND_TOOLKIT_HOME", &tk_s),
                ("ASCEND_HOME_PATH", &tk_s),
                ("ASCEND_OPP_PATH", "/x/opp"),
                (
                    "LD_LIBRARY_PATH",
                    "/tk/lib64:/usr/local/Ascend/driver/lib64/driver",
                ),
                ("HCCL_BUFFSIZE", "256"),
                ("TASK_QUEUE_ENABLE", "3"),
                (
                    "PYTORCH_NPU_ALLOC_CONF",
                    "expandable_segments:True,max_split_mb:64",
                ),
                ("ASCEND_RT_VISIBLE_DEVICES", "1,0"),
            ],
            &root,
        );
        assert_eq!(c["driver"].status, Status::Ok);
        assert!(c["driver"].detail.contains("24.1.rc2.2"));
        assert_eq!(
            c["toolkit"].detail.split(" at ").next(),
            Some("CANN 8.0.0.1")
        );
        assert_eq!(c["device nodes"].status, Status::Ok);
        assert!(c["device nodes"].detail.contains("/dev/davinci1"));
        assert_eq!(c["LD_LIBRARY_PATH"].status, Status::Ok);
        assert_eq!(
            c["HCCL_BUFFSIZE"].detail,
            "256 MB: 512 MB of device memory per communicator"
        );
        assert_eq!(c["HCCL_BUFFSIZE"].status, Status::Ok);
        // Below the default: a warning with the sizing advice.
        let small = run(&[("HCCL_BUFFSIZE", "120")], Path::new("/nonexistent"));
        assert_eq!(small["HCCL_BUFFSIZE"].status, Status::Warn);
        assert!(small["HCCL_BUFFSIZE"].detail.contains("1024 MB for 70B"));
        assert_eq!(c["TASK_QUEUE_ENABLE"].status, Status::Warn);
        assert_eq!(c["PYTORCH_NPU_ALLOC_CONF"].status, Status::Warn);
        assert!(c["PYTORCH_NPU_ALLOC_CONF"].detail.contains("max_split_mb"));
        assert_eq!(c["ASCEND_RT_VISIBLE_DEVICES"].status, Status::Fail);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
