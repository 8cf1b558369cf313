//! HCCL, CANN's collective communication library (`libhccl.so`), loaded at run time like
//! `libascendcl.so`, behind the [`Communicator`] trait: what vllm-ascend's tensor parallelism
//! runs on (through torch_npu's `hccl` process group).
//!
//! Two ways to make a group, as HCCL has them (`hccl/hccl.h`, CANN 8.1.RC1):
//! - one process per device: one rank calls [`Hccl::root_info`] (`HcclGetRootInfo`), the bytes
//!   go to every rank out of band (a file, a socket, the engine's own control plane), and each
//!   rank calls [`HcclCommunicator::init_root_info`] (`HcclCommInitRootInfo`), which returns
//!   once every rank has joined;
//! - one process driving several devices: [`HcclCommunicator::init_all`] (`HcclCommInitAll`).
//!
//! Collectives are queued on the caller's [`AclStream`] (`HcclAllReduce`, `HcclAllGather`,
//! `HcclReduceScatter`, `HcclBroadcast`, `HcclSend`, `HcclRecv`); a non-zero `HcclResult`
//! becomes [`Error::Hccl`] with the code's name from `hccl/hccl_types.h`, the library's own
//! `HcclGetErrorString`, and the communicator's asynchronous error (`HcclGetCommAsyncError`).
//! HCCL's buffers are sized by `HCCL_BUFFSIZE` (MB per communicator, default 200); the doctor
//! reports it (`acl::doctor`).
//!
//! Loading searches: `ASCEND_HAL_HCCL_LIB`, the directory the ACL runtime was loaded from, then
//! the places the runtime itself is searched.

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use super::aclnn::open_library;
use super::runtime::Runtime;
use super::sys::AclrtStream;
use super::{AclBackend, AclDevice, AclStream};
use crate::comm::{Communicator, ReduceOp};
use crate::error::{Error, Result};
use crate::traits::{Device, DevicePtr, Stream};
use crate::DType;

/// `HcclResult` (an enum in `hccl_types.h`).
pub type HcclResult = i32;
/// `HCCL_SUCCESS`.
pub const HCCL_SUCCESS: HcclResult = 0;
/// `HCCL_ROOT_INFO_BYTES`: the size of `HcclRootInfo`.
pub const ROOT_INFO_BYTES: usize = 4108;

/// The library's file name and its override variable.
pub const HCCL: (&str, &str) = ("libhccl.so", "ASCEND_HAL_HCCL_LIB");

/// `HcclDataType` of a dtype (`hccl_types.h`).
pub fn hccl_data_type(dtype: DType) -> i32 {
    match dtype {
        DType::I8 => 0,
        DType::I32 => 2,
        DType::F16 => 3,
        DType::F32 => 4,
        DType::I64 => 5,
        DType::U8 => 7,
        DType::BF16 => 11,
    }
}

/// `HcclReduceOp` of a reduction (`hccl_types.h`).
pub fn hccl_reduce_op(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Prod => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    }
}

/// The name of an `HcclResult` in `hccl_types.h`, and what it means.
pub fn describe_result(code: HcclResult) -> (&'static str, &'static str) {
    match code {
        0 => ("HCCL_SUCCESS", "success"),
        1 => ("HCCL_E_PARA", "a parameter is invalid (count, data type, rank, root, or a handle)"),
        2 => ("HCCL_E_PTR", "a pointer is NULL"),
        3 => ("HCCL_E_MEMORY", "memory error: HCCL could not allocate its buffers (see HCCL_BUFFSIZE)"),
        4 => ("HCCL_E_INTERNAL", "internal error of the library"),
        5 => ("HCCL_E_NOT_SUPPORT", "not supported on this device, data type or configuration"),
        6 => ("HCCL_E_NOT_FOUND", "a resource was not found (a device, a rank, a rank table entry)"),
        7 => ("HCCL_E_UNAVAIL", "a resource is unavailable (a device already in another group?)"),
        8 => ("HCCL_E_SYSCALL", "a system call failed"),
        9 => ("HCCL_E_TIMEOUT", "timed out: a rank did not join or did not reach the collective (HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT)"),
        10 => ("HCCL_E_OPEN_FILE_FAILURE", "a file (rank table) could not be opened"),
        11 => ("HCCL_E_TCP_CONNECT", "a TCP connection between ranks failed: check HCCL_IF_IP and firewalls"),
        12 => ("HCCL_E_ROCE_CONNECT", "a RoCE connection failed: check the NPU network (hccn_tool)"),
        13 => ("HCCL_E_TCP_TRANSFER", "a TCP transfer failed"),
        14 => ("HCCL_E_ROCE_TRANSFER", "a RoCE transfer failed"),
        15 => ("HCCL_E_RUNTIME", "an ACL runtime call inside HCCL failed"),
        16 => ("HCCL_E_DRV", "a driver call failed"),
        17 => ("HCCL_E_PROFILING", "a profiling call failed"),
        18 => ("HCCL_E_CCE", "a CCE call failed"),
        19 => ("HCCL_E_NETWORK", "a network call failed"),
        20 => ("HCCL_E_AGAIN", "try again"),
        21 => ("HCCL_E_REMOTE", "the remote side reported an error (error CQE)"),
        22 => ("HCCL_E_SUSPENDING", "the communicator is suspending"),
        _ => ("HCCL_E_RESERVED", "not a result code of CANN 8.1's hccl_types.h"),
    }
}

/// The prototypes of `hccl/hccl.h` (CANN 8.1.RC1). `HcclComm` is `void *`; enums are `int`.
mod sys {
    use super::*;

    /// `HcclResult HcclGetRootInfo(HcclRootInfo *rootInfo)`.
    pub(super) type GetRootInfo = unsafe extern "C" fn(root_info: *mut c_void) -> HcclResult;
    /// `HcclResult HcclCommInitRootInfo(uint32_t nRanks, const HcclRootInfo *rootInfo,
    /// uint32_t rank, HcclComm *comm)`.
    pub(super) type CommInitRootInfo = unsafe extern "C" fn(
        n_ranks: u32,
        root_info: *const c_void,
        rank: u32,
        comm: *mut *mut c_void,
    ) -> HcclResult;
    /// `HcclResult HcclCommInitAll(uint32_t ndev, int32_t *devices, HcclComm *comms)`.
    pub(super) type CommInitAll =
        unsafe extern "C" fn(ndev: u32, devices: *mut i32, comms: *mut *mut c_void) -> HcclResult;
    /// `HcclResult HcclCommDestroy(HcclComm comm)`.
    pub(super) type CommDestroy = unsafe extern "C" fn(comm: *mut c_void) -> HcclResult;
    /// `HcclResult HcclAllReduce(void *sendBuf, void *recvBuf, uint64_t count, HcclDataType
    /// dataType, HcclReduceOp op, HcclComm comm, aclrtStream stream)`.
    pub(super) type AllReduce = unsafe extern "C" fn(
        send: *mut c_void,
        recv: *mut c_void,
        count: u64,
        data_type: i32,
        op: i32,
        comm: *mut c_void,
        stream: AclrtStream,
    ) -> HcclResult;
    /// `HcclResult HcclBroadcast(void *buf, uint64_t count, HcclDataType dataType, uint32_t
    /// root, HcclComm comm, aclrtStream stream)`.
    pub(super) type Broadcast = unsafe extern "C" fn(
        buf: *mut c_void,
        count: u64,
        data_type: i32,
        root: u32,
        comm: *mut c_void,
        stream: AclrtStream,
    ) -> HcclResult;
    /// `HcclResult HcclReduceScatter(void *sendBuf, void *recvBuf, uint64_t recvCount,
    /// HcclDataType dataType, HcclReduceOp op, HcclComm comm, aclrtStream stream)`.
    pub(super) type ReduceScatter = unsafe extern "C" fn(
        send: *mut c_void,
        recv: *mut c_void,
        recv_count: u64,
        data_type: i32,
        op: i32,
        comm: *mut c_void,
        stream: AclrtStream,
    ) -> HcclResult;
    /// `HcclResult HcclAllGather(void *sendBuf, void *recvBuf, uint64_t sendCount,
    /// HcclDataType dataType, HcclComm comm, aclrtStream stream)`.
    pub(super) type AllGather = unsafe extern "C" fn(
        send: *mut c_void,
        recv: *mut c_void,
        send_count: u64,
        data_type: i32,
        comm: *mut c_void,
        stream: AclrtStream,
    ) -> HcclResult;
    /// `HcclSend` and `HcclRecv` share this shape (`destRank` / `srcRank`).
    /// `HcclResult HcclSend(void *sendBuf, uint64_t count, HcclDataType dataType, uint32_t
    /// destRank, HcclComm comm, aclrtStream stream)`; `HcclRecv` has the same shape.
    pub(super) type SendRecv = unsafe extern "C" fn(
        buf: *mut c_void,
        count: u64,
        data_type: i32,
        peer: u32,
        comm: *mut c_void,
        stream: AclrtStream,
    ) -> HcclResult;
    /// `HcclResult HcclGetRankSize(HcclComm comm, uint32_t *rankSize)`; `HcclGetRankId` has
    /// the same shape.
    pub(super) type GetRank = unsafe extern "C" fn(comm: *mut c_void, out: *mut u32) -> HcclResult;
    /// `const char *HcclGetErrorString(HcclResult code)`.
    pub(super) type GetErrorString = unsafe extern "C" fn(code: HcclResult) -> *const c_char;
    /// `HcclResult HcclGetCommAsyncError(HcclComm comm, HcclResult *asyncError)`.
    pub(super) type GetCommAsyncError =
        unsafe extern "C" fn(comm: *mut c_void, error: *mut HcclResult) -> HcclResult;
}

/// The loaded `libhccl.so`. One per process while any handle lives (see [`Hccl::load`]).
pub struct Hccl {
    rt: Arc<Runtime>,
    path: String,
    get_root_info: sys::GetRootInfo,
    comm_init_root_info: sys::CommInitRootInfo,
    comm_init_all: sys::CommInitAll,
    comm_destroy: sys::CommDestroy,
    all_reduce: sys::AllReduce,
    broadcast: sys::Broadcast,
    reduce_scatter: sys::ReduceScatter,
    all_gather: sys::AllGather,
    send: sys::SendRecv,
    recv: sys::SendRecv,
    get_rank_size: sys::GetRank,
    get_rank_id: sys::GetRank,
    get_error_string: Option<sys::GetErrorString>,
    get_comm_async_error: Option<sys::GetCommAsyncError>,
}

impl std::fmt::Debug for Hccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hccl")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

static CURRENT: Mutex<Weak<Hccl>> = Mutex::new(Weak::new());

/// The root information one rank makes and every rank of a group joins with
/// (`HcclRootInfo`, 4108 opaque bytes): send [`as_bytes`](Self::as_bytes) to the other ranks
/// however the engine likes, and rebuild it there with [`from_bytes`](Self::from_bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct RootInfo(Box<[u8; ROOT_INFO_BYTES]>);

impl std::fmt::Debug for RootInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootInfo({} bytes)", ROOT_INFO_BYTES)
    }
}

impl RootInfo {
    /// The bytes to share.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }

    /// Root information received from the rank that made it.
    pub fn from_bytes(bytes: &[u8]) -> Result<RootInfo> {
        let arr: [u8; ROOT_INFO_BYTES] = bytes.try_into().map_err(|_| Error::InvalidArgument {
            op: "RootInfo::from_bytes",
            message: format!(
                "HcclRootInfo is {ROOT_INFO_BYTES} bytes, got {}: not root information, or \
                 truncated on the way",
                bytes.len()
            ),
        })?;
        Ok(RootInfo(Box::new(arr)))
    }
}

impl Hccl {
    /// `libhccl.so` for `backend`'s runtime, loaded on first use and kept loaded. Errors:
    /// [`Error::HcclLibraryNotFound`] listing every place tried; [`Error::MissingSymbol`] when
    /// the library lacks a call this binding uses.
    pub fn load(backend: &AclBackend) -> Result<Arc<Hccl>> {
        Self::load_with(backend.runtime())
    }

    /// As [`load`](Self::load), for the runtime `device` belongs to.
    pub fn load_for(device: &AclDevice) -> Result<Arc<Hccl>> {
        Self::load_with(&device.inner.rt)
    }

    fn load_with(rt: &Arc<Runtime>) -> Result<Arc<Hccl>> {
        let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = current.upgrade() {
            if Arc::ptr_eq(&h.rt, rt) {
                return Ok(h);
            }
        }
        let (lib, path) = open_library(HCCL, Path::new(&rt.path)).map_err(|e| match e {
            Error::OpLibraryNotFound {
                library,
                variable,
                tried,
            } => Error::HcclLibraryNotFound {
                library,
                variable,
                tried,
            },
            other => other,
        })?;
        let missing = |symbol: &'static str| Error::MissingSymbol {
            library: path.clone(),
            symbol,
            needs: "HCCL's communicator API (hccl.h of CANN 8.x)",
        };
        macro_rules! required {
            ($name:literal) => {
                // SAFETY: the field's type is the prototype of `$name` in `hccl/hccl.h`
                // (module `sys`); the library stays loaded for the process.
                unsafe { lib.get($name.as_bytes()) }
                    .map(|s| *s)
                    .map_err(|_| missing($name))?
            };
        }
        let hccl = Arc::new(Hccl {
            rt: Arc::clone(rt),
            get_root_info: required!("HcclGetRootInfo"),
            comm_init_root_info: required!("HcclCommInitRootInfo"),
            comm_init_all: required!("HcclCommInitAll"),
            comm_destroy: required!("HcclCommDestroy"),
            all_reduce: required!("HcclAllReduce"),
            broadcast: required!("HcclBroadcast"),
            reduce_scatter: required!("HcclReduceScatter"),
            all_gather: required!("HcclAllGather"),
            send: required!("HcclSend"),
            recv: required!("HcclRecv"),
            get_rank_size: required!("HcclGetRankSize"),
            get_rank_id: required!("HcclGetRankId"),
            // SAFETY: as above; optional, used only to describe errors.
            get_error_string: unsafe { lib.get(b"HcclGetErrorString") }.ok().map(|s| *s),
            // SAFETY: as above.
            get_comm_async_error: unsafe { lib.get(b"HcclGetCommAsyncError") }
                .ok()
                .map(|s| *s),
            path,
        });
        *current = Arc::downgrade(&hccl);
        Ok(hccl)
    }

    /// Where `libhccl.so` was loaded from.
    pub fn library_path(&self) -> &str {
        &self.path
    }

    /// `Ok` for `HCCL_SUCCESS`, else [`Error::Hccl`] naming `function` and the code.
    fn check(&self, function: &'static str, code: HcclResult, comm: *mut c_void) -> Result<()> {
        if code == HCCL_SUCCESS {
            return Ok(());
        }
        let (name, meaning) = describe_result(code);
        let mut detail = Vec::new();
        if let Some(f) = self.get_error_string {
            // SAFETY: `HcclGetErrorString` takes any code and returns NULL or a static string.
            let p = unsafe { f(code) };
            if !p.is_null() {
                // SAFETY: a NUL-terminated string owned by the library, not freed.
                let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
                if !s.is_empty() {
                    detail.push(s);
                }
            }
        }
        if let (Some(f), false) = (self.get_comm_async_error, comm.is_null()) {
            let mut async_error = HCCL_SUCCESS;
            // SAFETY: `comm` is a live communicator; the out-pointer is valid for the call.
            if unsafe { f(comm, &mut async_error) } == HCCL_SUCCESS && async_error != HCCL_SUCCESS {
                detail.push(format!(
                    "the communicator's asynchronous error is {} ({async_error})",
                    describe_result(async_error).0
                ));
            }
        }
        Err(Error::Hccl {
            function,
            code,
            name,
            meaning,
            detail: detail.join("; "),
        })
    }

    /// New root information for a group (`HcclGetRootInfo`), made on `device` (the root rank's):
    /// share it with every rank, which then joins with
    /// [`HcclCommunicator::init_root_info`].
    pub fn root_info(&self, device: &AclDevice) -> Result<RootInfo> {
        device.inner.bind()?;
        let mut info = RootInfo(Box::new([0u8; ROOT_INFO_BYTES]));
        // SAFETY: `info` is `HCCL_ROOT_INFO_BYTES` writable bytes, the size of `HcclRootInfo`.
        let code = unsafe { (self.get_root_info)(info.0.as_mut_ptr().cast()) };
        self.check("HcclGetRootInfo", code, std::ptr::null_mut())?;
        Ok(info)
    }
}

/// One rank of an HCCL communicator, on one NPU.
pub struct HcclCommunicator {
    hccl: Arc<Hccl>,
    raw: *mut c_void,
    rank: usize,
    size: usize,
    device: AclDevice,
    /// Host-side calls on one communicator are serialised (HCCL orders a communicator's work by
    /// the order of the calls).
    calls: Mutex<()>,
}

// SAFETY: the communicator handle is an opaque token of the library, usable from any thread
// whose current context is the rank's device (every call binds it first); calls on it are
// serialised by `calls`.
unsafe impl Send for HcclCommunicator {}
// SAFETY: as for `Send`: every use of `raw` goes through `calls`.
unsafe impl Sync for HcclCommunicator {}

impl std::fmt::Debug for HcclCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HcclCommunicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("device", &self.device.ordinal())
            .finish()
    }
}

impl HcclCommunicator {
    fn from_raw(hccl: Arc<Hccl>, raw: *mut c_void, device: AclDevice) -> Result<Self> {
        let (mut rank, mut size) = (0u32, 0u32);
        // SAFETY: `raw` is a live communicator just made; the out-pointers are valid.
        let code = unsafe { (hccl.get_rank_id)(raw, &mut rank) };
        let checked = hccl.check("HcclGetRankId", code, raw).and_then(|()| {
            // SAFETY: as above.
            let code = unsafe { (hccl.get_rank_size)(raw, &mut size) };
            hccl.check("HcclGetRankSize", code, raw)
        });
        let comm = HcclCommunicator {
            hccl,
            raw,
            rank: rank as usize,
            size: size as usize,
            device,
            calls: Mutex::new(()),
        };
        checked.map(|()| comm) // on error, `comm` drops and destroys the handle
    }

    /// Joins the group `root` describes as rank `rank` of `ranks`, on `device`
    /// (`HcclCommInitRootInfo`): returns once every rank has joined (HCCL times out after
    /// `HCCL_CONNECT_TIMEOUT` seconds otherwise).
    pub fn init_root_info(
        device: &AclDevice,
        ranks: usize,
        root: &RootInfo,
        rank: usize,
    ) -> Result<Self> {
        if ranks == 0 || rank >= ranks || u32::try_from(ranks).is_err() {
            return Err(Error::InvalidArgument {
                op: "HcclCommInitRootInfo",
                message: format!("rank {rank} of a group of {ranks}: ranks are 0..{ranks}"),
            });
        }
        let hccl = Hccl::load_for(device)?;
        device.inner.bind()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `root` holds `HCCL_ROOT_INFO_BYTES` bytes (`HcclRootInfo`); `raw` is a valid
        // out-pointer.
        let code = unsafe {
            (hccl.comm_init_root_info)(ranks as u32, root.0.as_ptr().cast(), rank as u32, &mut raw)
        };
        hccl.check("HcclCommInitRootInfo", code, std::ptr::null_mut())?;
        Self::from_raw(hccl, raw, device.clone())
    }

    /// One communicator per device, rank `i` on `devices[i]`, for one process driving them all
    /// (`HcclCommInitAll`; one server only).
    pub fn init_all(devices: &[AclDevice]) -> Result<Vec<Self>> {
        let first = devices.first().ok_or_else(|| Error::InvalidArgument {
            op: "HcclCommInitAll",
            message: "a group needs at least one device".into(),
        })?;
        let mut ids: Vec<i32> = devices.iter().map(|d| d.ordinal() as i32).collect();
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                return Err(Error::InvalidArgument {
                    op: "HcclCommInitAll",
                    message: format!("device {id} is given twice; a group has one rank per device"),
                });
            }
        }
        let hccl = Hccl::load_for(first)?;
        first.inner.bind()?;
        let mut raws = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `ids` holds `ndev` device ids and `raws` room for `ndev` handles.
        let code =
            unsafe { (hccl.comm_init_all)(ids.len() as u32, ids.as_mut_ptr(), raws.as_mut_ptr()) };
        hccl.check("HcclCommInitAll", code, std::ptr::null_mut())?;
        raws.into_iter()
            .zip(devices)
            .map(|(raw, d)| Self::from_raw(Arc::clone(&hccl), raw, d.clone()))
            .collect()
    }

    /// The loaded library.
    pub fn hccl(&self) -> &Arc<Hccl> {
        &self.hccl
    }

    /// Binds the stream's device, checks it is this rank's, and runs `f` with the handle.
    fn on_stream(
        &self,
        function: &'static str,
        stream: &AclStream,
        f: impl FnOnce(*mut c_void, AclrtStream) -> HcclResult,
    ) -> Result<()> {
        if stream.device_ordinal() != self.device.ordinal() {
            return Err(Error::WrongDevice {
                op: function,
                what: "stream",
                expected: self.device.ordinal(),
                actual: stream.device_ordinal(),
            });
        }
        stream.bind()?;
        let _serial = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let code = f(self.raw, stream.raw());
        stream.note(function);
        self.hccl.check(function, code, self.raw)
    }
}

fn ptr(p: DevicePtr) -> *mut c_void {
    p.0 as usize as *mut c_void
}

fn peer(function: &'static str, rank: usize, size: usize) -> Result<u32> {
    if rank >= size {
        return Err(Error::InvalidArgument {
            op: function,
            message: format!("rank {rank} is not a rank of this group of {size}"),
        });
    }
    Ok(rank as u32)
}

impl Communicator for HcclCommunicator {
    type Backend = AclBackend;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn device_ordinal(&self) -> usize {
        self.device.ordinal()
    }

    unsafe fn enqueue_all_reduce(
        &self,
        stream: &AclStream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let dt = hccl_data_type(dtype);
        let f = self.hccl.all_reduce;
        self.on_stream("HcclAllReduce", stream, |comm, s| {
            // SAFETY: the caller's contract on the ranges; `comm` and `s` are live.
            unsafe {
                f(
                    ptr(send),
                    ptr(recv),
                    count as u64,
                    dt,
                    hccl_reduce_op(op),
                    comm,
                    s,
                )
            }
        })
    }

    unsafe fn enqueue_all_gather(
        &self,
        stream: &AclStream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
    ) -> Result<()> {
        let dt = hccl_data_type(dtype);
        let f = self.hccl.all_gather;
        self.on_stream("HcclAllGather", stream, |comm, s| {
            // SAFETY: the caller's contract on the ranges; `comm` and `s` are live.
            unsafe { f(ptr(send), ptr(recv), count as u64, dt, comm, s) }
        })
    }

    unsafe fn enqueue_reduce_scatter(
        &self,
        stream: &AclStream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let dt = hccl_data_type(dtype);
        let f = self.hccl.reduce_scatter;
        self.on_stream("HcclReduceScatter", stream, |comm, s| {
            // SAFETY: the caller's contract on the ranges; `comm` and `s` are live.
            unsafe {
                f(
                    ptr(send),
                    ptr(recv),
                    count as u64,
                    dt,
                    hccl_reduce_op(op),
                    comm,
                    s,
                )
            }
        })
    }

    unsafe fn enqueue_broadcast(
        &self,
        stream: &AclStream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        root: usize,
    ) -> Result<()> {
        let dt = hccl_data_type(dtype);
        let root = peer("HcclBroadcast", root, self.size)?;
        let f = self.hccl.broadcast;
        self.on_stream("HcclBroadcast", stream, |comm, s| {
            // SAFETY: the caller's contract on the range; `comm` and `s` are live.
            unsafe { f(ptr(buf), count as u64, dt, root, comm, s) }
        })
    }

    unsafe fn enqueue_send(
        &self,
        stream: &AclStream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        to: usize,
    ) -> Result<()> {
        let dt = hccl_data_type(dtype);
        let to = peer("HcclSend", to, self.size)?;
        let f = self.hccl.send;
        self.on_stream("HcclSend", stream, |comm, s| {
            // SAFETY: the caller's contract on the range; `comm` and `s` are live.
            unsafe { f(ptr(buf), count as u64, dt, to, comm, s) }
        })
    }

    unsafe fn enqueue_recv(
        &self,
        stream: &AclStream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        from: usize,
    ) -> Result<()> {
        let dt = hccl_data_type(dtype);
        let from = peer("HcclRecv", from, self.size)?;
        let f = self.hccl.recv;
        self.on_stream("HcclRecv", stream, |comm, s| {
            // SAFETY: the caller's contract on the range; `comm` and `s` are live.
            unsafe { f(ptr(buf), count as u64, dt, from, comm, s) }
        })
    }
}

impl Drop for HcclCommunicator {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // Queued collectives may still use the communicator: wait for the device first.
        let _ = self.device.inner.bind();
        let _ = self.device.synchronize();
        let _serial = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `raw` is live and no call uses it any more (we hold `calls`, and `&mut self`).
        let _ = unsafe { (self.hccl.comm_destroy)(self.raw) };
    }
}
