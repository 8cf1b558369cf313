//! The synchronisation primitives of streams and events: std's, or shuttle's in a model-check
//! build (feature `model-check`), so that the real stream / event code is what the checker
//! explores.
//!
//! Only locks that a thread may hold while it blocks or waits on another thread need to come
//! from here; the short, non-nesting locks of memory and faults stay std's.

#[cfg(not(feature = "model-check"))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(feature = "model-check"))]
pub(crate) use std::thread;

#[cfg(feature = "model-check")]
pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard};
#[cfg(feature = "model-check")]
pub(crate) use shuttle::thread;

/// Polls `done` for a moment before the caller blocks on its condition variable.
///
/// Short operations finish within microseconds; polling first saves the host a wake-up round
/// trip (~50 us here), as the default synchronisation of CUDA and ACL (spin, yield, then block)
/// does. A model-check build never polls, so the checker explores the blocking paths.
pub(crate) fn poll_briefly(mut done: impl FnMut() -> bool) {
    #[cfg(not(feature = "model-check"))]
    {
        let until = std::time::Instant::now() + std::time::Duration::from_micros(50);
        while !done() && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
    }
    #[cfg(feature = "model-check")]
    let _ = &mut done;
}
