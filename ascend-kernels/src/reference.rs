//! The reference kernels: plain, obviously-correct Rust over host slices, computing in `f64`.
//! They are the oracle that the fast CPU kernels (and the Ascend C kernels) are tested against;
//! nothing here is meant to be fast.

use ascend_hal::{Error, Result};

use crate::float::KvFloat;
use crate::quant;
use crate::shapes::{
    check_seq, query_ranges, Add, Argmax, CacheShape, Embedding, Matmul, PagedAttention,
    PrefillAttention, QuantMatmul, ReshapeAndCache, RmsNorm, RopeStyle, Rotary, SiluAndMul, TopK,
};

/// Where token `pos` of a sequence sits in a cache laid out `[blocks, block_size, kv_heads,
/// head_size]`, for KV head `kv_head`.
pub fn cache_offset(c: &CacheShape, table: &[i32], pos: usize, kv_head: usize) -> usize {
    let block = table[pos / c.block_size] as usize;
    (block * c.block_size + pos % c.block_size) * c.token_stride() + kv_head * c.head_size
}

/// Writes each token's K and V rows into the caches at its slot; a negative slot skips the
/// token (as in vLLM, ATB and the Ascend C kernel), a slot past the cache is an error and
/// nothing is written.
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
    for (t, &slot) in slot_mapping.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let at = slot as usize * row;
        key_cache[at..at + row].copy_from_slice(&key[t * row..(t + 1) * row]);
        value_cache[at..at + row].copy_from_slice(&value[t * row..(t + 1) * row]);
    }
    Ok(())
}

/// Every slot must be negative (skip) or inside the cache.
pub(crate) fn check_slots(p: &ReshapeAndCache, slot_mapping: &[i32]) -> Result<()> {
    for (t, &slot) in slot_mapping.iter().enumerate() {
        if slot >= 0 && slot as usize >= p.cache.slots() {
            return Err(Error::InvalidArgument {
                op: "reshape_and_cache",
                message: format!(
                    "slot_mapping[{t}] = {slot} is outside the cache's {} slots (a negative slot skips a token)",
                    p.cache.slots()
                ),
            });
        }
    }
    Ok(())
}

/// Softmax attention of one query row over the given key/value rows, in `f64`.
fn attend<T: KvFloat>(q: &[T], keys: &[&[T]], values: &[&[T]], scale: f32) -> Vec<f64> {
    let scores: Vec<f64> = keys
        .iter()
        .map(|k| {
            q.iter()
                .zip(k.iter())
                .map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64)
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut out = vec![0f64; q.len()];
    for (w, v) in weights.iter().zip(values) {
        for (o, x) in out.iter_mut().zip(v.iter()) {
            *o += w / total * x.to_f32() as f64;
        }
    }
    out
}

/// The positions a query at `pos` attends to.
fn window(pos: usize, sliding_window: Option<usize>) -> std::ops::RangeInclusive<usize> {
    let first = sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
    first..=pos
}

/// Decode attention: each sequence's one query token attends to its whole context.
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
    let c = &p.cache;
    let hs = c.head_size;
    let group = p.num_heads / c.num_kv_heads;
    for s in 0..p.num_seqs {
        let table = &block_tables[s * p.max_blocks_per_seq..(s + 1) * p.max_blocks_per_seq];
        let len = check_seq("paged_attention", s, seq_lens[s], table, c)?;
        for h in 0..p.num_heads {
            let row = (s * p.num_heads + h) * hs;
            if len == 0 {
                out[row..row + hs].fill(T::from_f32(0.0));
                continue;
            }
            let kvh = h / group;
            let positions: Vec<usize> = window(len - 1, p.sliding_window).collect();
            let keys: Vec<&[T]> = positions
                .iter()
                .map(|&t| &key_cache[cache_offset(c, table, t, kvh)..][..hs])
                .collect();
            let values: Vec<&[T]> = positions
                .iter()
                .map(|&t| &value_cache[cache_offset(c, table, t, kvh)..][..hs])
                .collect();
            let o = attend(&query[row..row + hs], &keys, &values, p.scale);
            for (dst, v) in out[row..row + hs].iter_mut().zip(o) {
                *dst = T::from_f32(v as f32);
            }
        }
    }
    Ok(())
}

/// Prefill attention over the paged cache: query token `j` of a sequence's chunk sits at
/// position `seq_len - chunk_len + j` and attends causally up to it.
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
    let c = &p.cache;
    let hs = c.head_size;
    let group = p.num_heads / c.num_kv_heads;
    for (s, &(a, b)) in ranges.iter().enumerate() {
        let table = &block_tables[s * p.max_blocks_per_seq..(s + 1) * p.max_blocks_per_seq];
        let len = check_seq("paged_prefill_attention", s, seq_lens[s], table, c)?;
        for t in a..b {
            let pos = len - (b - a) + (t - a);
            for h in 0..p.num_heads {
                let row = (t * p.num_heads + h) * hs;
                let kvh = h / group;
                let positions: Vec<usize> = window(pos, p.sliding_window).collect();
                let keys: Vec<&[T]> = positions
                    .iter()
                    .map(|&x| &key_cache[cache_offset(c, table, x, kvh)..][..hs])
                    .collect();
                let values: Vec<&[T]> = positions
                    .iter()
                    .map(|&x| &value_cache[cache_offset(c, table, x, kvh)..][..hs])
                    .collect();
                let o = attend(&query[row..row + hs], &keys, &values, p.scale);
                for (dst, v) in out[row..row + hs].iter_mut().zip(o) {
                    *dst = T::from_f32(v as f32);
                }
            }
        }
    }
    Ok(())
}

/// Checks that every position has a row in the cos/sin cache.
pub(crate) fn check_positions(p: &Rotary, positions: &[i64]) -> Result<()> {
    for (t, &pos) in positions.iter().enumerate() {
        if pos < 0 || pos as usize >= p.max_position {
            return Err(Error::InvalidArgument {
                op: "rotary_embedding",
                message: format!(
                    "positions[{t}] = {pos} is outside the cos/sin cache's {} rows",
                    p.max_position
                ),
            });
        }
    }
    Ok(())
}

/// The element pairs `(i, j)` a rotation mixes, with the index of their frequency.
pub(crate) fn rope_pairs(
    style: RopeStyle,
    rotary_dim: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let half = rotary_dim / 2;
    (0..half).map(move |f| match style {
        RopeStyle::Neox => (f, f + half, f),
        RopeStyle::GptJ => (2 * f, 2 * f + 1, f),
    })
}

/// Rotary embedding, in place on every query and key head.
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
    for (t, &pos) in positions.iter().enumerate() {
        let cs = &cos_sin_cache[pos as usize * p.rotary_dim..][..p.rotary_dim];
        for (x, heads) in [(&mut *query, p.num_heads), (&mut *key, p.num_kv_heads)] {
            for h in 0..heads {
                let head = &mut x[(t * heads + h) * p.head_size..][..p.head_size];
                for (i, j, f) in rope_pairs(p.style, p.rotary_dim) {
                    let (cos, sin) = (cs[f] as f64, cs[half + f] as f64);
                    let (a, b) = (head[i].to_f32() as f64, head[j].to_f32() as f64);
                    head[i] = T::from_f32((a * cos - b * sin) as f32);
                    head[j] = T::from_f32((b * cos + a * sin) as f32);
                }
            }
        }
    }
    Ok(())
}

/// `out = x / sqrt(mean(x^2) + eps) * weight`, row by row.
pub fn rms_norm<T: KvFloat>(p: &RmsNorm, out: &mut [T], x: &[T], weight: &[T]) -> Result<()> {
    p.validate::<T>(x.len(), out.len(), weight.len(), "out")?;
    for r in 0..p.num_tokens {
        let row = &x[r * p.hidden..][..p.hidden];
        let ms = row.iter().map(|v| (v.to_f32() as f64).powi(2)).sum::<f64>() / p.hidden as f64;
        let inv = 1.0 / (ms + p.eps as f64).sqrt();
        for ((o, v), w) in out[r * p.hidden..][..p.hidden]
            .iter_mut()
            .zip(row)
            .zip(weight)
        {
            *o = T::from_f32((v.to_f32() as f64 * inv * w.to_f32() as f64) as f32);
        }
    }
    Ok(())
}

/// `residual += x; x = rms_norm(residual) * weight`, in place (vLLM's fused add + RMSNorm).
pub fn fused_add_rms_norm<T: KvFloat>(
    p: &RmsNorm,
    x: &mut [T],
    residual: &mut [T],
    weight: &[T],
) -> Result<()> {
    p.validate::<T>(x.len(), residual.len(), weight.len(), "residual")?;
    for (r, x) in residual.iter_mut().zip(x.iter()) {
        *r = T::from_f32(r.to_f32() + x.to_f32());
    }
    let summed = residual.to_vec();
    rms_norm(p, x, &summed, weight)
}

/// `out = silu(x[:, :d]) * x[:, d:]`.
pub fn silu_and_mul<T: KvFloat>(p: &SiluAndMul, out: &mut [T], x: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), x.len())?;
    for r in 0..p.num_tokens {
        for i in 0..p.d {
            let a = x[r * 2 * p.d + i].to_f32() as f64;
            let b = x[r * 2 * p.d + p.d + i].to_f32() as f64;
            out[r * p.d + i] = T::from_f32((a / (1.0 + (-a).exp()) * b) as f32);
        }
    }
    Ok(())
}

/// Copies whole blocks `src -> dst` in both caches (copy-on-write).
pub fn copy_blocks<T: KvFloat>(
    c: &CacheShape,
    key_cache: &mut [T],
    value_cache: &mut [T],
    pairs: &[(u32, u32)],
) -> Result<()> {
    check_pairs(c, key_cache.len(), value_cache.len(), pairs)?;
    let n = c.block_stride();
    for &(s, d) in pairs {
        for cache in [&mut *key_cache, &mut *value_cache] {
            cache.copy_within(s as usize * n..(s as usize + 1) * n, d as usize * n);
        }
    }
    Ok(())
}

/// Checks block-copy pairs against the cache.
pub fn check_pairs(
    c: &CacheShape,
    key_len: usize,
    value_len: usize,
    pairs: &[(u32, u32)],
) -> Result<()> {
    const OP: &str = "copy_blocks";
    for (arg, len) in [("key_cache", key_len), ("value_cache", value_len)] {
        if len != c.elements() {
            return Err(Error::ShapeMismatch {
                op: OP,
                arg,
                expected: format!("{} elements for {:?}", c.elements(), c),
                actual: format!("{len} elements"),
            });
        }
    }
    for &(s, d) in pairs {
        if s as usize >= c.num_blocks || d as usize >= c.num_blocks || s == d {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!(
                    "pair {s} -> {d}: both must be distinct blocks below {}",
                    c.num_blocks
                ),
            });
        }
    }
    Ok(())
}

/// `out = x · wᵀ`.
pub fn matmul<T: KvFloat>(p: &Matmul, out: &mut [T], x: &[T], w: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), x.len(), w.len())?;
    for i in 0..p.m {
        for j in 0..p.n {
            let dot: f64 = (0..p.k)
                .map(|t| x[i * p.k + t].to_f32() as f64 * w[j * p.k + t].to_f32() as f64)
                .sum();
            out[i * p.n + j] = T::from_f32(dot as f32);
        }
    }
    Ok(())
}

/// `out = x' · w'ᵀ` in `f64`, where `w'` is the weight decoded ([`quant::dequantize`]) and `x'`
/// each row of `x` quantized to int8 blocks and decoded ([`quant::ActivationBlocks`]; for
/// W8A8, quantized per token, [`quant::TokenQuant`]): what every provider of [`QuantMatmul`]
/// computes, up to the order it sums in.
pub fn quant_matmul<T: KvFloat>(p: &QuantMatmul, out: &mut [T], x: &[T], w: &[u8]) -> Result<()> {
    p.validate::<T>(out.len(), x.len(), w.len())?;
    let row = p.format.row_bytes(p.k).unwrap_or(0);
    let mut wf = vec![0f32; p.k];
    let mut weights = Vec::with_capacity(p.n);
    for j in 0..p.n {
        quant::dequantize(p.format, &w[j * row..(j + 1) * row], &mut wf)?;
        weights.push(wf.clone());
    }
    // Every row is checked before anything is written.
    let mut rows = Vec::with_capacity(p.m);
    for i in 0..p.m {
        let xi: Vec<f32> = x[i * p.k..(i + 1) * p.k]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        quant::check_finite("quant_matmul", i, &xi)?;
        if p.format.is_blocks() {
            let mut blocks = quant::ActivationBlocks::default();
            blocks.quantize(&xi);
            rows.push(blocks.values());
        } else {
            let mut token = quant::TokenQuant::default();
            token.quantize(&xi);
            rows.push(token.values());
        }
    }
    for (i, xq) in rows.iter().enumerate() {
        for (j, wj) in weights.iter().enumerate() {
            let dot: f64 = xq.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
            out[i * p.n + j] = T::from_f32(dot as f32);
        }
    }
    Ok(())
}

/// Checks every token id against the table (what a device would fault on).
pub(crate) fn check_ids(p: &Embedding, ids: &[i32]) -> Result<()> {
    match ids.iter().position(|&t| t < 0 || t as usize >= p.vocab) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidArgument {
            op: "embedding",
            message: format!(
                "ids[{i}] = {} is outside the table's {} rows",
                ids[i], p.vocab
            ),
        }),
    }
}

/// `out[t] = table[ids[t]]`.
pub fn embedding<T: KvFloat>(p: &Embedding, out: &mut [T], table: &[T], ids: &[i32]) -> Result<()> {
    p.validate::<T>(out.len(), table.len(), ids.len())?;
    check_ids(p, ids)?;
    for (t, &id) in ids.iter().enumerate() {
        let row = &table[id as usize * p.hidden..][..p.hidden];
        out[t * p.hidden..][..p.hidden].copy_from_slice(row);
    }
    Ok(())
}

/// `out = a + b` (`b` broadcast over rows when asked), in `f64`.
pub fn add<T: KvFloat>(p: &Add, out: &mut [T], a: &[T], b: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), a.len(), b.len())?;
    for (i, (o, x)) in out.iter_mut().zip(a).enumerate() {
        let y = if p.broadcast {
            b[i % p.cols.max(1)]
        } else {
            b[i]
        };
        *o = T::from_f32((x.to_f32() as f64 + y.to_f32() as f64) as f32);
    }
    Ok(())
}

/// Whether `v` ranks above `best` for argmax and top-k: larger, a NaN above everything.
fn ranks_above(v: f32, best: f32) -> bool {
    (v.is_nan() && !best.is_nan()) || v > best
}

/// The index of each row's largest value (the first on ties; a NaN is the largest).
pub fn argmax<T: KvFloat>(p: &Argmax, out: &mut [i32], x: &[T]) -> Result<()> {
    p.validate::<T>(out.len(), x.len())?;
    for (r, o) in out.iter_mut().enumerate() {
        let row = &x[r * p.cols..][..p.cols];
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if ranks_above(v.to_f32(), row[best].to_f32()) {
                best = j;
            }
        }
        *o = best as i32;
    }
    Ok(())
}

/// Each row's `k` largest values, largest first (lower index first on ties; NaN largest), and
/// their indices.
pub fn top_k<T: KvFloat>(p: &TopK, values: &mut [T], indices: &mut [i64], x: &[T]) -> Result<()> {
    p.validate::<T>(values.len(), indices.len(), x.len())?;
    for r in 0..p.rows {
        let row = &x[r * p.cols..][..p.cols];
        let mut order: Vec<usize> = (0..p.cols).collect();
        order.sort_by(|&i, &j| {
            let (a, b) = (row[i].to_f32(), row[j].to_f32());
            if ranks_above(a, b) {
                std::cmp::Ordering::Less
            } else if ranks_above(b, a) {
                std::cmp::Ordering::Greater
            } else {
                i.cmp(&j)
            }
        });
        for (slot, &i) in order[..p.k].iter().enumerate() {
            values[r * p.k + slot] = row[i];
            indices[r * p.k + slot] = i as i64;
        }
    }
    Ok(())
}
