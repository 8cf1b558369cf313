//! A communicator across the CPU backend's mock devices: one rank per device, collectives in
//! each rank's stream order with HCCL's semantics, computed on the host.
//!
//! Each collective is queued on the rank's stream as three steps: its input is copied out of
//! device memory (the memory locked only for the copy), the rank then waits on its stream's
//! worker until every rank of the group has reached the same collective (the `n`-th collective
//! of every rank is one operation), and the result is written back. Every rank computes the
//! result from all inputs in rank order, so all ranks get the same bits. The ranks must call
//! the same collectives in the same order with the same sizes: a mismatch fails the collective
//! on every rank, naming what each called; a rank that does not arrive within the group's
//! timeout fails the others (HCCL reports the same as a timeout). Faults are injected per rank
//! ([`CpuCommunicator::fail_next`]): the rank's collective fails, and so does every other
//! rank's, naming it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ascend_hal::comm::{Communicator, ReduceOp};
use ascend_hal::{DType, Device, DevicePtr, Error, Result, Stream};
use half::{bf16, f16};

use crate::{CpuBackend, CpuDevice, CpuStream};

/// What one rank called, to check every rank called the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    op: &'static str,
    count: usize,
    dtype: DType,
    reduce: Option<ReduceOp>,
    root: Option<usize>,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({} x {:?}", self.op, self.count, self.dtype)?;
        if let Some(r) = self.reduce {
            write!(f, ", {r}")?;
        }
        if let Some(r) = self.root {
            write!(f, ", root {r}")?;
        }
        f.write_str(")")
    }
}

/// One collective operation of the group, as the ranks reach it.
struct Round {
    calls: Vec<Option<Call>>,
    inputs: Vec<Option<Arc<Vec<u8>>>>,
    /// Computed once, by the first rank to find every input there.
    result: Option<Arc<Vec<u8>>>,
    failure: Option<String>,
    done: usize,
}

/// A message of a send, waiting for its receive.
struct Message {
    count: usize,
    dtype: DType,
    data: Arc<Vec<u8>>,
}

#[derive(Default)]
struct State {
    rounds: HashMap<u64, Round>,
    mailboxes: HashMap<(usize, usize), VecDeque<Message>>,
    /// Per rank: collectives to fail, counted from its next one.
    armed: HashMap<usize, u64>,
}

struct Group {
    size: usize,
    state: Mutex<State>,
    changed: Condvar,
    timeout: Mutex<Duration>,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One rank of a group over the CPU backend's devices.
pub struct CpuCommunicator {
    group: Arc<Group>,
    rank: usize,
    device: CpuDevice,
    /// Collectives this rank has enqueued (the next one's sequence number).
    next: AtomicU64,
}

impl std::fmt::Debug for CpuCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuCommunicator")
            .field("rank", &self.rank)
            .field("size", &self.group.size)
            .field("device", &self.device.ordinal())
            .finish()
    }
}

/// How long a rank waits for the others at a collective unless told otherwise (HCCL's own
/// execution timeout is of the same order).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl CpuCommunicator {
    /// One communicator per device, rank `i` on `devices[i]` (as `HcclCommInitAll` makes them
    /// for one process driving several devices). The devices must be distinct.
    pub fn init_all(devices: &[CpuDevice]) -> Result<Vec<CpuCommunicator>> {
        if devices.is_empty() {
            return Err(Error::InvalidArgument {
                op: "CpuCommunicator::init_all",
                message: "a group needs at least one device".into(),
            });
        }
        let ordinals: Vec<usize> = devices.iter().map(|d| d.ordinal()).collect();
        for (i, o) in ordinals.iter().enumerate() {
            if ordinals[..i].contains(o) {
                return Err(Error::InvalidArgument {
                    op: "CpuCommunicator::init_all",
                    message: format!("device {o} is given twice; a group has one rank per device"),
                });
            }
        }
        let group = Arc::new(Group {
            size: devices.len(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            timeout: Mutex::new(DEFAULT_TIMEOUT),
        });
        Ok(devices
            .iter()
            .enumerate()
            .map(|(rank, d)| CpuCommunicator {
                group: Arc::clone(&group),
                rank,
                device: d.clone(),
                next: AtomicU64::new(0),
            })
            .collect())
    }

    /// How long every rank of the group waits for the others at a collective.
    pub fn set_timeout(&self, timeout: Duration) {
        *self.group.timeout.lock().unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    /// Makes this rank's next `n` collectives (or receives) fail when its stream reaches them;
    /// the other ranks' share of each fails too, naming this rank.
    pub fn fail_next(&self, n: u64) {
        *self.group.lock().armed.entry(self.rank).or_default() += n;
    }

    fn error(&self, op: &'static str, message: String) -> Error {
        Error::Collective {
            op,
            rank: self.rank,
            size: self.group.size,
            message,
        }
    }

    /// Makes this rank's [`Error::Collective`]s for `op`, for tasks on its stream.
    fn errors(&self, op: &'static str) -> impl Fn(String) -> Error + Send + 'static {
        let (rank, size) = (self.rank, self.group.size);
        move |message| Error::Collective {
            op,
            rank,
            size,
            message,
        }
    }

    /// The checks of a send or receive: the stream, the byte count, and that `peer` is another
    /// rank of the group. Returns the bytes.
    fn point_to_point(
        &self,
        op: &'static str,
        stream: &CpuStream,
        count: usize,
        dtype: DType,
        peer: usize,
    ) -> Result<usize> {
        self.check_stream(stream, op)?;
        let n = self.bytes(op, count, dtype)?;
        if peer >= self.group.size || peer == self.rank {
            return Err(self.error(op, format!("peer {peer} is not another rank of the group")));
        }
        Ok(n)
    }

    fn check_stream(&self, stream: &CpuStream, op: &'static str) -> Result<()> {
        if stream.device_ordinal() != self.device.ordinal() {
            return Err(Error::WrongDevice {
                op,
                what: "stream",
                expected: self.device.ordinal(),
                actual: stream.device_ordinal(),
            });
        }
        Ok(())
    }

    fn bytes(&self, op: &'static str, count: usize, dtype: DType) -> Result<usize> {
        count
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::InvalidArgument {
                op,
                message: format!("{count} elements of {dtype:?} overflow the address space"),
            })
    }

    /// Queues a collective: the input copied out (`send`, if any), the rendezvous, and the
    /// output (computed by `result` from every rank's input) written to `recv` (if any).
    fn enqueue_collective(
        &self,
        stream: &CpuStream,
        call: Call,
        send: Option<(DevicePtr, usize)>,
        recv: Option<(DevicePtr, usize)>,
        part: usize,
    ) -> Result<()> {
        self.check_stream(stream, call.op)?;
        let input: Arc<Mutex<Vec<u8>>> = Arc::default();
        let expected = send.map_or(0, |(_, n)| n);
        if let Some((ptr, n)) = send.filter(|&(_, n)| n > 0) {
            let slot = Arc::clone(&input);
            stream.enqueue_region_task(call.op, &[(ptr, n)], &[], move |r, _| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = r[0].to_vec();
                Ok(())
            })?;
        }
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let output: Arc<Mutex<Option<Arc<Vec<u8>>>>> = Arc::default();
        let (group, rank, out) = (Arc::clone(&self.group), self.rank, Arc::clone(&output));
        let err = self.errors(call.op);
        stream.enqueue_host_task(call.op, move || {
            let data = Arc::new(std::mem::take(
                &mut *input.lock().unwrap_or_else(|p| p.into_inner()),
            ));
            let full = rendezvous(&group, seq, rank, call, data, expected).map_err(&err)?;
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(full);
            Ok(())
        })?;
        if let Some((ptr, n)) = recv.filter(|&(_, n)| n > 0) {
            stream.enqueue_region_task(call.op, &[], &[(ptr, n)], move |_, w| {
                // Nothing to write when the rendezvous failed (that step reported it).
                if let Some(full) = output.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    if let Some(src) = full.get(part..part + w[0].len()) {
                        w[0].copy_from_slice(src);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// The whole result of a collective every rank called as `call` (each rank writes its part):
/// the reduction, the concatenation, or the root's data.
fn full_result(call: &Call, size: usize, inputs: &[Arc<Vec<u8>>]) -> Vec<u8> {
    match (call.op, call.reduce, call.root) {
        ("reduce_scatter", Some(op), _) => combine(call.dtype, op, inputs, 0..call.count * size),
        (_, Some(op), _) => combine(call.dtype, op, inputs, 0..call.count),
        (_, None, Some(root)) => inputs
            .get(root)
            .map_or_else(Vec::new, |d| d.as_ref().clone()),
        _ => inputs.iter().flat_map(|i| i.iter().copied()).collect(),
    }
}

/// Takes an armed fault of `rank`, if any.
fn take_fault(state: &mut State, rank: usize) -> bool {
    match state.armed.get_mut(&rank) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// Contributes `data` to collective `seq` and waits for every rank's: returns them in rank
/// order, or why the collective failed.
fn rendezvous(
    group: &Group,
    seq: u64,
    rank: usize,
    call: Call,
    data: Arc<Vec<u8>>,
    expected: usize,
) -> std::result::Result<Arc<Vec<u8>>, String> {
    let size = group.size;
    let deadline = Instant::now() + group.timeout();
    let mut state = group.lock();
    let injected = take_fault(&mut state, rank);
    let round = state.rounds.entry(seq).or_insert_with(|| Round {
        calls: vec![None; size],
        inputs: vec![None; size],
        result: None,
        failure: None,
        done: 0,
    });
    round.calls[rank] = Some(call);
    let readable = data.len() == expected;
    round.inputs[rank] = Some(data);
    if !readable && round.failure.is_none() {
        // Its copy out of device memory failed earlier on its stream (that step reported why).
        round.failure = Some(format!(
            "rank {rank} could not read its input for collective #{seq} ({call})"
        ));
    }
    if injected && round.failure.is_none() {
        round.failure = Some(format!(
            "rank {rank} failed (injected fault) at collective #{seq}"
        ));
    }
    group.changed.notify_all();
    let result = loop {
        let Some(round) = state.rounds.get_mut(&seq) else {
            // Rounds live until every rank is out of them; this rank is not.
            break Err(format!("collective #{seq} was lost"));
        };
        if let Some(f) = &round.failure {
            break Err(f.clone());
        }
        let calls: Option<Vec<Call>> = round.calls.iter().copied().collect();
        let inputs: Option<Vec<Arc<Vec<u8>>>> = round.inputs.iter().cloned().collect();
        if let (Some(calls), Some(inputs)) = (calls, inputs) {
            if let Some((other, c)) = calls.iter().enumerate().find(|(_, c)| **c != calls[0]) {
                let message = format!(
                    "collective #{seq} does not match across ranks: rank 0 called {}, rank \
                     {other} called {c}; every rank must call the same collectives in the same \
                     order",
                    calls[0]
                );
                round.failure = Some(message.clone());
                group.changed.notify_all();
                break Err(message);
            }
            let full = round
                .result
                .get_or_insert_with(|| Arc::new(full_result(&calls[0], size, &inputs)));
            break Ok(Arc::clone(full));
        }
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<String> = round
                .calls
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_none())
                .map(|(r, _)| r.to_string())
                .collect();
            let message = format!(
                "rank(s) {} did not reach collective #{seq} ({}) within {:?}: a rank stopped, \
                 failed earlier, or calls collectives in another order",
                missing.join(", "),
                call,
                group.timeout()
            );
            round.failure = Some(message.clone());
            group.changed.notify_all();
            break Err(message);
        }
        state = group
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    };
    // The last rank out removes the round; on failure a rank that never arrives leaves it
    // behind, which costs a little memory and answers any late arrival with the failure.
    if let Some(round) = state.rounds.get_mut(&seq) {
        round.done += 1;
        if round.done == size {
            state.rounds.remove(&seq);
        }
    }
    result
}

/// Elements `range` of every rank's input combined by `op`, in rank order (halves in `f32`,
/// rounded once at the end; integers wrapping), as bytes of `dtype`.
fn combine(
    dtype: DType,
    op: ReduceOp,
    inputs: &[Arc<Vec<u8>>],
    range: std::ops::Range<usize>,
) -> Vec<u8> {
    let w = dtype.size_in_bytes();
    let bytes = range.start * w..range.end * w;
    /// One pass per rank over a typed accumulator, the operation chosen outside the loop.
    fn fold<T: Copy>(
        inputs: &[Arc<Vec<u8>>],
        bytes: std::ops::Range<usize>,
        w: usize,
        read: impl Fn(&[u8]) -> T,
        write: impl Fn(T, &mut Vec<u8>),
        f: impl Fn(T, T) -> T,
    ) -> Vec<u8> {
        let Some(first) = inputs.first().and_then(|i| i.get(bytes.clone())) else {
            return Vec::new();
        };
        let mut acc: Vec<T> = first.chunks_exact(w).map(&read).collect();
        for x in &inputs[1..] {
            let Some(x) = x.get(bytes.clone()) else {
                return Vec::new();
            };
            for (a, c) in acc.iter_mut().zip(x.chunks_exact(w)) {
                *a = f(*a, read(c));
            }
        }
        let mut out = Vec::with_capacity(acc.len() * w);
        for a in acc {
            write(a, &mut out);
        }
        out
    }
    macro_rules! by_op {
        ($read:expr, $write:expr, $sum:expr, $prod:expr, $max:expr, $min:expr) => {
            match op {
                ReduceOp::Sum => fold(inputs, bytes, w, $read, $write, $sum),
                ReduceOp::Prod => fold(inputs, bytes, w, $read, $write, $prod),
                ReduceOp::Max => fold(inputs, bytes, w, $read, $write, $max),
                ReduceOp::Min => fold(inputs, bytes, w, $read, $write, $min),
            }
        };
    }
    let fmax = |a: f32, b: f32| if b > a || a.is_nan() { b } else { a };
    let fmin = |a: f32, b: f32| if b < a || a.is_nan() { b } else { a };
    let fsum = |a: f32, b: f32| a + b;
    let fprod = |a: f32, b: f32| a * b;
    match dtype {
        DType::F32 => by_op!(
            |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            |v: f32, o: &mut Vec<u8>| o.extend_from_slice(&v.to_le_bytes()),
            fsum,
            fprod,
            fmax,
            fmin
        ),
        DType::F16 => by_op!(
            |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32(),
            |v: f32, o: &mut Vec<u8>| o.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            fsum,
            fprod,
            fmax,
            fmin
        ),
        DType::BF16 => by_op!(
            |b: &[u8]| bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            |v: f32, o: &mut Vec<u8>| o.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            fsum,
            fprod,
            fmax,
            fmin
        ),
        DType::I8 => by_op!(
            |b: &[u8]| b[0] as i8,
            |v: i8, o: &mut Vec<u8>| o.extend_from_slice(&v.to_le_bytes()),
            i8::wrapping_add,
            i8::wrapping_mul,
            i8::max,
            i8::min
        ),
        DType::U8 => by_op!(
            |b: &[u8]| b[0],
            |v: u8, o: &mut Vec<u8>| o.push(v),
            u8::wrapping_add,
            u8::wrapping_mul,
            u8::max,
            u8::min
        ),
        DType::I32 => by_op!(
            |b: &[u8]| i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            |v: i32, o: &mut Vec<u8>| o.extend_from_slice(&v.to_le_bytes()),
            i32::wrapping_add,
            i32::wrapping_mul,
            i32::max,
            i32::min
        ),
        DType::I64 => by_op!(
            |b: &[u8]| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            |v: i64, o: &mut Vec<u8>| o.extend_from_slice(&v.to_le_bytes()),
            i64::wrapping_add,
            i64::wrapping_mul,
            i64::max,
            i64::min
        ),
        // Refused at enqueue (`reducible`): nothing to combine.
        _ => Vec::new(),
    }
}

/// Whether [`combine`] reduces `dtype` (refused at enqueue otherwise).
fn reducible(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::F32 | DType::F16 | DType::BF16 | DType::I8 | DType::U8 | DType::I32 | DType::I64
    )
}

impl Communicator for CpuCommunicator {
    type Backend = CpuBackend;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size
    }

    fn device_ordinal(&self) -> usize {
        self.device.ordinal()
    }

    unsafe fn enqueue_all_reduce(
        &self,
        stream: &CpuStream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let n = self.bytes("all_reduce", count, dtype)?;
        if !reducible(dtype) {
            return Err(Error::Unsupported {
                backend: "cpu",
                op: "all_reduce of this dtype",
            });
        }
        let call = Call {
            op: "all_reduce",
            count,
            dtype,
            reduce: Some(op),
            root: None,
        };
        self.enqueue_collective(stream, call, Some((send, n)), Some((recv, n)), 0)
    }

    unsafe fn enqueue_all_gather(
        &self,
        stream: &CpuStream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
    ) -> Result<()> {
        let n = self.bytes("all_gather", count, dtype)?;
        let total = self.bytes("all_gather", count.saturating_mul(self.group.size), dtype)?;
        let call = Call {
            op: "all_gather",
            count,
            dtype,
            reduce: None,
            root: None,
        };
        self.enqueue_collective(stream, call, Some((send, n)), Some((recv, total)), 0)
    }

    unsafe fn enqueue_reduce_scatter(
        &self,
        stream: &CpuStream,
        send: DevicePtr,
        recv: DevicePtr,
        count: usize,
        dtype: DType,
        op: ReduceOp,
    ) -> Result<()> {
        let n = self.bytes("reduce_scatter", count, dtype)?;
        if !reducible(dtype) {
            return Err(Error::Unsupported {
                backend: "cpu",
                op: "reduce_scatter of this dtype",
            });
        }
        let total = self.bytes(
            "reduce_scatter",
            count.saturating_mul(self.group.size),
            dtype,
        )?;
        let call = Call {
            op: "reduce_scatter",
            count,
            dtype,
            reduce: Some(op),
            root: None,
        };
        let rank = self.rank;
        self.enqueue_collective(stream, call, Some((send, total)), Some((recv, n)), rank * n)
    }

    unsafe fn enqueue_broadcast(
        &self,
        stream: &CpuStream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        root: usize,
    ) -> Result<()> {
        let n = self.bytes("broadcast", count, dtype)?;
        if root >= self.group.size {
            return Err(self.error(
                "broadcast",
                format!("root {root} is not a rank of the group"),
            ));
        }
        let call = Call {
            op: "broadcast",
            count,
            dtype,
            reduce: None,
            root: Some(root),
        };
        let is_root = root == self.rank;
        self.enqueue_collective(
            stream,
            call,
            is_root.then_some((buf, n)),
            (!is_root).then_some((buf, n)),
            0,
        )
    }

    unsafe fn enqueue_send(
        &self,
        stream: &CpuStream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        peer: usize,
    ) -> Result<()> {
        let n = self.point_to_point("send", stream, count, dtype, peer)?;
        let (group, from, err) = (Arc::clone(&self.group), self.rank, self.errors("send"));
        let post = move |data: Vec<u8>| -> Result<()> {
            let mut state = group.lock();
            if take_fault(&mut state, from) {
                return Err(err(format!(
                    "rank {from} failed (injected fault) sending to {peer}"
                )));
            }
            state
                .mailboxes
                .entry((from, peer))
                .or_default()
                .push_back(Message {
                    count,
                    dtype,
                    data: Arc::new(data),
                });
            group.changed.notify_all();
            Ok(())
        };
        if n == 0 {
            stream.enqueue_host_task("send", move || post(Vec::new()))
        } else {
            stream.enqueue_region_task("send", &[(buf, n)], &[], move |r, _| post(r[0].to_vec()))
        }
    }

    unsafe fn enqueue_recv(
        &self,
        stream: &CpuStream,
        buf: DevicePtr,
        count: usize,
        dtype: DType,
        peer: usize,
    ) -> Result<()> {
        let n = self.point_to_point("recv", stream, count, dtype, peer)?;
        let (group, to, err) = (Arc::clone(&self.group), self.rank, self.errors("recv"));
        let got: Arc<Mutex<Option<Arc<Vec<u8>>>>> = Arc::default();
        let slot = Arc::clone(&got);
        stream.enqueue_host_task("recv", move || {
            let deadline = Instant::now() + group.timeout();
            let mut state = group.lock();
            if take_fault(&mut state, to) {
                return Err(err(format!(
                    "rank {to} failed (injected fault) receiving from {peer}"
                )));
            }
            loop {
                if let Some(m) = state
                    .mailboxes
                    .get_mut(&(peer, to))
                    .and_then(VecDeque::pop_front)
                {
                    if (m.count, m.dtype) != (count, dtype) {
                        return Err(err(format!(
                            "rank {peer} sent {} x {:?}, rank {to} receives {count} x {dtype:?}",
                            m.count, m.dtype
                        )));
                    }
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.data);
                    return Ok(());
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(err(format!(
                        "nothing from rank {peer} within {:?}: it did not send, or failed",
                        group.timeout()
                    )));
                }
                state = group
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        })?;
        if n > 0 {
            stream.enqueue_region_task("recv", &[], &[(buf, n)], move |_, w| {
                if let Some(data) = got.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    if let Some(src) = data.get(..w[0].len()) {
                        w[0].copy_from_slice(src);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
