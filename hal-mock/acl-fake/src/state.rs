//! The fake runtime's process-wide state: configuration, devices over the CPU backend, handle
//! tables, the per-thread current context and error message, and the fault plan.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ascend_hal::{Backend, Device, Error};
use hal_mock::{
    CpuBackend, CpuDevice, CpuDeviceMemory, CpuEvent, CpuHostMemory, CpuPhysicalMemory, CpuStream,
    CpuVirtualRange, DeviceProfile,
};

/// `aclError` codes the fake returns.
pub(crate) mod code {
    pub const SUCCESS: i32 = 0;
    pub const INVALID_PARAM: i32 = 100_000;
    pub const REPEAT_INITIALIZE: i32 = 100_002;
    pub const REPEAT_FINALIZE: i32 = 100_037;
    pub const RT_PARAM_INVALID: i32 = 107_000;
    pub const RT_INVALID_DEVICEID: i32 = 107_001;
    pub const RT_CONTEXT_NULL: i32 = 107_002;
    pub const RT_STREAM_CONTEXT: i32 = 107_003;
    pub const RT_INVALID_MEMORY_TYPE: i32 = 107_016;
    pub const RT_INVALID_HANDLE: i32 = 107_017;
    pub const RT_FEATURE_NOT_SUPPORT: i32 = 207_000;
    pub const RT_MEMORY_ALLOCATION: i32 = 207_001;
    pub const INTERNAL_ERROR: i32 = 500_000;
    pub const RT_INTERNAL_ERROR: i32 = 507_000;
    pub const RT_LOST_HEARTBEAT: i32 = 507_010;
    pub const RT_AICORE_EXCEPTION: i32 = 507_015;
    pub const RT_COPY_DATA: i32 = 507_052;
}

/// What CANN 8.1's platform description (`data/platform_config/<SoC>.ini`) says of a SoC the
/// fake can simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocProfile {
    /// `ai_core_cnt`.
    pub(crate) ai_cores: i64,
    /// `vector_core_cnt`.
    pub(crate) vector_cores: i64,
    /// `l2_size`.
    pub(crate) l2_bytes: i64,
}

/// The Atlas A2 SoCs the fake simulates, by `aclrtGetSocName` name.
pub(crate) const SOCS: &[(&str, SocProfile)] = &[
    (
        "Ascend910B1",
        SocProfile {
            ai_cores: 24,
            vector_cores: 48,
            l2_bytes: 201_326_592,
        },
    ),
    (
        "Ascend910B2",
        SocProfile {
            ai_cores: 24,
            vector_cores: 48,
            l2_bytes: 201_326_592,
        },
    ),
    (
        "Ascend910B2C",
        SocProfile {
            ai_cores: 24,
            vector_cores: 48,
            l2_bytes: 201_326_592,
        },
    ),
    (
        "Ascend910B3",
        SocProfile {
            ai_cores: 20,
            vector_cores: 40,
            l2_bytes: 201_326_592,
        },
    ),
    (
        "Ascend910B4",
        SocProfile {
            ai_cores: 20,
            vector_cores: 40,
            l2_bytes: 100_663_296,
        },
    ),
    (
        "Ascend910B4-1",
        SocProfile {
            ai_cores: 20,
            vector_cores: 40,
            l2_bytes: 176_160_768,
        },
    ),
];

/// The profile of `soc`, if the fake simulates it.
pub(crate) fn soc_profile(soc: &str) -> Option<SocProfile> {
    SOCS.iter().find(|(n, _)| *n == soc).map(|(_, p)| *p)
}

/// A failed call: the code and the text `aclGetRecentErrMsg` will return.
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

pub(crate) type Outcome<T = ()> = std::result::Result<T, Failure>;

pub(crate) fn fail<T>(code: i32, message: impl Into<String>) -> Outcome<T> {
    Err(Failure {
        code,
        message: message.into(),
    })
}

/// Maps a CPU-backend error to the ACL code the real runtime would return for it.
pub(crate) fn from_hal(function: &str, e: Error) -> Failure {
    let code = match e.root() {
        Error::OutOfMemory { .. } => code::RT_MEMORY_ALLOCATION,
        Error::DeviceLost { .. } => code::RT_LOST_HEARTBEAT,
        Error::InvalidArgument { .. } | Error::WrongDevice { .. } | Error::OutOfBounds { .. } => {
            code::RT_PARAM_INVALID
        }
        Error::InvalidDevice { .. } => code::RT_INVALID_DEVICEID,
        Error::KernelFault { .. } => code::RT_AICORE_EXCEPTION,
        _ => code::RT_INTERNAL_ERROR,
    };
    Failure {
        code,
        message: format!("{function}: {e}"),
    }
}

/// The most devices the fake simulates (each has two stream worker threads of its own).
pub(crate) const MAX_FAKE_DEVICES: usize = 64;

/// What the fake simulates; set by `ACL_FAKE_*` variables or `aclfakeConfigure`.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) devices: usize,
    pub(crate) memory: u64,
    pub(crate) soc: CString,
    /// Milliseconds the fake waits per second of an HCCL timeout (tests shorten it).
    pub(crate) hccl_second_ms: u64,
}

impl Config {
    fn from_env() -> Config {
        let mut c = Config {
            devices: 1,
            memory: 32 << 30,
            soc: c"Ascend910B4".into(),
            hccl_second_ms: 1000,
        };
        let spec: Vec<String> = [
            ("devices", "ACL_FAKE_DEVICES"),
            ("memory", "ACL_FAKE_MEMORY"),
            ("soc", "ACL_FAKE_SOC"),
        ]
        .iter()
        .filter_map(|(k, var)| std::env::var(var).ok().map(|v| format!("{k}={v}")))
        .collect();
        // Bad values in the environment fall back to the defaults; `aclfakeConfigure` reports
        // them instead.
        let _ = c.apply(&spec.join(";"));
        c
    }

    /// Applies `key=value;...` (`devices`, `memory` in bytes, `soc`, `hccl_second_ms`).
    pub(crate) fn apply(&mut self, spec: &str) -> Outcome {
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| Failure {
                code: code::INVALID_PARAM,
                message: format!("aclfakeConfigure: {item:?} is not key=value"),
            })?;
            let bad = |what: &str| Failure {
                code: code::INVALID_PARAM,
                message: format!("aclfakeConfigure: {k}={v:?} is not {what}"),
            };
            match k.trim() {
                "devices" => {
                    // Each device runs two stream workers; a server has at most 16 NPUs.
                    self.devices = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_FAKE_DEVICES).contains(n))
                        .ok_or_else(|| bad(&format!("a count from 1 to {MAX_FAKE_DEVICES}")))?
                }
                "memory" => self.memory = v.trim().parse().map_err(|_| bad("a byte count"))?,
                "soc" => {
                    let names: Vec<&str> = SOCS.iter().map(|(n, _)| *n).collect();
                    if soc_profile(v.trim()).is_none() {
                        return Err(bad(&format!(
                            "a SoC the fake simulates ({})",
                            names.join(", ")
                        )));
                    }
                    self.soc = CString::new(v.trim()).map_err(|_| bad("a name"))?
                }
                "hccl_second_ms" => {
                    self.hccl_second_ms = v.trim().parse().map_err(|_| bad("milliseconds"))?
                }
                _ => return Err(bad("a known key (devices, memory, soc, hccl_second_ms)")),
            }
        }
        Ok(())
    }
}

/// One planned fault: the `nth` call of `function` returns `code`; with `in_stream`, the call
/// succeeds and the stream's next synchronisation returns `code` instead, as a device-side
/// failure would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) function: String,
    pub(crate) nth: u64,
    pub(crate) code: i32,
    pub(crate) in_stream: bool,
}

/// Parses `function:n:code[:stream],...`.
pub(crate) fn parse_faults(spec: &str) -> Outcome<Vec<Fault>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let parts: Vec<&str> = item.split(':').collect();
            let bad = || Failure {
                code: code::INVALID_PARAM,
                message: format!("fault {item:?} is not function:n:code or function:n:code:stream"),
            };
            let (function, nth, code, in_stream) = match parts.as_slice() {
                [f, n, c] => (f, n, c, false),
                [f, n, c, "stream"] => (f, n, c, true),
                _ => return Err(bad()),
            };
            Ok(Fault {
                function: function.to_string(),
                nth: nth.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?,
                code: code.parse().map_err(|_| bad())?,
                in_stream,
            })
        })
        .collect()
}

/// A stream and the code an in-stream fault left for its next synchronisation.
pub(crate) struct FakeStream {
    pub(crate) stream: CpuStream,
    pub(crate) device: usize,
    pub(crate) injected: Mutex<Option<i32>>,
    /// Pinned host memory that queued copies use, each with an event recorded after its copy:
    /// `aclrtFreeHost` of it keeps the memory alive until the copy is done.
    pub(crate) in_use: Mutex<Vec<(Arc<CpuHostMemory>, CpuEvent)>>,
    /// Misuse to report at the next synchronisation (memory freed under a queued copy).
    pub(crate) misuse: Mutex<Option<String>>,
}

impl FakeStream {
    pub(crate) fn new(stream: CpuStream, device: usize) -> FakeStream {
        FakeStream {
            stream,
            device,
            injected: Mutex::new(None),
            in_use: Mutex::new(Vec::new()),
            misuse: Mutex::new(None),
        }
    }

    /// Drops the entries whose copies are done.
    pub(crate) fn prune(&self) {
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, e)| !ascend_hal::Event::query(e).unwrap_or(true));
    }
}

/// The runtime state of one `aclInit` .. `aclFinalize` span, and the configuration across them.
pub(crate) struct Fake {
    pub(crate) config: Config,
    pub(crate) initialized: bool,
    /// `aclFinalize` ran since the last `aclInit` (a second one is 100037).
    pub(crate) finalized: bool,
    pub(crate) backend: CpuBackend,
    pub(crate) devices: Vec<CpuDevice>,
    /// `aclrtSetDevice` reference counts.
    pub(crate) set_count: Vec<u32>,
    pub(crate) streams: HashMap<usize, Arc<FakeStream>>,
    /// Per device: the default stream (NULL handle) and the stream synchronous copies use.
    pub(crate) default_streams: Vec<Arc<FakeStream>>,
    pub(crate) sync_streams: Vec<Arc<FakeStream>>,
    pub(crate) events: HashMap<usize, Arc<CpuEvent>>,
    pub(crate) device_memory: BTreeMap<u64, CpuDeviceMemory>,
    pub(crate) host_memory: BTreeMap<usize, Arc<CpuHostMemory>>,
    /// Reserved ranges by start address, with their device.
    pub(crate) ranges: BTreeMap<u64, (usize, CpuVirtualRange)>,
    /// Physical allocations by handle, with their device.
    pub(crate) physical: HashMap<usize, (usize, CpuPhysicalMemory)>,
    /// Mappings by address: (range start, offset).
    pub(crate) mappings: HashMap<u64, (u64, usize)>,
    next_handle: usize,
    pub(crate) faults: Vec<Fault>,
    pub(crate) calls: HashMap<String, u64>,
}

const STREAM_BASE: usize = 0x5a00_0000;
const EVENT_BASE: usize = 0x5e00_0000;
const CONTEXT_BASE: usize = 0x5c00_0000;
/// Handles of physical allocations.
pub(crate) const PHYSICAL_BASE: usize = 0x5b00_0000;

impl Fake {
    fn new(config: Config) -> Fake {
        let mut fake = Fake {
            config,
            initialized: false,
            finalized: false,
            devices: Vec::new(),
            // Replaced by `reset_devices` below, from the configuration.
            backend: CpuBackend::builder().build(),
            set_count: Vec::new(),
            streams: HashMap::new(),
            default_streams: Vec::new(),
            sync_streams: Vec::new(),
            events: HashMap::new(),
            device_memory: BTreeMap::new(),
            host_memory: BTreeMap::new(),
            ranges: BTreeMap::new(),
            physical: HashMap::new(),
            mappings: HashMap::new(),
            next_handle: 1,
            faults: parse_faults(&std::env::var("ACL_FAKE_FAULTS").unwrap_or_default())
                .unwrap_or_default(),
            calls: HashMap::new(),
        };
        fake.reset_devices();
        fake
    }

    /// New devices (a fresh CPU backend), dropping every resource of the previous ones.
    pub(crate) fn reset_devices(&mut self) {
        self.streams.clear();
        self.events.clear();
        self.default_streams.clear();
        self.sync_streams.clear();
        self.mappings.clear();
        self.ranges.clear();
        self.physical.clear();
        self.device_memory.clear();
        self.host_memory.clear();
        self.backend = CpuBackend::builder()
            .devices(
                self.config.devices,
                DeviceProfile::custom(self.config.soc.to_string_lossy(), self.config.memory),
            )
            .build();
        self.devices = (0..self.config.devices.min(MAX_FAKE_DEVICES))
            .filter_map(|i| self.backend.device(i).ok())
            .collect();
        self.set_count = vec![0; self.devices.len()];
        for d in &self.devices {
            for list in [&mut self.default_streams, &mut self.sync_streams] {
                if let Ok(stream) = d.new_stream() {
                    list.push(Arc::new(FakeStream::new(stream, d.ordinal())));
                }
            }
        }
    }

    pub(crate) fn handle(&mut self, base: usize) -> usize {
        let h = base + self.next_handle * 16;
        self.next_handle += 1;
        h
    }

    pub(crate) fn add_stream(&mut self, s: FakeStream) -> *mut c_void {
        let h = self.handle(STREAM_BASE);
        self.streams.insert(h, Arc::new(s));
        h as *mut c_void
    }

    pub(crate) fn add_event(&mut self, e: CpuEvent) -> *mut c_void {
        let h = self.handle(EVENT_BASE);
        self.events.insert(h, Arc::new(e));
        h as *mut c_void
    }

    /// The stream a handle names; NULL is the current device's default stream.
    pub(crate) fn stream(&self, handle: *mut c_void) -> Outcome<Arc<FakeStream>> {
        if handle.is_null() {
            let dev = current_device()?;
            return Ok(Arc::clone(&self.default_streams[dev]));
        }
        self.streams
            .get(&(handle as usize))
            .cloned()
            .ok_or_else(|| Failure {
                code: code::RT_INVALID_HANDLE,
                message: format!("stream handle {handle:p} is not a live stream"),
            })
    }

    pub(crate) fn event(&self, handle: *mut c_void) -> Outcome<Arc<CpuEvent>> {
        if handle.is_null() {
            return fail(code::INVALID_PARAM, "event handle is NULL");
        }
        self.events
            .get(&(handle as usize))
            .cloned()
            .ok_or_else(|| Failure {
                code: code::RT_INVALID_HANDLE,
                message: format!("event handle {handle:p} is not a live event"),
            })
    }

    /// Whether `p..p+len` is inside a device allocation; its device if so. A range whose end
    /// overflows the address space is inside nothing.
    pub(crate) fn device_of(&self, p: usize, len: usize) -> Option<usize> {
        let (_, m) = self.device_memory.range(..=p as u64).next_back()?;
        let base = ascend_hal::DeviceMemory::ptr(m).0 as usize;
        let end = base.checked_add(ascend_hal::DeviceMemory::size(m))?;
        (p.checked_add(len)? <= end).then(|| ascend_hal::DeviceMemory::device_ordinal(m))
    }

    /// The pinned host allocation `p` points into, and whether `p..p+len` fits in it.
    pub(crate) fn pinned_of(&self, p: usize, len: usize) -> Option<(Arc<CpuHostMemory>, bool)> {
        let (&base, m) = self.host_memory.range(..=p).next_back()?;
        let size = ascend_hal::HostMemory::size(&**m);
        (p < base + size).then(|| (Arc::clone(m), p.saturating_add(len) <= base + size))
    }

    /// Every stream of device `d`, the default and synchronous ones included.
    pub(crate) fn streams_of(&self, d: usize) -> Vec<Arc<FakeStream>> {
        self.streams
            .values()
            .chain(&self.default_streams)
            .chain(&self.sync_streams)
            .filter(|s| s.device == d)
            .cloned()
            .collect()
    }

    /// Counts a call; `Some(fault)` if it was planned to fail.
    pub(crate) fn count_call(&mut self, function: &str) -> Option<Fault> {
        let n = self.calls.entry(function.to_string()).or_insert(0);
        *n += 1;
        let n = *n;
        let i = self
            .faults
            .iter()
            .position(|f| f.function == function && f.nth == n)?;
        Some(self.faults.swap_remove(i))
    }
}

pub(crate) fn context_handle(device: usize) -> *mut c_void {
    (CONTEXT_BASE + device * 16) as *mut c_void
}

pub(crate) fn context_device(ctx: *mut c_void) -> Option<usize> {
    let v = (ctx as usize).checked_sub(CONTEXT_BASE)?;
    (v % 16 == 0).then_some(v / 16)
}

static FAKE: OnceLock<Mutex<Fake>> = OnceLock::new();

/// The state, created from the environment on first use.
pub(crate) fn state() -> MutexGuard<'static, Fake> {
    FAKE.get_or_init(|| Mutex::new(Fake::new(Config::from_env())))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    static RETURNED_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// The calling thread's current device, or `ACL_ERROR_RT_CONTEXT_NULL`.
pub(crate) fn current_device() -> Outcome<usize> {
    CURRENT.get().ok_or_else(|| Failure {
        code: code::RT_CONTEXT_NULL,
        message: "no current context on this thread: call aclrtSetDevice or \
                  aclrtSetCurrentContext first"
            .into(),
    })
}

pub(crate) fn set_current_device(device: Option<usize>) {
    CURRENT.set(device);
}

pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(text));
}

/// The pointer `aclGetRecentErrMsg` returns: valid until the next call on this thread.
pub(crate) fn take_last_error() -> *const std::ffi::c_char {
    let taken = LAST_ERROR.with(|e| e.borrow_mut().take());
    RETURNED_ERROR.with(|r| {
        let mut r = r.borrow_mut();
        *r = taken;
        r.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
    })
}
