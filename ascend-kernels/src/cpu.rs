//! The fast CPU kernels: the CPU backend's implementation of every op.
//!
//! - Work is split over both cores with rayon: decode attention by (sequence, run of KV heads)
//!   with as many KV heads per task as still keeps every thread busy (so a task reads whole
//!   token rows), prefill attention by (token, KV head), norms and activations by rows.
//! - Attention reads the paged cache block by block in place, converting one block's K (then V)
//!   rows of one KV head to `f32` at a time, and keeps a running maximum, sum and accumulator per
//!   query (online softmax): no gathered copy of the context is ever made, and numerics are
//!   stable for long contexts.
//! - Inner loops (dot products, `acc = acc * s + w * v`) use AVX2 + FMA where the CPU has them,
//!   chosen at run time (`simd`), and 8-wide chunks with independent accumulators elsewhere.

use ascend_hal::Result;
use rayon::prelude::*;

use crate::float::KvFloat;
use crate::quant::QuantFormat;
use crate::reference::{check_ids, check_positions, check_slots, rope_pairs};
use crate::shapes::{
    check_seqs, query_ranges, Add, Argmax, CacheShape, Embedding, Matmul, PagedAttention,
    PrefillAttention, QuantMatmul, ReshapeAndCache, RmsNorm, Rotary, SiluAndMul, TopK,
};
use crate::team::Line;
use crate::{i8dot, qdot, quant};
use std::sync::Mutex;

/// `sum(a[i] * b[i])` over the shorter slice (AVX2 + FMA where the CPU has them).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::simd::dot(a, b)
}

use crate::simd;

/// Writes each token's K and V rows at its slot (a negative slot skips the token; out-of-range
/// slots are an error and nothing is written).
pub fn reshape_and_cache<T: KvFloat>(
    p: &ReshapeAndCache,
    key: &[T],
    value: &[T],
    key_cache: &mut [T],
    value_cache: &mut [T],
    slot_mapping: &[i32],
) -> Result<()> {
    p.validate::<T>(
        key.len(),
        value.len(),
        key_cache.len(),
        value_cache.len(),
        slot_mapping.len(),
    )?;
    check_slots(p, slot_mapping)?;
    let row = p.cache.token_stride();
    // Sequential: memory-bound, and two tokens given the same slot must land in order.
    for (t, &slot) in slot_mapping.iter().enumerate() {
        if slot >= 0 {
            let at = slot as usize * row;
            key_cache[at..at + row].copy_from_slice(&key[t * row..(t + 1) * row]);
            value_cache[at..at + row].copy_from_slice(&value[t * row..(t + 1) * row]);
        }
    }
    Ok(())
}

/// Where a context position's K/V row of one KV head starts.
trait RowLocator: Sync {
    fn offset(&self, pos: usize, kv_head: usize) -> usize;
    /// Positions `start..end` that share one contiguous run of rows (a block).
    fn run_end(&self, start: usize, end: usize) -> usize;
}

struct Paged<'a> {
    c: CacheShape,
    table: &'a [i32],
}

impl RowLocator for Paged<'_> {
    fn offset(&self, pos: usize, kv_head: usize) -> usize {
        let bs = self.c.block_size;
        (self.table[pos / bs] as usize * bs + pos % bs) * self.c.token_stride()
            + kv_head * self.c.head_size
    }
    fn run_end(&self, start: usize, end: usize) -> usize {
        end.min((start / self.c.block_size + 1) * self.c.block_size)
    }
}

struct Contiguous {
    base: usize,
    token_stride: usize,
    head_size: usize,
}

impl RowLocator for Contiguous {
    fn offset(&self, pos: usize, kv_head: usize) -> usize {
        self.base + pos * self.token_stride + kv_head * self.head_size
    }
    fn run_end(&self, _start: usize, end: usize) -> usize {
        end
    }
}

/// Most context positions attention converts and scores at a time (a run also ends at a
/// block's end).
const RUN: usize = 16;

/// Per-thread scratch for one (query group, KV head) task.
struct Scratch {
    q: Vec<f32>,
    kv: Vec<f32>,
    /// The run's token rows: where each starts in the cache.
    offs: Vec<usize>,
    /// Where each starts in `kv`, when converted there.
    copied: Vec<usize>,
    /// Each query row's rescale of its accumulator for the current run.
    carry: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// Online-softmax attention of the query rows of KV heads `heads` (`group` rows each, in head
/// order) over context positions `range`, reading K/V run by run through `loc`; writes those
/// output rows. A run's rows of all the task's KV heads are adjacent in each token row, so they
/// are read (and converted) as one stretch per token: several heads per task read the cache
/// in long contiguous runs instead of head-sized pieces.
#[allow(clippy::too_many_arguments)]
fn attend_group<T: KvFloat, L: RowLocator>(
    out: &mut [T],
    q: &[T],
    key_cache: &[T],
    value_cache: &[T],
    loc: &L,
    heads: std::ops::Range<usize>,
    range: std::ops::Range<usize>,
    hs: usize,
    scale: f32,
    s: &mut Scratch,
) {
    let nh = heads.len();
    let rows = q.len() / hs; // query rows: nh * group
    let group = rows / nh.max(1);
    let width = nh * hs; // one token's K (or V) for the task's heads
    s.q.resize(q.len(), 0.0);
    T::convert_to_f32(q, &mut s.q);
    s.q.iter_mut().for_each(|x| *x *= scale);
    s.acc.clear();
    s.acc.resize(rows * hs, 0.0);
    s.max.clear();
    s.max.resize(rows, f32::NEG_INFINITY);
    s.sum.clear();
    s.sum.resize(rows, 0.0);
    s.carry.clear();
    s.carry.resize(rows, 1.0);
    let mut start = range.start;
    while start < range.end {
        // Runs end at block ends and at multiples of RUN positions, so the converted rows stay
        // in cache, and the decode and prefill kernels split a context the same way (the same
        // arithmetic, so the same bits, for the same query).
        let end = loc.run_end(start, range.end).min((start / RUN + 1) * RUN);
        let n = end - start;
        s.offs.clear();
        s.offs
            .extend((start..end).map(|pos| loc.offset(pos, heads.start)));
        // Scores of every query row against this run's keys, read in place when the cache is
        // f32 or f16, else through a converted copy.
        s.scores.resize(rows * n, 0.0);
        if let Some(k) = T::as_f32(key_cache) {
            run_scores(&s.q, k, &s.offs, nh, group, hs, n, &mut s.scores);
        } else if let Some(k) = T::as_f16_bits(key_cache) {
            run_scores(&s.q, k, &s.offs, nh, group, hs, n, &mut s.scores);
        } else {
            copy_rows(key_cache, &s.offs, width, &mut s.kv, &mut s.copied);
            run_scores(&s.q, &s.kv, &s.copied, nh, group, hs, n, &mut s.scores);
        }
        // Softmax weights of the run, then the values folded into each row's accumulator.
        for r in 0..rows {
            let row = &mut s.scores[r * n..(r + 1) * n];
            let run_max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let new_max = s.max[r].max(run_max);
            // exp(0) is exactly 1: skipping the call when the maximum holds changes no bit.
            let rescale = if new_max == s.max[r] {
                1.0
            } else {
                (s.max[r] - new_max).exp()
            };
            row.iter_mut().for_each(|x| *x -= new_max);
            simd::exp_in_place(row);
            s.sum[r] = s.sum[r] * rescale + row.iter().sum::<f32>();
            s.max[r] = new_max;
            s.carry[r] = rescale;
        }
        if let Some(v) = T::as_f32(value_cache) {
            run_values(&mut s.acc, &s.carry, &s.scores, v, &s.offs, nh, group, hs);
        } else if let Some(v) = T::as_f16_bits(value_cache) {
            run_values(&mut s.acc, &s.carry, &s.scores, v, &s.offs, nh, group, hs);
        } else {
            copy_rows(value_cache, &s.offs, width, &mut s.kv, &mut s.copied);
            run_values(
                &mut s.acc, &s.carry, &s.scores, &s.kv, &s.copied, nh, group, hs,
            );
        }
        start = end;
    }
    for r in 0..rows {
        let inv = if s.sum[r] > 0.0 { 1.0 / s.sum[r] } else { 0.0 };
        for (o, a) in out[r * hs..(r + 1) * hs]
            .iter_mut()
            .zip(&s.acc[r * hs..(r + 1) * hs])
        {
            *o = T::from_f32(a * inv);
        }
    }
}

/// Converts the rows at `offs` (`width` elements each) into `kv`, laid out `[n][width]`, and
/// sets `copied` to their offsets there.
fn copy_rows<T: KvFloat>(
    cache: &[T],
    offs: &[usize],
    width: usize,
    kv: &mut Vec<f32>,
    copied: &mut Vec<usize>,
) {
    kv.resize(offs.len() * width, 0.0);
    copied.clear();
    for (i, &at) in offs.iter().enumerate() {
        T::convert_to_f32(&cache[at..at + width], &mut kv[i * width..(i + 1) * width]);
        copied.push(i * width);
    }
}

/// Scores of the `nh * group` query rows (row `r` belongs to KV head `r / group`) against the
/// run's keys (token `j`'s heads start at `keys[offs[j]]`): `scores[r * n + j]`, in register
/// tiles of up to four rows by two keys (each key loaded once for the rows of its head).
#[allow(clippy::too_many_arguments)]
fn run_scores<E: simd::TileElement>(
    q: &[f32],
    keys: &[E],
    offs: &[usize],
    nh: usize,
    group: usize,
    hs: usize,
    n: usize,
    scores: &mut [f32],
) {
    for h in 0..nh {
        let mut r = h * group;
        while r < (h + 1) * group {
            let count = ((h + 1) * group - r).min(4);
            match count {
                4 => score_rows::<E, 4>(q, keys, offs, r, h, hs, n, scores),
                3 => score_rows::<E, 3>(q, keys, offs, r, h, hs, n, scores),
                2 => score_rows::<E, 2>(q, keys, offs, r, h, hs, n, scores),
                _ => score_rows::<E, 1>(q, keys, offs, r, h, hs, n, scores),
            }
            r += count;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn score_rows<E: simd::TileElement, const R: usize>(
    q: &[f32],
    keys: &[E],
    offs: &[usize],
    first: usize,
    h: usize,
    hs: usize,
    n: usize,
    scores: &mut [f32],
) {
    let qs: [&[f32]; R] = std::array::from_fn(|i| &q[(first + i) * hs..][..hs]);
    let key = |j: usize| &keys[offs[j] + h * hs..][..hs];
    let mut j = 0;
    while j + 2 <= n {
        let mut t = [[0f32; 2]; R];
        simd::dot_tile(&qs, &[key(j), key(j + 1)], hs, &mut t);
        for (i, row) in t.iter().enumerate() {
            scores[(first + i) * n + j..][..2].copy_from_slice(row);
        }
        j += 2;
    }
    if j < n {
        let mut t = [[0f32; 1]; R];
        simd::dot_tile(&qs, &[key(j)], hs, &mut t);
        for (i, row) in t.iter().enumerate() {
            scores[(first + i) * n + j] = row[0];
        }
    }
}

/// `acc[r] = acc[r] * carry[r] + Σ_j weights[r * n + j] * v_j` for every query row, the rows of
/// one KV head four at a time (each value row read once for them).
#[allow(clippy::too_many_arguments)]
fn run_values<E: simd::TileElement>(
    acc: &mut [f32],
    carry: &[f32],
    weights: &[f32],
    values: &[E],
    offs: &[usize],
    nh: usize,
    group: usize,
    hs: usize,
) {
    let n = offs.len();
    for h in 0..nh {
        let mut r = h * group;
        while r < (h + 1) * group {
            let count = ((h + 1) * group - r).min(4);
            let a = &mut acc[r * hs..(r + count) * hs];
            let w = &weights[r * n..(r + count) * n];
            let v = &values[h * hs..];
            let c = &carry[r..r + count];
            match count {
                4 => simd::weighted_rows::<E, 4>(a, &[c[0], c[1], c[2], c[3]], w, v, offs, hs),
                3 => simd::weighted_rows::<E, 3>(a, &[c[0], c[1], c[2]], w, v, offs, hs),
                2 => simd::weighted_rows::<E, 2>(a, &[c[0], c[1]], w, v, offs, hs),
                _ => simd::weighted_rows::<E, 1>(a, &[c[0]], w, v, offs, hs),
            }
            r += count;
        }
    }
}

/// KV heads per decode task: the most (so each task reads long stretches of every token row)
/// that still gives every worker thread about two tasks.
fn heads_per_task(num_seqs: usize, kv_heads: usize) -> usize {
    let want = 2 * rayon::current_num_threads();
    (1..=kv_heads.max(1))
        .rev()
        .find(|&d| kv_heads.is_multiple_of(d) && num_seqs * (kv_heads / d) >= want)
        .unwrap_or(1)
}

/// One attention task: `(scratch, i, out_i, query_i)`.
type AttentionTask<'a, T> = dyn Fn(&mut Scratch, usize, &mut [T], &[T]) + Sync + 'a;

/// `task(scratch, i, out_i, query_i)` for every chunk `i` of `width` elements of `out` and
/// `query`, on the GEMM team ([`parallel_for`]): attention runs between a decode step's GEMMs,
/// while the team's helper spins; a rayon helper woken here waited for that spinning thread's
/// core (measured in a SmolLM2 batch-1 step: 33 us per call, 9 us alone; on the team, 19).
fn attention_tasks<T: KvFloat>(
    out: &mut [T],
    query: &[T],
    width: usize,
    task: &AttentionTask<'_, T>,
) {
    // Each task's output and each thread's scratch on lines of their own (see
    // `by_column_blocks`).
    let outs: Vec<Line<Mutex<&mut [T]>>> =
        out.chunks_mut(width).map(|o| Line(Mutex::new(o))).collect();
    let scratches: Vec<Line<Mutex<Scratch>>> = (0..rayon::current_num_threads().max(1))
        .map(|_| Line(Mutex::new(scratch())))
        .collect();
    parallel_for(outs.len(), &|i, slot| {
        let mut o = outs[i].0.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = scratches[slot].0.lock().unwrap_or_else(|p| p.into_inner());
        task(&mut s, i, &mut o, &query[i * width..(i + 1) * width]);
    });
}

fn scratch() -> Scratch {
    Scratch {
        q: Vec::new(),
        kv: Vec::new(),
        offs: Vec::new(),
        copied: Vec::new(),
        carry: Vec::new(),
        scores: Vec::new(),
        acc: Vec::new(),
        max: Vec::new(),
        sum: Vec::new(),
    }
}

fn window_start(pos: usize, sliding_window: Option<usize>) -> usize {
    sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// Decode attention over the paged cache.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<T: KvFloat>(
    p: &PagedAttention,
    out: &mut [T],
    query: &[T],
    key_cache: &[T],
    value_cache: &[T],
    block_tables: &[i32],
    seq_lens: &[i32],
) -> Result<()> {
    p.validate::<T>(
        out.len(),
        query.len(),
        key_cache.len(),
        value_cache.len(),
        block_tables.len(),
        seq_lens.len(),
    )?;
    let c = p.cache;
    let lens = check_seqs(
        "paged_attention",
        &c,
        p.max_blocks_per_seq,
        block_tables,
        seq_lens,
    )?;
    let hs = c.head_size;
    let group = p.num_heads / c.num_kv_heads;
    let per_task = heads_per_task(p.num_seqs, c.num_kv_heads);
    let tasks_per_seq = c.num_kv_heads / per_task;
    attention_tasks(out, query, per_task * group * hs, &|s, i, o, q| {
        let (seq, part) = (i / tasks_per_seq, i % tasks_per_seq);
        let heads = part * per_task..(part + 1) * per_task;
        let len = lens[seq];
        let loc = Paged {
            c,
            table: &block_tables[seq * p.max_blocks_per_seq..][..p.max_blocks_per_seq],
        };
        let first = if len == 0 {
            0
        } else {
            window_start(len - 1, p.sliding_window)
        };
        attend_group(
            o,
            q,
            key_cache,
            value_cache,
            &loc,
            heads,
            first..len,
            hs,
            p.scale,
            s,
        );
    });
    Ok(())
}

/// The same decode attention over a contiguous cache `[num_seqs, max_len, kv_heads, head_size]`
/// (the baseline paged attention is measured against).
#[allow(clippy::too_many_arguments)]
pub fn contiguous_attention<T: KvFloat>(
    p: &PagedAttention,
    max_len: usize,
    out: &mut [T],
    query: &[T],
    keys: &[T],
    values: &[T],
    seq_lens: &[i32],
) -> Result<()> {
    let c = p.cache;
    let hs = c.head_size;
    let group = p.num_heads / c.num_kv_heads;
    let stride = c.token_stride();
    crate::shapes::expect_len::<T>(
        "contiguous_attention",
        "keys",
        format!(
            "[num_seqs={}, max_len={max_len}, kv_heads={}, head_size={hs}]",
            p.num_seqs, c.num_kv_heads
        ),
        p.num_seqs * max_len * stride,
        keys.len(),
    )?;
    let per_task = heads_per_task(p.num_seqs, c.num_kv_heads);
    let tasks_per_seq = c.num_kv_heads / per_task;
    attention_tasks(out, query, per_task * group * hs, &|s, i, o, q| {
        let (seq, part) = (i / tasks_per_seq, i % tasks_per_seq);
        let heads = part * per_task..(part + 1) * per_task;
        let len = (seq_lens[seq].max(0) as usize).min(max_len);
        let loc = Contiguous {
            base: seq * max_len * stride,
            token_stride: stride,
            head_size: hs,
        };
        // Runs as long as a 128-token block, so both kernels do the same work per run.
        attend_group(o, q, keys, values, &loc, heads, 0..len, hs, p.scale, s);
    });
    Ok(())
}

/// Prefill attention over the paged cache (causal within the chunk).
#[allow(clippy::too_many_arguments)]
pub fn paged_prefill_attention<T: KvFloat>(
    p: &PrefillAttention,
    out: &mut [T],
    query: &[T],
    key_cache: &[T],
    value_cache: &[T],
    block_tables: &[i32],
    query_start_loc: &[i32],
    seq_lens: &[i32],
) -> Result<()> {
    p.validate::<T>(
        out.len(),
        query.len(),
        key_cache.len(),
        value_cache.len(),
        block_tables.len(),
        query_start_loc.len(),
        seq_lens.len(),
    )?;
    let ranges = query_ranges(p, query_start_loc, seq_lens)?;
    let c = p.cache;
    let lens = check_seqs(
        "paged_prefill_attention",
        &c,
        p.max_blocks_per_seq,
        block_tables,
        seq_lens,
    )?;
    // The sequence of every query token.
    let mut seq_of = vec![0usize; p.num_tokens];
    for (s, &(a, b)) in ranges.iter().enumerate() {
        seq_of[a..b].fill(s);
    }
    let hs = c.head_size;
    let group = p.num_heads / c.num_kv_heads;
    let task = |s: &mut Scratch, i: usize, o: &mut [T], q: &[T]| {
        let (t, kvh) = (i / c.num_kv_heads, i % c.num_kv_heads);
        let seq = seq_of[t];
        let (a, b) = ranges[seq];
        let pos = lens[seq] - (b - a) + (t - a);
        let loc = Paged {
            c,
            table: &block_tables[seq * p.max_blocks_per_seq..][..p.max_blocks_per_seq],
        };
        let first = window_start(pos, p.sliding_window);
        attend_group(
            o,
            q,
            key_cache,
            value_cache,
            &loc,
            kvh..kvh + 1,
            first..pos + 1,
            hs,
            p.scale,
            s,
        );
    };
    attention_tasks(out, query, group * hs, &task);
    Ok(())
}

/// Rotary embedding in place, token by token in parallel.
pub fn rotary_embedding<T: KvFloat>(
    p: &Rotary,
    positions: &[i64],
    query: &mut [T],
    key: &mut [T],
    cos_sin_cache: &[f32],
) -> Result<()> {
    p.validate::<T>(positions.len(), query.len(), key.len(), cos_sin_cache.len())?;
    check_positions(p, positions)?;
    let half = p.rotary_dim / 2;
    let rotate = |x: &mut [T], pos: i64| {
        let cs = &cos_sin_cache[pos as usize * p.rotary_dim..][..p.rotary_dim];
        for head in x.chunks_exact_mut(p.head_size) {
            for (i, j, f) in rope_pairs(p.style, p.rotary_dim) {
                let (cos, sin) = (cs[f], cs[half + f]);
                let (a, b) = (head[i].to_f32(), head[j].to_f32());
                head[i] = T::from_f32(a * cos - b * sin);
                head[j] = T::from_f32(b * cos + a * sin);
            }
        }
    };
    query
        .par_chunks_mut(p.num_heads * p.head_size)
        .zip(positions.par_iter())
        .with_min_len(serial_rows(p.num_heads * p.head_size))
        .for_each(|(x, &pos)| rotate(x, pos));
    key.par_chunks_mut(p.num_kv_heads * p.head_size)
        .zip(positions.par_iter())
        .with_min_len(serial_rows(p.num_kv_heads * p.head_size))
        .for_each(|(x, &pos)| rotate(x, pos));
    Ok(())
}

/// Rows of `row_len` elements a row-parallel op takes per thread at least: about 64 Ki elements,
/// so that a decode step's ops (a few rows) run on the calling thread. Waking a rayon helper
/// costs more than such an op, and on a machine with as many busy threads as cores (the stream
/// worker and the GEMM team's spinning helper) the woken helper waits for a core.
fn serial_rows(row_len: usize) -> usize {
    ((64 << 10) / row_len.max(1)).max(1)
}

fn norm_row<T: KvFloat>(out: &mut [T], x: &[f32], weight: &[T], eps: f32) {
    let ms = dot(x, x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = T::from_f32(v * inv * w.to_f32());
    }
}

/// RMSNorm, rows in parallel.
pub fn rms_norm<T: KvFloat>(p: &RmsNorm, out: &mut [T], x: &[T], weight: &[T]) -> Result<()> {
    p.validate::<T>(x.len(), out.len(), weight.len(), "out")?;
    out.par_chunks_mut(p.hidden)
        .zip(x.par_chunks(p.hidden))
        .with_min_len(serial_rows(p.hidden))
        .for_each_init(Vec::new, |buf, (o, row)| {
            buf.resize(p.hidden, 0.0);
            T::convert_to_f32(row, buf);
            norm_row(o, buf, weight, p.eps);
        });
    Ok(())
}

/// `residual += x; x = rms_norm(residual) * weight`, rows in parallel.
pub fn fused_add_rms_norm<T: KvFloat>(
    p: &RmsNorm,
    x: &mut [T],
    residual: &mut [T],
    weight: &[T],
) -> Result<()> {
    p.validate::<T>(x.len(), residual.len(), weight.len(), "residual")?;
    x.par_chunks_mut(p.hidden)
        .zip(residual.par_chunks_mut(p.hidden))
        .with_min_len(serial_rows(p.hidden))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(buf, xf), (xr, rr)| {
                // Whole-row conversions and a separate add (an element-wise `to_f32` and a
                // `push` per value did not vectorize: 7.5 us for 8 rows of 576). The sum is
                // rounded to `T` as it is stored, and the norm reads it back rounded.
                buf.resize(p.hidden, 0.0);
                xf.resize(p.hidden, 0.0);
                T::convert_to_f32(rr, buf);
                T::convert_to_f32(xr, xf);
                for (r, (b, v)) in rr.iter_mut().zip(buf.iter_mut().zip(xf.iter())) {
                    *r = T::from_f32(*b + v);
                }
                T::convert_to_f32(rr, buf);
                norm_row(xr, buf, weight, p.eps);
            },
        );
    Ok(())
}

/// `out = silu(x[:, :d]) * x[:, d:]`, rows in parallel.
pub fn silu_and_mul<T: KvFloat>(p: &SiluAndMul, out: &mut [T], x: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), x.len())?;
    // exp through simd::exp_in_place, 8 at a time: libm's scalar expf was most of this op's
    // time (in a SmolLM2 decode step, 6.0 -> 4.1 us per call at batch 1, 28 -> 17 at batch 8).
    out.par_chunks_mut(p.d)
        .zip(x.par_chunks(2 * p.d))
        .with_min_len(serial_rows(p.d.saturating_mul(3)))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(g, e, u), (o, row)| {
                let (gate, up) = row.split_at(p.d);
                for b in [&mut *g, &mut *e, &mut *u] {
                    b.resize(p.d, 0.0);
                }
                T::convert_to_f32(gate, g);
                T::convert_to_f32(up, u);
                for (e, g) in e.iter_mut().zip(g.iter()) {
                    *e = -g;
                }
                simd::exp_in_place(e);
                for (((o, g), e), u) in o.iter_mut().zip(g.iter()).zip(e.iter()).zip(u.iter()) {
                    *o = T::from_f32(g / (1.0 + e) * u);
                }
            },
        );
    Ok(())
}

/// Copies whole blocks `src -> dst` in both caches.
pub fn copy_blocks<T: KvFloat>(
    c: &CacheShape,
    key_cache: &mut [T],
    value_cache: &mut [T],
    pairs: &[(u32, u32)],
) -> Result<()> {
    crate::reference::copy_blocks(c, key_cache, value_cache, pairs)
}

/// `out = x · wᵀ` (`w` is `[n, k]`, PyTorch's `Linear` layout).
///
/// Every output element is one single-accumulator dot product (8 lanes), so a row's
/// result does not depend on which other rows share the batch (a request's tokens come out the
/// same served alone or in a batch of 8). The columns are split into blocks over the cores; a
/// block of weight rows (converted to `f32` once, if it is not already) is then used by four
/// input rows at a time while it is in cache, so a batch of `m` rows reads the weights from
/// memory once rather than `m` times.
pub fn matmul<T: KvFloat>(p: &Matmul, out: &mut [T], x: &[T], w: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), x.len(), w.len())?;
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    let (m, n, k) = (p.m, p.n, p.k);
    let mut x_buf = Vec::new();
    let xf: &[f32] = match T::as_f32(x) {
        Some(x) => x,
        None => {
            x_buf.resize(x.len(), 0.0);
            T::convert_to_f32(x, &mut x_buf);
            &x_buf
        }
    };
    // Blocks of columns: at least 4 per core for balance, at most 256 KiB of weights each.
    let threads = rayon::current_num_threads();
    let by_cache = ((256 << 10) / (4 * k.max(1))).max(8);
    let block = n.div_ceil(4 * threads).clamp(8, by_cache.max(8)).min(n);
    by_column_blocks(
        out,
        m,
        n,
        block,
        Vec::new,
        |w_buf: &mut Vec<f32>, c0, c1, o| {
            let wb = match T::as_f32(&w[c0 * k..c1 * k]) {
                Some(wb) => wb,
                None => {
                    w_buf.resize((c1 - c0) * k, 0.0);
                    T::convert_to_f32(&w[c0 * k..c1 * k], w_buf);
                    w_buf
                }
            };
            matmul_block(xf, wb, m, c1 - c0, k, o);
        },
    );
    Ok(())
}

/// Runs `task(i, slot)` for every `i < n` on the cores: on the GEMM team ([`crate::team`],
/// whose helpers spin between jobs, so a decode step's ~200 GEMMs and attention calls do not
/// each pay a thread wake-up) when it is free; else on rayon. `slot` (below
/// [`rayon::current_num_threads`]) names the thread, for per-thread state.
///
/// Every GEMM and attention call goes here, and a decode step's row ops are small enough to
/// run on the calling thread ([`serial_rows`]), so a step wakes no rayon helper: measured on 2
/// cores, a rayon helper woken between the team's jobs waited for the core the team's helper
/// spun on (SmolLM2 Q4_1, interleaved runs: batch-1 decode 120 tokens/s with rayon for
/// attention, 132 without; with the batch GEMMs on rayon and attention on the team, batch 8
/// fell from 320 to 250).
fn parallel_for(n: usize, task: &(dyn Fn(usize, usize) + Sync)) {
    let threads = rayon::current_num_threads();
    if threads <= 1 || n <= 1 {
        (0..n).for_each(|i| task(i, 0));
        return;
    }
    if crate::team::for_each(threads - 1, n, task) {
        return;
    }
    (0..n)
        .into_par_iter()
        .for_each(|i| task(i, rayon::current_thread_index().unwrap_or(0) % threads));
}

/// Weight bytes times rows (at most 8) below which a quantized GEMM runs on one thread.
const SERIAL_WORK: usize = 128 << 10;

/// `f32` outputs in two cache lines. Column blocks are multiples of it, so also of AMX's
/// panels of 16 columns.
const LINE_FLOATS: usize = 32;
const _: () = assert!(LINE_FLOATS.is_multiple_of(qdot::AMX_PANEL));

/// Runs `columns(state, c0, c1, o)` (which writes `o[r * (c1 - c0) + c - c0]` for the `m`
/// rows and the columns `c0..c1`) over blocks of `block` columns in parallel, each thread with
/// its own `init()` state, and stores the results into `out` (`[m, n]`).
fn by_column_blocks<T: KvFloat, S: Send>(
    out: &mut [T],
    m: usize,
    n: usize,
    block: usize,
    init: impl Fn() -> S + Sync + Send,
    columns: impl Fn(&mut S, usize, usize, &mut [f32]) + Sync + Send,
) {
    // Every thread's state, and each block's output, on cache lines of its own: a task of a
    // small GEMM takes about a microsecond, and lines shared between the threads (two slots'
    // mutexes, or two blocks' 8 output floats, in one line) cost it ~0.4 us in transfers
    // (SmolLM2's k_proj, 192 x 576 at batch 1, took longer on 2 threads than on 1).
    if m == 0 || n == 0 {
        return;
    }
    let block = block.next_multiple_of(LINE_FLOATS).min(n);
    let span = |b: usize| (b * block, ((b + 1) * block).min(n));
    let blocks = n.div_ceil(block);
    // Per thread: its state and its f32 output buffer, kept across its blocks.
    type Slot<S> = Line<Mutex<Option<(S, Vec<f32>)>>>;
    let states: Vec<Slot<S>> = (0..rayon::current_num_threads().max(1))
        .map(|_| Line(Mutex::new(None)))
        .collect();
    let with_state = |slot: usize, f: &mut dyn FnMut(&mut S, &mut Vec<f32>)| {
        let mut guard = states[slot].0.lock().unwrap_or_else(|p| p.into_inner());
        let (state, o) = guard.get_or_insert_with(|| (init(), Vec::new()));
        f(state, o);
    };
    // Each block's rows are `m` segments of `out` (block `b`'s are `segments[b * m..(b + 1) *
    // m]`), which its task writes from its thread's buffer: no buffer per block, and no copy
    // on the calling thread afterwards (for a batch-8 step's output projection, 8 x 49152
    // values copied while the other core waited).
    let mut segments: Vec<Option<&mut [T]>> = (0..blocks * m).map(|_| None).collect();
    for (r, row) in out.chunks_mut(n).enumerate() {
        for (b, segment) in row.chunks_mut(block).enumerate() {
            segments[b * m + r] = Some(segment);
        }
    }
    type Rows<'a, T> = Line<Mutex<&'a mut [Option<&'a mut [T]>]>>;
    let segments: Vec<Rows<'_, T>> = segments
        .chunks_mut(m)
        .map(|s| Line(Mutex::new(s)))
        .collect();
    parallel_for(blocks, &|b, slot| {
        let (c0, c1) = span(b);
        let width = c1 - c0;
        with_state(slot, &mut |state, o| {
            o.resize(m * width, 0.0);
            columns(state, c0, c1, o);
            let mut rows = segments[b].0.lock().unwrap_or_else(|p| p.into_inner());
            for (dst, src) in rows.iter_mut().flatten().zip(o.chunks_exact(width)) {
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = T::from_f32(*v);
                }
            }
        });
    });
}

/// Whether this CPU and system can run [`quant_matmul_interleaved`] on Intel AMX (Sapphire Rapids
/// and later: AMX-TILE and AMX-INT8, Linux's permission for the tile state, and
/// `ASCEND_KERNELS_NO_AMX` and `ASCEND_KERNELS_NO_AVX512` unset). Where it can, batches of 16 rows
/// or more (prefill) run on it, with the same bits as the AVX2/VNNI loop.
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub use crate::qdot::VectorLoop as Int8Loop;

/// The int8 loop [`quant_matmul`] and [`quant_matmul_interleaved`] run on this CPU (AMX runs
/// batches of 16 rows or more where [`amx_available`]): the first of [`Int8Loop`]'s that the
/// CPU has, after the `ASCEND_KERNELS_NO_*` variables (`docs/ascend-setup.md`) and
/// [`limit_quant_matmul_loop`]. Every x86 loop gives the same bits; the portable one rounds
/// differently.
///
/// ```
/// let name = ascend_kernels::cpu::quant_matmul_loop().name();
/// assert!(["avx512-vnni-512", "avx512-vnni", "avx-vnni", "avx2", "portable"].contains(&name));
/// ```
pub fn quant_matmul_loop() -> Int8Loop {
    Int8Loop::chosen()
}

/// Makes the quantized GEMMs skip the int8 loops before `first` in [`Int8Loop`]'s order, for
/// the whole process (`Int8Loop::Vnni512`, the default, skips none): on an AVX-512 server,
/// `AvxVnni` runs the loop a client CPU without AVX-512 runs. The x86 loops give the same bits,
/// so this is for measuring them against each other in one run (`benches/matmul.rs`);
/// `Portable` rounds differently. AMX is [`set_amx`]'s.
///
/// ```
/// use ascend_kernels::cpu::{self, Int8Loop};
/// cpu::limit_quant_matmul_loop(Int8Loop::Avx2);
/// assert!(matches!(cpu::quant_matmul_loop(), Int8Loop::Avx2 | Int8Loop::Portable));
/// cpu::limit_quant_matmul_loop(Int8Loop::Vnni512);
/// ```
pub fn limit_quant_matmul_loop(first: Int8Loop) {
    Int8Loop::limit(first)
}

/// Lets [`quant_matmul_interleaved`] use AMX where [`amx_available`] (`true`, the default) or
/// not, for the whole process. The results are the same bits either way; this is for
/// measuring the two loops in one run (`benches/matmul.rs`).
///
/// ```
/// ascend_kernels::cpu::set_amx(false);
/// // ... the VNNI loop runs every batch ...
/// ascend_kernels::cpu::set_amx(true);
/// ```
pub fn set_amx(enabled: bool) {
    qdot::AMX_ALLOWED.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// `out = x · wᵀ` for a weight in a block format (GGUF `Q8_0`, `Q4_0`, `Q4_1`), computed on the
/// blocks as llama.cpp does: each row of `x` is quantized to int8 blocks of 32 once, then every
/// output element is integer dot products per block, scaled (AVX2, AVX-VNNI or AVX-512 VNNI where
/// the CPU has them: [`quant_matmul_loop`]). The weight is read as stored: 4.5 to 8.5 bits per
/// value instead of an `f32` copy's 32.
///
/// For `Int8PerChannel` (W8A8) each row of `x` is quantized per token as `aclnnDynamicQuant`
/// does ([`quant::TokenQuant`]), and each output element is one exact int32 dot product scaled
/// by the weight row's and the token's scales, as `aclnnQuantMatmulV4` computes it: the ACL
/// provider over the fake gives the same values.
///
/// The columns are split into blocks over the cores; within a block each weight row is used by
/// up to eight activation rows at a time, so a batch reads the weights once. A row's result does
/// not depend on the batch it is in. A non-finite activation is an error naming its row and
/// column (an int8 block cannot hold it).
///
/// `w` is GGUF's blocks; [`quant_matmul_interleaved`] takes the CPU backend's faster layout of
/// the same bytes and gives the same bits.
pub fn quant_matmul<T: KvFloat>(p: &QuantMatmul, out: &mut [T], x: &[T], w: &[u8]) -> Result<()> {
    quant_matmul_in(p, out, x, w, qdot::Layout::Blocks)
}

/// [`quant_matmul`] on a weight in the [`interleaved`](crate::interleaved) layout (made once
/// by [`interleaved::interleave`](crate::interleaved::interleave)): what the CPU backend runs.
/// The same bits as [`quant_matmul`] on the weight's blocks. Where the CPU has AVX-512 F and
/// BW, two weight rows share each 512-bit register; from 16 rows of `x` on a CPU with AMX
/// ([`amx_available`]), the products run on AMX tiles: the same bits again.
pub fn quant_matmul_interleaved<T: KvFloat>(
    p: &QuantMatmul,
    out: &mut [T],
    x: &[T],
    w: &[u8],
) -> Result<()> {
    quant_matmul_in(p, out, x, w, qdot::Layout::Interleaved)
}

fn quant_matmul_in<T: KvFloat>(
    p: &QuantMatmul,
    out: &mut [T],
    x: &[T],
    w: &[u8],
    layout: qdot::Layout,
) -> Result<()> {
    const OP: &str = "quant_matmul";
    p.validate::<T>(out.len(), x.len(), w.len())?;
    if p.m == 0 {
        return Ok(());
    }
    let (m, n, k, f) = (p.m, p.n, p.k, p.format);
    let row_bytes = f.row_bytes(k).unwrap_or(0);
    // Blocks of columns: at least 4 per core for balance, at most 256 KiB of weights each. A
    // GEMM with less work than 128 KiB of weights at batch 1 (or 16 KiB at batch 8) runs on
    // the calling thread: handing part of it to another core cost ~3 us a call on the 2-core
    // VM, more than it saved (SmolLM2's k_proj, 69 KB at batch 1: 3.1 us on 1 thread, 4.3 on
    // 2). Its q_proj and o_proj (207 KB) gain: 60 of them took 0.70 ms on 1 thread, 0.55 on 2.
    let threads = rayon::current_num_threads();
    let by_cache = ((256 << 10) / row_bytes.max(1)).max(8);
    let block = if row_bytes.saturating_mul(n).saturating_mul(m.min(8)) < SERIAL_WORK {
        n
    } else {
        n.div_ceil(4 * threads).clamp(8, by_cache).min(n)
    };
    if f == QuantFormat::Int8PerChannel {
        let mut acts: Vec<quant::TokenQuant> = Vec::new();
        acts.resize_with(m, Default::default);
        quantize_rows(OP, x, k, &mut acts, quant::TokenQuant::quantize)?;
        let rows: Vec<i8dot::TokenRow<'_>> = acts
            .iter()
            .map(|a| i8dot::TokenRow {
                scale: a.scale,
                qs: &a.qs,
            })
            .collect();
        by_column_blocks(
            out,
            m,
            n,
            block,
            || (),
            |_, c0, c1, o| i8dot::columns(w, k, (c0, c1), &rows, o),
        );
        return Ok(());
    }
    // Where AMX runs the GEMM it takes the columns in panels of 16 (`by_column_blocks` makes
    // every column block whole panels); with whole panels only, the rows need no quads for
    // the VNNI loop.
    let amx = qdot::runs_on_amx(layout, m);
    let amx_only = amx && n.is_multiple_of(qdot::AMX_PANEL);
    let mut acts = BlockRows::take(m);
    quantize_rows(
        OP,
        x,
        k,
        acts.rows(),
        |(a, quads): &mut (quant::ActivationBlocks, Vec<i8>), x| {
            a.quantize(x);
            if amx_only {
                // None, as AMX reads none (not the last GEMM's, in a kept buffer).
                quads.clear();
            } else {
                qdot::group_quads(&a.qs, quads);
            }
        },
    )?;
    let rows: Vec<qdot::ActRow<'_>> = acts
        .rows()
        .iter()
        .map(|(a, quads)| qdot::ActRow {
            scales: &a.scales,
            sums: &a.sums,
            qs: &a.qs,
            quads,
        })
        .collect();
    let matrix = amx.then(|| qdot::ActMatrix::new(&rows));
    by_column_blocks(
        out,
        m,
        n,
        block,
        || (),
        |_, c0, c1, o| {
            let cs = (c0, c1);
            qdot::columns(f, layout, w, row_bytes, cs, &rows, matrix.as_ref(), o)
        },
    );
    Ok(())
}

/// Quantizes row `r` of `x` (`[acts.len(), k]`) into `acts[r]` with `quantize`, each row
/// checked finite first (an error naming its row and column otherwise), rows in parallel (a
/// few rows on the calling thread, [`serial_rows`]). `f32` rows are read in place.
fn quantize_rows<T: KvFloat, A: Send>(
    op: &'static str,
    x: &[T],
    k: usize,
    acts: &mut [A],
    quantize: impl Fn(&mut A, &[f32]) + Sync + Send,
) -> Result<()> {
    acts.par_iter_mut()
        .enumerate()
        .with_min_len(serial_rows(k))
        .try_for_each_init(Vec::new, |xf: &mut Vec<f32>, (r, a)| {
            let row = &x[r * k..(r + 1) * k];
            let row = match T::as_f32(row) {
                Some(row) => row,
                None => {
                    xf.resize(k, 0.0);
                    T::convert_to_f32(row, xf);
                    &xf[..]
                }
            };
            quant::check_finite(op, r, row)?;
            quantize(a, row);
            Ok(())
        })
}

/// A block GEMM's quantized activation rows (each with its quads), reused by the calling
/// thread's next GEMM: a decode step runs ~120 GEMMs of a few rows each, and four fresh
/// buffers per row per GEMM were ~3% of a batch-8 SmolLM2 step in `malloc` and `free`.
struct BlockRows {
    kept: Vec<(quant::ActivationBlocks, Vec<i8>)>,
    m: usize,
}

thread_local! {
    static BLOCK_ROWS: std::cell::Cell<Vec<(quant::ActivationBlocks, Vec<i8>)>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// Rows of at most this many values in all are kept for the next GEMM (a decode batch's; a
/// long prefill's are let go rather than held for the rest of the process).
const KEPT_ROW_VALUES: usize = 1 << 18;

impl BlockRows {
    /// `m` rows: this thread's kept ones, more made as needed.
    fn take(m: usize) -> BlockRows {
        let mut kept = BLOCK_ROWS.with(|kept| kept.take());
        if kept.len() < m {
            kept.resize_with(m, Default::default);
        }
        BlockRows { kept, m }
    }

    fn rows(&mut self) -> &mut [(quant::ActivationBlocks, Vec<i8>)] {
        &mut self.kept[..self.m]
    }
}

impl Drop for BlockRows {
    fn drop(&mut self) {
        let values: usize = self
            .kept
            .iter()
            .map(|(a, q)| a.qs.capacity() + q.capacity())
            .sum();
        if values <= 2 * KEPT_ROW_VALUES {
            BLOCK_ROWS.with(|kept| kept.set(std::mem::take(&mut self.kept)));
        }
    }
}

/// `o[r * cols + c] = x_r · w_c` for `m` rows of `x` and `cols` rows of `w`, in register tiles.
fn matmul_block(x: &[f32], w: &[f32], m: usize, cols: usize, k: usize, o: &mut [f32]) {
    let xr = |r: usize| &x[r * k..(r + 1) * k];
    let wr = |c: usize| &w[c * k..(c + 1) * k];
    let mut r = 0;
    while r + 4 <= m {
        let xs = [xr(r), xr(r + 1), xr(r + 2), xr(r + 3)];
        let mut c = 0;
        while c + 2 <= cols {
            let mut t = [[0f32; 2]; 4];
            simd::dot_tile(&xs, &[wr(c), wr(c + 1)], k, &mut t);
            for (i, row) in t.iter().enumerate() {
                o[(r + i) * cols + c..][..2].copy_from_slice(row);
            }
            c += 2;
        }
        if c < cols {
            let mut t = [[0f32; 1]; 4];
            simd::dot_tile(&xs, &[wr(c)], k, &mut t);
            for (i, row) in t.iter().enumerate() {
                o[(r + i) * cols + c] = row[0];
            }
        }
        r += 4;
    }
    for r in r..m {
        let xs = [xr(r)];
        let mut c = 0;
        while c + 4 <= cols {
            let mut t = [[0f32; 4]; 1];
            simd::dot_tile(&xs, &[wr(c), wr(c + 1), wr(c + 2), wr(c + 3)], k, &mut t);
            o[r * cols + c..][..4].copy_from_slice(&t[0]);
            c += 4;
        }
        for c in c..cols {
            let mut t = [[0f32; 1]; 1];
            simd::dot_tile(&xs, &[wr(c)], k, &mut t);
            o[r * cols + c] = t[0][0];
        }
    }
}

/// `out[t] = table[ids[t]]`, rows in parallel; every id is checked first.
pub fn embedding<T: KvFloat>(p: &Embedding, out: &mut [T], table: &[T], ids: &[i32]) -> Result<()> {
    p.validate::<T>(out.len(), table.len(), ids.len())?;
    check_ids(p, ids)?;
    out.par_chunks_mut(p.hidden)
        .zip(ids.par_iter())
        .with_min_len(serial_rows(p.hidden))
        .for_each(|(o, &id)| o.copy_from_slice(&table[id as usize * p.hidden..][..p.hidden]));
    Ok(())
}

/// `out = a + b` in `f32` (`b` one row added to every row when `broadcast`), rows in parallel.
pub fn add<T: KvFloat>(p: &Add, out: &mut [T], a: &[T], b: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), a.len(), b.len())?;
    if p.cols == 0 {
        return Ok(());
    }
    out.par_chunks_mut(p.cols)
        .zip(a.par_chunks(p.cols))
        .enumerate()
        .with_min_len(serial_rows(p.cols))
        .for_each(|(r, (o, x))| {
            let y = if p.broadcast {
                b
            } else {
                &b[r * p.cols..][..p.cols]
            };
            for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                *o = T::from_f32(x.to_f32() + y.to_f32());
            }
        });
    Ok(())
}

/// Whether `v` ranks above `w`: larger, a NaN above everything (as the reference ranks).
#[inline]
fn ranks_above(v: f32, w: f32) -> bool {
    (v.is_nan() && !w.is_nan()) || v > w
}

/// The index of each row's largest value (first on ties, NaN largest), rows in parallel.
pub fn argmax<T: KvFloat>(p: &Argmax, out: &mut [i32], x: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), x.len())?;
    out.par_iter_mut()
        .zip(x.par_chunks(p.cols))
        .for_each(|(o, row)| {
            let mut f = vec![0f32; row.len()];
            let row: &[f32] = match T::as_f32(row) {
                Some(r) => r,
                None => {
                    T::convert_to_f32(row, &mut f);
                    &f
                }
            };
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if ranks_above(v, row[best]) {
                    best = j;
                }
            }
            *o = best as i32;
        });
    Ok(())
}

/// Each row's `k` largest values, largest first (lower index first on ties, NaN largest),
/// and their indices: a selection of the `k` then a sort of those, rows in parallel.
pub fn top_k<T: KvFloat>(p: &TopK, values: &mut [T], indices: &mut [i64], x: &[T]) -> Result<()> {
    p.validate::<T>(values.len(), indices.len(), x.len())?;
    if p.k == 0 {
        return Ok(());
    }
    values
        .par_chunks_mut(p.k)
        .zip(indices.par_chunks_mut(p.k))
        .zip(x.par_chunks(p.cols))
        .for_each(|((vals, idx), row)| {
            let mut f = vec![0f32; row.len()];
            let fr: &[f32] = match T::as_f32(row) {
                Some(r) => r,
                None => {
                    T::convert_to_f32(row, &mut f);
                    &f
                }
            };
            let order = |&i: &u32, &j: &u32| {
                let (a, b) = (fr[i as usize], fr[j as usize]);
                if ranks_above(a, b) {
                    std::cmp::Ordering::Less
                } else if ranks_above(b, a) {
                    std::cmp::Ordering::Greater
                } else {
                    i.cmp(&j)
                }
            };
            let mut ids: Vec<u32> = (0..row.len() as u32).collect();
            if p.k < ids.len() {
                ids.select_nth_unstable_by(p.k - 1, order);
                ids.truncate(p.k);
            }
            ids.sort_unstable_by(order);
            for ((v, x), &i) in vals.iter_mut().zip(idx.iter_mut()).zip(&ids) {
                *v = row[i as usize];
                *x = i as i64;
            }
        });
    Ok(())
}
