//! The fake's C entry points under hostile arguments, called directly (the crate's rlib, so the
//! counting global allocator below sees every allocation the fake makes): each is refused with
//! the code CANN returns, before anything is allocated for it, without a panic or an abort; and
//! what CANN refuses is refused (reductions of unsigned data, `prod` of bf16, `cubeMathType`
//! combinations Atlas A2 does not support, a non-contiguous SwiGLU input). HCCL's timeout
//! variables are honoured: a rank that never arrives fails its peers after
//! `HCCL_EXEC_TIMEOUT`, and bad values are refused by name.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_void, CStr, CString};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use ascendcl_fake::abi as fake;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests take turns: the fake and the counters are process-wide. Configures the fake (two
/// small devices, HCCL timeouts counted in hundredths of the real seconds) once.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let spec =
            CString::new("devices=2;memory=268435456;soc=Ascend910B4;hccl_second_ms=10").unwrap();
        assert_eq!(fake::aclfakeConfigure(spec.as_ptr()), 0);
        assert_eq!(fake::aclInit(std::ptr::null()), 0);
    });
    guard
}

/// Runs `f`, returning its result and the most heap it held at once beyond what was live.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn recent() -> String {
    let p = fake::aclGetRecentErrMsg();
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the fake returns a NUL-terminated string that stays valid until the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn on_device(d: i32) {
    assert_eq!(fake::aclrtSetDevice(d), 0);
}

fn malloc(bytes: usize) -> *mut c_void {
    let mut p = null_mut();
    assert_eq!(fake::aclrtMalloc(&mut p, bytes, 0), 0);
    p
}

fn stream() -> *mut c_void {
    let mut s = null_mut();
    assert_eq!(fake::aclrtCreateStream(&mut s), 0);
    s
}

const HCCL_E_PARA: i32 = 1;
const HCCL_E_NOT_SUPPORT: i32 = 5;

#[test]
fn a_root_info_group_past_the_devices_is_refused_before_allocating() {
    let _s = serial();
    on_device(0);
    let mut root = vec![0u8; 4108];
    assert_eq!(fake::HcclGetRootInfo(root.as_mut_ptr().cast()), 0);
    for n in [u32::MAX, 100_000, 3] {
        let mut comm = null_mut();
        let (code, peak) =
            peak_of(|| fake::HcclCommInitRootInfo(n, root.as_ptr().cast(), 0, &mut comm));
        assert_eq!(code, HCCL_E_PARA, "nRanks {n}");
        let m = recent();
        assert!(
            m.contains(&format!("nRanks {n} is more than the 2 device(s)")),
            "{m}"
        );
        assert!(m.len() < 1024, "a {}-byte message", m.len());
        assert!(
            peak < 64 << 10,
            "nRanks {n}: {peak} bytes allocated to refuse it"
        );
    }
    // HcclCommInitAll does not read past a huge ndev either.
    let mut ids = [0i32, 1];
    let mut comms = [null_mut(); 2];
    let code = fake::HcclCommInitAll(1 << 30, ids.as_mut_ptr(), comms.as_mut_ptr());
    assert_eq!(code, HCCL_E_PARA);
    assert!(recent().contains("ndev 1073741824 is more than the 2 device(s)"));
}

/// Two ranks of one process, with a stream each.
struct Pair {
    comms: [*mut c_void; 2],
    streams: [*mut c_void; 2],
}

fn pair() -> Pair {
    let mut ids = [0i32, 1];
    let mut comms = [null_mut(); 2];
    assert_eq!(
        fake::HcclCommInitAll(2, ids.as_mut_ptr(), comms.as_mut_ptr()),
        0
    );
    let mut streams = [null_mut(); 2];
    for (d, s) in streams.iter_mut().enumerate() {
        on_device(d as i32);
        *s = stream();
    }
    on_device(0);
    Pair { comms, streams }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in self.comms {
            fake::HcclCommDestroy(c);
        }
    }
}

#[test]
fn collectives_refuse_wild_pointers_and_what_hccl_does_not_reduce() {
    let _s = serial();
    on_device(0);
    let p = pair();
    let buf = malloc(4096);
    let wild = [
        0xFFFF_FFFF_FFFF_F000usize as *mut c_void,
        0x1234 as *mut c_void,
    ];
    for w in wild {
        let (code, peak) =
            peak_of(|| fake::HcclAllReduce(w, buf, 16, 4, 0, p.comms[0], p.streams[0]));
        assert_eq!(code, HCCL_E_PARA);
        let m = recent();
        assert!(
            m.contains("sendBuf") && m.contains("is not device memory"),
            "{m}"
        );
        assert!(!m.contains("panicked"), "{m}");
        assert!(peak < 64 << 10);
    }
    // Reductions: unsigned and 64-bit float data are not reduced; prod of int16 or bf16 is
    // not supported on a 910B. The same data is fine where nothing is reduced.
    for (dtype, op, what) in [
        (
            7,
            0,
            "HCCL_DATA_TYPE_UINT8 is not supported for a reduction",
        ),
        (
            6,
            2,
            "HCCL_DATA_TYPE_UINT64 is not supported for a reduction",
        ),
        (
            10,
            0,
            "HCCL_DATA_TYPE_FP64 is not supported for a reduction",
        ),
        (11, 1, "does not support prod of HCCL_DATA_TYPE_BFP16"),
        (1, 1, "does not support prod of HCCL_DATA_TYPE_INT16"),
    ] {
        let code = fake::HcclAllReduce(buf, buf, 16, dtype, op, p.comms[0], p.streams[0]);
        assert_eq!(code, HCCL_E_NOT_SUPPORT, "{what}");
        assert!(recent().contains(what), "{what}");
        let code = fake::HcclReduceScatter(buf, buf, 8, dtype, op, p.comms[0], p.streams[0]);
        assert_eq!(code, HCCL_E_NOT_SUPPORT, "reduce-scatter: {what}");
    }
    assert_eq!(
        fake::HcclAllReduce(buf, buf, 16, 0, 9, p.comms[0], p.streams[0]),
        HCCL_E_NOT_SUPPORT
    );
    // An all-gather of uint8 is not a reduction: accepted (and completed by both ranks).
    on_device(1);
    let buf1 = malloc(4096);
    let code = fake::HcclAllGather(buf1, buf1.wrapping_add(64), 16, 7, p.comms[1], p.streams[1]);
    assert_eq!(code, 0, "{}", recent());
    on_device(0);
    let code = fake::HcclAllGather(buf, buf.wrapping_add(64), 16, 7, p.comms[0], p.streams[0]);
    assert_eq!(code, 0, "{}", recent());
    assert_eq!(fake::aclrtSynchronizeStream(p.streams[0]), 0);
    assert_eq!(fake::aclrtSynchronizeStream(p.streams[1]), 0);
}

#[test]
fn a_rank_that_never_arrives_fails_its_peer_after_hccl_exec_timeout() {
    let _s = serial();
    on_device(0);
    // 30 "seconds" of 10 ms: 300 ms.
    // SAFETY: the tests of this binary take turns (`serial`), and nothing else reads it.
    unsafe { std::env::set_var("HCCL_EXEC_TIMEOUT", "30") };
    let p = pair();
    // SAFETY: as above.
    unsafe { std::env::remove_var("HCCL_EXEC_TIMEOUT") };
    let buf = malloc(4096);
    let start = Instant::now();
    assert_eq!(
        fake::HcclAllReduce(buf, buf, 16, 4, 0, p.comms[0], p.streams[0]),
        0
    );
    assert_ne!(fake::aclrtSynchronizeStream(p.streams[0]), 0);
    let waited = start.elapsed();
    let m = recent();
    assert!(m.contains("rank(s) 1 did not reach collective #0"), "{m}");
    assert!(m.contains("300ms"), "{m}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // Bad values are refused when the group is made, naming the variable.
    for (var, value, range) in [
        ("HCCL_EXEC_TIMEOUT", "soon", "[0, 2147483647]"),
        ("HCCL_EXEC_TIMEOUT", "-1", "[0, 2147483647]"),
        ("HCCL_CONNECT_TIMEOUT", "5", "[120, 7200]"),
        ("HCCL_CONNECT_TIMEOUT", "7201", "[120, 7200]"),
    ] {
        // SAFETY: as above.
        unsafe { std::env::set_var(var, value) };
        let mut ids = [0i32, 1];
        let mut comms = [null_mut(); 2];
        let code = if var == "HCCL_EXEC_TIMEOUT" {
            fake::HcclCommInitAll(2, ids.as_mut_ptr(), comms.as_mut_ptr())
        } else {
            let mut root = vec![0u8; 4108];
            assert_eq!(fake::HcclGetRootInfo(root.as_mut_ptr().cast()), 0);
            fake::HcclCommInitRootInfo(2, root.as_ptr().cast(), 0, comms.as_mut_ptr())
        };
        // SAFETY: as above.
        unsafe { std::env::remove_var(var) };
        assert_eq!(code, HCCL_E_PARA, "{var}={value}");
        let m = recent();
        assert!(m.contains(&format!("{var}=\"{value}\" is invalid")), "{m}");
        assert!(m.contains(range), "{m}");
    }
}

// ---- ACLNN ----

const ACLNN_ERR_PARAM_INVALID: i32 = 161_002;
const ACLNN_ERR_INNER_NULLPTR: i32 = 561_103;
const ACL_FLOAT: i32 = 0;
const ACL_FLOAT16: i32 = 1;
const ACL_BF16: i32 = 27;

fn tensor(dtype: i32, dims: &[i64], strides: &[i64], data: *mut c_void) -> *mut c_void {
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

fn row_major(dims: &[i64]) -> Vec<i64> {
    let mut s = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Plans a 4x8 · 8x4 matmul of `dtype` over fresh memory; `(status, executor, workspace)`.
fn plan_matmul(dtype: i32, math: i8) -> (i32, *mut c_void, u64) {
    let mem = malloc(4096);
    let (a, b, o) = (
        tensor(dtype, &[4, 8], &row_major(&[4, 8]), mem),
        tensor(dtype, &[8, 4], &row_major(&[8, 4]), mem.wrapping_add(1024)),
        tensor(dtype, &[4, 4], &row_major(&[4, 4]), mem.wrapping_add(2048)),
    );
    let (mut ws, mut exec) = (0u64, null_mut());
    let code = fake::aclnnMatmulGetWorkspaceSize(a, b, o, math, &mut ws, &mut exec);
    (code, exec, ws)
}

#[test]
fn aclnn_refuses_what_cann_refuses() {
    let _s = serial();
    on_device(0);
    assert_eq!(
        fake::aclDestroyAclOpExecutor(null_mut()),
        ACLNN_ERR_INNER_NULLPTR
    );
    assert!(recent().contains("executor is NULL"));

    // cubeMathType on Atlas A2: USE_FP16 refuses bf16; USE_HF32 takes f32 only.
    for (dtype, math, ok) in [
        (ACL_BF16, 2, false),
        (ACL_FLOAT16, 3, false),
        (ACL_BF16, 3, false),
        (ACL_FLOAT, 3, true),
        (ACL_FLOAT, 2, true),
        (ACL_FLOAT16, 2, true),
        (ACL_BF16, 1, true),
    ] {
        let (code, exec, _) = plan_matmul(dtype, math);
        if ok {
            assert_eq!(code, 0, "dtype {dtype} cubeMathType {math}: {}", recent());
            assert_eq!(fake::aclDestroyAclOpExecutor(exec), 0);
        } else {
            assert_eq!(
                code, ACLNN_ERR_PARAM_INVALID,
                "dtype {dtype} cubeMathType {math}"
            );
            assert!(recent().contains("cubeMathType"));
        }
    }

    // SwiGLU takes a contiguous x only.
    let mem = malloc(4096);
    let x = tensor(ACL_FLOAT, &[4, 8], &[1, 4], mem);
    let out = tensor(
        ACL_FLOAT,
        &[4, 4],
        &row_major(&[4, 4]),
        mem.wrapping_add(1024),
    );
    let (mut ws, mut exec) = (0u64, null_mut());
    let code = fake::aclnnSwiGluGetWorkspaceSize(x, -1, out, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("x must be contiguous"), "{}", recent());
}

#[test]
fn aclnn_launches_check_workspaces_without_overflow_and_explain_a_consumed_executor() {
    let _s = serial();
    on_device(0);
    let s = stream();
    let ws = malloc(1 << 16);
    // A workspace size past the address space with a good workspace: the planned bytes are
    // what the operator uses, so it runs.
    let (code, exec, need) = plan_matmul(ACL_FLOAT, 0);
    assert_eq!(code, 0);
    assert!(need <= 1 << 16);
    let (code, peak) = peak_of(|| fake::aclnnMatmul(ws, u64::MAX, exec, s));
    assert_eq!(code, 0, "{}", recent());
    assert!(peak < 1 << 20, "{peak} bytes");
    assert_eq!(fake::aclrtSynchronizeStream(s), 0);
    // With a workspace that is not device memory: refused, nothing allocated.
    let (_, exec, _) = plan_matmul(ACL_FLOAT, 0);
    let wild = 0xFFFF_FFFF_FFFF_0000usize as *mut c_void;
    let (code, peak) = peak_of(|| fake::aclnnMatmul(wild, u64::MAX, exec, s));
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("is not device memory"));
    assert!(peak < 64 << 10, "{peak} bytes");
    // A launch refused for a short workspace consumes the executor; the retry says so.
    let (_, exec, need) = plan_matmul(ACL_FLOAT, 0);
    assert_eq!(
        fake::aclnnMatmul(ws, need - 1, exec, s),
        ACLNN_ERR_PARAM_INVALID
    );
    assert!(recent().contains("is smaller than"));
    assert_eq!(
        fake::aclnnMatmul(ws, need, exec, s),
        ACLNN_ERR_PARAM_INVALID
    );
    let m = recent();
    assert!(
        m.contains("was consumed by an earlier launch (refused: aclnnMatmul: workspaceSize"),
        "{m}"
    );
    assert!(!m.contains("freed by the launch that runs it"), "{m}");
    // One that ran says so too.
    let (_, exec, need) = plan_matmul(ACL_FLOAT, 0);
    assert_eq!(fake::aclnnMatmul(ws, need, exec, s), 0);
    assert_eq!(
        fake::aclnnMatmul(ws, need, exec, s),
        ACLNN_ERR_PARAM_INVALID
    );
    assert!(recent().contains("consumed by an earlier launch (it ran)"));
    assert_eq!(fake::aclrtSynchronizeStream(s), 0);
}

const ACL_INT32: i32 = 3;
const ACL_INT64: i32 = 9;
const ACLNN_ERR_PARAM_NULLPTR: i32 = 161_001;

#[test]
fn the_step_operators_check_what_their_headers_document() {
    let _s = serial();
    on_device(0);
    let mem = malloc(1 << 16);
    let at = |off: usize| mem.wrapping_add(off);
    let (mut ws, mut exec) = (0u64, null_mut());
    // aclnnArgMax: FLOAT / FLOAT16 values, INT32 / INT64 out; no bf16.
    let x_bf16 = tensor(ACL_BF16, &[2, 8], &row_major(&[2, 8]), at(0));
    let out32 = tensor(ACL_INT32, &[2], &[1], at(4096));
    let code = fake::aclnnArgMaxGetWorkspaceSize(x_bf16, -1, false, out32, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    let m = recent();
    assert!(
        m.contains("self dtype DT_BF16 should be in dtype support list [DT_FLOAT, DT_FLOAT16]"),
        "{m}"
    );
    let x = tensor(ACL_FLOAT, &[2, 8], &row_major(&[2, 8]), at(0));
    let out_f = tensor(ACL_FLOAT, &[2], &[1], at(4096));
    assert_eq!(
        fake::aclnnArgMaxGetWorkspaceSize(x, -1, false, out_f, &mut ws, &mut exec),
        ACLNN_ERR_PARAM_INVALID
    );
    assert_eq!(
        fake::aclnnArgMaxGetWorkspaceSize(x, 2, false, out32, &mut ws, &mut exec),
        ACLNN_ERR_PARAM_INVALID
    );
    assert!(recent().contains("dim 2 should be in [-2, 2)"));
    assert_eq!(
        fake::aclnnArgMaxGetWorkspaceSize(x, -1, false, out32, &mut ws, &mut exec),
        0
    );
    assert_eq!(fake::aclDestroyAclOpExecutor(exec), 0);

    // aclnnTopk: INT64 indices only; k within the dim.
    let vals = tensor(ACL_FLOAT, &[2, 3], &row_major(&[2, 3]), at(8192));
    let idx32 = tensor(ACL_INT32, &[2, 3], &row_major(&[2, 3]), at(12288));
    let idx64 = tensor(ACL_INT64, &[2, 3], &row_major(&[2, 3]), at(12288));
    let code =
        fake::aclnnTopkGetWorkspaceSize(x, 3, -1, true, true, vals, idx32, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(
        recent().contains("indicesOut dtype DT_INT32 should be in dtype support list [DT_INT64]")
    );
    let code =
        fake::aclnnTopkGetWorkspaceSize(x, 9, -1, true, true, vals, idx64, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("k 9 should be in [0, 8]"));
    let code =
        fake::aclnnTopkGetWorkspaceSize(x, 3, -1, true, true, vals, idx64, &mut ws, &mut exec);
    assert_eq!(code, 0, "{}", recent());
    assert_eq!(fake::aclDestroyAclOpExecutor(exec), 0);

    // aclnnEmbedding: INT32 / INT64 indices; out one dim more than the indices.
    let weight = tensor(ACL_FLOAT, &[16, 8], &row_major(&[16, 8]), at(0));
    let ids_f = tensor(ACL_FLOAT, &[3], &[1], at(20480));
    let ids = tensor(ACL_INT32, &[3], &[1], at(20480));
    let rows = tensor(ACL_FLOAT, &[3, 8], &row_major(&[3, 8]), at(24576));
    let flat = tensor(ACL_FLOAT, &[24], &[1], at(24576));
    let code = fake::aclnnEmbeddingGetWorkspaceSize(weight, ids_f, rows, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("indices dtype DT_FLOAT should be in dtype support list"));
    let code = fake::aclnnEmbeddingGetWorkspaceSize(weight, ids, flat, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("out shape [24] should be [3, 8]"));

    // aclnnAdd: shapes must broadcast; alpha must be a live scalar.
    let a = tensor(ACL_FLOAT, &[2, 8], &row_major(&[2, 8]), at(0));
    let b_bad = tensor(ACL_FLOAT, &[3], &[1], at(4096));
    let b_row = tensor(ACL_FLOAT, &[1, 8], &row_major(&[1, 8]), at(4096));
    let out = tensor(ACL_FLOAT, &[2, 8], &row_major(&[2, 8]), at(8192));
    let mut one = 1.0f32;
    let alpha = fake::aclCreateScalar((&mut one as *mut f32).cast(), ACL_FLOAT);
    assert!(!alpha.is_null());
    let code = fake::aclnnAddGetWorkspaceSize(a, b_bad, alpha, out, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_INVALID);
    assert!(recent().contains("the shape of self [2, 8] and other [3] cannot broadcast"));
    let code = fake::aclnnAddGetWorkspaceSize(a, b_row, std::ptr::null(), out, &mut ws, &mut exec);
    assert_eq!(code, ACLNN_ERR_PARAM_NULLPTR);
    let code = fake::aclnnAddGetWorkspaceSize(a, b_row, alpha, out, &mut ws, &mut exec);
    assert_eq!(code, 0, "{}", recent());
    assert_eq!(fake::aclDestroyAclOpExecutor(exec), 0);
    assert_eq!(fake::aclDestroyScalar(alpha), 0);
    assert_eq!(fake::aclDestroyScalar(alpha), ACLNN_ERR_PARAM_INVALID);
    assert!(fake::aclCreateScalar(null_mut(), ACL_FLOAT).is_null());
    assert!(recent().contains("value is NULL"));
}

#[test]
fn a_configuration_past_what_the_fake_simulates_is_refused_not_allocated() {
    let _s = serial();
    for spec in [
        "devices=1000000000",
        "devices=0",
        "devices=-1",
        "devices=65",
    ] {
        let c = CString::new(spec).unwrap();
        let (code, peak) = peak_of(|| fake::aclfakeConfigure(c.as_ptr()));
        assert_ne!(code, 0, "{spec}");
        let m = recent();
        assert!(m.contains("a count from 1 to 64"), "{spec}: {m}");
        assert!(peak < 64 << 10, "{spec}: {peak} bytes");
    }
}
