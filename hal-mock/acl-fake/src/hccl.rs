//! The HCCL functions the ACL backend uses (`hccl/hccl.h`, `hccl/hccl_types.h` of CANN 8.1.RC1),
//! over `hal_mock::CpuCommunicator` on the fake's devices and streams: the backend loads this
//! same library as `libhccl.so` (`ASCEND_HAL_HCCL_LIB`).
//!
//! Groups are made as HCCL makes them: `HcclCommInitAll` for one process driving several
//! devices; `HcclGetRootInfo` then `HcclCommInitRootInfo` on each rank's thread (the rank's
//! device is the thread's current one), which returns once every rank has joined, or
//! `HCCL_E_TIMEOUT` after `HCCL_CONNECT_TIMEOUT` seconds (an integer in [120, 7200], default
//! 120). A group has at most as many ranks as the fake has devices (every rank needs its own),
//! checked before anything is allocated for it. Collectives check their arguments as HCCL does
//! (`HCCL_E_PTR` for NULL pointers; `HCCL_E_PARA` for a bad rank, root, stream of another
//! device, or a buffer that is not device memory of the rank's device; `HCCL_E_NOT_SUPPORT`,
//! as HCCL's `CheckDataType`, for a reduction of unsigned or 64-bit float data and for `prod`
//! of int16 or bf16 on a 910B) and run in the stream's order; a collective that fails while the
//! stream runs it (the ranks called different collectives, a rank failed or left, an injected
//! fault) fails the stream, reported by its next synchronisation. A rank waits for a late peer
//! for `HCCL_EXEC_TIMEOUT` seconds (an integer in [0, 2147483647], 0 for ever; default 1836,
//! as HCCL on Atlas A2); a peer that failed or left is not waited for. A bad value of either
//! variable fails the group's creation with `HCCL_E_PARA` naming it. Tests shorten both with
//! `aclfakeConfigure("hccl_second_ms=N")` (how many milliseconds the fake waits per second of
//! either timeout; default 1000). Faults: `ACL_FAKE_FAULTS` entries naming an HCCL function
//! make its n-th call return the given `HcclResult`. int16 data is refused as not supported
//! (the CPU communicator has no int16), where HCCL takes it.

#![allow(non_snake_case)]

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ascend_hal::comm::{Communicator, ReduceOp};
use ascend_hal::{DType, DevicePtr};
use hal_mock::{CpuCommunicator, CpuDevice};

use crate::state::{current_device, set_last_error, state};

const SUCCESS: i32 = 0;
const E_PARA: i32 = 1;
const E_PTR: i32 = 2;
const E_INTERNAL: i32 = 4;
const E_NOT_SUPPORT: i32 = 5;
const E_TIMEOUT: i32 = 9;

/// `HCCL_ROOT_INFO_BYTES`.
const ROOT_INFO_BYTES: usize = 4108;
const ROOT_MAGIC: &[u8; 16] = b"acl-fake-hccl-v1";

type Outcome<T = ()> = Result<T, (i32, String)>;

fn fail<T>(code: i32, message: impl Into<String>) -> Outcome<T> {
    Err((code, message.into()))
}

/// Runs an HCCL entry point: its fault plan, its body, panics caught; the message of a failure
/// goes where `aclGetRecentErrMsg` finds it.
fn hccl_call(function: &'static str, body: impl FnOnce() -> Outcome) -> i32 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(f) = state().count_call(function) {
            return fail(
                f.code,
                format!("{function}: injected fault: call #{}", f.nth),
            );
        }
        body()
    }));
    match result {
        Ok(Ok(())) => SUCCESS,
        Ok(Err((code, message))) => {
            set_last_error(&format!("{function}: {message}"));
            code
        }
        Err(_) => {
            set_last_error(&format!("{function}: the fake HCCL panicked"));
            E_INTERNAL
        }
    }
}

/// Live communicators by handle.
fn comms() -> MutexGuard<'static, HashMap<usize, Arc<CpuCommunicator>>> {
    static COMMS: OnceLock<Mutex<HashMap<usize, Arc<CpuCommunicator>>>> = OnceLock::new();
    COMMS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn add_comm(c: CpuCommunicator) -> *mut c_void {
    static NEXT: Mutex<usize> = Mutex::new(0);
    let mut n = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    *n += 1;
    let handle = 0x4cc1_0000 + *n * 16;
    comms().insert(handle, Arc::new(c));
    handle as *mut c_void
}

fn comm(handle: *mut c_void) -> Outcome<Arc<CpuCommunicator>> {
    if handle.is_null() {
        return fail(E_PTR, "the communicator is NULL");
    }
    comms()
        .get(&(handle as usize))
        .cloned()
        .ok_or((E_PARA, format!("{handle:p} is not a live communicator")))
}

/// `HcclDataType` names (`hccl/hccl_types.h`).
fn dtype_name(d: i32) -> String {
    let name = match d {
        0 => "INT8",
        1 => "INT16",
        2 => "INT32",
        3 => "FP16",
        4 => "FP32",
        5 => "INT64",
        6 => "UINT64",
        7 => "UINT8",
        8 => "UINT16",
        9 => "UINT32",
        10 => "FP64",
        11 => "BFP16",
        12 => "INT128",
        _ => return format!("HcclDataType {d}"),
    };
    format!("HCCL_DATA_TYPE_{name}")
}

fn dtype(d: i32) -> Outcome<DType> {
    Ok(match d {
        0 => DType::I8,
        2 => DType::I32,
        3 => DType::F16,
        4 => DType::F32,
        5 => DType::I64,
        7 => DType::U8,
        11 => DType::BF16,
        1 | 6 | 8 | 9 | 10 | 12 => {
            return fail(
                E_NOT_SUPPORT,
                format!("data type {} is not supported by the fake", dtype_name(d)),
            )
        }
        _ => return fail(E_NOT_SUPPORT, format!("{} is not supported", dtype_name(d))),
    })
}

/// The data type of a reduction (all-reduce, reduce-scatter), refused as HCCL's
/// `CheckDataType(dataType, needReduce = true)` and `CheckReduceDataType` refuse on a 910B.
fn reduce_dtype(d: i32, op: ReduceOp) -> Outcome<DType> {
    if matches!(d, 6..=10) {
        return fail(
            E_NOT_SUPPORT,
            format!(
                "data type {} is not supported for a reduction; supported: INT8, INT16, INT32, \
                 FP16, FP32, BFP16, INT64",
                dtype_name(d)
            ),
        );
    }
    if op == ReduceOp::Prod && matches!(d, 1 | 11) {
        return fail(
            E_NOT_SUPPORT,
            format!(
                "a 910B does not support prod of {}; use FP16, FP32 or INT32",
                dtype_name(d)
            ),
        );
    }
    dtype(d)
}

fn reduce_op(op: i32) -> Outcome<ReduceOp> {
    Ok(match op {
        0 => ReduceOp::Sum,
        1 => ReduceOp::Prod,
        2 => ReduceOp::Max,
        3 => ReduceOp::Min,
        _ => return fail(E_NOT_SUPPORT, format!("HcclReduceOp {op} is not supported")),
    })
}

/// The fake stream `handle` names, on the communicator's device, and a check that each
/// `(pointer, elements)` buffer is device memory of that device.
fn stream_and_buffers(
    c: &CpuCommunicator,
    handle: *mut c_void,
    dt: DType,
    buffers: &[(*mut c_void, u64, &str)],
) -> Outcome<Arc<crate::state::FakeStream>> {
    let g = state();
    let s = g.stream(handle).map_err(|f| (E_PARA, f.message))?;
    if s.device != c.device_ordinal() {
        return fail(
            E_PARA,
            format!(
                "the stream is on device {}, the communicator's rank {} on device {}",
                s.device,
                c.rank(),
                c.device_ordinal()
            ),
        );
    }
    for &(p, count, what) in buffers {
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(dt.size_in_bytes()))
            .ok_or((E_PARA, format!("{what}: {count} elements overflow")))?;
        if bytes == 0 {
            continue;
        }
        if p.is_null() {
            return fail(E_PTR, format!("{what} is NULL"));
        }
        if g.device_of(p as usize, bytes) != Some(s.device) {
            return fail(
                E_PARA,
                format!(
                    "{what} {p:p} ({bytes} bytes) is not device memory of device {}",
                    s.device
                ),
            );
        }
    }
    Ok(s)
}

fn dev(p: *mut c_void) -> DevicePtr {
    DevicePtr(p as usize as u64)
}

fn count(n: u64) -> Outcome<usize> {
    usize::try_from(n).map_err(|_| (E_PARA, format!("count {n} overflows")))
}

fn hal(e: ascend_hal::Error) -> (i32, String) {
    let code = match e {
        ascend_hal::Error::Unsupported { .. } => E_NOT_SUPPORT,
        _ => E_PARA,
    };
    (code, e.to_string())
}

/// `HcclResult HcclGetRootInfo(HcclRootInfo *rootInfo)`.
#[no_mangle]
pub extern "C" fn HcclGetRootInfo(root_info: *mut c_void) -> i32 {
    hccl_call("HcclGetRootInfo", || {
        if root_info.is_null() {
            return fail(E_PTR, "rootInfo is NULL");
        }
        current_device().map_err(|f| (E_PARA, f.message))?;
        static NEXT: Mutex<u64> = Mutex::new(0);
        let id = {
            let mut n = NEXT.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let mut bytes = [0u8; ROOT_INFO_BYTES];
        bytes[..16].copy_from_slice(ROOT_MAGIC);
        bytes[16..24].copy_from_slice(&id.to_le_bytes());
        bytes[24..32].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
        // SAFETY: `rootInfo` points at an `HcclRootInfo` (`HCCL_ROOT_INFO_BYTES` bytes) by the
        // C API's contract.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), root_info.cast(), ROOT_INFO_BYTES) };
        Ok(())
    })
}

/// Groups being joined through root information.
struct Joining {
    ranks: u32,
    devices: Vec<Option<CpuDevice>>,
    made: Vec<Option<CpuCommunicator>>,
    failed: Option<String>,
}

fn joining() -> &'static (Mutex<HashMap<u64, Joining>>, Condvar) {
    static JOINING: OnceLock<(Mutex<HashMap<u64, Joining>>, Condvar)> = OnceLock::new();
    JOINING.get_or_init(Default::default)
}

/// An HCCL timeout variable in whole seconds within `range`, or its default; a bad value is
/// `HCCL_E_PARA` naming the variable.
fn timeout_seconds(
    variable: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Outcome<u64> {
    let Ok(v) = std::env::var(variable) else {
        return Ok(default);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => fail(
            E_PARA,
            format!(
                "{variable}={v:?} is invalid: an integer number of seconds in [{}, {}] is \
                 expected",
                range.start(),
                range.end()
            ),
        ),
    }
}

/// `seconds` as the fake waits them (`hccl_second_ms` per second).
fn scaled(seconds: u64) -> Duration {
    Duration::from_millis(seconds.saturating_mul(state().config.hccl_second_ms))
}

/// How long ranks wait for each other to join: `HCCL_CONNECT_TIMEOUT`.
fn connect_timeout() -> Outcome<Duration> {
    timeout_seconds("HCCL_CONNECT_TIMEOUT", 120..=7200, 120).map(scaled)
}

/// How long a rank waits for a late peer at a collective: `HCCL_EXEC_TIMEOUT` (0: for ever).
fn exec_timeout() -> Outcome<Duration> {
    match timeout_seconds("HCCL_EXEC_TIMEOUT", 0..=2_147_483_647, 1836)? {
        0 => Ok(Duration::MAX),
        n => Ok(scaled(n)),
    }
}

/// New communicators over `devices`, with the group's timeout from `HCCL_EXEC_TIMEOUT`.
fn make_group(devices: &[CpuDevice]) -> Outcome<Vec<CpuCommunicator>> {
    let timeout = exec_timeout()?;
    let made = CpuCommunicator::init_all(devices).map_err(hal)?;
    if let Some(first) = made.first() {
        first.set_timeout(timeout);
    }
    Ok(made)
}

/// `HcclResult HcclCommInitRootInfo(uint32_t nRanks, const HcclRootInfo *rootInfo, uint32_t
/// rank, HcclComm *comm)`.
#[no_mangle]
pub extern "C" fn HcclCommInitRootInfo(
    n_ranks: u32,
    root_info: *const c_void,
    rank: u32,
    comm_out: *mut *mut c_void,
) -> i32 {
    hccl_call("HcclCommInitRootInfo", || {
        if root_info.is_null() || comm_out.is_null() {
            return fail(E_PTR, "rootInfo or comm is NULL");
        }
        if n_ranks == 0 || rank >= n_ranks {
            return fail(
                E_PARA,
                format!("rank {rank} of {n_ranks}: ranks are 0..{n_ranks}"),
            );
        }
        // Every rank needs a device of its own, and they all live in this process.
        let devices = state().devices.len();
        if n_ranks as usize > devices {
            return fail(
                E_PARA,
                format!(
                    "nRanks {n_ranks} is more than the {devices} device(s) of this process (the \
                     fake's ranks all run here, one per device)"
                ),
            );
        }
        let join_timeout = connect_timeout()?;
        exec_timeout()?;
        let mut bytes = [0u8; 24];
        // SAFETY: `rootInfo` points at an `HcclRootInfo` of `HCCL_ROOT_INFO_BYTES` (> 24) bytes.
        unsafe { std::ptr::copy_nonoverlapping(root_info.cast::<u8>(), bytes.as_mut_ptr(), 24) };
        if &bytes[..16] != ROOT_MAGIC {
            return fail(E_PARA, "rootInfo was not made by HcclGetRootInfo");
        }
        let id = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
        let device = {
            let g = state();
            let d = current_device().map_err(|f| (E_PARA, f.message))?;
            g.devices[d].clone()
        };
        let (lock, cv) = joining();
        let mut all = lock.lock().unwrap_or_else(|p| p.into_inner());
        let group = all.entry(id).or_insert_with(|| Joining {
            ranks: n_ranks,
            devices: vec![None; n_ranks as usize],
            made: Vec::new(),
            failed: None,
        });
        if group.ranks != n_ranks {
            return fail(
                E_PARA,
                format!(
                    "rank {rank} says {n_ranks} ranks, an earlier one {}",
                    group.ranks
                ),
            );
        }
        if group.devices[rank as usize].is_some() {
            return fail(E_PARA, format!("rank {rank} has already joined this group"));
        }
        group.devices[rank as usize] = Some(device);
        if group.devices.iter().all(Option::is_some) {
            let devices: Vec<CpuDevice> = group.devices.iter().flatten().cloned().collect();
            match make_group(&devices) {
                Ok(made) => group.made = made.into_iter().map(Some).collect(),
                Err((_, message)) => group.failed = Some(message),
            }
            cv.notify_all();
        }
        let deadline = Instant::now().checked_add(join_timeout);
        loop {
            let group = all
                .get_mut(&id)
                .ok_or((E_INTERNAL, "the group vanished".to_string()))?;
            if let Some(f) = &group.failed {
                return fail(E_PARA, f.clone());
            }
            if let Some(c) = group.made.get_mut(rank as usize).and_then(Option::take) {
                if group.made.iter().all(Option::is_none) {
                    all.remove(&id);
                }
                // SAFETY: `comm` is a valid out-pointer (checked non-NULL) by the C API's
                // contract.
                unsafe { *comm_out = add_comm(c) };
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                let missing: Vec<usize> = group
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.is_none())
                    .map(|(r, _)| r)
                    .collect();
                let message = format!(
                    "rank(s) {} did not join within HCCL_CONNECT_TIMEOUT ({join_timeout:?})",
                    hal_mock::comm::list_ranks(&missing),
                );
                group.failed = Some(message.clone());
                return fail(E_TIMEOUT, message);
            }
            all = match deadline {
                Some(d) => {
                    cv.wait_timeout(all, d.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => cv.wait(all).unwrap_or_else(|p| p.into_inner()),
            };
        }
    })
}

/// `HcclResult HcclCommInitAll(uint32_t ndev, int32_t *devices, HcclComm *comms)`.
#[no_mangle]
pub extern "C" fn HcclCommInitAll(
    ndev: u32,
    devices: *mut i32,
    comms_out: *mut *mut c_void,
) -> i32 {
    hccl_call("HcclCommInitAll", || {
        if devices.is_null() || comms_out.is_null() {
            return fail(E_PTR, "devices or comms is NULL");
        }
        if ndev == 0 {
            return fail(E_PARA, "ndev is 0");
        }
        // Checked before `devices` is read: it holds `ndev` ids.
        let count = state().devices.len();
        if ndev as usize > count {
            return fail(
                E_PARA,
                format!("ndev {ndev} is more than the {count} device(s) of this process"),
            );
        }
        // SAFETY: `devices` holds `ndev` ids by the C API's contract.
        let ids = unsafe { std::slice::from_raw_parts(devices, ndev as usize) };
        let list = {
            let g = state();
            ids.iter()
                .map(|&id| {
                    usize::try_from(id)
                        .ok()
                        .and_then(|d| g.devices.get(d).cloned())
                        .ok_or((E_PARA, format!("device {id} does not exist")))
                })
                .collect::<Outcome<Vec<_>>>()?
        };
        let made = make_group(&list)?;
        for (i, c) in made.into_iter().enumerate() {
            // SAFETY: `comms` has room for `ndev` handles by the C API's contract.
            unsafe { *comms_out.add(i) = add_comm(c) };
        }
        Ok(())
    })
}

/// `HcclResult HcclCommDestroy(HcclComm comm)`.
#[no_mangle]
pub extern "C" fn HcclCommDestroy(c: *mut c_void) -> i32 {
    hccl_call("HcclCommDestroy", || {
        comm(c)?;
        comms().remove(&(c as usize));
        Ok(())
    })
}

/// `HcclResult HcclGetRankSize(HcclComm comm, uint32_t *rankSize)`.
#[no_mangle]
pub extern "C" fn HcclGetRankSize(c: *mut c_void, out: *mut u32) -> i32 {
    hccl_call("HcclGetRankSize", || {
        let c = comm(c)?;
        if out.is_null() {
            return fail(E_PTR, "rankSize is NULL");
        }
        // SAFETY: a valid out-pointer (checked non-NULL) by the C API's contract.
        unsafe { *out = c.size() as u32 };
        Ok(())
    })
}

/// `HcclResult HcclGetRankId(HcclComm comm, uint32_t *rank)`.
#[no_mangle]
pub extern "C" fn HcclGetRankId(c: *mut c_void, out: *mut u32) -> i32 {
    hccl_call("HcclGetRankId", || {
        let c = comm(c)?;
        if out.is_null() {
            return fail(E_PTR, "rank is NULL");
        }
        // SAFETY: a valid out-pointer (checked non-NULL) by the C API's contract.
        unsafe { *out = c.rank() as u32 };
        Ok(())
    })
}

/// `HcclResult HcclAllReduce(void *sendBuf, void *recvBuf, uint64_t count, HcclDataType
/// dataType, HcclReduceOp op, HcclComm comm, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn HcclAllReduce(
    send: *mut c_void,
    recv: *mut c_void,
    n: u64,
    data_type: i32,
    op: i32,
    c: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    hccl_call("HcclAllReduce", || {
        let c = comm(c)?;
        let op = reduce_op(op)?;
        let dt = reduce_dtype(data_type, op)?;
        let s = stream_and_buffers(
            &c,
            stream,
            dt,
            &[(send, n, "sendBuf"), (recv, n, "recvBuf")],
        )?;
        // SAFETY: both ranges are device memory of the stream's device (checked); HCCL's
        // contract keeps them live and untouched until the collective completes.
        unsafe { c.enqueue_all_reduce(&s.stream, dev(send), dev(recv), count(n)?, dt, op) }
            .map_err(hal)
    })
}

/// `HcclResult HcclAllGather(void *sendBuf, void *recvBuf, uint64_t sendCount, HcclDataType
/// dataType, HcclComm comm, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn HcclAllGather(
    send: *mut c_void,
    recv: *mut c_void,
    n: u64,
    data_type: i32,
    c: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    hccl_call("HcclAllGather", || {
        let (c, dt) = (comm(c)?, dtype(data_type)?);
        let total = n.saturating_mul(c.size() as u64);
        let s = stream_and_buffers(
            &c,
            stream,
            dt,
            &[(send, n, "sendBuf"), (recv, total, "recvBuf")],
        )?;
        // SAFETY: as in `HcclAllReduce`.
        unsafe { c.enqueue_all_gather(&s.stream, dev(send), dev(recv), count(n)?, dt) }.map_err(hal)
    })
}

/// `HcclResult HcclReduceScatter(void *sendBuf, void *recvBuf, uint64_t recvCount,
/// HcclDataType dataType, HcclReduceOp op, HcclComm comm, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn HcclReduceScatter(
    send: *mut c_void,
    recv: *mut c_void,
    n: u64,
    data_type: i32,
    op: i32,
    c: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    hccl_call("HcclReduceScatter", || {
        let c = comm(c)?;
        let op = reduce_op(op)?;
        let dt = reduce_dtype(data_type, op)?;
        let total = n.saturating_mul(c.size() as u64);
        let s = stream_and_buffers(
            &c,
            stream,
            dt,
            &[(send, total, "sendBuf"), (recv, n, "recvBuf")],
        )?;
        // SAFETY: as in `HcclAllReduce`.
        unsafe { c.enqueue_reduce_scatter(&s.stream, dev(send), dev(recv), count(n)?, dt, op) }
            .map_err(hal)
    })
}

/// `HcclResult HcclBroadcast(void *buf, uint64_t count, HcclDataType dataType, uint32_t root,
/// HcclComm comm, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn HcclBroadcast(
    buf: *mut c_void,
    n: u64,
    data_type: i32,
    root: u32,
    c: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    hccl_call("HcclBroadcast", || {
        let (c, dt) = (comm(c)?, dtype(data_type)?);
        if root as usize >= c.size() {
            return fail(E_PARA, format!("root {root} is not a rank of {}", c.size()));
        }
        let s = stream_and_buffers(&c, stream, dt, &[(buf, n, "buf")])?;
        // SAFETY: as in `HcclAllReduce`.
        unsafe { c.enqueue_broadcast(&s.stream, dev(buf), count(n)?, dt, root as usize) }
            .map_err(hal)
    })
}

/// `HcclResult HcclSend(void *sendBuf, uint64_t count, HcclDataType dataType, uint32_t
/// destRank, HcclComm comm, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn HcclSend(
    buf: *mut c_void,
    n: u64,
    data_type: i32,
    dest: u32,
    c: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    hccl_call("HcclSend", || {
        let (c, dt) = (comm(c)?, dtype(data_type)?);
        let s = stream_and_buffers(&c, stream, dt, &[(buf, n, "sendBuf")])?;
        // SAFETY: as in `HcclAllReduce`.
        unsafe { c.enqueue_send(&s.stream, dev(buf), count(n)?, dt, dest as usize) }.map_err(hal)
    })
}

/// `HcclResult HcclRecv(void *recvBuf, uint64_t count, HcclDataType dataType, uint32_t srcRank,
/// HcclComm comm, aclrtStream stream)`.
#[no_mangle]
pub extern "C" fn HcclRecv(
    buf: *mut c_void,
    n: u64,
    data_type: i32,
    src: u32,
    c: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    hccl_call("HcclRecv", || {
        let (c, dt) = (comm(c)?, dtype(data_type)?);
        let s = stream_and_buffers(&c, stream, dt, &[(buf, n, "recvBuf")])?;
        // SAFETY: as in `HcclAllReduce`.
        unsafe { c.enqueue_recv(&s.stream, dev(buf), count(n)?, dt, src as usize) }.map_err(hal)
    })
}

/// `HcclResult HcclGetCommAsyncError(HcclComm comm, HcclResult *asyncError)`: the fake reports
/// failures at stream synchronisation instead, so this is always `HCCL_SUCCESS`.
#[no_mangle]
pub extern "C" fn HcclGetCommAsyncError(c: *mut c_void, error: *mut i32) -> i32 {
    hccl_call("HcclGetCommAsyncError", || {
        comm(c)?;
        if error.is_null() {
            return fail(E_PTR, "asyncError is NULL");
        }
        // SAFETY: a valid out-pointer (checked non-NULL) by the C API's contract.
        unsafe { *error = SUCCESS };
        Ok(())
    })
}

/// `const char *HcclGetErrorString(HcclResult code)`.
#[no_mangle]
pub extern "C" fn HcclGetErrorString(code: i32) -> *const c_char {
    let s: &'static [u8] = match code {
        0 => b"no error\0",
        1 => b"parameter error\0",
        2 => b"empty pointer\0",
        3 => b"memory error\0",
        4 => b"internal error\0",
        5 => b"not support feature\0",
        6 => b"not found specific resource\0",
        7 => b"resource unavailable\0",
        9 => b"timeout\0",
        _ => b"unknown error\0",
    };
    s.as_ptr().cast()
}
