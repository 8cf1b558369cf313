//! Configuration of the caching allocator, parsed from the string torch users already write in
//! `PYTORCH_NPU_ALLOC_CONF` / `PYTORCH_CUDA_ALLOC_CONF`.

use crate::error::{Error, Result};

/// How the caching allocator behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocatorConfig {
    /// One growing virtual range per stream and pool instead of fixed segments, where the
    /// backend can map virtual memory (`expandable_segments:True`).
    pub expandable_segments: bool,
    /// Blocks larger than this are never split, and not used for smaller requests
    /// (`max_split_size_mb:N`); `None` = no limit.
    pub max_split_size: Option<usize>,
    /// Free cached blocks before growing once reserved memory passes this fraction of the
    /// allowed memory (`garbage_collection_threshold:F`, 0 < F < 1); `None` = never.
    pub garbage_collection_threshold: Option<f64>,
    /// Fraction of the device's memory the allocator may reserve (`set_per_process_memory_fraction`).
    pub memory_fraction: f64,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            expandable_segments: false,
            max_split_size: None,
            garbage_collection_threshold: None,
            memory_fraction: 1.0,
        }
    }
}

impl std::str::FromStr for AllocatorConfig {
    type Err = Error;

    /// Parses `key:value,key:value`, e.g. `expandable_segments:True,max_split_size_mb:128`.
    /// Keys: `expandable_segments`, `max_split_size_mb`, `garbage_collection_threshold`,
    /// `memory_fraction`. An unknown key or a bad value is an error naming it.
    fn from_str(s: &str) -> Result<Self> {
        let mut c = AllocatorConfig::default();
        let bad = |message: String| Error::InvalidArgument {
            op: "AllocatorConfig",
            message,
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once(':')
                .ok_or_else(|| bad(format!("{item:?} is not key:value")))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "expandable_segments" => {
                    c.expandable_segments = match value {
                        "True" | "true" | "1" => true,
                        "False" | "false" | "0" => false,
                        _ => {
                            return Err(bad(format!(
                                "expandable_segments:{value} is not True or False"
                            )))
                        }
                    }
                }
                "max_split_size_mb" => {
                    let mb: usize = value.parse().map_err(|_| {
                        bad(format!("max_split_size_mb:{value} is not a whole number"))
                    })?;
                    if mb < 20 {
                        return Err(bad(format!(
                            "max_split_size_mb:{mb} is below the 20 MB large-segment size"
                        )));
                    }
                    c.max_split_size = Some(mb.checked_mul(1 << 20).ok_or_else(|| {
                        bad(format!(
                            "max_split_size_mb:{mb} is more bytes than usize holds"
                        ))
                    })?);
                }
                "garbage_collection_threshold" => {
                    let f: f64 = value.parse().map_err(|_| {
                        bad(format!(
                            "garbage_collection_threshold:{value} is not a number"
                        ))
                    })?;
                    if !(f > 0.0 && f < 1.0) {
                        return Err(bad(format!(
                            "garbage_collection_threshold:{value} must be between 0 and 1"
                        )));
                    }
                    c.garbage_collection_threshold = Some(f);
                }
                "memory_fraction" => {
                    let f: f64 = value
                        .parse()
                        .map_err(|_| bad(format!("memory_fraction:{value} is not a number")))?;
                    if !(f > 0.0 && f <= 1.0) {
                        return Err(bad(format!("memory_fraction:{value} must be in (0, 1]")));
                    }
                    c.memory_fraction = f;
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?}; known keys: expandable_segments, \
                         max_split_size_mb, garbage_collection_threshold, memory_fraction"
                    )))
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_torch_style_strings() {
        let c: AllocatorConfig =
            "expandable_segments:True, max_split_size_mb:128,garbage_collection_threshold:0.6"
                .parse()
                .unwrap();
        assert!(c.expandable_segments);
        assert_eq!(c.max_split_size, Some(128 << 20));
        assert_eq!(c.garbage_collection_threshold, Some(0.6));
        assert_eq!(
            "".parse::<AllocatorConfig>().unwrap(),
            AllocatorConfig::default()
        );
        let err = "expandable_segments:True,pinned_use_cuda_host_register:True"
            .parse::<AllocatorConfig>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key \"pinned_use_cuda_host_register\""),
            "{err}"
        );
        for bad in [
            "expandable_segments:yes",
            "max_split_size_mb:10",
            "garbage_collection_threshold:1.5",
            "memory_fraction:0",
            "max_split_size_mb",
            "max_split_size_mb:17592186044416",
            "garbage_collection_threshold:NaN",
            "memory_fraction:inf",
        ] {
            assert!(bad.parse::<AllocatorConfig>().is_err(), "{bad}");
        }
    }
}
