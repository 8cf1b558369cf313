//! Extreme values fed to every kernel's parameter checks, the CPU and reference kernels, the
//! Ascend C host runners and the tiling: each returns an error or runs, never a panic or an
//! abort.

use ascend_kernels::ascendc::{host, tiling};
use ascend_kernels::{
    cpu, reference, CacheShape, Matmul, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm,
    RopeStyle, Rotary, SiluAndMul,
};
use proptest::prelude::*;

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(2),
        Just(3),
        Just(8),
        Just(64),
        Just(128),
        Just(u32::MAX as usize + 1),
        Just(usize::MAX / 2),
        Just(usize::MAX),
    ]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(0.0f32),
        Just(-1.0),
        Just(1e-6)
    ]
}

/// The buffer length a shape wants when it is small, else a small wrong one.
fn len(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 4096)
        .unwrap_or(7)
}

fn cache() -> impl Strategy<Value = CacheShape> {
    (dim(), dim(), dim(), dim()).prop_map(|(num_blocks, block_size, num_kv_heads, head_size)| {
        CacheShape {
            num_blocks,
            block_size,
            num_kv_heads,
            head_size,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn elementwise_ops(t in dim(), h in dim(), d in dim(), eps in float(), m in dim(), n in dim(), k in dim()) {
        let norm = RmsNorm { num_tokens: t, hidden: h, eps };
        let x = vec![1.0f32; len(&[t, h])];
        let w = vec![1.0f32; len(&[h])];
        let mut out = x.clone();
        let _ = cpu::rms_norm(&norm, &mut out, &x, &w);
        let _ = reference::rms_norm(&norm, &mut out, &x, &w);
        let mut res = x.clone();
        let _ = cpu::fused_add_rms_norm(&norm, &mut out, &mut res, &w);
        let _ = host::rms_norm(&norm, &mut out, &x, &w, 4);
        let _ = tiling::rms_norm(&norm, 4, true);
        let silu = SiluAndMul { num_tokens: t, d };
        let xs = vec![0.5f32; len(&[t, 2, d])];
        let mut o = vec![0.0f32; len(&[t, d])];
        let _ = cpu::silu_and_mul(&silu, &mut o, &xs);
        let _ = reference::silu_and_mul(&silu, &mut o, &xs);
        let mm = Matmul { m, n, k };
        let (a, b) = (vec![1.0f32; len(&[m, k])], vec![1.0f32; len(&[n, k])]);
        let mut c = vec![0.0f32; len(&[m, n])];
        let _ = cpu::matmul(&mm, &mut c, &a, &b);
        let _ = reference::matmul(&mm, &mut c, &a, &b);
    }

    #[test]
    fn rope(t in dim(), heads in dim(), kv in dim(), head in dim(), rot in dim(), maxp in dim(), gptj in any::<bool>(), pos in prop_oneof![Just(-1i64), Just(0), Just(i64::MAX)]) {
        let p = Rotary {
            num_tokens: t,
            num_heads: heads,
            num_kv_heads: kv,
            head_size: head,
            rotary_dim: rot,
            max_position: maxp,
            style: if gptj { RopeStyle::GptJ } else { RopeStyle::Neox },
        };
        let positions = vec![pos; len(&[t])];
        let mut q = vec![1.0f32; len(&[t, heads, head])];
        let mut k = vec![1.0f32; len(&[t, kv, head])];
        let cs = vec![0.5f32; len(&[maxp, rot])];
        let _ = cpu::rotary_embedding(&p, &positions, &mut q, &mut k, &cs);
        let _ = reference::rotary_embedding(&p, &positions, &mut q, &mut k, &cs);
        let _ = host::rotary_embedding(&p, &positions, &mut q, &mut k, &cs, 4);
        let _ = tiling::rotary_embedding(&p, 4);
    }

    #[test]
    fn cache_ops(c in cache(), t in dim(), seqs in dim(), heads in dim(), width in dim(),
                 window in prop::option::of(dim()), scale in float(),
                 slot in prop_oneof![Just(i32::MIN), Just(-1), Just(0), Just(i32::MAX)],
                 seq_len in prop_oneof![Just(i32::MIN), Just(0), Just(1), Just(i32::MAX)]) {
        let _ = (c.token_stride(), c.block_stride(), c.elements(), c.slots());
        let rc = ReshapeAndCache { num_tokens: t, cache: c };
        let rows = vec![1.0f32; len(&[t, c.num_kv_heads, c.head_size])];
        let mut kc = vec![0.0f32; len(&[c.num_blocks, c.block_size, c.num_kv_heads, c.head_size])];
        let mut vc = kc.clone();
        let slots = vec![slot; len(&[t])];
        let _ = cpu::reshape_and_cache(&rc, &rows, &rows, &mut kc, &mut vc, &slots);
        let _ = reference::reshape_and_cache(&rc, &rows, &rows, &mut kc, &mut vc, &slots);
        let _ = host::reshape_and_cache(&rc, &rows, &rows, &mut kc, &mut vc, &slots, 4);
        let _ = tiling::reshape_and_cache(&rc, 4);

        let pa = PagedAttention {
            num_seqs: seqs,
            num_heads: heads,
            cache: c,
            max_blocks_per_seq: width,
            scale,
            sliding_window: window,
        };
        let q = vec![0.1f32; len(&[seqs, heads, c.head_size])];
        let mut out = q.clone();
        let tables = vec![0i32; len(&[seqs, width])];
        let lens = vec![seq_len; len(&[seqs])];
        let _ = cpu::paged_attention(&pa, &mut out, &q, &kc, &vc, &tables, &lens);
        let _ = reference::paged_attention(&pa, &mut out, &q, &kc, &vc, &tables, &lens);
        let _ = host::paged_attention(&pa, &mut out, &q, &kc, &vc, &tables, &lens, 4);
        let _ = tiling::paged_attention(&pa, 4, 48);
        let _ = tiling::paged_attention(&pa, 2, 1);

        let pf = PrefillAttention {
            num_seqs: seqs,
            num_tokens: t,
            num_heads: heads,
            cache: c,
            max_blocks_per_seq: width,
            scale,
            sliding_window: window,
        };
        let q = vec![0.1f32; len(&[t, heads, c.head_size])];
        let mut out = q.clone();
        let starts = vec![0i32; len(&[seqs]).saturating_add(1)];
        let _ = cpu::paged_prefill_attention(&pf, &mut out, &q, &kc, &vc, &tables, &starts, &lens);
        let _ = reference::paged_prefill_attention(&pf, &mut out, &q, &kc, &vc, &tables, &starts, &lens);
        let _ = tiling::paged_prefill_attention(&pf, 4, 48);
        let _ = tiling::paged_prefill_attention(&pf, 2, 1);
    }
}
