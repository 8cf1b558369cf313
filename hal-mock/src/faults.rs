//! Fault injection: make the Nth call of a named operation fail, or allocations above a size.
//!
//! Operations that run inside a stream (copies, memset, host tasks) fail *inside the stream*, so
//! the failure surfaces at the next synchronisation exactly as a device-side fault would; the
//! others fail at the call.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use ascend_hal::{Error, Result};

/// An operation of the CPU backend that faults can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MockOp {
    /// `Device::allocate`.
    Allocate,
    /// `Device::allocate_host`.
    AllocateHost,
    /// `Device::new_stream`.
    NewStream,
    /// `Device::new_event`.
    NewEvent,
    /// A host-to-device copy (fails inside the stream).
    CopyH2d,
    /// A device-to-host copy (fails inside the stream).
    CopyD2h,
    /// A device-to-device copy (fails inside the stream).
    CopyD2d,
    /// A memset (fails inside the stream).
    Memset,
    /// A host task enqueued with `CpuStream::enqueue_host_task` (fails inside the stream).
    HostTask,
    /// `Stream::record`.
    Record,
    /// `Stream::wait`.
    Wait,
    /// `Stream::synchronize` and `Device::synchronize`.
    Synchronize,
    /// `Device::reserve_virtual`.
    ReserveVirtual,
    /// `Device::allocate_physical`.
    AllocatePhysical,
    /// `Device::map`.
    Map,
}

impl MockOp {
    /// Every operation.
    pub const ALL: [MockOp; 15] = [
        MockOp::Allocate,
        MockOp::AllocateHost,
        MockOp::NewStream,
        MockOp::NewEvent,
        MockOp::CopyH2d,
        MockOp::CopyD2h,
        MockOp::CopyD2d,
        MockOp::Memset,
        MockOp::HostTask,
        MockOp::Record,
        MockOp::Wait,
        MockOp::Synchronize,
        MockOp::ReserveVirtual,
        MockOp::AllocatePhysical,
        MockOp::Map,
    ];

    /// The operation's name, as used in errors and by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            MockOp::Allocate => "allocate",
            MockOp::AllocateHost => "allocate_host",
            MockOp::NewStream => "new_stream",
            MockOp::NewEvent => "new_event",
            MockOp::CopyH2d => "copy_h2d",
            MockOp::CopyD2h => "copy_d2h",
            MockOp::CopyD2d => "copy_d2d",
            MockOp::Memset => "memset",
            MockOp::HostTask => "host_task",
            MockOp::Record => "record",
            MockOp::Wait => "wait",
            MockOp::Synchronize => "synchronize",
            MockOp::ReserveVirtual => "reserve_virtual",
            MockOp::AllocatePhysical => "allocate_physical",
            MockOp::Map => "map",
        }
    }
}

impl fmt::Display for MockOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MockOp {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        MockOp::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| Error::InvalidArgument {
                op: "MockOp::from_str",
                message: format!(
                    "unknown operation {s:?}; expected one of: {}",
                    MockOp::ALL.map(MockOp::name).join(", ")
                ),
            })
    }
}

#[derive(Debug, Default)]
struct FaultState {
    calls: HashMap<MockOp, u64>,
    /// `(op, call number)` pairs that will fail.
    planned: Vec<(MockOp, u64)>,
    allocation_limit: Option<u64>,
}

/// The fault plan of one CPU backend, shared by all its devices. Get it with
/// [`CpuBackend::faults`](crate::CpuBackend::faults).
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    state: Arc<Mutex<FaultState>>,
}

impl FaultInjector {
    /// Makes the `n`-th call of `op` from now on fail (`n = 1` is the next call).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `n == 0`.
    pub fn fail_nth(&self, op: MockOp, n: u64) -> Result<()> {
        if n == 0 {
            return Err(Error::InvalidArgument {
                op: "FaultInjector::fail_nth",
                message: "n counts calls from 1 (the next call); 0 names no call".into(),
            });
        }
        let mut s = self.lock();
        let call = s
            .calls
            .get(&op)
            .copied()
            .unwrap_or(0)
            .checked_add(n)
            .ok_or_else(|| Error::InvalidArgument {
                op: "FaultInjector::fail_nth",
                message: format!("call {n} from now is past u64::MAX calls"),
            })?;
        s.planned.push((op, call));
        Ok(())
    }

    /// Makes every device allocation larger than `bytes` fail with out-of-memory (`None` lifts
    /// the limit).
    pub fn fail_allocations_above(&self, bytes: Option<u64>) {
        self.lock().allocation_limit = bytes;
    }

    /// Forgets every planned fault and allocation limit (not lost devices).
    pub fn clear(&self) {
        let mut s = self.lock();
        s.planned.clear();
        s.allocation_limit = None;
    }

    /// How many times `op` has been called on this backend.
    pub fn calls(&self, op: MockOp) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Counts a call of `op`; `Err` if it was planned to fail.
    pub(crate) fn check(&self, op: MockOp) -> Result<()> {
        let mut s = self.lock();
        let count = s.calls.entry(op).or_insert(0);
        *count += 1;
        let call = *count;
        match s.planned.iter().position(|&p| p == (op, call)) {
            Some(i) => {
                s.planned.swap_remove(i);
                Err(Error::Injected {
                    op: op.name(),
                    call,
                })
            }
            None => Ok(()),
        }
    }

    pub(crate) fn allocation_limit(&self) -> Option<u64> {
        self.lock().allocation_limit
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // Every update is a single field write or push; a panic elsewhere cannot leave the state
        // half-updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
