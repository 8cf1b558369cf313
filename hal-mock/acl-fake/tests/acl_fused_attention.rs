//! Attention and RoPE from CANN's fused operators on the ACL backend, over the fake: the
//! default provider for f16/bf16 attention is `aclnnFusedInferAttentionScoreV2` (one launch for
//! decode; per chunk for chunked prefill, with runs of one-token chunks together), its results
//! match the reference, and every call it cannot run falls back to the Ascend C kernels with the
//! reason recorded, or is an error naming the op and every provider's limit.
//!
//! The tests take turns: providers and the fallback record are process-wide.

mod common;

use common::{max_diff, up, values};

use std::sync::{Mutex, MutexGuard, Once};

use ascend_hal::acl::{AclBackend, AclStream};
use ascend_hal::prelude::*;
use ascend_hal::Error;
use ascend_kernels::acl::providers::{self, AclOp, Provider};
use ascend_kernels::{
    ascendc, reference, CacheShape, KernelOps, KvFloat, PagedAttention, PrefillAttention,
    RopeStyle, RopeTable, Rotary,
};
use half::{bf16, f16};

const FIA: &str = "aclnnFusedInferAttentionScoreV2";

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    static SET: Once = Once::new();
    SET.call_once(|| {
        let fake = common::fake_path();
        // SAFETY: set once, before any test of this binary reads the environment.
        unsafe {
            std::env::set_var("ASCEND_KERNELS_LIB", ascendc::HOST_KERNELS_LIB);
            std::env::set_var("ASCEND_HAL_NNOPBASE_LIB", &fake);
            std::env::set_var("ASCEND_HAL_OPAPI_LIB", &fake);
        }
    });
    providers::reset_providers();
    providers::clear_fallbacks();
    g
}

fn stream() -> AclStream {
    common::backend().device(0).unwrap().new_stream().unwrap()
}

fn tolerance<T: KvFloat>() -> f32 {
    match T::DTYPE {
        ascend_hal::DType::BF16 => 3e-2,
        ascend_hal::DType::F16 => 8e-3,
        _ => 2e-5,
    }
}

fn fallback_reason(op: AclOp) -> Option<String> {
    providers::fallbacks()
        .into_iter()
        .find(|f| f.op == op && f.from == Provider::Aclnn && f.to == Provider::AscendC)
        .map(|f| f.reason)
}

/// Decode attention of three sequences (one empty of keys but one, one past a block, one of two
/// full blocks) over a shuffled table; returns the operator calls it took.
fn decode<T: KvFloat>(block_size: usize, window: Option<usize>) -> u64 {
    let s = stream();
    let cache = CacheShape {
        num_blocks: 6,
        block_size,
        num_kv_heads: 2,
        head_size: 64,
    };
    let (heads, seqs, max_blocks) = (8, 3, 2);
    let lens = [1, block_size as i32 + 3, 2 * block_size as i32];
    let tables = [5, 0, 1, 3, 2, 4];
    let p = PagedAttention {
        num_seqs: seqs,
        num_heads: heads,
        cache,
        max_blocks_per_seq: max_blocks,
        scale: 0.125,
        sliding_window: window,
    };
    let q = values::<T>(seqs * heads * 64, 1);
    let (kc, vc) = (
        values::<T>(cache.elements(), 2),
        values::<T>(cache.elements(), 3),
    );
    let mut out = DeviceBuffer::<AclBackend, T>::zeros(&s, q.len()).unwrap();
    let before = common::call_count(FIA);
    AclBackend::paged_attention(
        &s,
        &p,
        out.view_mut(),
        up(&s, &q).view(),
        up(&s, &kc).view(),
        up(&s, &vc).view(),
        up(&s, &tables).view(),
        up(&s, &lens).view(),
        &lens,
    )
    .unwrap();
    let got = s.clone_to_host(&out).unwrap();
    let mut want = vec![T::from_f32(0.0); q.len()];
    reference::paged_attention(&p, &mut want, &q, &kc, &vc, &tables, &lens).unwrap();
    let d = max_diff(&got, &want);
    assert!(d < tolerance::<T>(), "{:?} decode differs by {d}", T::DTYPE);
    common::call_count(FIA) - before
}

#[test]
fn decode_attention_runs_on_the_fused_operator_for_f16_and_bf16() {
    let _s = serial();
    assert_eq!(decode::<f16>(128, None), 1);
    assert_eq!(
        decode::<f16>(16, None),
        1,
        "16-token blocks: the one-token branch takes them"
    );
    assert_eq!(
        decode::<bf16>(128, None),
        1,
        "bf16: the Ascend C kernels have none"
    );
    assert!(fallback_reason(AclOp::PagedAttention).is_none());
}

#[test]
fn what_the_fused_operator_cannot_run_falls_back_to_ascend_c_with_the_reason() {
    let _s = serial();
    assert_eq!(decode::<f32>(128, None), 0);
    let why = fallback_reason(AclOp::PagedAttention).expect("a recorded fallback");
    assert!(why.contains("f16 or bf16 queries"), "{why}");
    providers::clear_fallbacks();
    assert_eq!(decode::<f16>(128, Some(100)), 0);
    let why = fallback_reason(AclOp::PagedAttention).unwrap();
    assert!(why.contains("sliding window"), "{why}");
    // Counted, not repeated.
    decode::<f16>(128, Some(100));
    let f = providers::fallbacks();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].count, 2);
    // Chosen explicitly, the Ascend C kernel serves f16 without a fallback.
    providers::clear_fallbacks();
    providers::set_provider(AclOp::PagedAttention, Provider::AscendC).unwrap();
    assert_eq!(decode::<f16>(128, None), 0);
    assert!(providers::fallbacks().is_empty());
}

#[test]
fn a_call_no_provider_runs_is_an_error_naming_every_limit() {
    let _s = serial();
    // bf16 with a window: the fused operator ignores windows on one token, and the Ascend C
    // kernels have no bf16.
    let s = stream();
    let cache = CacheShape {
        num_blocks: 2,
        block_size: 128,
        num_kv_heads: 1,
        head_size: 64,
    };
    let p = PagedAttention {
        num_seqs: 1,
        num_heads: 2,
        cache,
        max_blocks_per_seq: 2,
        scale: 0.1,
        sliding_window: Some(8),
    };
    let q = DeviceBuffer::<AclBackend, bf16>::zeros(&s, 128).unwrap();
    let mut out = DeviceBuffer::<AclBackend, bf16>::zeros(&s, 128).unwrap();
    let kc = DeviceBuffer::<AclBackend, bf16>::zeros(&s, cache.elements()).unwrap();
    let e = AclBackend::paged_attention(
        &s,
        &p,
        out.view_mut(),
        q.view(),
        kc.view(),
        kc.view(),
        up(&s, &[0, 1]).view(),
        up(&s, &[9]).view(),
        &[9],
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: "paged_attention",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(m.contains("sliding window") && m.contains("bf16"), "{m}");
    // Host lengths past the table are refused before anything is queued, by every provider.
    let e = AclBackend::paged_attention(
        &s,
        &PagedAttention {
            sliding_window: None,
            ..p
        },
        out.view_mut(),
        q.view(),
        kc.view(),
        kc.view(),
        up(&s, &[0, 1]).view(),
        up(&s, &[9]).view(),
        &[257],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("seq_lens_host[0] = 257 is outside 0..=256"),
        "{e}"
    );
    s.synchronize().unwrap();
}

/// A chunked-prefill batch: a 5-token chunk over a context reaching into a third block, two
/// decode tokens (one run), a whole 3-token prompt, and an empty chunk. Returns operator calls.
fn prefill<T: KvFloat>(block_size: usize, window: Option<usize>, decodes: bool) -> u64 {
    let s = stream();
    let cache = CacheShape {
        num_blocks: 10,
        block_size,
        num_kv_heads: 2,
        head_size: 64,
    };
    let heads = 6;
    let bs = block_size as i32;
    let (starts, lens, tables): (Vec<i32>, Vec<i32>, Vec<i32>) = if decodes {
        (
            vec![0, 5, 6, 7, 10, 10],
            vec![2 * bs + 3, bs + 1, 4, 3, 0],
            vec![7, 2, 5, 0, 9, 0, 3, 0, 0, 1, 0, 0, 8, 0, 0],
        )
    } else {
        (vec![0, 5, 8], vec![2 * bs + 3, 3], vec![7, 2, 5, 1, 0, 0])
    };
    let num_seqs = lens.len();
    let num_tokens = *starts.last().unwrap() as usize;
    let p = PrefillAttention {
        num_seqs,
        num_tokens,
        num_heads: heads,
        cache,
        max_blocks_per_seq: 3,
        scale: 0.125,
        sliding_window: window,
    };
    let q = values::<T>(num_tokens * heads * 64, 11);
    let (kc, vc) = (
        values::<T>(cache.elements(), 12),
        values::<T>(cache.elements(), 13),
    );
    let mut out = DeviceBuffer::<AclBackend, T>::zeros(&s, q.len()).unwrap();
    let before = common::call_count(FIA);
    AclBackend::paged_prefill_attention(
        &s,
        &p,
        out.view_mut(),
        up(&s, &q).view(),
        up(&s, &kc).view(),
        up(&s, &vc).view(),
        up(&s, &tables).view(),
        up(&s, &starts).view(),
        up(&s, &lens).view(),
        &starts,
        &lens,
    )
    .unwrap();
    let got = s.clone_to_host(&out).unwrap();
    let mut want = vec![T::from_f32(0.0); q.len()];
    reference::paged_prefill_attention(&p, &mut want, &q, &kc, &vc, &tables, &starts, &lens)
        .unwrap();
    let d = max_diff(&got, &want);
    assert!(
        d < tolerance::<T>(),
        "{:?} prefill differs by {d}",
        T::DTYPE
    );
    common::call_count(FIA) - before
}

#[test]
fn chunked_prefill_runs_per_chunk_with_runs_of_decode_tokens_together() {
    let _s = serial();
    // The 5-token chunk, the run of two decodes, the 3-token prompt: three calls.
    assert_eq!(prefill::<f16>(128, None, true), 3);
    assert_eq!(prefill::<bf16>(256, None, true), 3);
    // A sliding window through the band mode (no one-token chunks in the batch).
    assert_eq!(prefill::<f16>(128, Some(40), false), 2);
    assert_eq!(prefill::<f16>(128, Some(1), false), 2);
    assert!(fallback_reason(AclOp::PagedPrefillAttention).is_none());
}

#[test]
fn prefill_the_prompt_branch_refuses_falls_back_with_the_limit() {
    let _s = serial();
    // 16-token blocks: the prompt branch takes 128..=512.
    assert_eq!(prefill::<f16>(16, None, true), 0);
    let why = fallback_reason(AclOp::PagedPrefillAttention).unwrap();
    assert!(
        why.contains("blocks of 128, 256, 384 or 512 tokens"),
        "{why}"
    );
    // A window with one-token chunks.
    providers::clear_fallbacks();
    assert_eq!(prefill::<f16>(128, Some(40), true), 0);
    let why = fallback_reason(AclOp::PagedPrefillAttention).unwrap();
    assert!(why.contains("ignores preTokens"), "{why}");
}

#[test]
fn rope_from_the_cached_table_operator_when_chosen() {
    let _s = serial();
    providers::set_provider(AclOp::RotaryEmbedding, Provider::Aclnn).unwrap();
    for style in [RopeStyle::Neox, RopeStyle::GptJ] {
        let before = common::call_count("aclnnRopeWithSinCosCache");
        rope::<f32>(style);
        assert_eq!(common::call_count("aclnnRopeWithSinCosCache") - before, 1);
        // f16 falls back: the operator takes the table in the query's dtype, ours is f32.
        rope::<f16>(style);
        assert_eq!(common::call_count("aclnnRopeWithSinCosCache") - before, 1);
    }
    let f = providers::fallbacks();
    assert!(
        f.iter()
            .any(|f| f.op == AclOp::RotaryEmbedding && f.reason.contains("query's dtype")),
        "{f:?}"
    );
}

fn rope<T: KvFloat>(style: RopeStyle) {
    let s = stream();
    let p = Rotary {
        num_tokens: 5,
        num_heads: 4,
        num_kv_heads: 2,
        head_size: 64,
        rotary_dim: 64,
        max_position: 32,
        style,
    };
    let table = RopeTable::new(64, 32, 10000.0).build().unwrap();
    let positions: Vec<i64> = vec![0, 31, 7, 7, 12];
    let (q, k) = (values::<T>(5 * 4 * 64, 21), values::<T>(5 * 2 * 64, 22));
    let (mut dq, mut dk) = (up(&s, &q), up(&s, &k));
    AclBackend::rotary_embedding(
        &s,
        &p,
        up(&s, &positions).view(),
        dq.view_mut(),
        dk.view_mut(),
        up(&s, &table).view(),
    )
    .unwrap();
    let (mut wq, mut wk) = (q.clone(), k.clone());
    reference::rotary_embedding(&p, &positions, &mut wq, &mut wk, &table).unwrap();
    let (gq, gk) = (s.clone_to_host(&dq).unwrap(), s.clone_to_host(&dk).unwrap());
    assert!(
        max_diff(&gq, &wq) < tolerance::<T>() * 4.0,
        "{style:?} query"
    );
    assert!(max_diff(&gk, &wk) < tolerance::<T>() * 4.0, "{style:?} key");
}

/// The fake's own C entry points (the in-process copy): what the operators' documentation
/// says they refuse is refused, with CANN's codes, and what they do not check (block ids, the
/// mask's contents, positions past the table) faults the kernel at the next synchronisation.
mod c_abi {
    use std::ffi::{c_void, CStr};
    use std::ptr::{null, null_mut};
    use std::sync::Once;

    use ascendcl_fake::abi as fake;

    const PARAM_INVALID: i32 = 161_002;
    const PARAM_NULLPTR: i32 = 161_001;
    const AICORE_EXCEPTION: i32 = 507_015;
    const F16: i32 = 1;
    const F32: i32 = 0;
    const I32: i32 = 3;
    const I64: i32 = 9;
    const U8: i32 = 4;

    fn init() {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            assert_eq!(fake::aclInit(null()), 0);
            assert_eq!(fake::aclrtSetDevice(0), 0);
        });
        assert_eq!(fake::aclrtSetDevice(0), 0);
    }

    fn recent() -> String {
        let p = fake::aclGetRecentErrMsg();
        if p.is_null() {
            return String::new();
        }
        // SAFETY: a NUL-terminated string valid until the fake's next call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn malloc(bytes: usize) -> *mut c_void {
        let mut p = null_mut();
        assert_eq!(fake::aclrtMalloc(&mut p, bytes, 0), 0);
        p
    }

    fn put<T>(v: &[T]) -> *mut c_void {
        let bytes = std::mem::size_of_val(v);
        let p = malloc(bytes.max(1));
        assert_eq!(
            fake::aclrtMemcpy(p, bytes, v.as_ptr().cast(), bytes, 1),
            0,
            "{}",
            recent()
        );
        p
    }

    fn tensor(dtype: i32, dims: &[i64], data: *mut c_void) -> *mut c_void {
        let mut strides = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        let t = fake::aclCreateTensor(
            dims.as_ptr(),
            dims.len() as u64,
            dtype,
            strides.as_ptr(),
            0,
            2,
            dims.as_ptr(),
            dims.len() as u64,
            data,
        );
        assert!(!t.is_null(), "{}", recent());
        t
    }

    fn list(t: *mut c_void) -> *mut c_void {
        let l = fake::aclCreateTensorList([t.cast_const()].as_ptr(), 1);
        assert!(!l.is_null(), "{}", recent());
        l
    }

    fn ints(v: &[i64]) -> *mut c_void {
        fake::aclCreateIntArray(v.as_ptr(), v.len() as u64)
    }

    /// The arguments of one call, each replaceable.
    #[derive(Clone, Copy)]
    struct Call {
        query: *mut c_void,
        key: *mut c_void,
        value: *mut c_void,
        mask: *mut c_void,
        q_lens: *mut c_void,
        kv_lens: *mut c_void,
        table: *mut c_void,
        num_heads: i64,
        pre: i64,
        layout: &'static CStr,
        kv_heads: i64,
        sparse: i64,
        block_size: i64,
        out: *mut c_void,
        lse: *mut c_void,
    }

    impl Call {
        /// One batch of `s` query tokens, 2 heads of 64 (one KV head), 128-token blocks.
        fn new(s: i64, dtype: i32) -> Call {
            let h = 128i64;
            let q = tensor(dtype, &[1, s, h], malloc((s * h * 2) as usize));
            let cache = || tensor(dtype, &[4, 128, 64], malloc(4 * 128 * 64 * 2));
            Call {
                query: q,
                key: list(cache()),
                value: list(cache()),
                mask: null_mut(),
                q_lens: ints(&[s]),
                kv_lens: ints(&[200]),
                table: tensor(I32, &[1, 2], put(&[3i32, 1])),
                num_heads: 2,
                pre: 2_147_483_647,
                layout: c"BSH",
                kv_heads: 1,
                sparse: if s > 1 { 3 } else { 0 },
                block_size: 128,
                out: tensor(dtype, &[1, s, h], malloc((s * h * 2) as usize)),
                lse: tensor(F32, &[1], malloc(4)),
            }
        }

        /// Plans and, if planned, launches on a fresh stream; (planning code, sync code).
        fn run(&self) -> (i32, i32) {
            let (mut size, mut exec) = (0u64, null_mut());
            let code = fake::aclnnFusedInferAttentionScoreV2GetWorkspaceSize(
                self.query,
                self.key,
                self.value,
                null(),
                self.mask,
                self.q_lens,
                self.kv_lens,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                self.table,
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                null(),
                self.num_heads,
                0.125,
                self.pre,
                0,
                self.layout.as_ptr() as *mut _,
                self.kv_heads,
                self.sparse,
                0,
                self.block_size,
                0,
                false,
                0,
                0,
                self.out,
                self.lse,
                &mut size,
                &mut exec,
            );
            if code != 0 {
                return (code, 0);
            }
            let mut s = null_mut();
            assert_eq!(fake::aclrtCreateStream(&mut s), 0);
            let ws = malloc(size as usize);
            assert_eq!(fake::aclnnFusedInferAttentionScoreV2(ws, size, exec, s), 0);
            (0, fake::aclrtSynchronizeStream(s))
        }
    }

    fn mask(ok: bool) -> *mut c_void {
        let side = 2048usize;
        let mut m: Vec<u8> = (0..side * side)
            .map(|x| u8::from(x % side > x / side))
            .collect();
        if !ok {
            m[5 * side + 900] = 0;
        }
        tensor(U8, &[2048, 2048], put(&m))
    }

    #[test]
    fn the_fused_attention_refuses_what_its_documentation_refuses() {
        let _s = super::serial();
        init();
        let ok = Call {
            mask: mask(true),
            ..Call::new(5, F16)
        };
        assert_eq!(ok.run(), (0, 0), "{}", recent());
        let decode = Call::new(1, F16);
        assert_eq!(decode.run(), (0, 0), "{}", recent());
        let cases: Vec<(Call, i32, &str)> = vec![
            (Call::new(5, F32), PARAM_INVALID, "[DT_FLOAT16, DT_BF16]"),
            (
                Call {
                    query: null_mut(),
                    ..ok
                },
                PARAM_NULLPTR,
                "argument query",
            ),
            (
                Call {
                    kv_lens: null_mut(),
                    ..ok
                },
                PARAM_INVALID,
                "page attention needs it",
            ),
            (
                Call {
                    kv_lens: ints(&[257]),
                    ..ok
                },
                PARAM_INVALID,
                "outside 0..=256",
            ),
            (
                Call {
                    q_lens: ints(&[6]),
                    ..ok
                },
                PARAM_INVALID,
                "outside 0..=5",
            ),
            (
                Call {
                    mask: null_mut(),
                    ..ok
                },
                PARAM_INVALID,
                "needs the optimised 2048 x 2048",
            ),
            (
                Call {
                    mask: tensor(U8, &[1024, 1024], malloc(1 << 20)),
                    ..ok
                },
                PARAM_INVALID,
                "(2048, 2048)",
            ),
            (
                Call { sparse: 1, ..ok },
                PARAM_INVALID,
                "sparse modes 0 (no mask), 2, 3 and 4",
            ),
            (Call { sparse: 9, ..ok }, PARAM_INVALID, "sparseMode 9"),
            (
                Call {
                    layout: c"BNSD",
                    ..ok
                },
                PARAM_INVALID,
                "the fake takes BSH only",
            ),
            (
                Call {
                    layout: c"XYZ",
                    ..ok
                },
                PARAM_INVALID,
                "not a layout",
            ),
            (
                Call { kv_heads: 3, ..ok },
                PARAM_INVALID,
                "must divide numHeads",
            ),
            (
                Call {
                    num_heads: 300,
                    ..ok
                },
                PARAM_INVALID,
                "1..=256",
            ),
            (
                Call {
                    block_size: 64,
                    key: list(tensor(F16, &[8, 64, 64], malloc(8 * 64 * 64 * 2))),
                    value: list(tensor(F16, &[8, 64, 64], malloc(8 * 64 * 64 * 2))),
                    ..ok
                },
                PARAM_INVALID,
                "multiple of 128 from 128 to 512",
            ),
            (
                Call {
                    block_size: 256,
                    ..ok
                },
                PARAM_INVALID,
                "differs from the cache's block dim",
            ),
            (
                Call {
                    table: tensor(I64, &[1, 2], put(&[3i64, 1])),
                    ..ok
                },
                PARAM_INVALID,
                "INT32",
            ),
            (
                Call {
                    lse: tensor(F16, &[1], malloc(2)),
                    ..ok
                },
                PARAM_INVALID,
                "softmaxLse",
            ),
            (
                Call {
                    out: tensor(F16, &[1, 4, 128], malloc(4 * 128 * 2)),
                    ..ok
                },
                PARAM_INVALID,
                "attentionOut shape",
            ),
        ];
        for (i, (call, code, text)) in cases.into_iter().enumerate() {
            let (got, _) = call.run();
            let m = recent();
            assert_eq!(got, code, "case {i}: {m}");
            assert!(m.contains(text), "case {i}: {m:?} should say {text:?}");
        }
        // What CANN does not check at planning faults the kernel.
        let bad_mask = Call {
            mask: mask(false),
            ..ok
        };
        assert_eq!(bad_mask.run(), (0, AICORE_EXCEPTION));
        assert!(recent().contains("attenMask[5][900]"), "{}", recent());
        let bad_block = Call {
            table: tensor(I32, &[1, 2], put(&[3i32, 9])),
            ..ok
        };
        assert_eq!(bad_block.run(), (0, AICORE_EXCEPTION));
        assert!(recent().contains("blockTable[0][1] = 9"), "{}", recent());
    }

    #[test]
    fn the_cached_table_rope_refuses_what_its_documentation_refuses() {
        let _s = super::serial();
        init();
        let run = |pos: *mut c_void, q_dt: i32, cache_dt: i32, head: i64, rot: i64| {
            let q = tensor(q_dt, &[2, 128], malloc(2 * 128 * 4));
            let k = tensor(q_dt, &[2, 64], malloc(2 * 64 * 4));
            let c = tensor(cache_dt, &[8, rot], malloc(8 * rot as usize * 4));
            let qo = tensor(q_dt, &[2, 128], malloc(2 * 128 * 4));
            let ko = tensor(q_dt, &[2, 64], malloc(2 * 64 * 4));
            let (mut size, mut exec) = (0u64, null_mut());
            let code = fake::aclnnRopeWithSinCosCacheGetWorkspaceSize(
                pos,
                q,
                k,
                c,
                null(),
                head,
                true,
                qo,
                ko,
                &mut size,
                &mut exec,
            );
            if code != 0 {
                return (code, 0);
            }
            let mut s = null_mut();
            assert_eq!(fake::aclrtCreateStream(&mut s), 0);
            let ws = malloc(size as usize);
            assert_eq!(fake::aclnnRopeWithSinCosCache(ws, size, exec, s), 0);
            (0, fake::aclrtSynchronizeStream(s))
        };
        let pos = || tensor(I64, &[2], put(&[1i64, 7]));
        assert_eq!(run(pos(), F32, F32, 64, 64), (0, 0), "{}", recent());
        assert_eq!(run(pos(), F16, F32, 64, 64).0, PARAM_INVALID);
        assert!(recent().contains("must share a dtype"), "{}", recent());
        assert_eq!(run(pos(), F32, F32, 24, 16).0, PARAM_INVALID);
        assert!(recent().contains("multiples of 16"), "{}", recent());
        assert_eq!(run(pos(), F32, F32, 32, 64).0, PARAM_INVALID);
        assert_eq!(
            run(tensor(I32, &[2], put(&[1i32, 7])), F32, F32, 64, 64).0,
            PARAM_INVALID
        );
        assert_eq!(run(null_mut(), F32, F32, 64, 64).0, PARAM_NULLPTR);
        let past = tensor(I64, &[2], put(&[1i64, 8]));
        assert_eq!(run(past, F32, F32, 64, 64), (0, AICORE_EXCEPTION));
        assert!(recent().contains("positions[1] = 8"), "{}", recent());
    }
}
