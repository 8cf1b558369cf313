//! The one error type of the HAL.
//!
//! Every variant carries the facts a caller needs to act on it (which operation, which device, how
//! many bytes) and its `Display` says what to do about it. Errors are `Clone` because a failure
//! inside a stream is reported to every waiter: the stream's next `synchronize()` and every event
//! recorded after the failure.

use std::fmt;

/// Result alias used throughout the HAL.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a HAL call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device ordinal outside `0..count`.
    #[error(
        "no device with ordinal {ordinal}: the {backend} backend has {count} device(s); \
         valid ordinals are 0..{count}"
    )]
    InvalidDevice {
        /// Backend name.
        backend: &'static str,
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices the backend has.
        count: usize,
    },

    /// The device has too little free memory for an allocation.
    #[error(
        "out of memory on {device}: requested {}, {} free of {} total{}",
        Bytes(*requested), Bytes(*free), Bytes(*total), oom_advice(detail)
    )]
    OutOfMemory {
        /// The device, as `backend:ordinal`.
        device: String,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free on the device when the request failed.
        free: u64,
        /// Total bytes on the device.
        total: u64,
        /// Why, and what to do, when the reporter knows (an allocator's view, an injected
        /// limit): empty or starting with `"; "`. General advice follows it in the message.
        detail: String,
    },

    /// Two buffers, or a buffer and a slice, that must have the same length do not.
    #[error("length mismatch in {op}: {what} has {actual} elements but {expected} were expected")]
    LengthMismatch {
        /// The operation that checked.
        op: &'static str,
        /// Which argument was wrong.
        what: &'static str,
        /// The length the operation needed.
        expected: usize,
        /// The length it got.
        actual: usize,
    },

    /// A kernel argument whose shape or dtype does not fit the others.
    #[error("shape mismatch in {op}: {arg} must be {expected}, but is {actual}")]
    ShapeMismatch {
        /// The kernel.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// What it must be (`[num_tokens=7, kv_heads=2, head_size=64] f16`).
        expected: String,
        /// What it is.
        actual: String,
    },

    /// A buffer or event of one device used with a stream of another.
    #[error("wrong device in {op}: {}", wrong_device(what, *expected, *actual))]
    WrongDevice {
        /// The operation that checked.
        op: &'static str,
        /// Which argument was on the wrong device: a buffer's name, `"stream"` (a
        /// communicator's rank given another device's stream) or `"the allocator's memory"`.
        what: &'static str,
        /// The device the operation runs on.
        expected: usize,
        /// The device the argument belongs to.
        actual: usize,
    },

    /// A range outside a buffer.
    #[error("out of bounds in {op}: range {start}..{end} of a buffer of {len} elements")]
    OutOfBounds {
        /// The operation that checked.
        op: &'static str,
        /// Range start.
        start: usize,
        /// Range end (exclusive).
        end: usize,
        /// Buffer length.
        len: usize,
    },

    /// The device stopped responding; every later call on it fails with this error.
    #[error(
        "device {device} is lost (seen by {op}); every further call on it fails: recreate the \
         backend, and check the driver log (dmesg, npu-smi info) for the cause"
    )]
    DeviceLost {
        /// The device, as `backend:ordinal`.
        device: String,
        /// The operation that noticed.
        op: &'static str,
    },

    /// An operation queued on a stream failed while the stream ran it; reported by the next
    /// synchronisation of the stream or of an event recorded after it.
    #[error("{op} on {stream} failed while the stream ran it: {source}")]
    StreamOperation {
        /// The queued operation that failed.
        op: &'static str,
        /// The stream, as `backend:ordinal/stream N`.
        stream: String,
        /// Why it failed.
        source: Box<Error>,
    },

    /// An event queried for a time or state it does not have yet.
    #[error("{what} is not ready: {reason}")]
    NotReady {
        /// What was asked about.
        what: &'static str,
        /// Why it is not ready and what to do.
        reason: &'static str,
    },

    /// A buffer whose asynchronous use could not be fenced: queued device work may still use
    /// its memory, so the memory is kept (leaked) rather than freed, and the host may not
    /// touch it.
    #[error(
        "{what} is poisoned: {reason}; its memory is kept (never freed) so that queued device \
         work cannot touch freed memory. Drop it and use a new one"
    )]
    Poisoned {
        /// What is poisoned.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// An argument that no call could accept.
    #[error("invalid argument to {op}: {message}")]
    InvalidArgument {
        /// The operation that rejected it.
        op: &'static str,
        /// What was wrong.
        message: String,
    },

    /// A collective operation that could not complete: the ranks called different collectives,
    /// a rank failed, or a rank did not arrive in time.
    #[error("collective {op} (rank {rank} of {size}) failed: {message}")]
    Collective {
        /// The collective (`all_reduce`, `recv`, ...).
        op: &'static str,
        /// The rank that reports it.
        rank: usize,
        /// Ranks in the group.
        size: usize,
        /// What went wrong, naming the ranks involved, and what to do.
        message: String,
    },

    /// A fault injected by a test backend.
    #[error("injected fault: call #{call} of {op} was configured to fail")]
    Injected {
        /// The operation that was made to fail.
        op: &'static str,
        /// Which call of it (1-based).
        call: u64,
    },

    /// A kernel that this build cannot run on this backend.
    #[error("kernel {op} is unavailable on the {backend} backend: {reason}")]
    KernelUnavailable {
        /// Backend name.
        backend: &'static str,
        /// The kernel.
        op: &'static str,
        /// Why, and what to do.
        reason: &'static str,
    },

    /// A kernel broke a rule of the hardware it targets (Unified Buffer overflow, a misaligned
    /// or partial-block copy, a tensor used after free, ...), as caught by the Ascend C host
    /// implementation. On a device the same kernel would fail or silently compute garbage.
    #[error("kernel {op} broke a hardware rule: {message}")]
    KernelFault {
        /// The kernel.
        op: &'static str,
        /// Which rule, where (simulated core), and the values involved.
        message: String,
    },

    /// Values that must be finite are not (a NaN or an infinity): corrupt weights, or
    /// activations that overflowed their dtype. Sampling from such logits picks a token that
    /// means nothing, so it is an error instead.
    #[error("{op}: {message}")]
    NonFinite {
        /// The operation that found them (`sampling`, a loader, ...).
        op: &'static str,
        /// Where (step, request, tensor), the first bad value and its index, and what to check.
        message: String,
    },

    /// The backend does not support this operation.
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// The operation.
        op: &'static str,
    },

    /// No backend could be chosen, or the requested one is unavailable.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),

    /// An ACL runtime call returned an error code.
    #[error(
        "{function} failed with {name} ({code}: {meaning}){}{}",
        runtime_says(recent),
        hint
    )]
    Acl {
        /// The C function that returned the code.
        function: &'static str,
        /// The `aclError` value.
        code: i32,
        /// Its name in the CANN headers (`ACL_ERROR_RT_MEMORY_ALLOCATION`).
        name: &'static str,
        /// What the code means.
        meaning: &'static str,
        /// `aclGetRecentErrMsg()` right after the call (empty when it had nothing).
        recent: String,
        /// What usually causes it and what to do, empty or starting with `"; "`.
        hint: String,
    },

    /// The ACL runtime library (`libascendcl.so`) could not be loaded from any place tried.
    #[error(
        "could not load the CANN runtime (libascendcl.so); tried, in order:{}\nsource the CANN \
         environment first (`source /usr/local/Ascend/ascend-toolkit/set_env.sh`, or the \
         `set_env.sh` of your CANN install), or set ASCEND_HAL_ACL_LIB to the library's path",
        list_attempts(tried)
    )]
    LibraryNotFound {
        /// Every place tried and why it failed.
        tried: Vec<LoadAttempt>,
    },

    /// The ACL runtime library loaded but lacks a function this crate needs.
    #[error(
        "{library} has no `{symbol}`: this CANN is older than the ACL API this crate needs \
         ({needs}); install a newer CANN toolkit, or point ASCEND_HAL_ACL_LIB at one"
    )]
    MissingSymbol {
        /// The library that was loaded.
        library: String,
        /// The missing symbol.
        symbol: &'static str,
        /// Which CANN provides it.
        needs: &'static str,
    },

    /// An ACLNN operator library (`libopapi.so`, `libnnopbase.so`) could not be loaded from any
    /// place tried.
    #[error(
        "could not load {library} (CANN's ACLNN operators, which the ACL backend's matmul, \
         SwiGLU and RMSNorm come from); tried, in order:{}\nsource the CANN environment \
         (`source /usr/local/Ascend/ascend-toolkit/set_env.sh`), check that the toolkit's \
         lib64 has it (it ships with the toolkit; the operators' kernels come with the \
         Ascend-cann-kernels package for your SoC), or set {variable} to its path",
        list_attempts(tried)
    )]
    OpLibraryNotFound {
        /// The library's file name.
        library: &'static str,
        /// The environment variable that overrides the search.
        variable: &'static str,
        /// Every place tried and why it failed.
        tried: Vec<LoadAttempt>,
    },

    /// HCCL (`libhccl.so`, the collective communication library) could not be loaded from any
    /// place tried.
    #[error(
        "could not load {library} (CANN's collective communication library, which \
         communicators across NPUs use); tried, in order:{}\nsource the CANN environment \
         (`source /usr/local/Ascend/ascend-toolkit/set_env.sh`), check that the toolkit's lib64 \
         has it, or set {variable} to its path",
        list_attempts(tried)
    )]
    HcclLibraryNotFound {
        /// The library's file name.
        library: &'static str,
        /// The environment variable that overrides the search.
        variable: &'static str,
        /// Every place tried and why it failed.
        tried: Vec<LoadAttempt>,
    },

    /// An HCCL call returned an `HcclResult` error.
    #[error(
        "{function} failed with {name} ({code}: {meaning}){}",
        runtime_says(detail)
    )]
    Hccl {
        /// The C function that returned the result.
        function: &'static str,
        /// The `HcclResult` value.
        code: i32,
        /// Its name in CANN's `hccl/hccl_types.h` (`HCCL_E_PARA`).
        name: &'static str,
        /// What it means, and what to do.
        meaning: &'static str,
        /// `HcclGetErrorString` of the code, and the communicator's asynchronous error if any.
        detail: String,
    },

    /// An ACLNN call returned an `aclnnStatus` error.
    #[error(
        "{function} failed with {name} ({code}: {meaning}){}",
        runtime_says(recent)
    )]
    Aclnn {
        /// The C function that returned the status.
        function: &'static str,
        /// The `aclnnStatus` value.
        code: i32,
        /// Its name in CANN's `aclnn/opdev/op_errno.h` (`ACLNN_ERR_PARAM_INVALID`).
        name: &'static str,
        /// What the status means.
        meaning: &'static str,
        /// `aclGetRecentErrMsg()` right after the call (empty when it had nothing).
        recent: String,
    },
}

/// One place the ACL loader tried, and what happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAttempt {
    /// Where the candidate came from and its path (`ASCEND_TOOLKIT_HOME: /x/lib64/libascendcl.so`).
    pub place: String,
    /// Why it was not used (`no such file`, the `dlopen` error text).
    pub outcome: String,
}

fn runtime_says(recent: &str) -> String {
    if recent.is_empty() {
        String::new()
    } else {
        format!("; the runtime says: {recent}")
    }
}

fn list_attempts(tried: &[LoadAttempt]) -> String {
    tried
        .iter()
        .map(|a| format!("\n  - {}: {}", a.place, a.outcome))
        .collect()
}

/// The end of [`Error::OutOfMemory`]'s message: the reporter's reason, then general advice.
fn oom_advice(detail: &str) -> String {
    format!(
        "{detail}; free unused buffers, or lower the batch size, the KV cache size or the memory \
         utilization"
    )
}

/// The body of [`Error::WrongDevice`]'s message: what is where, and what to do.
fn wrong_device(what: &str, expected: usize, actual: usize) -> String {
    match what {
        "stream" => format!(
            "the stream runs on device {actual}, but this communicator's rank is on device \
             {expected}; enqueue a rank's collectives on a stream of its own device"
        ),
        "the allocator's memory" => format!(
            "the allocator's memory is on device {actual}, but the stream runs on device \
             {expected}; allocate from an allocator of device {expected}"
        ),
        _ => format!(
            "{what} lives on device {actual} but the stream runs on device {expected}; copy it \
             to device {expected} first"
        ),
    }
}

impl Error {
    /// The innermost error: for [`Error::StreamOperation`], the error that made the operation fail.
    pub fn root(&self) -> &Error {
        match self {
            Error::StreamOperation { source, .. } => source.root(),
            other => other,
        }
    }

    /// Whether this error (or the failure it wraps) is an out-of-memory error.
    pub fn is_out_of_memory(&self) -> bool {
        match self.root() {
            Error::OutOfMemory { .. } => true,
            Error::Acl { code, .. } => crate::acl::codes::is_out_of_memory(*code),
            _ => false,
        }
    }

    /// Whether this error (or the failure it wraps) says the device is lost.
    pub fn is_device_lost(&self) -> bool {
        match self.root() {
            Error::DeviceLost { .. } => true,
            Error::Acl { code, .. } => crate::acl::codes::is_device_lost(*code),
            _ => false,
        }
    }

    /// The ACL error code behind this error, if an ACL call produced it.
    pub fn acl_code(&self) -> Option<i32> {
        match self.root() {
            Error::Acl { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A byte count that displays with a binary unit, for error messages and logs.
///
/// ```
/// assert_eq!(ascend_hal::Bytes(3 << 30).to_string(), "3221225472 B (3.00 GiB)");
/// assert_eq!(ascend_hal::Bytes(100).to_string(), "100 B");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        let mut value = n as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{n} B ({value:.2} {})", UNITS[unit])
    }
}
