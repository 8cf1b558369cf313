//! Criterion benchmarks of the workspace, and the helper that turns their results into the
//! ratios the project reports (each measured against a baseline in the same run).
//!
//! Run them all with `cargo bench`, or one with `cargo bench --bench copy_bandwidth`.

use std::path::{Path, PathBuf};

#[path = "chat_trace.rs"]
pub mod chat_trace;

/// Where criterion wrote its results: `$CARGO_TARGET_DIR/criterion`, else the nearest
/// `target/criterion` above the current directory.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(Path::new(&dir).join("criterion"));
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join("target").join("criterion");
        if candidate.is_dir() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// The mean time, in nanoseconds, criterion measured for `group/bench` in its latest run.
pub fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let path = criterion_dir()?
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    // estimates.json: {"mean":{"confidence_interval":{...},"point_estimate":N,...},...}
    let mean = &text[text.find("\"mean\"")?..];
    let after = &mean[mean.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = after.find([',', '}'])?;
    after[..end].trim().parse().ok()
}

/// Prints `bench / baseline` time ratios for each pair, as a table (a ratio below 1 means the
/// bench is faster than its baseline).
pub fn print_ratios(title: &str, pairs: &[(&str, &str, &str)]) {
    println!("\n{title}");
    println!(
        "{:<48} {:>14} {:>14} {:>8}",
        "group: bench / baseline", "bench", "baseline", "ratio"
    );
    for &(group, bench, baseline) in pairs {
        match (mean_ns(group, bench), mean_ns(group, baseline)) {
            (Some(b), Some(base)) => println!(
                "{:<48} {:>11.1} us {:>11.1} us {:>8.3}",
                format!("{group}: {bench} / {baseline}"),
                b / 1e3,
                base / 1e3,
                b / base
            ),
            _ => println!("{group}: {bench} / {baseline}: not measured in this run"),
        }
    }
}

/// A small deterministic generator (xorshift64), so that every replay of a trace is the same.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
}
