//! What the kernel tests share: deterministic values, the tolerance check, and random paged
//! attention problems (shuffled block tables, lengths ending mid-block).
#![allow(dead_code)] // each test binary uses its own part

use ascend_kernels::{
    close, CacheShape, KvFloat, PagedAttention, PrefillAttention, RopeStyle, Rotary,
};
use proptest::prelude::*;

/// Deterministic values in [-1, 1).
pub fn values<T: KvFloat>(n: usize, seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            T::from_f32(((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

pub fn assert_close<T: KvFloat>(what: &str, fast: &[T], slow: &[T]) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.len(), slow.len());
    for (i, (a, b)) in fast.iter().zip(slow).enumerate() {
        let (a, b) = (a.to_f32(), b.to_f32());
        prop_assert!(
            close(T::DTYPE, a, b),
            "{} [{}] {}: kernel {} vs reference {}",
            what,
            i,
            T::DTYPE,
            a,
            b
        );
    }
    Ok(())
}

/// A random attention problem: shuffled block tables, lengths ending mid-block.
#[derive(Debug, Clone)]
pub struct Problem {
    pub block_size: usize,
    pub head_size: usize,
    pub kv_heads: usize,
    pub group: usize,
    pub lens: Vec<usize>,
    pub window: Option<usize>,
    pub seed: u64,
}

pub fn problem() -> impl Strategy<Value = Problem> {
    (
        prop_oneof![Just(16usize), Just(128)],
        prop_oneof![
            Just(32usize),
            Just(64),
            Just(80),
            Just(96),
            Just(128),
            Just(256)
        ],
        1usize..3,
        prop_oneof![Just(1usize), Just(2), Just(4)],
        prop::collection::vec(1usize..300, 1..4),
        prop_oneof![Just(None), (1usize..200).prop_map(Some)],
        any::<u64>(),
    )
        .prop_map(
            |(block_size, head_size, kv_heads, group, lens, window, seed)| Problem {
                block_size,
                head_size,
                kv_heads,
                group,
                lens,
                window,
                seed,
            },
        )
}

impl Problem {
    pub fn cache(&self) -> CacheShape {
        let blocks: usize = self.lens.iter().map(|l| l.div_ceil(self.block_size)).sum();
        CacheShape {
            num_blocks: blocks + 3,
            block_size: self.block_size,
            num_kv_heads: self.kv_heads,
            head_size: self.head_size,
        }
    }

    pub fn max_blocks(&self) -> usize {
        self.lens
            .iter()
            .map(|l| l.div_ceil(self.block_size))
            .max()
            .unwrap_or(1)
            + 1
    }

    /// Block tables using every block of the cache but the first three, shuffled, padded with
    /// block 0.
    pub fn tables(&self) -> Vec<i32> {
        let c = self.cache();
        let mut ids: Vec<i32> = (3..c.num_blocks as i32).collect();
        let mut x = self.seed | 1;
        for i in (1..ids.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ids.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let width = self.max_blocks();
        let mut tables = vec![0i32; self.lens.len() * width];
        let mut next = ids.into_iter();
        for (s, len) in self.lens.iter().enumerate() {
            for b in 0..len.div_ceil(self.block_size) {
                tables[s * width + b] = next.next().unwrap();
            }
        }
        tables
    }
}

/// A NeoX cos/sin cache: `[max_position, rotary_dim]`, cosines then sines.
pub fn cos_sin_cache(max_position: usize, rotary_dim: usize) -> Vec<f32> {
    let half = rotary_dim / 2;
    let mut cs = vec![0f32; max_position * rotary_dim];
    for pos in 0..max_position {
        for f in 0..half {
            let theta = pos as f32 / 10000f32.powf(2.0 * f as f32 / rotary_dim as f32);
            cs[pos * rotary_dim + f] = theta.cos();
            cs[pos * rotary_dim + half + f] = theta.sin();
        }
    }
    cs
}

/// A decode attention case built from a [`Problem`]: the op, random queries and caches, the
/// shuffled block tables and the lengths.
pub struct DecodeCase<T> {
    pub p: PagedAttention,
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub tables: Vec<i32>,
    pub lens: Vec<i32>,
}

/// A RoPE case built from a [`Problem`]: three tokens per sequence at scattered positions.
/// A prefill attention case: each sequence's last `chunk` (or fewer) tokens are the queries.
pub struct PrefillCase<T> {
    pub p: PrefillAttention,
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub tables: Vec<i32>,
    pub starts: Vec<i32>,
    pub lens: Vec<i32>,
}

pub struct RopeCase<T> {
    pub p: Rotary,
    pub positions: Vec<i64>,
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub cos_sin: Vec<f32>,
}

impl Problem {
    /// The decode attention case of this problem.
    pub fn decode_case<T: KvFloat>(&self) -> DecodeCase<T> {
        let c = self.cache();
        let p = PagedAttention {
            num_seqs: self.lens.len(),
            num_heads: self.kv_heads * self.group,
            cache: c,
            max_blocks_per_seq: self.max_blocks(),
            scale: 1.0 / (self.head_size as f32).sqrt(),
            sliding_window: self.window,
        };
        DecodeCase {
            q: values::<T>(p.num_seqs * p.num_heads * self.head_size, self.seed),
            k: values::<T>(c.elements(), self.seed ^ 1),
            v: values::<T>(c.elements(), self.seed ^ 2),
            tables: self.tables(),
            lens: self.lens.iter().map(|&l| l as i32).collect(),
            p,
        }
    }

    /// The prefill case of this problem: each sequence's last `chunk` tokens (all of a shorter
    /// one) are this step's queries, the rest of its context already cached.
    pub fn prefill_case<T: KvFloat>(&self, chunk: usize) -> PrefillCase<T> {
        let c = self.cache();
        let q_lens: Vec<usize> = self.lens.iter().map(|&l| chunk.min(l)).collect();
        let mut starts = vec![0i32];
        for q in &q_lens {
            starts.push(starts.last().unwrap() + *q as i32);
        }
        let p = PrefillAttention {
            num_seqs: self.lens.len(),
            num_tokens: q_lens.iter().sum(),
            num_heads: self.kv_heads * self.group,
            cache: c,
            max_blocks_per_seq: self.max_blocks(),
            scale: 1.0 / (self.head_size as f32).sqrt(),
            sliding_window: self.window,
        };
        PrefillCase {
            q: values::<T>(p.num_tokens * p.num_heads * self.head_size, self.seed),
            k: values::<T>(c.elements(), self.seed ^ 3),
            v: values::<T>(c.elements(), self.seed ^ 4),
            tables: self.tables(),
            starts,
            lens: self.lens.iter().map(|&l| l as i32).collect(),
            p,
        }
    }

    /// The RoPE case of this problem, rotating the first `rotary_dim` elements of each head.
    pub fn rope_case<T: KvFloat>(&self, rotary_dim: usize, style: RopeStyle) -> RopeCase<T> {
        let n = self.lens.len() * 3;
        let p = Rotary {
            num_tokens: n,
            num_heads: self.kv_heads * self.group,
            num_kv_heads: self.kv_heads,
            head_size: self.head_size,
            rotary_dim,
            max_position: 512,
            style,
        };
        RopeCase {
            positions: (0..n as i64)
                .map(|t| (t * 37 + self.seed as i64 % 97).rem_euclid(512))
                .collect(),
            q: values::<T>(n * p.num_heads * p.head_size, self.seed),
            k: values::<T>(n * p.num_kv_heads * p.head_size, self.seed ^ 9),
            cos_sin: cos_sin_cache(p.max_position, p.rotary_dim),
            p,
        }
    }
}
