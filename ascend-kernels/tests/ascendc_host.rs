//! Every Ascend C kernel (`ascendc/kernels/*.cpp`), run on the host implementation of the Ascend
//! C API, equals the Rust reference within the dtype's tolerance (`ascend_kernels::tolerance`:
//! f32 2e-5 + 2e-4 relative, f16 2e-3 + 4e-3) on random shapes: block sizes 16 and 128, head
//! sizes 64/80/96/128/256, grouped-query attention, sliding windows, shuffled block tables,
//! lengths that end mid-block, and 1 to 48 simulated vector cores. Then the host implementation
//! refuses kernels that break the 910B's rules.

mod common;

use ascend_hal::Error;
use ascend_kernels::ascendc::{self, host, tiling, AscendCFloat, Violation};
use ascend_kernels::{reference, CacheShape, PagedAttention, ReshapeAndCache, RmsNorm, RopeStyle};
use common::{assert_close, problem, values, DecodeCase, PrefillCase, Problem, RopeCase};
use half::f16;
use proptest::prelude::*;

fn decode<T: AscendCFloat>(pr: &Problem, cores: u32) -> Result<(), TestCaseError> {
    let DecodeCase {
        p,
        q,
        k,
        v,
        tables,
        lens,
    } = pr.decode_case::<T>();
    // Poisoned output: every element must be written.
    let mut npu = vec![T::from_f32(f32::NAN); q.len()];
    let mut oracle = vec![T::from_f32(0.0); q.len()];
    host::paged_attention(&p, &mut npu, &q, &k, &v, &tables, &lens, cores).unwrap();
    reference::paged_attention(&p, &mut oracle, &q, &k, &v, &tables, &lens).unwrap();
    assert_close("ascendc paged_attention", &npu, &oracle)
}

fn prefill<T: AscendCFloat>(pr: &Problem, chunk: usize, cores: u32) -> Result<(), TestCaseError> {
    let PrefillCase {
        p,
        q,
        k,
        v,
        tables,
        starts,
        lens,
    } = pr.prefill_case::<T>(chunk);
    let mut npu = vec![T::from_f32(f32::NAN); q.len()];
    let mut oracle = vec![T::from_f32(0.0); q.len()];
    host::paged_prefill_attention(&p, &mut npu, &q, &k, &v, &tables, &starts, &lens, cores)
        .unwrap();
    reference::paged_prefill_attention(&p, &mut oracle, &q, &k, &v, &tables, &starts, &lens)
        .unwrap();
    assert_close("ascendc paged_prefill_attention", &npu, &oracle)
}

/// Copy-on-write of a few blocks into fresh ones, in both caches.
fn block_copies<T: AscendCFloat>(pr: &Problem, cores: u32) -> Result<(), TestCaseError> {
    let c = pr.cache();
    let n = c.num_blocks;
    // Sources from the first half, destinations from the second: one wave.
    let pairs: Vec<(u32, u32)> = (0..(n / 2).min(5))
        .map(|i| {
            (
                ((i * 7 + pr.seed as usize) % (n / 2)) as u32,
                (n / 2 + i) as u32,
            )
        })
        .collect();
    let (k, v) = (
        values::<T>(c.elements(), pr.seed),
        values::<T>(c.elements(), pr.seed ^ 1),
    );
    let (mut kn, mut vn, mut kr, mut vr) = (k.clone(), v.clone(), k, v);
    host::copy_blocks(&c, &mut kn, &mut vn, &pairs, cores).unwrap();
    reference::copy_blocks(&c, &mut kr, &mut vr, &pairs).unwrap();
    // Copies: bit-exact.
    prop_assert!(kn == kr, "key cache differs");
    prop_assert!(vn == vr, "value cache differs");
    Ok(())
}

fn cache_write<T: AscendCFloat>(pr: &Problem, cores: u32) -> Result<(), TestCaseError> {
    let c = pr.cache();
    let n = pr.lens.iter().sum::<usize>().min(c.slots());
    let p = ReshapeAndCache {
        num_tokens: n,
        cache: c,
    };
    let key = values::<T>(n * c.token_stride(), pr.seed);
    let value = values::<T>(n * c.token_stride(), pr.seed ^ 5);
    // Slots in a scattered order, some tokens skipped.
    let slots: Vec<i32> = (0..n)
        .map(|i| {
            if i % 5 == 3 {
                -1
            } else {
                ((i * 7919 + pr.seed as usize) % c.slots()) as i32
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let slots: Vec<i32> = slots
        .into_iter()
        .map(|s| if s >= 0 && !seen.insert(s) { -1 } else { s })
        .collect();
    let (mut kn, mut vn) = (values::<T>(c.elements(), 7), values::<T>(c.elements(), 8));
    let (mut kr, mut vr) = (kn.clone(), vn.clone());
    host::reshape_and_cache(&p, &key, &value, &mut kn, &mut vn, &slots, cores).unwrap();
    reference::reshape_and_cache(&p, &key, &value, &mut kr, &mut vr, &slots).unwrap();
    prop_assert!(
        kn == kr && vn == vr,
        "ascendc reshape_and_cache differs from the reference"
    );
    Ok(())
}

fn rope<T: AscendCFloat>(pr: &Problem, cores: u32, partial: bool) -> Result<(), TestCaseError> {
    // Partial rotation (rotary_dim < head_size) where the halves stay 32-byte aligned.
    let rotary_dim = if partial && pr.head_size.is_multiple_of(64) {
        pr.head_size / 2
    } else {
        pr.head_size
    };
    for style in [RopeStyle::Neox, RopeStyle::GptJ] {
        let RopeCase {
            p,
            positions,
            q,
            k,
            cos_sin: cs,
        } = pr.rope_case::<T>(rotary_dim, style);
        let (mut qn, mut kn) = (q.clone(), k.clone());
        let (mut qr, mut kr) = (q, k);
        if !(rotary_dim / 2 * std::mem::size_of::<T>()).is_multiple_of(32) {
            // f16 head_size 80: the halves are 80 bytes, so vector operands cannot start aligned.
            let e =
                host::rotary_embedding(&p, &positions, &mut qn, &mut kn, &cs, cores).unwrap_err();
            prop_assert!(e.to_string().contains("half of rotary_dim"), "{}", e);
            prop_assert!(qn == qr && kn == kr, "a refused launch writes nothing");
            continue;
        }
        host::rotary_embedding(&p, &positions, &mut qn, &mut kn, &cs, cores).unwrap();
        reference::rotary_embedding(&p, &positions, &mut qr, &mut kr, &cs).unwrap();
        assert_close(&format!("ascendc rope q {style:?}"), &qn, &qr)?;
        assert_close(&format!("ascendc rope k {style:?}"), &kn, &kr)?;
    }
    Ok(())
}

fn norms<T: AscendCFloat>(pr: &Problem, cores: u32) -> Result<(), TestCaseError> {
    let p = RmsNorm {
        num_tokens: pr.lens.len() * 2 + 1,
        hidden: pr.head_size * pr.kv_heads * pr.group,
        eps: 1e-6,
    };
    let x = values::<T>(p.num_tokens * p.hidden, pr.seed);
    let w = values::<T>(p.hidden, pr.seed ^ 11);
    let (mut on, mut or) = (
        vec![T::from_f32(f32::NAN); x.len()],
        vec![T::from_f32(0.0); x.len()],
    );
    host::rms_norm(&p, &mut on, &x, &w, cores).unwrap();
    reference::rms_norm(&p, &mut or, &x, &w).unwrap();
    assert_close("ascendc rms_norm", &on, &or)?;
    let res = values::<T>(x.len(), pr.seed ^ 12);
    let (mut xn, mut rn) = (x.clone(), res.clone());
    let (mut xr, mut rr) = (x, res);
    host::fused_add_rms_norm(&p, &mut xn, &mut rn, &w, cores).unwrap();
    reference::fused_add_rms_norm(&p, &mut xr, &mut rr, &w).unwrap();
    assert_close("ascendc fused residual", &rn, &rr)?;
    assert_close("ascendc fused norm", &xn, &xr)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn decode_attention_matches_the_reference(pr in problem(), cores in 1u32..=48) {
        decode::<f32>(&pr, cores)?;
        decode::<f16>(&pr, cores)?;
    }

    #[test]
    fn prefill_attention_matches_the_reference(pr in problem(), chunk in 1usize..40, cores in 1u32..=48) {
        prefill::<f32>(&pr, chunk, cores)?;
        prefill::<f16>(&pr, chunk, cores)?;
    }

    #[test]
    fn cache_writes_ropes_and_norms_match_the_reference(pr in problem(), cores in 1u32..=48, partial in any::<bool>()) {
        cache_write::<f32>(&pr, cores)?;
        cache_write::<f16>(&pr, cores)?;
        rope::<f32>(&pr, cores, partial)?;
        rope::<f16>(&pr, cores, partial)?;
        norms::<f32>(&pr, cores)?;
        norms::<f16>(&pr, cores)?;
        block_copies::<f32>(&pr, cores)?;
        block_copies::<f16>(&pr, cores)?;
    }
}

/// Both block sizes the issue names, with a context long enough to need many chunks per block
/// (block 128 > the f32 chunk) and an empty sequence, on the default core count.
#[test]
fn decode_at_block_sizes_16_and_128_with_an_empty_sequence() {
    for block_size in [16, 128] {
        let pr = Problem {
            block_size,
            head_size: 128,
            kv_heads: 2,
            group: 4,
            lens: vec![0, 1, 300, 129],
            window: None,
            seed: 5,
        };
        decode::<f32>(&pr, tiling::VECTOR_CORES).unwrap();
        decode::<f16>(&pr, tiling::VECTOR_CORES).unwrap();
        let pr = Problem {
            window: Some(100),
            ..pr
        };
        decode::<f16>(&pr, 3).unwrap();
        // Chunked prefill over the same contexts: whole short prompts, the last 37 tokens of
        // the long ones (crossing blocks), with and without the window.
        prefill::<f32>(&pr, 37, tiling::VECTOR_CORES).unwrap();
        prefill::<f16>(&pr, 37, 5).unwrap();
        let pr = Problem { window: None, ..pr };
        prefill::<f32>(&pr, 37, 7).unwrap();
        prefill::<f16>(&pr, 300, tiling::VECTOR_CORES).unwrap();
        block_copies::<f32>(&pr, 3).unwrap();
        block_copies::<f16>(&pr, tiling::VECTOR_CORES).unwrap();
    }
}

/// A batch the parallel kernel cannot run as one launch (a chain a -> b -> c) is refused by the
/// host runner, and `copy_waves` splits it so that running the waves in order equals the
/// reference; bad pairs are refused before the launch.
#[test]
fn block_copy_chains_are_split_into_waves() {
    let c = CacheShape {
        num_blocks: 6,
        block_size: 16,
        num_kv_heads: 1,
        head_size: 64,
    };
    let chain = [(0u32, 1u32), (1, 2), (3, 4), (4, 3)];
    let waves = ascend_kernels::copy_waves(&chain);
    assert_eq!(waves, vec![&chain[..1], &chain[1..3], &chain[3..]]);
    let (k, v) = (
        values::<f32>(c.elements(), 1),
        values::<f32>(c.elements(), 2),
    );
    let (mut kn, mut vn, mut kr, mut vr) = (k.clone(), v.clone(), k, v);
    let e = host::copy_blocks(&c, &mut kn, &mut vn, &chain, 4).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { op: "copy_blocks", message } if message.contains("parallel")),
        "{e}"
    );
    for wave in &waves {
        host::copy_blocks(&c, &mut kn, &mut vn, wave, 4).unwrap();
    }
    reference::copy_blocks(&c, &mut kr, &mut vr, &chain).unwrap();
    assert!(kn == kr && vn == vr);
    for bad in [[(0u32, 6u32)], [(2, 2)]] {
        let e = host::copy_blocks(&c, &mut kn, &mut vn, &bad, 1).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidArgument {
                    op: "copy_blocks",
                    ..
                }
            ),
            "{e}"
        );
    }
    assert!(kn == kr, "a refused call wrote nothing");
}

fn fault(v: Violation) -> String {
    match ascendc::run_violation(v) {
        Err(Error::KernelFault { op, message }) => {
            assert_eq!(op, "violation");
            message
        }
        other => panic!("{v:?}: expected a KernelFault, got {other:?}"),
    }
}

#[test]
fn the_host_implementation_rejects_what_a_910b_would() {
    let m = fault(Violation::UbOverflow);
    assert!(
        m.contains("Unified Buffer overflow")
            && m.contains("98304 bytes used + 98304 requested > 188416"),
        "{m}"
    );
    let m = fault(Violation::MisalignedCopy);
    assert!(
        m.contains("DataCopy GM->UB: 20 x float = 80 bytes is not a multiple of 32"),
        "{m}"
    );
    let m = fault(Violation::MisalignedOperand);
    assert!(
        m.contains("UB operand at byte 16 is not 32-byte aligned"),
        "{m}"
    );
    let m = fault(Violation::UseAfterFree);
    assert!(m.contains("used after FreeTensor"), "{m}");
    let m = fault(Violation::QueueDepth);
    assert!(
        m.contains("EnQue: the queue already holds 1 tensors, its depth is 1"),
        "{m}"
    );
    let m = fault(Violation::AllocExhausted);
    assert!(m.contains("all 2 buffers of the queue are in use"), "{m}");
    let m = fault(Violation::GmOutOfRange);
    assert!(
        m.contains("GM range 0..16 outside the 8-element global buffer"),
        "{m}"
    );
    let m = fault(Violation::ReduceWorkOverlap);
    assert!(
        m.contains("ReduceMax: the work tensor overlaps the source"),
        "{m}"
    );
    let m = fault(Violation::ReduceWorkTooSmall);
    assert!(
        m.contains("ReduceMax: the work tensor holds 16 elements; 1024 float need 32"),
        "{m}"
    );
    // The pipe model: each hazard names both accesses, their pipes and the missing event.
    let hazards = [
        (
            Violation::ScalarReadUnsynced,
            "GetValue(3) (pipe S) reads UB bytes 44..48 that Duplicate (pipe V) wrote with no V_S synchronisation",
        ),
        (
            Violation::VectorReadUnsynced,
            "Adds (pipe V) reads UB bytes 20..24 that SetValue (pipe S) wrote with no S_V synchronisation",
        ),
        (
            Violation::Mte2ToVectorUnsynced,
            "Adds (pipe V) reads UB bytes 0..256 that DataCopy GM->UB (pipe MTE2) wrote with no MTE2_V synchronisation",
        ),
        (
            Violation::VectorToMte3Unsynced,
            "DataCopy UB->GM (pipe MTE3) reads UB bytes 0..256 that Duplicate (pipe V) wrote with no V_MTE3 synchronisation",
        ),
        (
            Violation::RefillWithoutFree,
            "DataCopy GM->UB (pipe MTE2) writes UB bytes 0..256 that Adds (pipe V) read with no V_MTE2 synchronisation",
        ),
    ];
    for (v, want) in hazards {
        let m = fault(v);
        assert!(m.contains(want), "{v:?}: {m}");
    }
    // Both accesses are located in the kernel source (here, the violation kernels).
    let m = fault(Violation::Mte2ToVectorUnsynced);
    assert!(
        m.contains("; the earlier access at launch.cpp:")
            && m.ends_with(']')
            && m.contains("[at launch.cpp:"),
        "{m}"
    );
    let m = fault(Violation::UnpairedFlag);
    assert!(m.contains("SetFlag without a matching WaitFlag"), "{m}");
    // Each message says which simulated core broke the rule.
    assert!(m.starts_with("violation (core 0): "), "{m}");
}

#[test]
fn shapes_the_kernels_cannot_take_are_refused_before_launch() {
    // f16 head_size 72: 144 bytes per row, not whole 32-byte blocks.
    let cache = CacheShape {
        num_blocks: 2,
        block_size: 16,
        num_kv_heads: 1,
        head_size: 72,
    };
    let p = PagedAttention {
        num_seqs: 1,
        num_heads: 1,
        cache,
        max_blocks_per_seq: 2,
        scale: 1.0,
        sliding_window: None,
    };
    let (q, k) = (vec![f16::ZERO; 72], vec![f16::ZERO; cache.elements()]);
    let mut out = vec![f16::from_f32(7.0); 72];
    let e = host::paged_attention(&p, &mut out, &q, &k, &k, &[0, 1], &[3], 4).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "paged_attention",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("head_size (72 elements x 2 bytes = 144 bytes)"),
        "{e}"
    );
    assert!(
        out.iter().all(|v| v.to_f32() == 7.0),
        "a refused launch writes nothing"
    );
    // A shape error is the reference's, with its argument named.
    let e = host::paged_attention(&p, &mut out[..8], &q, &k, &k, &[0, 1], &[3], 4).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ShapeMismatch { .. } | Error::LengthMismatch { .. }
        ),
        "{e}"
    );
    // block_dim 0 is not a launch.
    let n = RmsNorm {
        num_tokens: 1,
        hidden: 64,
        eps: 1e-6,
    };
    let e = host::rms_norm(&n, &mut [0f32; 64], &[1f32; 64], &[1f32; 64], 0).unwrap_err();
    assert!(
        e.to_string().contains("block_dim must be 1..=65535, got 0"),
        "{e}"
    );
}

/// Llama-70B's hidden size in f16 does not fit double-buffered; the tiling single-buffers it and
/// the result still matches.
#[test]
fn wide_norm_rows_fall_back_to_single_buffering() {
    let p = RmsNorm {
        num_tokens: 5,
        hidden: 8192,
        eps: 1e-5,
    };
    assert_eq!(tiling::rms_norm(&p, 2, true).unwrap().buffers, 1);
    let x = values::<f16>(p.num_tokens * p.hidden, 3);
    let w = values::<f16>(p.hidden, 4);
    let res = values::<f16>(x.len(), 5);
    let (mut xn, mut rn) = (x.clone(), res.clone());
    let (mut xr, mut rr) = (x, res);
    host::fused_add_rms_norm(&p, &mut xn, &mut rn, &w, 2).unwrap();
    reference::fused_add_rms_norm(&p, &mut xr, &mut rr, &w).unwrap();
    assert_close("wide fused residual", &rn, &rr).unwrap();
    assert_close("wide fused norm", &xn, &xr).unwrap();
}

/// The schedules the tiling chooses between are each run and checked, not left to chance: a
/// lone long context split across cores and merged (flash-decoding), KV heads read together,
/// and prefill tiles of several query tokens over blocks read once per tile.
#[test]
fn split_contexts_grouped_heads_and_prefill_tiles_match_the_reference() {
    let pr = Problem {
        block_size: 128,
        head_size: 128,
        kv_heads: 8,
        group: 4,
        lens: vec![1100],
        window: None,
        seed: 11,
    };
    let p = pr.decode_case::<f16>().p;
    let t = tiling::paged_attention(&p, 2, 48).unwrap();
    assert!(t.partitions > 1, "a lone context is split: {t:?}");
    decode::<f16>(&pr, 48).unwrap();
    decode::<f32>(&pr, 48).unwrap();
    // A window over the split context: parts wholly before it contribute nothing.
    let windowed = Problem {
        window: Some(300),
        ..pr.clone()
    };
    decode::<f16>(&windowed, 48).unwrap();

    let batch = Problem {
        lens: vec![300; 12],
        kv_heads: 4,
        head_size: 64,
        ..pr.clone()
    };
    let t = tiling::paged_attention(&batch.decode_case::<f16>().p, 2, 48).unwrap();
    assert!(t.kv_heads_per_task > 1, "adjacent KV heads together: {t:?}");
    decode::<f16>(&batch, 48).unwrap();

    let prompt = Problem {
        lens: vec![400, 333],
        ..pr
    };
    let p = prompt.prefill_case::<f16>(200).p;
    let t = tiling::paged_prefill_attention(&p, 2, 48).unwrap();
    assert!(t.attn.tile_rows > 1, "query rows tiled: {t:?}");
    prefill::<f16>(&prompt, 200, 48).unwrap();
    prefill::<f32>(&prompt, 200, 48).unwrap();
    let windowed = Problem {
        window: Some(100),
        ..prompt
    };
    prefill::<f16>(&windowed, 200, 48).unwrap();
}
