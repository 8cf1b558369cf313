//! What the kernel tests share: deterministic values, the tolerance check, and random paged
//! attention problems (shuffled block tables, lengths ending mid-block).
#![allow(dead_code)] // each test binary uses its own part

use ascend_kernels::{close, CacheShape, KvFloat};
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
        prop_oneof![Just(64usize), Just(80), Just(96), Just(128), Just(256)],
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
