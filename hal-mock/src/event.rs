//! Events of the CPU backend.
//!
//! Each record creates a fresh [`Signal`] that the recording stream's worker completes when it
//! reaches the record; the event points at its latest signal. A `wait` captures the signal current
//! at the time of the call, so re-recording the event later never changes what an earlier wait
//! waits for, and since the record was queued before the wait, waits cannot form a cycle.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use ascend_hal::{Error, Result};

use crate::backend::CpuBackend;
use crate::device::DeviceShared;

#[derive(Default)]
struct SignalState {
    done: Option<Instant>,
    error: Option<Error>,
}

/// One record of an event: completed by a stream worker, waited on by hosts and other streams.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<SignalState>,
    cv: Condvar,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, SignalState> {
        // Updates are single assignments; a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes the signal, carrying the recording stream's pending failure, if any.
    pub(crate) fn complete(&self, error: Option<Error>) {
        let mut s = self.lock();
        s.done = Some(Instant::now());
        s.error = error;
        self.cv.notify_all();
    }

    /// Blocks until completed; returns the recording stream's failure, if any.
    pub(crate) fn wait(&self) -> Result<()> {
        crate::stream::poll_briefly(|| self.lock().done.is_some());
        let mut s = self.lock();
        while s.done.is_none() {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.error.clone().map_or(Ok(()), Err)
    }

    fn completed_at(&self) -> Option<Instant> {
        self.lock().done
    }
}

/// An event of the CPU backend.
pub struct CpuEvent {
    pub(crate) device: Arc<DeviceShared>,
    latest: Mutex<Option<Arc<Signal>>>,
}

impl CpuEvent {
    pub(crate) fn new(device: Arc<DeviceShared>) -> Self {
        CpuEvent {
            device,
            latest: Mutex::new(None),
        }
    }

    /// Starts a new record; the caller queues the returned signal on a stream.
    pub(crate) fn new_record(&self) -> Arc<Signal> {
        let signal = Arc::new(Signal::default());
        *self.lock_latest() = Some(Arc::clone(&signal));
        signal
    }

    /// The signal of the most recent record, if any.
    pub(crate) fn latest(&self) -> Option<Arc<Signal>> {
        self.lock_latest().clone()
    }

    fn lock_latest(&self) -> MutexGuard<'_, Option<Arc<Signal>>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ascend_hal::Event for CpuEvent {
    type Backend = CpuBackend;

    fn device_ordinal(&self) -> usize {
        self.device.ordinal
    }

    fn query(&self) -> Result<bool> {
        self.device.check_alive("Event::query")?;
        Ok(self.latest().is_some_and(|s| s.completed_at().is_some()))
    }

    fn synchronize(&self) -> Result<()> {
        match self.latest() {
            None => Ok(()),
            Some(signal) => signal.wait(),
        }
    }

    fn elapsed_ms(&self, end: &Self) -> Result<f32> {
        let at = |e: &CpuEvent| -> Result<Instant> {
            let signal = e.latest().ok_or(Error::NotReady {
                what: "elapsed time",
                reason: "an event was never recorded; record both events on a stream first",
            })?;
            signal.completed_at().ok_or(Error::NotReady {
                what: "elapsed time",
                reason: "an event has not completed yet; synchronize the end event first",
            })
        };
        let (start, stop) = (at(self)?, at(end)?);
        let ms = if stop >= start {
            stop.duration_since(start).as_secs_f64() * 1e3
        } else {
            -(start.duration_since(stop).as_secs_f64() * 1e3)
        };
        Ok(ms as f32)
    }
}

impl fmt::Debug for CpuEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuEvent")
            .field("device", &self.device.ordinal)
            .field("recorded", &self.latest().is_some())
            .finish()
    }
}
