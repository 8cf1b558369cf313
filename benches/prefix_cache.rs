//! Replays a multi-turn chat trace through the KV cache manager, as an engine's scheduler would
//! drive it: a shared system prompt, many users, several turns each, continuous batching, and
//! preemption by recomputation when blocks run out.
//!
//! Reported: nanoseconds per scheduler step and per block allocated, the prefix hit rate, and
//! the replay time with prefix caching against the same trace without it (the baseline), in
//! one run; for block sizes 16 and 128.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ascend_benches::Rng;
use criterion::{BenchmarkId, Criterion};
use paged_kv::{KvCacheManager, ManagerConfig, RequestId, RequestKeys, TokenId};

const SYSTEM_TOKENS: usize = 1024;
const USERS: usize = 64;
const TURNS: usize = 4;
const MAX_BATCH: usize = 32;
const POOL_TOKENS: usize = 96 * 1024;

/// One user's conversation: per turn, the user's message and the reply length.
struct User {
    turns: Vec<(Vec<TokenId>, usize)>,
}

fn trace() -> (Vec<TokenId>, Vec<User>) {
    let mut rng = Rng(0x5eed);
    let system = (0..SYSTEM_TOKENS)
        .map(|_| (rng.next_u64() % 32_000) as TokenId)
        .collect();
    let users = (0..USERS)
        .map(|_| User {
            turns: (0..TURNS)
                .map(|_| {
                    let msg = (0..rng.range(30, 200)).map(|_| (rng.next_u64() % 32_000) as TokenId);
                    (msg.collect(), rng.range(30, 160))
                })
                .collect(),
        })
        .collect();
    (system, users)
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy)]
struct Replay {
    steps: u64,
    blocks: u64,
    preemptions: u64,
    hit_rate: f64,
}

struct Running {
    id: RequestId,
    user: usize,
    prompt: Vec<TokenId>,
    remaining: usize,
}

/// Runs the whole trace to completion.
fn replay(system: &[TokenId], users: &[User], block_size: usize, caching: bool) -> Replay {
    let mut kv = KvCacheManager::new(ManagerConfig {
        enable_prefix_caching: caching,
        ..ManagerConfig::new(POOL_TOKENS / block_size + 1, block_size)
    })
    .expect("manager");
    let mut history: Vec<Vec<TokenId>> = vec![system.to_vec(); users.len()];
    let mut turn = vec![0usize; users.len()];
    let mut waiting: VecDeque<usize> = (0..users.len()).collect();
    let mut running: Vec<Running> = Vec::new();
    let mut next_id = 0u64;
    let mut out = Replay::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);

    while !waiting.is_empty() || !running.is_empty() {
        out.steps += 1;
        // Admit waiting turns while there is room.
        while running.len() < MAX_BATCH {
            let Some(&user) = waiting.front() else { break };
            let (msg, reply) = &users[user].turns[turn[user]];
            let mut prompt = history[user].clone();
            prompt.extend(msg);
            next_id += 1;
            let id = RequestId(next_id);
            match kv.admit(id, &prompt, &RequestKeys::default(), usize::MAX) {
                Ok(a) => {
                    out.blocks += a.allocation.new_blocks as u64;
                    waiting.pop_front();
                    running.push(Running {
                        id,
                        user,
                        prompt,
                        remaining: *reply,
                    });
                }
                Err(_) => break,
            }
        }
        // One decode token for every running request; preempt the newest on exhaustion.
        let mut i = 0;
        while i < running.len() {
            let token = (next_id as TokenId).wrapping_mul(2_654_435_761) % 32_000;
            match kv.allocate_slots(running[i].id, &[token]) {
                Ok(a) => {
                    out.blocks += a.new_blocks as u64;
                    running[i].prompt.push(token);
                    running[i].remaining -= 1;
                    i += 1;
                }
                Err(_) => {
                    let victim = running.pop().expect("a running request");
                    kv.free_request(victim.id).expect("free");
                    waiting.push_front(victim.user);
                    out.preemptions += 1;
                }
            }
        }
        batch.clear();
        batch.extend(running.iter().map(|r| (r.id, 1)));
        std::hint::black_box(kv.batch_tables(&batch, None, None).expect("tables"));
        // Finished turns free their blocks; the user's next turn waits.
        running.retain(|r| {
            if r.remaining > 0 {
                return true;
            }
            kv.free_request(r.id).expect("free");
            history[r.user] = r.prompt.clone();
            turn[r.user] += 1;
            if turn[r.user] < TURNS {
                waiting.push_back(r.user);
            }
            false
        });
    }
    out.hit_rate = kv.metrics().prefix_hit_rate();
    out
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    let (system, users) = trace();
    let mut summary = Vec::new();
    for block_size in [16usize, 128] {
        let mut group = c.benchmark_group(format!("chat_trace_bs{block_size}"));
        for caching in [true, false] {
            let name = if caching {
                "prefix_caching"
            } else {
                "no_caching"
            };
            let stats = replay(&system, &users, block_size, caching);
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::hint::black_box(replay(&system, &users, block_size, caching));
                    }
                    start.elapsed()
                })
            });
            summary.push((block_size, name, stats));
        }
        group.finish();
    }
    c.final_summary();

    println!("\nMulti-turn chat trace: {USERS} users x {TURNS} turns, {SYSTEM_TOKENS}-token system prompt, batch <= {MAX_BATCH}");
    println!(
        "{:<10} {:<15} {:>7} {:>9} {:>6} {:>9} {:>12} {:>12}",
        "block", "mode", "steps", "blocks", "preem", "hit rate", "ns/step", "ns/block"
    );
    for (bs, name, s) in &summary {
        let group = format!("chat_trace_bs{bs}");
        match ascend_benches::mean_ns(&group, name) {
            Some(ns) => println!(
                "{:<10} {:<15} {:>7} {:>9} {:>6} {:>8.1}% {:>12.0} {:>12.0}",
                bs,
                name,
                s.steps,
                s.blocks,
                s.preemptions,
                s.hit_rate * 100.0,
                ns / s.steps as f64,
                ns / s.blocks.max(1) as f64
            ),
            None => println!("{bs:<10} {name:<15} not measured in this run"),
        }
    }
    ascend_benches::print_ratios(
        "Replay time, prefix caching vs none (time ratio)",
        &[
            ("chat_trace_bs16", "prefix_caching", "no_caching"),
            ("chat_trace_bs128", "prefix_caching", "no_caching"),
        ],
    );
}
