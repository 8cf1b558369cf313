//! A seeded multi-turn chat trace as a fixed list of KV-cache-manager events, and its replay:
//! what the `kv_events` bench times and `scripts/callgrind-kv.sh` counts instructions of.
//!
//! The trace: conversations over a few shared system prompts, each of several turns (a user
//! message, then a reply decoded one token at a time), at most `concurrency` turns in flight.
//! Every turn is a request: admitted with the whole history as its prompt (so later turns hit
//! the earlier turns' blocks in the prefix cache), one slot per decoded token, freed when its
//! reply is done. The events are fixed; a replay reports how the manager answered them.

use std::collections::VecDeque;

use paged_kv::eviction::{EvictionPolicy, LfuAging, Lru};
use paged_kv::{
    BlockCopy, KvCacheManager, KvError, ManagerConfig, RequestId, RequestKeys, TokenId,
};

use crate::Rng;

/// One call an engine's scheduler makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// A new turn arrives with this prompt.
    Admit(RequestId, Vec<TokenId>),
    /// A running turn decoded this token.
    Decode(RequestId, TokenId),
    /// A turn finished.
    Free(RequestId),
}

/// The shape of a trace.
#[derive(Debug, Clone, Copy)]
pub struct ChatShape {
    /// Conversations.
    pub conversations: usize,
    /// Shared system prompts (each conversation uses one).
    pub system_prompts: usize,
    /// Turns in flight at most.
    pub concurrency: usize,
    /// The seed.
    pub seed: u64,
}

impl Default for ChatShape {
    fn default() -> Self {
        ChatShape {
            conversations: 200,
            system_prompts: 6,
            concurrency: 24,
            seed: 0xC4A7,
        }
    }
}

struct Turn {
    id: RequestId,
    conversation: usize,
    reply_left: usize,
}

/// The events of a trace of this shape.
pub fn chat_trace(shape: ChatShape) -> Vec<KvEvent> {
    let mut rng = Rng(shape.seed | 1);
    let token = |rng: &mut Rng| (rng.next_u64() % 32_000) as TokenId;
    let systems: Vec<Vec<TokenId>> = (0..shape.system_prompts)
        .map(|_| {
            let n = rng.range(200, 1200);
            (0..n).map(|_| token(&mut rng)).collect()
        })
        .collect();
    // Per conversation: its history so far and the turns left.
    let mut history: Vec<Vec<TokenId>> = (0..shape.conversations)
        .map(|_| systems[rng.range(0, shape.system_prompts)].clone())
        .collect();
    let mut turns_left: Vec<usize> = (0..shape.conversations).map(|_| rng.range(2, 7)).collect();
    let mut waiting: VecDeque<usize> = (0..shape.conversations).collect();
    let mut running: Vec<Turn> = Vec::new();
    let mut events = Vec::new();
    let mut next_id = 0u64;
    while !waiting.is_empty() || !running.is_empty() {
        while running.len() < shape.concurrency {
            let Some(c) = waiting.pop_front() else { break };
            let message = rng.range(20, 300);
            for _ in 0..message {
                let t = token(&mut rng);
                history[c].push(t);
            }
            next_id += 1;
            let id = RequestId(next_id);
            events.push(KvEvent::Admit(id, history[c].clone()));
            running.push(Turn {
                id,
                conversation: c,
                reply_left: rng.range(20, 250),
            });
        }
        for turn in &mut running {
            let t = token(&mut rng);
            history[turn.conversation].push(t);
            events.push(KvEvent::Decode(turn.id, t));
            turn.reply_left -= 1;
        }
        running.retain(|turn| {
            if turn.reply_left > 0 {
                return true;
            }
            events.push(KvEvent::Free(turn.id));
            let c = turn.conversation;
            turns_left[c] -= 1;
            if turns_left[c] > 0 {
                waiting.push_back(c);
            }
            false
        });
    }
    events
}

/// The eviction policies the benches compare, by name.
pub fn policy(name: &str) -> Option<Box<dyn EvictionPolicy>> {
    match name {
        "lru" => Some(Box::new(Lru::new())),
        "lfu-aging" => Some(Box::new(LfuAging::new())),
        _ => None,
    }
}

/// A manager over `pool_tokens` tokens of blocks of `block_size`, with prefix caching on or
/// off and the named eviction policy.
pub fn manager(
    block_size: usize,
    pool_tokens: usize,
    caching: bool,
    policy_name: &str,
) -> KvCacheManager {
    KvCacheManager::with_eviction_policy(
        ManagerConfig {
            enable_prefix_caching: caching,
            ..ManagerConfig::new(pool_tokens / block_size + 1, block_size)
        },
        policy(policy_name).expect("a known policy"),
    )
    .expect("manager")
}

/// How a replay went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Events replayed.
    pub events: u64,
    /// Prompt tokens served from the prefix cache.
    pub hit_tokens: u64,
    /// Prompt tokens admitted.
    pub prompt_tokens: u64,
    /// Admissions refused (out of blocks).
    pub refused: u64,
    /// Other events that failed (a request that was never admitted, or out of blocks).
    pub failed: u64,
}

/// Replays `events` through `kv`. Reuses its buffers, so the manager's own allocations are what
/// a profile of it shows.
#[inline(never)]
pub fn replay_events(kv: &mut KvCacheManager, events: &[KvEvent]) -> ReplayStats {
    let mut stats = ReplayStats::default();
    let mut slots: Vec<i32> = Vec::with_capacity(64);
    let mut copies: Vec<BlockCopy> = Vec::with_capacity(4);
    let keys = RequestKeys::default();
    for event in events {
        stats.events += 1;
        match event {
            KvEvent::Admit(id, prompt) => {
                stats.prompt_tokens += prompt.len() as u64;
                match kv.admit(*id, prompt, &keys, usize::MAX) {
                    Ok(a) => stats.hit_tokens += a.num_cached_tokens as u64,
                    Err(KvError::OutOfBlocks { cached_tokens, .. }) => {
                        stats.hit_tokens += cached_tokens as u64;
                        stats.refused += 1;
                    }
                    Err(_) => stats.failed += 1,
                }
            }
            KvEvent::Decode(id, token) => {
                slots.clear();
                copies.clear();
                if kv
                    .append_slots(*id, std::slice::from_ref(token), &mut slots, &mut copies)
                    .is_err()
                {
                    stats.failed += 1;
                }
            }
            KvEvent::Free(id) => {
                if kv.free_request(*id).is_err() {
                    stats.failed += 1;
                }
            }
        }
    }
    stats
}
