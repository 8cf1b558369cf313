//! The HCCL functions the ACL backend uses (`hccl/hccl.h`, `hccl/hccl_types.h` of CANN 8.1.RC1),
//! over `hal_mock::CpuCommunicator` on the fake's devices and streams: the backend loads this
//! same library as `libhccl.so` (`ASCEND_HAL_HCCL_LIB`).
//!
//! Groups are made as HCCL makes them: `HcclCommInitAll` for one process driving several
//! devices; `HcclGetRootInfo` then `HcclCommInitRootInfo` on each rank's thread (the rank's
//! device is the thread's current one), which returns once every rank has joined, or
//! `HCCL_E_TIMEOUT` after `HCCL_CONNECT_TIMEOUT` seconds (default 120). Collectives check their
//! arguments as HCCL does (`HCCL_E_PTR` for NULL pointers, `HCCL_E_PARA` for a bad rank, root,
//! data type, stream of another device, or a buffer that is not device memory of the rank's
//! device) and run in the stream's order; a collective that fails while the stream runs it (the
//! ranks called different collectives, a rank never arrived, an injected fault) fails the
//! stream, reported by its next synchronisation. Faults: `ACL_FAKE_FAULTS` entries naming an
//! HCCL function make its n-th call return the given `HcclResult`.

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
                format!("HcclDataType {d} is not supported here"),
            )
        }
        _ => return fail(E_PARA, format!("{d} is not an HcclDataType")),
    })
}

fn reduce_op(op: i32) -> Outcome<ReduceOp> {
    Ok(match op {
        0 => ReduceOp::Sum,
        1 => ReduceOp::Prod,
        2 => ReduceOp::Max,
        3 => ReduceOp::Min,
        _ => return fail(E_PARA, format!("{op} is not an HcclReduceOp")),
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

fn connect_timeout() -> Duration {
    std::env::var("HCCL_CONNECT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs)
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
            match CpuCommunicator::init_all(&devices) {
                Ok(made) => group.made = made.into_iter().map(Some).collect(),
                Err(e) => group.failed = Some(e.to_string()),
            }
            cv.notify_all();
        }
        let deadline = Instant::now() + connect_timeout();
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
            if now >= deadline {
                let missing: Vec<String> = group
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.is_none())
                    .map(|(r, _)| r.to_string())
                    .collect();
                let message = format!(
                    "rank(s) {} did not join within HCCL_CONNECT_TIMEOUT ({:?})",
                    missing.join(", "),
                    connect_timeout()
                );
                group.failed = Some(message.clone());
                return fail(E_TIMEOUT, message);
            }
            all = cv
                .wait_timeout(all, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
        let made = CpuCommunicator::init_all(&list).map_err(hal)?;
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
        let (c, dt, op) = (comm(c)?, dtype(data_type)?, reduce_op(op)?);
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
        let (c, dt, op) = (comm(c)?, dtype(data_type)?, reduce_op(op)?);
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
