//! A communicator across the CPU backend's mock devices: one rank per device, collectives in
//! each rank's stream order with HCCL's semantics, computed on the host.
//!
//! Each collective is queued on the rank's stream as three steps: its input is copied out of
//! device memory (the memory locked only for the copy), the rank then waits on its stream's
//! worker until every rank of the group has reached the same collective (the `n`-th collective
//! of every rank is one operation), and the result is written back. Every rank computes the
//! result from all inputs in rank order, so all ranks get the same bits. The ranks must call
//! the same collectives in the same order with the same sizes: a mismatch fails the collective
//! on every rank, naming what each called. A rank that cannot arrive fails the others at once,
//! naming it and why: its stream failed before the collective (the skipped arrival reports the
//! stream's failure), or its communicator was dropped before it enqueued the collective (the
//! rank stopped or failed). A rank that is merely late fails the others after the group's
//! timeout (HCCL reports the same as a timeout). Faults are injected per rank
//! ([`CpuCommunicator::fail_next`]): the rank's collective fails, and so does every other
//! rank's, naming it.

use std::collections::{HashMap, VecDeque};
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

/// A message of a send, waiting for its receive: the data, or why the send could not run.
struct Message {
    count: usize,
    dtype: DType,
    data: std::result::Result<Arc<Vec<u8>>, String>,
}

#[derive(Default)]
struct State {
    rounds: HashMap<u64, Round>,
    mailboxes: HashMap<(usize, usize), VecDeque<Message>>,
    /// Sends enqueued and receives completed, per `(from, to)`.
    sent: HashMap<(usize, usize), u64>,
    received: HashMap<(usize, usize), u64>,
    /// Per rank: collectives to fail, counted from its next one.
    armed: HashMap<usize, u64>,
    /// Per rank: collectives enqueued so far (the next one's sequence number).
    enqueued: Vec<u64>,
    /// Per rank: whether its communicator was dropped.
    departed: Vec<bool>,
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
    /// When a wait that starts now gives up: `None` (never) for a timeout past what an
    /// `Instant` can hold.
    fn deadline(&self) -> Option<Instant> {
        Instant::now().checked_add(self.timeout())
    }
}

/// Waits on `cv` until `deadline` (for ever when `None`).
fn wait_until<'a>(
    cv: &Condvar,
    guard: MutexGuard<'a, State>,
    deadline: Option<Instant>,
    now: Instant,
) -> MutexGuard<'a, State> {
    match deadline {
        Some(d) => {
            cv.wait_timeout(guard, d.saturating_duration_since(now))
                .unwrap_or_else(|p| p.into_inner())
                .0
        }
        None => cv.wait(guard).unwrap_or_else(|p| p.into_inner()),
    }
}

/// Ranks as a short list for messages: the first eight, then how many more.
pub fn list_ranks(ranks: &[usize]) -> String {
    const SHOWN: usize = 8;
    let mut s = ranks
        .iter()
        .take(SHOWN)
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ranks.len() > SHOWN {
        s.push_str(&format!(" and {} more", ranks.len() - SHOWN));
    }
    s
}

/// One rank of a group over the CPU backend's devices. Dropping it tells the other ranks that
/// this one will enqueue no more collectives, so they fail at once where they wait for one.
pub struct CpuCommunicator {
    group: Arc<Group>,
    rank: usize,
    device: CpuDevice,
}

impl Drop for CpuCommunicator {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        if let Some(d) = state.departed.get_mut(self.rank) {
            *d = true;
        }
        self.group.changed.notify_all();
    }
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

/// How long a rank waits for a late peer at a collective unless told otherwise (HCCL's own
/// execution timeout, `HCCL_EXEC_TIMEOUT`, is 1836 s by default). A peer that cannot come
/// (failed, stopped) is not waited for.
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
        let backend = devices[0].shared.backend;
        if let Some((i, d)) = devices
            .iter()
            .enumerate()
            .find(|(_, d)| d.shared.backend != backend)
        {
            return Err(Error::InvalidArgument {
                op: "CpuCommunicator::init_all",
                message: format!(
                    "devices[{i}] (device {}) belongs to another CpuBackend than devices[0] \
                     (device {}); a group's devices come from one backend",
                    d.ordinal(),
                    devices[0].ordinal()
                ),
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
        let size = devices.len();
        let group = Arc::new(Group {
            size,
            state: Mutex::new(State {
                enqueued: vec![0; size],
                departed: vec![false; size],
                ..State::default()
            }),
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
            })
            .collect())
    }

    /// How long every rank of the group waits for a late peer at a collective or a receive
    /// ([`Duration::MAX`]: for ever).
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
        if stream.shared_device().backend != self.device.shared.backend {
            return Err(self.error(
                op,
                "the stream belongs to another CpuBackend than the communicator's device".into(),
            ));
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
        let seq = {
            let mut state = self.group.lock();
            let seq = state.enqueued[self.rank];
            state.enqueued[self.rank] += 1;
            seq
        };
        let output: Arc<Mutex<Option<Arc<Vec<u8>>>>> = Arc::default();
        let (group, rank, out) = (Arc::clone(&self.group), self.rank, Arc::clone(&output));
        let err = self.errors(call.op);
        let skipped_group = Arc::clone(&self.group);
        stream.enqueue_awaited_task(
            call.op,
            move || {
                let data = Arc::new(std::mem::take(
                    &mut *input.lock().unwrap_or_else(|p| p.into_inner()),
                ));
                let full = rendezvous(&group, seq, rank, call, data, expected).map_err(&err)?;
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(full);
                Ok(())
            },
            move |e| {
                // This rank will not arrive: the others fail now, with the reason.
                let mut state = skipped_group.lock();
                let size = skipped_group.size;
                let round = state.rounds.entry(seq).or_insert_with(|| Round::new(size));
                if round.failure.is_none() {
                    round.failure = Some(format!(
                        "rank {rank} cannot take part in collective #{seq} ({call}): its stream \
                         failed before it: {e}"
                    ));
                }
                round.done += 1;
                if round.done == size {
                    state.rounds.remove(&seq);
                }
                skipped_group.changed.notify_all();
            },
        )?;
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

impl Round {
    fn new(size: usize) -> Self {
        Round {
            calls: vec![None; size],
            inputs: vec![None; size],
            result: None,
            failure: None,
            done: 0,
        }
    }
}

/// Ranks that will never arrive at collective `seq`: their communicator is gone and they had
/// not enqueued it.
fn departed_before(state: &State, round: &Round, seq: u64) -> Vec<usize> {
    round
        .calls
        .iter()
        .enumerate()
        .filter(|&(r, c)| c.is_none() && state.departed[r] && state.enqueued[r] <= seq)
        .map(|(r, _)| r)
        .collect()
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
    let deadline = group.deadline();
    let mut state = group.lock();
    let injected = take_fault(&mut state, rank);
    let round = state.rounds.entry(seq).or_insert_with(|| Round::new(size));
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
        let gone = match state.rounds.get(&seq) {
            Some(round) if round.failure.is_none() => departed_before(&state, round, seq),
            _ => Vec::new(),
        };
        let Some(round) = state.rounds.get_mut(&seq) else {
            // Rounds live until every rank is out of them; this rank is not.
            break Err(format!("collective #{seq} was lost"));
        };
        if !gone.is_empty() {
            round.failure = Some(format!(
                "rank(s) {} left the group before collective #{seq} ({call}): the \
                 communicator was dropped, so the rank stopped or failed; see its own error",
                list_ranks(&gone)
            ));
            group.changed.notify_all();
        }
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
        if deadline.is_some_and(|d| now >= d) {
            let missing: Vec<usize> = round
                .calls
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_none())
                .map(|(r, _)| r)
                .collect();
            let message = format!(
                "rank(s) {} did not reach collective #{seq} ({}) within {:?}: a rank is stuck, \
                 or calls collectives in another order",
                list_ranks(&missing),
                call,
                group.timeout()
            );
            round.failure = Some(message.clone());
            group.changed.notify_all();
            break Err(message);
        }
        state = wait_until(&group.changed, state, deadline, now);
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
        // Refused at enqueue (`check_reducible`): nothing to combine.
        _ => Vec::new(),
    }
}

/// Refuses a reduction HCCL refuses on a 910B (`CheckDataType`, `CheckReduceDataType`):
/// unsigned data, and `prod` of bf16. [`combine`] reduces everything else it is given.
fn check_reducible(
    comm: &CpuCommunicator,
    op: &'static str,
    dtype: DType,
    reduce: ReduceOp,
) -> Result<()> {
    let refused = match (dtype, reduce) {
        (DType::U8, _) => {
            "unsigned data is not reduced (HCCL supports int8, int16, int32, \
                           int64, f16, f32 and bf16)"
        }
        (DType::BF16, ReduceOp::Prod) => {
            "prod of bf16 is not supported on a 910B (use f16, \
                                          f32 or i32)"
        }
        (DType::F32 | DType::F16 | DType::BF16 | DType::I8 | DType::I32 | DType::I64, _) => {
            return Ok(())
        }
        _ => "this dtype is not reduced",
    };
    Err(comm.error(op, format!("{reduce} of {dtype:?}: {refused}")))
}

impl ascend_hal::comm::CollectiveBackend for CpuBackend {
    type Communicator = CpuCommunicator;

    fn init_all(devices: &[CpuDevice]) -> Result<Vec<CpuCommunicator>> {
        CpuCommunicator::init_all(devices)
    }
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
        check_reducible(self, "all_reduce", dtype, op)?;
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
        check_reducible(self, "reduce_scatter", dtype, op)?;
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
        let from = self.rank;
        let deliver = {
            let group = Arc::clone(&self.group);
            move |data: std::result::Result<Arc<Vec<u8>>, String>| {
                let mut state = group.lock();
                state
                    .mailboxes
                    .entry((from, peer))
                    .or_default()
                    .push_back(Message { count, dtype, data });
                group.changed.notify_all();
            }
        };
        let (group, err) = (Arc::clone(&self.group), self.errors("send"));
        let on_skip = deliver.clone();
        let post = move |data: Vec<u8>| -> Result<()> {
            if take_fault(&mut group.lock(), from) {
                let reason = format!("rank {from} failed (injected fault) sending to {peer}");
                deliver(Err(reason.clone()));
                return Err(err(reason));
            }
            deliver(Ok(Arc::new(data)));
            Ok(())
        };
        // The payload is read on the worker, in stream order, then posted.
        let payload: Arc<Mutex<Vec<u8>>> = Arc::default();
        if n > 0 {
            let slot = Arc::clone(&payload);
            stream.enqueue_region_task("send", &[(buf, n)], &[], move |r, _| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = r[0].to_vec();
                Ok(())
            })?;
        }
        *self.group.lock().sent.entry((from, peer)).or_default() += 1;
        stream.enqueue_awaited_task(
            "send",
            move || {
                post(std::mem::take(
                    &mut *payload.lock().unwrap_or_else(|p| p.into_inner()),
                ))
            },
            move |e| {
                on_skip(Err(format!(
                    "rank {from}'s stream failed before the send: {e}"
                )))
            },
        )
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
            let deadline = group.deadline();
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
                    *state.received.entry((peer, to)).or_default() += 1;
                    let data = m.data.map_err(|why| {
                        err(format!("rank {peer}'s matching send did not run: {why}"))
                    })?;
                    if (m.count, m.dtype) != (count, dtype) {
                        return Err(err(format!(
                            "rank {peer} sent {} x {:?}, rank {to} receives {count} x {dtype:?}",
                            m.count, m.dtype
                        )));
                    }
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(data);
                    return Ok(());
                }
                let sent = state.sent.get(&(peer, to)).copied().unwrap_or(0);
                let received = state.received.get(&(peer, to)).copied().unwrap_or(0);
                if state.departed[peer] && sent <= received {
                    return Err(err(format!(
                        "rank {peer} left the group without sending to rank {to}: the \
                         communicator was dropped, so the rank stopped or failed"
                    )));
                }
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Err(err(format!(
                        "nothing from rank {peer} within {:?}: it did not send, or is stuck",
                        group.timeout()
                    )));
                }
                state = wait_until(&group.changed, state, deadline, now);
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
