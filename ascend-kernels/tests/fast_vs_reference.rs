//! Every fast CPU kernel equals its reference within the dtype's tolerance
//! (`ascend_kernels::tolerance`: f32 2e-5 + 2e-4 relative, f16 2e-3 + 4e-3, bf16 1.6e-2 + 1.6e-2)
//! on random shapes, block sizes 16 and 128, head sizes 64/80/96/128/256, shuffled block tables,
//! and sequence lengths that end mid-block; and paged attention over a shuffled table equals
//! ordinary attention over the same keys and values laid out contiguously.

mod common;

use common::{assert_close, problem, values, DecodeCase, PrefillCase, Problem, RopeCase};

use ascend_kernels::{
    cpu, reference, CacheShape, KvFloat, Matmul, PagedAttention, ReshapeAndCache, RmsNorm,
    RopeStyle, SiluAndMul,
};
use half::{bf16, f16};
use proptest::prelude::*;

fn decode<T: KvFloat>(pr: &Problem) -> Result<(), TestCaseError> {
    let DecodeCase {
        p,
        q,
        k,
        v,
        tables,
        lens,
    } = pr.decode_case::<T>();
    let mut fast = vec![T::from_f32(0.0); q.len()];
    let mut slow = fast.clone();
    cpu::paged_attention(&p, &mut fast, &q, &k, &v, &tables, &lens).unwrap();
    reference::paged_attention(&p, &mut slow, &q, &k, &v, &tables, &lens).unwrap();
    assert_close("paged_attention", &fast, &slow)
}

fn prefill<T: KvFloat>(pr: &Problem, chunk: usize) -> Result<(), TestCaseError> {
    let PrefillCase {
        p,
        q,
        k,
        v,
        tables,
        starts,
        lens,
    } = pr.prefill_case::<T>(chunk);
    let mut fast = vec![T::from_f32(0.0); q.len()];
    let mut slow = fast.clone();
    cpu::paged_prefill_attention(&p, &mut fast, &q, &k, &v, &tables, &starts, &lens).unwrap();
    reference::paged_prefill_attention(&p, &mut slow, &q, &k, &v, &tables, &starts, &lens).unwrap();
    assert_close("paged_prefill_attention", &fast, &slow)
}

fn cache_write<T: KvFloat>(pr: &Problem) -> Result<(), TestCaseError> {
    let c = pr.cache();
    let n = pr.lens.iter().sum::<usize>().min(c.slots());
    let p = ReshapeAndCache {
        num_tokens: n,
        cache: c,
    };
    let key = values::<T>(n * c.token_stride(), pr.seed);
    let value = values::<T>(n * c.token_stride(), pr.seed ^ 5);
    // A permutation of slots, with some tokens skipped.
    let mut slots: Vec<i32> = (0..c.slots() as i32).rev().step_by(1).take(n).collect();
    for (i, s) in slots.iter_mut().enumerate() {
        if i % 5 == 3 {
            *s = -1;
        }
    }
    let (mut kf, mut vf) = (values::<T>(c.elements(), 7), values::<T>(c.elements(), 8));
    let (mut kr, mut vr) = (kf.clone(), vf.clone());
    cpu::reshape_and_cache(&p, &key, &value, &mut kf, &mut vf, &slots).unwrap();
    reference::reshape_and_cache(&p, &key, &value, &mut kr, &mut vr, &slots).unwrap();
    prop_assert!(kf == kr && vf == vr, "reshape_and_cache differs");
    Ok(())
}

fn rope<T: KvFloat>(pr: &Problem, style: RopeStyle) -> Result<(), TestCaseError> {
    let RopeCase {
        p,
        positions,
        q,
        k,
        cos_sin,
    } = pr.rope_case::<T>(pr.head_size, style);
    let (mut qf, mut kf) = (q.clone(), k.clone());
    let (mut qr, mut kr) = (q, k);
    cpu::rotary_embedding(&p, &positions, &mut qf, &mut kf, &cos_sin).unwrap();
    reference::rotary_embedding(&p, &positions, &mut qr, &mut kr, &cos_sin).unwrap();
    assert_close("rope q", &qf, &qr)?;
    assert_close("rope k", &kf, &kr)
}

fn norms<T: KvFloat>(pr: &Problem) -> Result<(), TestCaseError> {
    let p = RmsNorm {
        num_tokens: pr.lens.len() * 2,
        hidden: pr.head_size * pr.kv_heads,
        eps: 1e-6,
    };
    let x = values::<T>(p.num_tokens * p.hidden, pr.seed);
    let w = values::<T>(p.hidden, pr.seed ^ 11);
    let (mut of, mut or) = (
        vec![T::from_f32(0.0); x.len()],
        vec![T::from_f32(0.0); x.len()],
    );
    cpu::rms_norm(&p, &mut of, &x, &w).unwrap();
    reference::rms_norm(&p, &mut or, &x, &w).unwrap();
    assert_close("rms_norm", &of, &or)?;
    let res = values::<T>(x.len(), pr.seed ^ 12);
    let (mut xf, mut rf) = (x.clone(), res.clone());
    let (mut xr, mut rr) = (x.clone(), res);
    cpu::fused_add_rms_norm(&p, &mut xf, &mut rf, &w).unwrap();
    reference::fused_add_rms_norm(&p, &mut xr, &mut rr, &w).unwrap();
    assert_close("fused residual", &rf, &rr)?;
    assert_close("fused norm", &xf, &xr)?;
    let s = SiluAndMul {
        num_tokens: p.num_tokens,
        d: p.hidden,
    };
    let xs = values::<T>(s.num_tokens * 2 * s.d, pr.seed ^ 13);
    let (mut sf, mut sr) = (
        vec![T::from_f32(0.0); s.num_tokens * s.d],
        vec![T::from_f32(0.0); s.num_tokens * s.d],
    );
    cpu::silu_and_mul(&s, &mut sf, &xs).unwrap();
    reference::silu_and_mul(&s, &mut sr, &xs).unwrap();
    assert_close("silu_and_mul", &sf, &sr)
}

fn matmul<T: KvFloat>(m: usize, n: usize, k: usize, seed: u64) -> Result<(), TestCaseError> {
    let p = Matmul { m, n, k };
    let x = values::<T>(m * k, seed);
    let w = values::<T>(n * k, seed ^ 21);
    let (mut f, mut r) = (vec![T::from_f32(0.0); m * n], vec![T::from_f32(0.0); m * n]);
    cpu::matmul(&p, &mut f, &x, &w).unwrap();
    reference::matmul(&p, &mut r, &x, &w).unwrap();
    assert_close("matmul", &f, &r)?;
    // A row's result does not depend on the batch it is in.
    if m > 1 {
        let mut one = vec![T::from_f32(0.0); n];
        cpu::matmul(&Matmul { m: 1, n, k }, &mut one, &x[k..2 * k], &w).unwrap();
        prop_assert!(
            one == f[n..2 * n],
            "row 1 alone differs from row 1 in the batch"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matmuls(m in 1usize..9, n in 1usize..70, k in 1usize..300, seed in any::<u64>()) {
        // Relative tolerance scales with the sum's length: inputs in [-1, 1), sums of k terms.
        matmul::<f32>(m, n, k, seed)?;
    }

    #[test]
    fn decode_attention(pr in problem()) {
        decode::<f32>(&pr)?;
        decode::<f16>(&pr)?;
        decode::<bf16>(&pr)?;
    }

    #[test]
    fn prefill_attention(pr in problem(), chunk in 1usize..40) {
        prefill::<f32>(&pr, chunk)?;
        prefill::<f16>(&pr, chunk)?;
        prefill::<bf16>(&pr, chunk)?;
    }

    #[test]
    fn cache_writes_ropes_and_norms(pr in problem()) {
        cache_write::<f32>(&pr)?;
        cache_write::<bf16>(&pr)?;
        for style in [RopeStyle::Neox, RopeStyle::GptJ] {
            rope::<f32>(&pr, style)?;
            rope::<f16>(&pr, style)?;
            rope::<bf16>(&pr, style)?;
        }
        norms::<f32>(&pr)?;
        norms::<f16>(&pr)?;
        norms::<bf16>(&pr)?;
    }
}

#[test]
fn paged_over_a_shuffled_table_equals_contiguous_attention() {
    let pr = Problem {
        block_size: 16,
        head_size: 128,
        kv_heads: 2,
        group: 4,
        lens: vec![1, 17, 200, 129],
        window: None,
        seed: 42,
    };
    let c = pr.cache();
    let p = PagedAttention {
        num_seqs: pr.lens.len(),
        num_heads: 8,
        cache: c,
        max_blocks_per_seq: pr.max_blocks(),
        scale: 1.0 / (128f32).sqrt(),
        sliding_window: None,
    };
    let q = values::<f32>(p.num_seqs * 8 * 128, 1);
    let k = values::<f32>(c.elements(), 2);
    let v = values::<f32>(c.elements(), 3);
    let tables = pr.tables();
    let lens: Vec<i32> = pr.lens.iter().map(|&l| l as i32).collect();
    // The same keys and values, gathered into [num_seqs, max_len, kv_heads, head_size].
    let max_len = 200;
    let stride = c.token_stride();
    let (mut kc, mut vc) = (
        vec![0f32; p.num_seqs * max_len * stride],
        vec![0f32; p.num_seqs * max_len * stride],
    );
    for (s, &len) in pr.lens.iter().enumerate() {
        let row = &tables[s * p.max_blocks_per_seq..];
        for t in 0..len {
            let at = reference::cache_offset(&c, row, t, 0);
            kc[(s * max_len + t) * stride..][..stride].copy_from_slice(&k[at..at + stride]);
            vc[(s * max_len + t) * stride..][..stride].copy_from_slice(&v[at..at + stride]);
        }
    }
    let (mut paged, mut contiguous) = (vec![0f32; q.len()], vec![0f32; q.len()]);
    cpu::paged_attention(&p, &mut paged, &q, &k, &v, &tables, &lens).unwrap();
    cpu::contiguous_attention(&p, max_len, &mut contiguous, &q, &kc, &vc, &lens).unwrap();
    for (a, b) in paged.iter().zip(&contiguous) {
        assert!(
            (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
            "paged {a} vs contiguous {b}"
        );
    }
}

#[test]
fn errors_name_the_argument_and_write_nothing() {
    let c = CacheShape {
        num_blocks: 2,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 64,
    };
    let p = ReshapeAndCache {
        num_tokens: 2,
        cache: c,
    };
    let key = vec![1f32; 2 * 128];
    let (mut kc, mut vc) = (vec![0f32; c.elements()], vec![0f32; c.elements()]);
    let err = cpu::reshape_and_cache(&p, &key[..100], &key, &mut kc, &mut vc, &[0, 1]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ascend_hal::Error::ShapeMismatch { arg: "key", .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("[num_tokens=2, kv_heads=2, head_size=64] f32 (256 elements)")
            && msg.contains("100 elements"),
        "{msg}"
    );
    let err = cpu::reshape_and_cache(&p, &key, &key, &mut kc, &mut vc, &[3, 32]).unwrap_err();
    assert!(
        err.to_string()
            .contains("slot_mapping[1] = 32 is outside the cache's 32 slots"),
        "{err}"
    );
    assert!(
        kc.iter().all(|&x| x == 0.0),
        "an erroring call wrote to the cache"
    );
    let pa = PagedAttention {
        num_seqs: 1,
        num_heads: 3,
        cache: c,
        max_blocks_per_seq: 1,
        scale: 1.0,
        sliding_window: None,
    };
    let err = cpu::paged_attention(&pa, &mut [0f32; 192], &[0f32; 192], &kc, &vc, &[0], &[1])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("num_heads 3 must be a positive multiple of num_kv_heads 2"),
        "{err}"
    );
    let pa = PagedAttention { num_heads: 2, ..pa };
    let err = cpu::paged_attention(&pa, &mut [0f32; 128], &[0f32; 128], &kc, &vc, &[5], &[3])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("block_tables[0][0] = 5 is outside the cache's 2 blocks"),
        "{err}"
    );
    let err = cpu::paged_attention(&pa, &mut [0f32; 128], &[0f32; 128], &kc, &vc, &[1], &[17])
        .unwrap_err();
    assert!(err.to_string().contains("needs 2 blocks"), "{err}");
}
