//! Replays the seeded chat trace through a `KvCacheManager` once and prints what happened: the
//! program `scripts/callgrind-kv.sh` runs under callgrind to count instructions per event (only
//! `replay_events` is counted, not the trace generation).
//!
//! `cargo run --release -p ascend-benches --example kv_replay -- [block_size] [pool_tokens]
//! [lru|lfu-aging]`

use ascend_benches::chat_trace::{chat_trace, manager, replay_events, ChatShape};

fn main() {
    let mut args = std::env::args().skip(1);
    let block_size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let pool_tokens: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(64 * 1024);
    let policy = args.next().unwrap_or_else(|| "lru".into());
    let events = chat_trace(ChatShape::default());
    let mut kv = manager(block_size, pool_tokens, true, &policy);
    let stats = replay_events(&mut kv, &events);
    println!(
        "policy {policy} | events {} | prompt tokens {} | hit tokens {} ({:.2}%) | refused admissions {} | failed {} | evictions {}",
        stats.events,
        stats.prompt_tokens,
        stats.hit_tokens,
        100.0 * stats.hit_tokens as f64 / stats.prompt_tokens as f64,
        stats.refused,
        stats.failed,
        kv.metrics().evictions
    );
}
