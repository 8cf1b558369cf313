//! Streams of the CPU backend: an in-order queue run by a worker thread of its own.
//!
//! Enqueuing returns at once; the worker runs tasks in order. When a task fails, the stream
//! remembers the first failure (naming the task), skips the work queued after it, and still
//! completes event records, carrying the failure to whoever synchronises them, so nothing ever
//! waits forever. `synchronize` waits for the queue to drain and returns that failure once; the
//! stream is then usable again. Dropping a stream lets the worker finish its queue first.
//!
//! Waiting for a stream from its own worker (a host task that synchronises its stream, or the
//! device) can never end, so it is an error instead of a hang.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ascend_hal::{DevicePtr, Error, Result, StreamId};

use crate::backend::CpuBackend;
use crate::device::{CpuDevice, DeviceShared};
use crate::event::{CpuEvent, Signal};
use crate::faults::MockOp;
use crate::memory::{Allocation, Piece};
use crate::regions::KernelArg;
use crate::sync::{poll_briefly, thread, Condvar, Mutex, MutexGuard};

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

type Work = Box<dyn FnOnce() -> Result<()> + Send>;

/// Told why a task did not run: the stream had failed before it.
type Skipped = Box<dyn FnOnce(&Error) + Send>;

enum TaskKind {
    /// Host code run on the worker (copies, memsets, kernels, host tasks).
    Work(Work),
    /// Host code that others wait for (a rank's arrival at a collective): when the stream
    /// has failed before it, the second half hears why instead, so nobody waits for it.
    Awaited(Work, Skipped),
    /// A failure decided at enqueue time (an injected fault) that must surface in stream order.
    Fail(Error),
    /// Complete an event record.
    Record(Arc<Signal>),
    /// Wait for another stream's event record.
    Wait(Arc<Signal>),
}

struct Task {
    op: &'static str,
    kind: TaskKind,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<Task>,
    enqueued: u64,
    completed: u64,
    /// The first failure since the last synchronisation.
    error: Option<Error>,
    shutdown: bool,
}

/// State shared between a stream's handle, its worker thread and its device.
pub(crate) struct StreamShared {
    id: StreamId,
    label: String,
    device: Arc<DeviceShared>,
    state: Mutex<QueueState>,
    work_ready: Condvar,
    work_done: Condvar,
    /// The worker thread, set before the stream is handed out.
    worker: OnceLock<thread::ThreadId>,
}

impl StreamShared {
    /// Whether the calling thread is this stream's worker (running one of its tasks).
    pub(crate) fn on_own_worker(&self) -> bool {
        self.worker.get() == Some(&thread::current().id())
    }

    /// The worker's thread id, for the signals this stream completes.
    pub(crate) fn worker_id(&self) -> Option<thread::ThreadId> {
        self.worker.get().copied()
    }

    pub(crate) fn id(&self) -> StreamId {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The worker never panics while holding the lock (tasks run outside it), so a poisoned
        // lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, op: &'static str, kind: TaskKind) {
        let mut s = self.lock();
        s.queue.push_back(Task { op, kind });
        s.enqueued += 1;
        self.work_ready.notify_one();
    }

    /// Waits until every task queued so far has run, then takes the pending failure.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when called from the stream's own worker (a host task waiting
    /// for its own stream), which would wait forever.
    pub(crate) fn wait_idle_and_take_error(&self) -> Result<()> {
        self.wait_idle(true)
    }

    /// As [`wait_idle_and_take_error`](Self::wait_idle_and_take_error), but a failure stays
    /// for the stream's own next synchronisation.
    pub(crate) fn wait_idle_keeping_error(&self) -> Result<()> {
        self.wait_idle(false)
    }

    fn wait_idle(&self, take: bool) -> Result<()> {
        if self.on_own_worker() {
            return Err(Error::InvalidArgument {
                op: "synchronize",
                message: format!(
                    "a host task of {} waits for its own stream, which cannot finish before the \
                     task does; enqueue the work after the task instead",
                    self.label
                ),
            });
        }
        poll_briefly(|| {
            let s = self.lock();
            s.completed == s.enqueued
        });
        let mut s = self.lock();
        while s.completed < s.enqueued {
            s = self.work_done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let error = if take {
            s.error.take()
        } else {
            s.error.clone()
        };
        error.map_or(Ok(()), Err)
    }

    fn run_worker(self: Arc<Self>) {
        // Built on the first piece of work, so streams that only order events cost no threads.
        let mut kernel_pool = KernelPool::default();
        loop {
            let (task, failed) = {
                let mut s = self.lock();
                loop {
                    if let Some(task) = s.queue.pop_front() {
                        break (task, s.error.clone());
                    }
                    if s.shutdown {
                        return;
                    }
                    drop(s);
                    // Work often follows work closely (a copy, then a kernel): poll before
                    // sleeping, so the next task does not pay a wake-up.
                    poll_briefly(|| {
                        let s = self.lock();
                        !s.queue.is_empty() || s.shutdown
                    });
                    s = self.lock();
                    if s.queue.is_empty() && !s.shutdown {
                        s = self.work_ready.wait(s).unwrap_or_else(|p| p.into_inner());
                    }
                }
            };
            let result = match task.kind {
                TaskKind::Record(signal) => {
                    signal.complete(failed.clone());
                    Ok(())
                }
                // After a failure the queued work is skipped, as on a device whose stream faulted;
                // whoever waits for a skipped task hears why.
                TaskKind::Awaited(_, skipped) if failed.is_some() => {
                    if let Some(e) = &failed {
                        skipped(e);
                    }
                    Ok(())
                }
                _ if failed.is_some() => Ok(()),
                TaskKind::Awaited(work, skipped) if self.device.is_lost() => {
                    let e = self.device.lost_error(task.op);
                    skipped(&e);
                    drop(work);
                    Err(e)
                }
                _ if self.device.is_lost() => Err(self.device.lost_error(task.op)),
                TaskKind::Fail(e) => Err(e),
                TaskKind::Work(work) | TaskKind::Awaited(work, _) => {
                    kernel_pool.join(&self.label);
                    run_catching(work)
                }
                TaskKind::Wait(signal) => signal.wait(),
            };
            let mut s = self.lock();
            s.completed += 1;
            if let Err(source) = result {
                if s.error.is_none() {
                    s.error = Some(Error::StreamOperation {
                        op: task.op,
                        stream: self.label.clone(),
                        source: Box::new(source),
                    });
                }
            }
            self.work_done.notify_all();
        }
    }
}

/// The rayon pool a stream's kernels split their work over, with the stream's worker thread as
/// one of its threads.
///
/// A kernel's parallel loop then starts on the worker itself and its helpers steal from it,
/// instead of the worker handing the loop to rayon's global pool and sleeping until it ends:
/// that hand-off is two thread wake-ups per kernel, which at batch-1 decode (hundreds of small
/// kernels per step) cost more than the matrix products. The pool has rayon's default size
/// (`RAYON_NUM_THREADS`, else one thread per core), the worker counting as one.
///
/// Not under the model check: shuttle's threads are not real threads.
#[derive(Default)]
struct KernelPool {
    #[cfg(not(feature = "model-check"))]
    pool: Option<Result<rayon::ThreadPool, ()>>,
}

impl KernelPool {
    /// Makes the calling worker thread a thread of the stream's pool, once. When the pool cannot
    /// be built (no threads left), kernels run on rayon's global pool as before.
    fn join(&mut self, label: &str) {
        #[cfg(not(feature = "model-check"))]
        if self.pool.is_none() {
            let label = label.to_owned();
            self.pool = Some(
                rayon::ThreadPoolBuilder::new()
                    .use_current_thread()
                    .thread_name(move |i| format!("{label}/kernel {i}"))
                    .build()
                    .map_err(drop),
            );
        }
        #[cfg(feature = "model-check")]
        let _ = label;
    }
}

/// Runs `work`, turning a panic into an error so that the worker survives and nobody waits for a
/// task that will never finish.
fn run_catching(work: Work) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".into());
        Err(Error::InvalidArgument {
            op: "host task",
            message: format!("the task panicked: {message}"),
        })
    })
}

/// A hold on a [`CpuStream`] from [`CpuStream::hold`]: the stream runs nothing queued after
/// the hold until it is released (or dropped).
#[derive(Debug)]
pub struct StreamHold {
    open: Option<std::sync::mpsc::Sender<()>>,
}

impl StreamHold {
    /// Lets the stream go on.
    pub fn release(mut self) {
        self.open.take();
    }
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        // Dropping the sender wakes the held task.
        self.open.take();
    }
}

/// A stream of the CPU backend, with its own worker thread.
pub struct CpuStream {
    shared: Arc<StreamShared>,
    worker: Option<thread::JoinHandle<()>>,
}

/// A raw pointer that a task may carry to the worker thread; the HAL's safety contracts keep the
/// memory valid and unaliased until the task has run.
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: the pointee is only touched by the one task that carries the pointer, while the
// enqueuer guarantees (by the `Stream` method contracts) that nothing else accesses it.
unsafe impl Send for SendPtr {}

impl CpuStream {
    pub(crate) fn spawn(device: Arc<DeviceShared>) -> Result<Self> {
        let id = StreamId(NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(StreamShared {
            id,
            label: format!("{}/stream {}", device.label, id.0),
            device,
            state: Mutex::new(QueueState::default()),
            work_ready: Condvar::new(),
            work_done: Condvar::new(),
            worker: OnceLock::new(),
        });
        let worker_state = Arc::clone(&shared);
        let worker = thread::Builder::new()
            .name(shared.label.clone())
            .spawn(move || worker_state.run_worker())
            .map_err(|e| Error::InvalidArgument {
                op: "new_stream",
                message: format!("could not start the stream's worker thread: {e}"),
            })?;
        let _ = shared.worker.set(worker.thread().id());
        shared.device.register_stream(&shared);
        Ok(CpuStream {
            shared,
            worker: Some(worker),
        })
    }

    /// Enqueues host code to run on the stream's worker, in order with the stream's other work.
    /// Its error, if any, is reported like any failed stream operation, named `op`.
    ///
    /// This is how the CPU backend runs kernels; tests use it to hold a stream busy.
    pub fn enqueue_host_task(
        &self,
        op: &'static str,
        task: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.enqueue(MockOp::HostTask, op, Box::new(task))
    }

    /// As [`enqueue_host_task`](Self::enqueue_host_task), for a task other parties wait for:
    /// when the stream has failed before the task's turn (so the task is skipped), or an
    /// injected fault replaces it, `skipped` is called with the failure instead, so that they
    /// need not wait for a task that will never run.
    pub(crate) fn enqueue_awaited_task(
        &self,
        op: &'static str,
        task: impl FnOnce() -> Result<()> + Send + 'static,
        skipped: impl FnOnce(&Error) + Send + 'static,
    ) -> Result<()> {
        let device = &self.shared.device;
        if let Err(e) = device.check_alive(op) {
            skipped(&e);
            return Err(e);
        }
        let kind = match device.faults.check(MockOp::HostTask) {
            Ok(()) => TaskKind::Awaited(Box::new(task), Box::new(skipped)),
            Err(injected) => {
                skipped(&injected);
                TaskKind::Fail(injected)
            }
        };
        self.shared.push(op, kind);
        Ok(())
    }

    /// Holds the stream: work enqueued after this call waits until the returned [`StreamHold`]
    /// is released or dropped. What tests use to keep work queued (a copy still in flight, an
    /// event not yet complete) for as long as they need.
    ///
    /// # Errors
    /// As [`enqueue_host_task`](Self::enqueue_host_task).
    pub fn hold(&self) -> Result<StreamHold> {
        let (open, gate) = std::sync::mpsc::channel::<()>();
        self.enqueue_host_task("held", move || {
            let _ = gate.recv();
            Ok(())
        })?;
        Ok(StreamHold { open: Some(open) })
    }

    /// Enqueues host code that reads the device ranges `reads` and writes `writes`, in stream
    /// order: how the CPU backend runs kernels. The ranges are checked now (live, on this device;
    /// a written range may overlap no other range); `task` gets them as byte slices, with the
    /// storage locked, on the worker.
    pub(crate) fn enqueue_region_task(
        &self,
        op: &'static str,
        reads: &[(DevicePtr, usize)],
        writes: &[(DevicePtr, usize)],
        task: impl FnOnce(&[&[u8]], &mut [&mut [u8]]) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        for (i, &(w, wn)) in writes.iter().enumerate() {
            let overlaps =
                |&(p, n): &(DevicePtr, usize)| p.0 < w.0 + wn as u64 && w.0 < p.0 + n as u64;
            if reads.iter().any(overlaps) || writes[i + 1..].iter().any(overlaps) {
                return Err(Error::InvalidArgument {
                    op,
                    message: format!("written range {w:?} ({wn} bytes) overlaps another argument"),
                });
            }
        }
        let resolve = |list: &[(DevicePtr, usize)]| -> Result<Vec<Vec<Piece>>> {
            list.iter()
                .map(|&(p, n)| {
                    if n == 0 {
                        Ok(Vec::new())
                    } else {
                        self.resolve(p, n, op)
                    }
                })
                .collect()
        };
        let (read_pieces, write_pieces) = (resolve(reads)?, resolve(writes)?);
        let work = move || crate::regions::run(&read_pieces, &write_pieces, task);
        self.enqueue(MockOp::HostTask, op, Box::new(work))
    }

    /// Enqueues a device kernel run on the host, in stream order: `task` gets, for each device
    /// address in `args`, a host pointer to the bytes there and how many bytes the kernel may
    /// touch from it (to the end of the allocation, or of the run of mapped chunks, the address
    /// lies in; a null address gets a null pointer). The memory is locked for the task and kept
    /// alive until it ends, whatever is freed meanwhile.
    ///
    /// This is how a fake of a device runtime runs kernels against this backend's memory (the
    /// ACL fake's host build of the Ascend C kernels). An address outside live memory of this
    /// device is not refused here, as a real device does not refuse a kernel launch: the task
    /// fails instead, so the stream's next synchronisation reports it, naming `op`.
    ///
    /// # Errors
    /// As [`enqueue_host_task`](Self::enqueue_host_task).
    pub fn enqueue_kernel(
        &self,
        op: &'static str,
        args: &[DevicePtr],
        task: impl FnOnce(&[KernelArg]) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let resolved: std::result::Result<Vec<Option<Vec<Piece>>>, DevicePtr> = {
            let device = &self.shared.device;
            let memory = device.memory();
            args.iter()
                .map(|&p| {
                    if p.0 == 0 {
                        Ok(None)
                    } else {
                        memory.extent(p).map(Some).ok_or(p)
                    }
                })
                .collect()
        };
        let label = self.shared.device.label.clone();
        let work: Work = match resolved {
            Ok(pieces) => Box::new(move || crate::regions::run_raw(&pieces, task)),
            Err(bad) => Box::new(move || {
                Err(Error::KernelFault {
                    op,
                    message: format!(
                        "argument address {:#x} is not inside live memory of {label}: freed, \
                         unmapped, or another device's address (the device would raise a memory \
                         access fault)",
                        bad.0
                    ),
                })
            }),
        };
        self.enqueue(MockOp::HostTask, op, work)
    }

    /// The device this stream runs on.
    pub(crate) fn shared_device(&self) -> &DeviceShared {
        &self.shared.device
    }

    /// Number of operations enqueued and not yet finished.
    pub fn pending(&self) -> u64 {
        let s = self.shared.lock();
        s.enqueued - s.completed
    }

    /// Checks the device and the fault plan, then queues `work` (or the injected failure).
    fn enqueue(&self, fault: MockOp, op: &'static str, work: Work) -> Result<()> {
        let device = &self.shared.device;
        device.check_alive(op)?;
        let kind = match device.faults.check(fault) {
            Ok(()) => TaskKind::Work(work),
            Err(injected) => TaskKind::Fail(injected),
        };
        self.shared.push(op, kind);
        Ok(())
    }

    fn resolve(&self, ptr: DevicePtr, bytes: usize, op: &'static str) -> Result<Vec<Piece>> {
        let device = &self.shared.device;
        device.memory().resolve(ptr, bytes, op, &device.label)
    }

    fn check_own(&self, event: &CpuEvent, op: &'static str) -> Result<()> {
        if event.device.ordinal == self.shared.device.ordinal {
            Ok(())
        } else {
            Err(Error::WrongDevice {
                op,
                what: "event",
                expected: self.shared.device.ordinal,
                actual: event.device.ordinal,
            })
        }
    }
}

fn copy_between(src: &Allocation, src_off: usize, dst: &Allocation, dst_off: usize, bytes: usize) {
    if std::ptr::eq(src, dst) {
        dst.lock()
            .as_mut_slice()
            .copy_within(src_off..src_off + bytes, dst_off);
        return;
    }
    // Two locks, always taken in address order, so two opposite copies cannot deadlock.
    let (mut first, mut second) = if src.base < dst.base {
        let a = src.lock();
        (a, dst.lock())
    } else {
        let a = dst.lock();
        (a, src.lock())
    };
    let (s, d) = if src.base < dst.base {
        (first.as_mut_slice(), second.as_mut_slice())
    } else {
        (second.as_mut_slice(), first.as_mut_slice())
    };
    d[dst_off..dst_off + bytes].copy_from_slice(&s[src_off..src_off + bytes]);
}

/// Copies between two device ranges given as pieces (their chunk boundaries may differ).
fn copy_pieces(src: &[Piece], dst: &[Piece]) {
    let (mut si, mut so, mut di, mut dof) = (0, 0, 0, 0);
    while si < src.len() && di < dst.len() {
        let (s, d) = (&src[si], &dst[di]);
        let n = (s.2 - so).min(d.2 - dof);
        copy_between(&s.0, s.1 + so, &d.0, d.1 + dof, n);
        so += n;
        dof += n;
        if so == s.2 {
            si += 1;
            so = 0;
        }
        if dof == d.2 {
            di += 1;
            dof = 0;
        }
    }
}

impl ascend_hal::Stream for CpuStream {
    type Backend = CpuBackend;

    fn id(&self) -> StreamId {
        self.shared.id
    }

    fn device(&self) -> CpuDevice {
        CpuDevice {
            shared: Arc::clone(&self.shared.device),
        }
    }

    fn device_ordinal(&self) -> usize {
        self.shared.device.ordinal
    }

    unsafe fn enqueue_copy_h2d(&self, src: *const u8, dst: DevicePtr, bytes: usize) -> Result<()> {
        let pieces = self.resolve(dst, bytes, "copy_h2d")?;
        let src = SendPtr(src as *mut u8);
        let work = move || {
            let src = src;
            // SAFETY: the caller guarantees `src` is valid for `bytes` reads and unwritten until
            // this task completes (contract of `enqueue_copy_h2d`).
            let data = unsafe { std::slice::from_raw_parts(src.0 as *const u8, bytes) };
            let mut at = 0;
            for (alloc, off, len) in &pieces {
                alloc.lock().as_mut_slice()[*off..off + len].copy_from_slice(&data[at..at + len]);
                at += len;
            }
            Ok(())
        };
        self.enqueue(MockOp::CopyH2d, "copy_h2d", Box::new(work))
    }

    unsafe fn enqueue_copy_d2h(&self, src: DevicePtr, dst: *mut u8, bytes: usize) -> Result<()> {
        let pieces = self.resolve(src, bytes, "copy_d2h")?;
        let dst = SendPtr(dst);
        let work = move || {
            let dst = dst;
            // SAFETY: the caller guarantees `dst` is valid for `bytes` writes and untouched by
            // the host until this task completes (contract of `enqueue_copy_d2h`).
            let out = unsafe { std::slice::from_raw_parts_mut(dst.0, bytes) };
            let mut at = 0;
            for (alloc, off, len) in &pieces {
                out[at..at + len].copy_from_slice(&alloc.lock().as_mut_slice()[*off..off + len]);
                at += len;
            }
            Ok(())
        };
        self.enqueue(MockOp::CopyD2h, "copy_d2h", Box::new(work))
    }

    unsafe fn enqueue_copy_d2d(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()> {
        let from = self.resolve(src, bytes, "copy_d2d")?;
        let to = self.resolve(dst, bytes, "copy_d2d")?;
        if src.0 < dst.0 + bytes as u64 && dst.0 < src.0 + bytes as u64 {
            return Err(Error::InvalidArgument {
                op: "copy_d2d",
                message: format!(
                    "source {src:?} and destination {dst:?} overlap ({bytes} bytes each)"
                ),
            });
        }
        let work = move || {
            copy_pieces(&from, &to);
            Ok(())
        };
        self.enqueue(MockOp::CopyD2d, "copy_d2d", Box::new(work))
    }

    unsafe fn enqueue_memset(&self, dst: DevicePtr, value: u8, bytes: usize) -> Result<()> {
        let pieces = self.resolve(dst, bytes, "memset")?;
        let work = move || {
            for (alloc, off, len) in &pieces {
                alloc.lock().as_mut_slice()[*off..off + len].fill(value);
            }
            Ok(())
        };
        self.enqueue(MockOp::Memset, "memset", Box::new(work))
    }

    unsafe fn copy_h2d_blocking(&self, src: *const u8, dst: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: `src` stays valid for the whole call (our caller's contract), and the call
        // returns only after `wait_idle_and_take_error` saw the copy finish; `dst` is forwarded
        // under the same contract.
        unsafe { self.enqueue_copy_h2d(src, dst, bytes)? };
        // Wait without the `synchronize` fault hook: returning before the worker is done with
        // `src` would be unsound.
        self.shared.wait_idle_and_take_error()
    }

    unsafe fn copy_d2h_blocking(&self, src: DevicePtr, dst: *mut u8, bytes: usize) -> Result<()> {
        // SAFETY: as in `copy_h2d_blocking`, with `dst` valid for writes for the whole call.
        unsafe { self.enqueue_copy_d2h(src, dst, bytes)? };
        self.shared.wait_idle_and_take_error()
    }

    fn record(&self, event: &CpuEvent) -> Result<()> {
        self.check_own(event, "record")?;
        self.shared.device.enter(MockOp::Record)?;
        // The record is queued before the event points at its signal, so a `wait` can never
        // capture a signal whose record is not queued yet (see `event.rs`).
        event.record_with(self.shared.worker_id(), |signal| {
            self.shared.push("record", TaskKind::Record(signal))
        });
        Ok(())
    }

    fn wait(&self, event: &CpuEvent) -> Result<()> {
        self.check_own(event, "wait")?;
        self.shared.device.enter(MockOp::Wait)?;
        if let Some(signal) = event.latest() {
            self.shared.push("wait", TaskKind::Wait(signal));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.shared.device.enter(MockOp::Synchronize)?;
        self.shared.wait_idle_and_take_error()?;
        self.shared.device.check_alive("Stream::synchronize")
    }

    fn query(&self) -> Result<bool> {
        self.shared.device.check_alive("Stream::query")?;
        Ok(self.pending() == 0)
    }
}

impl Drop for CpuStream {
    fn drop(&mut self) {
        self.shared.device.unregister_stream(self.shared.id);
        self.shared.lock().shutdown = true;
        self.shared.work_ready.notify_all();
        if let Some(worker) = self.worker.take() {
            // The worker drains the queue before it exits; a panic inside a task is already
            // reported by the thread, and `Drop` must not panic again.
            let _ = worker.join();
        }
    }
}

impl fmt::Debug for CpuStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuStream")
            .field("stream", &self.shared.label)
            .field("pending", &self.pending())
            .finish()
    }
}
