//! Events of the CPU backend.
//!
//! Each record creates a fresh [`Signal`] that the recording stream's worker completes when it
//! reaches the record; the event points at its latest signal. A `wait` captures the signal current
//! at the time of the call, so re-recording the event later never changes what an earlier wait
//! waits for.
//!
//! Why waits cannot form a cycle: the record task is pushed onto its stream's queue *before*
//! the event publishes its signal (both under the event's lock), so every wait task is pushed
//! after the record it waits for. A blocked wait waits for a queue whose front task was pushed
//! earlier still; following waits back therefore goes strictly back in push order and ends.
//! (Publishing first, as an earlier version did, let a concurrent `wait` on the same stream
//! queue ahead of the record, and the worker waited on itself forever; the model check in
//! `tests/model_check.rs` finds that order.) A wait from the signal's own worker for a signal
//! it has not completed is an error instead of a hang.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use ascend_hal::{Error, Result};

use crate::backend::CpuBackend;
use crate::device::DeviceShared;
use crate::sync::{thread, Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct SignalState {
    done: Option<Instant>,
    error: Option<Error>,
}

/// One record of an event: completed by a stream worker, waited on by hosts and other streams.
pub(crate) struct Signal {
    state: Mutex<SignalState>,
    cv: Condvar,
    /// The worker thread that completes it.
    completer: Option<thread::ThreadId>,
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
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the caller is the worker that must complete the signal
    /// (a host task waiting for an event recorded after it on its own stream).
    pub(crate) fn wait(&self) -> Result<()> {
        crate::sync::poll_briefly(|| self.lock().done.is_some());
        let mut s = self.lock();
        if s.done.is_none() && self.completer == Some(thread::current().id()) {
            return Err(Error::InvalidArgument {
                op: "Event::synchronize",
                message: "a host task waits for an event recorded after it on its own stream, \
                          which cannot complete before the task does"
                    .into(),
            });
        }
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

    /// Records: creates a signal completed by the worker `completer`, lets `queue` push its
    /// record task, and only then makes it the event's latest signal, all under the event's
    /// lock (see the module docs for why the order matters).
    pub(crate) fn record_with(
        &self,
        completer: Option<thread::ThreadId>,
        queue: impl FnOnce(Arc<Signal>),
    ) {
        let signal = Arc::new(Signal {
            state: Mutex::new(SignalState::default()),
            cv: Condvar::new(),
            completer,
        });
        let mut latest = self.lock_latest();
        #[cfg(feature = "model-check")]
        if crate::model_check::old_record_order() {
            // The order before the fix, kept for the model check to show what it finds.
            *latest = Some(Arc::clone(&signal));
            drop(latest);
            thread::yield_now();
            queue(signal);
            return;
        }
        queue(Arc::clone(&signal));
        *latest = Some(signal);
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
