//! A small serving loop over [`paged_kv::KvCache`]: continuous batching with chunked prefill,
//! prefix caching, preemption (by swapping or by recomputation) when blocks run out or when
//! forced, greedy or seeded sampling, stop tokens, and an [`Observer`] that sees every step and
//! every token as it is made (for streaming); and the check run, the same model over a plain
//! contiguous KV cache, one request at a time.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use ascend_hal::prelude::*;
use ascend_hal::{Error, Result};
use ascend_kernels::{CacheShape, In, KernelOps, KvFloat, Out, PrefillAttention, ReshapeAndCache};
use paged_kv::{KvCache, KvError, RequestId, RequestKeys};

use crate::model::{KvAccess, Model};
use crate::sampling::{Sampler, SamplingParams};

/// A request of the workload.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its id.
    pub id: RequestId,
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_new: usize,
    /// The step at which it arrives (steps count from 1; 0 also means the first step).
    pub arrival: usize,
    /// How its tokens are picked.
    pub sampling: SamplingParams,
    /// Tokens that end it (kept as its last output token), such as the end of a turn.
    pub stop: Vec<u32>,
}

impl Request {
    /// A greedy request for up to `max_new` tokens, arriving at the first step, no stop tokens.
    pub fn greedy(id: RequestId, prompt: Vec<u32>, max_new: usize) -> Self {
        Request {
            id,
            prompt,
            max_new,
            arrival: 1,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
        }
    }
}

/// What one step did, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step (from 1).
    pub step: usize,
    /// Requests in the batch.
    pub batch: usize,
    /// Of which computing prompt tokens (a prefill chunk).
    pub prefill: usize,
    /// Tokens computed in the step.
    pub tokens: usize,
    /// Tokens sampled in the step.
    pub sampled: usize,
    /// Seconds the step took (scheduling, the forward pass and sampling).
    pub seconds: f64,
    /// Tokens generated so far.
    pub generated: usize,
    /// Seconds since serving began.
    pub elapsed: f64,
    /// KV blocks holding data (in use or cached for reuse: the pool's blocks minus its free
    /// ones).
    pub kv_blocks_used: usize,
    /// KV blocks in the pool.
    pub kv_blocks: usize,
    /// Prefix-cache hit rate so far.
    pub prefix_hit_rate: f64,
}

/// Sees the serving loop's events; every method does nothing unless overridden.
pub trait Observer {
    /// A line about an event (a preemption, a swap, a step summary).
    fn log(&mut self, _line: &str) {}
    /// A step finished.
    fn step(&mut self, _stats: &StepStats) {}
    /// Request `id` made `token`; `finished` when it was its last.
    fn token(&mut self, _id: RequestId, _token: u32, _finished: bool) {}
}

/// An [`Observer`] that passes the log lines to a closure.
pub struct LogLines<F: FnMut(&str)>(pub F);

impl<F: FnMut(&str)> Observer for LogLines<F> {
    fn log(&mut self, line: &str) {
        (self.0)(line)
    }
}

/// How a forced preemption is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preemption {
    /// Copy the request's blocks to pinned host memory and back later.
    Swap,
    /// Drop its blocks and recompute them later (its prefix may still be cached).
    Recompute,
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Most requests in a step.
    pub max_batch: usize,
    /// Most tokens computed in a step (prefill chunks share it with decodes).
    pub max_tokens_per_step: usize,
    /// Preempt the request holding the most tokens at this step, if set.
    pub preempt_at_step: Option<usize>,
    /// How forced preemptions are done.
    pub preemption: Preemption,
}

impl EngineConfig {
    /// Checks the settings: a step must be able to take a request and compute a token.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: &str| {
            Err(Error::InvalidArgument {
                op: "serve",
                message: message.into(),
            })
        };
        if self.max_batch == 0 {
            return bad("max_batch is 0: a step could take no request; set it to 1 or more");
        }
        if self.max_tokens_per_step == 0 {
            return bad(
                "max_tokens_per_step is 0: a step could compute no token; set it to 1 or more \
                 (a prefill is chunked to fit)",
            );
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Generated tokens per request.
    pub outputs: HashMap<RequestId, Vec<u32>>,
    /// Steps that computed tokens (idle steps waiting for an arrival are skipped, not
    /// counted).
    pub steps: usize,
    /// Tokens generated.
    pub generated: usize,
    /// Seconds spent.
    pub seconds: f64,
    /// Prefix-cache hit rate over prompt lookups.
    pub prefix_hit_rate: f64,
    /// Preemptions by swapping.
    pub swaps: usize,
    /// Preemptions by recomputation.
    pub recomputes: usize,
    /// The largest batch.
    pub max_batch_seen: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Swapped,
    Done,
}

struct Live {
    req: Request,
    /// Queued for admission (its arrival step has come).
    arrived: bool,
    tokens: Vec<u32>,
    computed: usize,
    generated: Vec<u32>,
    state: State,
    sampler: Sampler,
}

/// The logits row, if every value is finite: sampling from a NaN picks a meaningless token
/// (the argmax of NaNs is the first index), so a row that is not is an error naming the step.
fn finite_row(row: &[f32], step: usize, id: RequestId) -> Result<&[f32]> {
    match ascend_kernels::quant::first_non_finite(row) {
        None => Ok(row),
        Some(i) => Err(Error::NonFinite {
            op: "sampling",
            message: format!(
                "step {step}: the logits of request {id} are not finite ({} at token {i} of \
                 {}); the model's weights are corrupt or its activations overflowed",
                row[i],
                row.len()
            ),
        }),
    }
}

fn kv_err(e: KvError) -> Error {
    match e {
        KvError::Device(e) => e,
        other => Error::InvalidArgument {
            op: "kv cache",
            message: other.to_string(),
        },
    }
}

/// Serves `requests` to completion; `log` gets one line per step and per event.
pub fn serve<B: KernelOps, T: KvFloat>(
    stream: &B::Stream,
    model: &Model<B, T>,
    kv: &mut KvCache<B, T>,
    requests: &[Request],
    cfg: EngineConfig,
    log: impl FnMut(&str),
) -> Result<Report> {
    serve_observed(stream, model, kv, requests, cfg, &mut LogLines(log))
}

fn check_requests(requests: &[Request], max_len: usize, vocab: usize) -> Result<()> {
    let bad = |message: String| {
        Err(Error::InvalidArgument {
            op: "serve",
            message,
        })
    };
    for r in requests {
        if r.prompt.len().saturating_add(r.max_new) > max_len {
            return bad(format!(
                "request {} needs {} prompt + {} new tokens, more than the model's {max_len} \
                 positions (max_model_len)",
                r.id,
                r.prompt.len(),
                r.max_new
            ));
        }
        if let Err(e) = r.sampling.validate() {
            return bad(format!("request {}: {e}", r.id));
        }
        if let Some(t) = r
            .prompt
            .iter()
            .chain(&r.stop)
            .find(|&&t| t as usize >= vocab)
        {
            return bad(format!(
                "request {}: token {t} is outside the model's vocabulary of {vocab}",
                r.id
            ));
        }
        if r.prompt.is_empty() && r.max_new > 0 {
            return bad(format!("request {} has an empty prompt", r.id));
        }
    }
    let mut ids = std::collections::HashSet::with_capacity(requests.len());
    if let Some(r) = requests.iter().find(|r| !ids.insert(r.id)) {
        return bad(format!("request id {} is used twice", r.id));
    }
    Ok(())
}

/// Serves `requests` to completion, telling `observer` about every step, event and token.
pub fn serve_observed<B: KernelOps, T: KvFloat>(
    stream: &B::Stream,
    model: &Model<B, T>,
    kv: &mut KvCache<B, T>,
    requests: &[Request],
    cfg: EngineConfig,
    observer: &mut impl Observer,
) -> Result<Report> {
    let start = Instant::now();
    let max_len = model.config().max_position;
    cfg.validate()?;
    check_requests(requests, max_len, model.config().vocab)?;
    let mut live: Vec<Live> = requests
        .iter()
        .map(|r| Live {
            req: r.clone(),
            arrived: false,
            tokens: r.prompt.clone(),
            computed: 0,
            generated: Vec::new(),
            sampler: Sampler::new(r.sampling),
            // A request for no new tokens is done at once (as in the contiguous check).
            state: if r.max_new == 0 {
                State::Done
            } else {
                State::Waiting
            },
        })
        .collect();
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut running: Vec<usize> = Vec::new();
    let mut swapped: VecDeque<usize> = VecDeque::new();
    let mut report = Report::default();
    let mut step = 0usize;
    let mut slots: Vec<i32> = Vec::new();
    // Steps in a row that computed nothing while requests were waiting or swapped out.
    let mut stalled = 0usize;
    while live.iter().any(|l| l.state != State::Done) {
        step += 1;
        let step_start = Instant::now();
        if waiting.is_empty() && running.is_empty() && swapped.is_empty() {
            // Idle: go straight to the next arrival.
            let next = live
                .iter()
                .filter(|l| !l.arrived && l.state == State::Waiting)
                .map(|l| l.req.arrival)
                .min();
            if let Some(next) = next {
                step = step.max(next);
            }
        }
        for (i, l) in live.iter_mut().enumerate() {
            if !l.arrived && l.req.arrival <= step && l.state == State::Waiting {
                l.arrived = true;
                waiting.push_back(i);
            }
        }
        // A forced preemption part-way, of the request holding the most tokens.
        if cfg.preempt_at_step == Some(step) {
            if let Some(pos) = (0..running.len()).max_by_key(|&p| live[running[p]].tokens.len()) {
                let i = running.remove(pos);
                let id = live[i].req.id;
                match cfg.preemption {
                    Preemption::Swap => {
                        kv.swap_out(stream, id).map_err(kv_err)?;
                        live[i].state = State::Swapped;
                        swapped.push_back(i);
                        report.swaps += 1;
                        observer.log(&format!(
                            "step {step:>3}: preempted {id} by swapping out {} tokens",
                            live[i].computed
                        ));
                    }
                    Preemption::Recompute => {
                        kv.preempt(id).map_err(kv_err)?;
                        live[i].computed = 0;
                        live[i].state = State::Waiting;
                        waiting.push_front(i);
                        report.recomputes += 1;
                        observer.log(&format!("step {step:>3}: preempted {id} for recomputation"));
                    }
                }
            }
        } else {
            // Swapped requests come back first, when they fit.
            while let Some(&i) = swapped.front() {
                if !kv.can_swap_in(live[i].req.id) || running.len() >= cfg.max_batch {
                    break;
                }
                kv.swap_in(stream, live[i].req.id).map_err(kv_err)?;
                swapped.pop_front();
                live[i].state = State::Running;
                running.push(i);
                observer.log(&format!(
                    "step {step:>3}: swapped {} back in",
                    live[i].req.id
                ));
            }
        }

        // Slots for the running requests: their next prefill chunk, or one decode token.
        let mut budget = cfg.max_tokens_per_step;
        let mut batch: Vec<(RequestId, usize)> = Vec::new();
        let mut rows: Vec<usize> = Vec::new(); // live index per batch entry
        let mut r = 0;
        while r < running.len() {
            let i = running[r];
            let n = (live[i].tokens.len() - live[i].computed).min(budget.max(1));
            let chunk = &live[i].tokens[live[i].computed..live[i].computed + n];
            // The slots themselves are in the step tables; this buffer only avoids a
            // per-request allocation.
            slots.clear();
            match kv.append_slots(live[i].req.id, chunk, &mut slots) {
                Ok(_) => {
                    budget = budget.saturating_sub(n);
                    batch.push((live[i].req.id, n));
                    rows.push(i);
                    r += 1;
                }
                Err(KvError::OutOfBlocks { .. }) => {
                    // Out of blocks: preempt the newest running request (this one if it is the
                    // newest) for recomputation, and retry.
                    let victim = running.pop().expect("a running request");
                    kv.preempt(live[victim].req.id).map_err(kv_err)?;
                    live[victim].computed = 0;
                    live[victim].state = State::Waiting;
                    waiting.push_front(victim);
                    report.recomputes += 1;
                    if let Some(p) = rows.iter().position(|&x| x == victim) {
                        rows.remove(p);
                        batch.remove(p);
                    }
                    observer.log(&format!(
                        "step {step:>3}: out of blocks, preempted {} for recomputation",
                        live[victim].req.id
                    ));
                }
                Err(e) => return Err(kv_err(e)),
            }
        }
        // Admit waiting requests while there is room.
        while running.len() < cfg.max_batch && budget > 0 {
            let Some(&i) = waiting.front() else { break };
            let id = live[i].req.id;
            match kv.admit(id, &live[i].tokens, &RequestKeys::default(), budget) {
                Ok(a) => {
                    waiting.pop_front();
                    let n = a.allocation.slots.len();
                    live[i].computed = a.num_cached_tokens;
                    live[i].state = State::Running;
                    running.push(i);
                    budget -= n;
                    batch.push((id, n));
                    rows.push(i);
                }
                Err(KvError::OutOfBlocks { .. }) => break,
                Err(e) => return Err(kv_err(e)),
            }
        }
        if batch.is_empty() {
            if !waiting.is_empty() && running.is_empty() && swapped.is_empty() {
                let i = waiting[0];
                return Err(Error::InvalidArgument {
                    op: "serve",
                    message: format!(
                        "request {} ({} tokens) does not fit the empty KV cache of {} blocks of \
                         {} tokens; raise the block count or lower max_model_len",
                        live[i].req.id,
                        live[i].tokens.len(),
                        kv.manager().pool().num_blocks(),
                        kv.manager().block_size()
                    ),
                });
            }
            stalled += 1;
            if stalled > 1000 {
                return Err(Error::InvalidArgument {
                    op: "serve",
                    message: format!(
                        "no progress for {stalled} steps: {} waiting, {} swapped out that cannot \
                         come back, none running",
                        waiting.len(),
                        swapped.len()
                    ),
                });
            }
            continue; // waiting for swapped requests to come back
        }
        stalled = 0;
        report.steps += 1;

        // The step: tokens and positions, request after request.
        let (mut tokens, mut positions, mut sample_rows, mut sampled_for) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut prefill = 0;
        for (&(_, n), &i) in batch.iter().zip(&rows) {
            let l = &live[i];
            let from = l.computed;
            tokens.extend_from_slice(&l.tokens[from..from + n]);
            positions.extend((from..from + n).map(|p| p as i64));
            if n != 1 || l.generated.is_empty() {
                prefill += 1;
            }
            if from + n == l.tokens.len() {
                sample_rows.push(tokens.len() - 1);
                sampled_for.push(i);
            }
        }
        kv.begin_step(stream, &batch).map_err(kv_err)?;
        let logits = model.forward_logits(stream, kv, &tokens, &positions, &sample_rows)?;
        for (&(_, n), &i) in batch.iter().zip(&rows) {
            live[i].computed += n;
        }
        report.max_batch_seen = report.max_batch_seen.max(batch.len());
        let m = kv.manager().metrics();
        let (pool_blocks, used_blocks) = (
            kv.manager().pool().num_blocks(),
            kv.manager().pool().num_blocks() - m.free_blocks,
        );
        observer.log(&format!(
            "step {step:>3}: batch {:>2} ({prefill} prefill, {} decode), {:>3} tokens, KV blocks in use {used_blocks}/{pool_blocks}",
            batch.len(),
            batch.len() - prefill,
            tokens.len(),
        ));
        for (r, &i) in sampled_for.iter().enumerate() {
            let l = &mut live[i];
            let tok = l.sampler.sample(finite_row(logits.row(r), step, l.req.id)?);
            l.generated.push(tok);
            l.tokens.push(tok);
            report.generated += 1;
            let finished = l.generated.len() >= l.req.max_new || l.req.stop.contains(&tok);
            if finished {
                kv.free(l.req.id).map_err(kv_err)?;
                l.state = State::Done;
                running.retain(|&x| x != i);
            }
            observer.token(l.req.id, tok, finished);
        }
        observer.step(&StepStats {
            step,
            batch: batch.len(),
            prefill,
            tokens: tokens.len(),
            sampled: sampled_for.len(),
            seconds: step_start.elapsed().as_secs_f64(),
            generated: report.generated,
            elapsed: start.elapsed().as_secs_f64(),
            kv_blocks_used: used_blocks,
            kv_blocks: pool_blocks,
            prefix_hit_rate: kv.manager().metrics().prefix_hit_rate(),
        });
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.prefix_hit_rate = kv.manager().metrics().prefix_hit_rate();
    report.outputs = live.into_iter().map(|l| (l.req.id, l.generated)).collect();
    Ok(report)
}

/// One request's KV in a plain contiguous buffer per layer: its blocks laid out in order, so the
/// kernels do exactly the arithmetic they do on the paged cache.
struct Contiguous<B: KernelOps, T: KvFloat> {
    shape: CacheShape,
    layers: Vec<(DeviceBuffer<B, T>, DeviceBuffer<B, T>)>,
    table: DeviceBuffer<B, i32>,
    slots: DeviceBuffer<B, i32>,
    starts: DeviceBuffer<B, i32>,
    lens: DeviceBuffer<B, i32>,
    /// `starts` and `lens` on the host, as attention takes them too.
    host_starts: [i32; 2],
    host_lens: [i32; 1],
    num_tokens: usize,
}

impl<B: KernelOps, T: KvFloat> KvAccess<B, T> for Contiguous<B, T> {
    fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: In<'_, B, T>,
        value: In<'_, B, T>,
    ) -> Result<()> {
        let (k, v) = &mut self.layers[layer];
        B::reshape_and_cache::<T>(
            stream,
            &ReshapeAndCache {
                num_tokens: self.num_tokens,
                cache: self.shape,
            },
            key,
            value,
            k.view_mut(),
            v.view_mut(),
            self.slots.view(),
        )
    }
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: Out<'_, B, T>,
        query: In<'_, B, T>,
    ) -> Result<()> {
        let (k, v) = &self.layers[layer];
        let p = PrefillAttention {
            num_seqs: 1,
            num_tokens: self.num_tokens,
            num_heads: heads,
            cache: self.shape,
            max_blocks_per_seq: self.shape.num_blocks,
            scale,
            sliding_window: None,
        };
        B::paged_prefill_attention::<T>(
            stream,
            &p,
            out,
            query,
            k.view(),
            v.view(),
            self.table.view(),
            self.starts.view(),
            self.lens.view(),
            &self.host_starts,
            &self.host_lens,
        )
    }
}

/// The check run: each request alone, whole prompt then one token at a time, over a contiguous
/// KV cache. Returns the generated tokens per request.
pub fn contiguous_run<B: KernelOps, T: KvFloat>(
    stream: &B::Stream,
    model: &Model<B, T>,
    requests: &[Request],
    block_size: usize,
) -> Result<HashMap<RequestId, Vec<u32>>> {
    let cfg = *model.config();
    let device = stream.device();
    let mut out = HashMap::new();
    for r in requests {
        let max_len = r.prompt.len() + r.max_new;
        let shape = CacheShape {
            num_blocks: max_len.div_ceil(block_size),
            block_size,
            num_kv_heads: model.shard().kv_heads,
            head_size: cfg.head_size(),
        };
        let layers = (0..cfg.layers)
            .map(|_| {
                Ok((
                    DeviceBuffer::zeros(stream, shape.elements())?,
                    DeviceBuffer::zeros(stream, shape.elements())?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let table: Vec<i32> = (0..shape.num_blocks as i32).collect();
        let mut kv = Contiguous {
            shape,
            layers,
            table: DeviceBuffer::from_slice(stream, &table)?,
            slots: DeviceBuffer::alloc(&device, 0)?,
            starts: DeviceBuffer::alloc(&device, 0)?,
            lens: DeviceBuffer::alloc(&device, 0)?,
            host_starts: [0, 0],
            host_lens: [0],
            num_tokens: 0,
        };
        let mut tokens = r.prompt.clone();
        let mut generated = Vec::new();
        let mut done = 0usize;
        let mut sampler = Sampler::new(r.sampling);
        while generated.len() < r.max_new && !generated.last().is_some_and(|t| r.stop.contains(t)) {
            let new = &tokens[done..];
            let n = new.len();
            kv.num_tokens = n;
            kv.slots = DeviceBuffer::from_slice(
                stream,
                &(done as i32..(done + n) as i32).collect::<Vec<_>>(),
            )?;
            kv.host_starts = [0, n as i32];
            kv.host_lens = [(done + n) as i32];
            kv.starts = DeviceBuffer::from_slice(stream, &kv.host_starts)?;
            kv.lens = DeviceBuffer::from_slice(stream, &kv.host_lens)?;
            let positions: Vec<i64> = (done as i64..(done + n) as i64).collect();
            let logits = model.forward_logits(stream, &mut kv, new, &positions, &[n - 1])?;
            let next = sampler.sample(finite_row(logits.row(0), generated.len() + 1, r.id)?);
            done += n;
            generated.push(next);
            tokens.push(next);
        }
        out.insert(r.id, generated);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first value that is not finite is named (at the start, the middle and the end of a
    /// row, with a later NaN after it), and a finite row is returned whole.
    #[test]
    fn finite_row_names_the_first_value_that_is_not() {
        let clean: Vec<f32> = (0..1000).map(|i| i as f32 * -0.5 + 3.0).collect();
        assert_eq!(finite_row(&clean, 1, RequestId(1)).unwrap().len(), 1000);
        assert!(finite_row(&[], 1, RequestId(1)).is_ok());
        for at in [0, 63, 64, 100, 127, 960, 999] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut row = clean.clone();
                row[at] = bad;
                if at + 7 < row.len() {
                    row[at + 7] = f32::NAN;
                }
                let e = finite_row(&row, 5, RequestId(2)).unwrap_err().to_string();
                let want = format!(
                    "step 5: the logits of request r2 are not finite ({bad} at token {at} of 1000)"
                );
                assert!(e.contains(&want), "{e}");
            }
        }
    }
}
