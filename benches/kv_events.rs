//! A seeded multi-turn chat trace (200 conversations over 6 shared system prompts, 24 turns in
//! flight, ~109k events; see `chat_trace.rs`) replayed through `KvCacheManager`: nanoseconds per
//! event with prefix caching, against the same replay without it (the baseline), in one run;
//! the prefix-hit tokens; and the hit rate of each eviction policy at several pool sizes.
//! `scripts/callgrind-kv.sh` counts instructions per event instead.

use std::time::{Duration, Instant};

use ascend_benches::chat_trace::{chat_trace, replay_events, ChatShape, ReplayStats};
use criterion::{BenchmarkId, Criterion};

const POOL_TOKENS: usize = 64 * 1024;

fn manager(block_size: usize, caching: bool) -> paged_kv::KvCacheManager {
    ascend_benches::chat_trace::manager(block_size, POOL_TOKENS, caching, "lru")
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    let events = chat_trace(ChatShape::default());
    let mut rows: Vec<(usize, &str, ReplayStats)> = Vec::new();
    for block_size in [16usize, 128] {
        let mut group = c.benchmark_group(format!("kv_events_bs{block_size}"));
        for (name, caching) in [("prefix_caching", true), ("no_caching", false)] {
            rows.push((
                block_size,
                name,
                replay_events(&mut manager(block_size, caching), &events),
            ));
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let mut kv = manager(block_size, caching);
                        let start = Instant::now();
                        std::hint::black_box(replay_events(&mut kv, &events));
                        spent += start.elapsed();
                    }
                    spent
                })
            });
        }
        group.finish();
    }
    c.final_summary();

    println!(
        "\nChat trace: {} events, pool of {POOL_TOKENS} tokens",
        events.len()
    );
    println!(
        "{:<6} {:<15} {:>10} {:>13} {:>8} {:>9}",
        "block", "mode", "ns/event", "hit tokens", "hit %", "refused"
    );
    for (bs, name, s) in &rows {
        let ns = ascend_benches::mean_ns(&format!("kv_events_bs{bs}"), name)
            .map_or("-".to_string(), |ns| format!("{:.0}", ns / s.events as f64));
        println!(
            "{:<6} {:<15} {:>10} {:>13} {:>7.2}% {:>9}",
            bs,
            name,
            ns,
            s.hit_tokens,
            100.0 * s.hit_tokens as f64 / s.prompt_tokens as f64,
            s.refused
        );
    }
    println!("\nPrefix-hit tokens per eviction policy (share of prompt tokens)");
    println!(
        "{:<6} {:>12} {:>16} {:>16}",
        "block", "pool tokens", "lru", "lfu-aging"
    );
    for block_size in [16usize, 128] {
        for pool in [32 * 1024, 64 * 1024, 128 * 1024] {
            let hits = |name: &str| {
                let mut kv = ascend_benches::chat_trace::manager(block_size, pool, true, name);
                let s = replay_events(&mut kv, &events);
                format!(
                    "{} ({:.2}%)",
                    s.hit_tokens,
                    100.0 * s.hit_tokens as f64 / s.prompt_tokens as f64
                )
            };
            println!(
                "{:<6} {:>12} {:>16} {:>16}",
                block_size,
                pool,
                hits("lru"),
                hits("lfu-aging")
            );
        }
    }
    ascend_benches::print_ratios(
        "Replay time per event, prefix caching vs none (time ratio)",
        &[
            ("kv_events_bs16", "prefix_caching", "no_caching"),
            ("kv_events_bs128", "prefix_caching", "no_caching"),
        ],
    );
}
