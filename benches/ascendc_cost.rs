//! The Ascend C kernels' modelled time on a 910B next to their roofline, at Llama-3-8B
//! shapes: decode attention (batch 32 and batch 1 at 2,048 tokens, batch 1 at 8,192; 32 heads /
//! 8 KV heads, head 128, f16, block 128), chunked prefill attention (4 sequences, the last 128 tokens of 2,048 each), a
//! 4,096-token chunk through RoPE (both pairings), RMSNorm and reshape_and_cache, and 64
//! copy-on-write block copies.
//!
//! Each kernel runs once on the host implementation of the Ascend C API, which counts what every
//! simulated core asks of each pipe; `ascendc::cost::Figures::ASCEND_910B` turns the counts
//! into a time. This is a model (its figures and their sources are in `ascend-kernels/src/
//! ascendc/cost.rs`), not a measurement, so it is a plain program rather than a criterion
//! bench: `cargo bench -p ascend-benches --bench ascendc_cost`.

use ascend_benches::Rng;
use ascend_kernels::ascendc::{cost, host, tiling};
use ascend_kernels::{
    CacheShape, PagedAttention, PrefillAttention, ReshapeAndCache, RmsNorm, RopeStyle, Rotary,
};
use half::f16;

const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD: usize = 128;
const CHUNK_TOKENS: usize = 4096;

fn values(n: usize, rng: &mut Rng) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32((rng.next_u64() % 2000) as f32 / 1000.0 - 1.0))
        .collect()
}

fn cores(tasks: usize) -> u32 {
    tasks.clamp(1, tiling::VECTOR_CORES as usize) as u32
}

/// Prints one row: the estimate of the launch just run against moving `bytes` through HBM.
fn report(name: &str, bytes: u64) {
    report_launches(
        name,
        &[cost::last_launch_traced()],
        cost::Figures::ASCEND_910B.roofline(bytes),
    );
}

/// Prints one row for `launches` run one after another, against `roof` seconds: the timeline
/// estimate (every core's instruction stream replayed), the perfect-overlap bound beside it.
fn report_launches(name: &str, launches: &[cost::Launch], roof: f64) {
    let f = cost::Figures::ASCEND_910B;
    let (mut seconds, mut ideal) = (0.0, 0.0);
    let mut worst: Option<cost::Estimate> = None;
    let mut t = cost::CoreCost::default();
    for l in launches {
        let e = f.estimate_launch(l);
        if std::env::var_os("ASCENDC_COST_DETAIL").is_some() {
            eprintln!(
                "    launch of {} cores: {:.2} µs ({}), slowest core {:?}",
                l.cores.len(),
                e.seconds * 1e6,
                e.bound,
                e.slowest_core
            );
        }
        seconds += e.seconds;
        ideal += f.estimate(&l.cores).seconds;
        if worst.is_none_or(|w| e.seconds > w.seconds) {
            worst = Some(e);
        }
        t = cost::total(&[t, cost::total(&l.cores)]);
    }
    let e = worst.expect("a launch");
    let s = e.slowest_core;
    println!(
        "{name:<26} {:>9.1} {:>9.1} {:>9.1} {:>7.2}x  {:<14} mte2 {:>7.1} vec {:>7.1} scalar {:>7.1}  \
         ({} launches, {} vector instrs, {} flag waits, {} GM scalar reads)",
        seconds * 1e6,
        ideal * 1e6,
        roof * 1e6,
        seconds / roof,
        e.bound.to_string(),
        s.mte2 * 1e6,
        s.vector * 1e6,
        s.scalar * 1e6,
        launches.len(),
        t.vec_instrs,
        t.flag_waits,
        t.scalar_gm,
    );
}

/// Decode attention of `batch` sequences of `ctx` tokens over 128-token blocks, on all 48 cores
/// (a split context and its merge when the batch leaves cores idle).
fn attention(rng: &mut Rng, batch: usize, ctx: usize) {
    const BLOCK: usize = 128;
    let blocks_per_seq = ctx / BLOCK;
    let cache = CacheShape {
        num_blocks: batch * blocks_per_seq,
        block_size: BLOCK,
        num_kv_heads: KV_HEADS,
        head_size: HEAD,
    };
    let p = PagedAttention {
        num_seqs: batch,
        num_heads: HEADS,
        cache,
        max_blocks_per_seq: blocks_per_seq,
        scale: 1.0 / (HEAD as f32).sqrt(),
        sliding_window: None,
    };
    let (k, v) = (values(cache.elements(), rng), values(cache.elements(), rng));
    let q = values(batch * HEADS * HEAD, rng);
    let ids = shuffled(cache.num_blocks, rng);
    let lens = vec![ctx as i32; batch];
    let mut out = vec![f16::ZERO; q.len()];
    cost::take_launches();
    host::paged_attention(&p, &mut out, &q, &k, &v, &ids, &lens, tiling::VECTOR_CORES)
        .expect("attention");
    // K and V of every attended token once, the queries in, the outputs out.
    let bytes = 2 * (batch * ctx * KV_HEADS * HEAD * 2) + 2 * q.len() * 2;
    report_launches(
        &format!("paged_attention b{batch}"),
        &cost::take_launches(),
        cost::Figures::ASCEND_910B.roofline(bytes as u64),
    );
}

/// Shuffled block ids `0..n`.
fn shuffled(n: usize, rng: &mut Rng) -> Vec<i32> {
    let mut ids: Vec<i32> = (0..n as i32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.range(0, i + 1));
    }
    ids
}

fn prefill(rng: &mut Rng) {
    const SEQS: usize = 4;
    const CTX: usize = 2048;
    const CHUNK: usize = 128;
    const BLOCK: usize = 128;
    let blocks_per_seq = CTX / BLOCK;
    let cache = CacheShape {
        num_blocks: SEQS * blocks_per_seq,
        block_size: BLOCK,
        num_kv_heads: KV_HEADS,
        head_size: HEAD,
    };
    let p = PrefillAttention {
        num_seqs: SEQS,
        num_tokens: SEQS * CHUNK,
        num_heads: HEADS,
        cache,
        max_blocks_per_seq: blocks_per_seq,
        scale: 1.0 / (HEAD as f32).sqrt(),
        sliding_window: None,
    };
    let (k, v) = (values(cache.elements(), rng), values(cache.elements(), rng));
    let q = values(p.num_tokens * HEADS * HEAD, rng);
    let ids = shuffled(cache.num_blocks, rng);
    let starts: Vec<i32> = (0..=SEQS as i32).map(|s| s * CHUNK as i32).collect();
    let lens = vec![CTX as i32; SEQS];
    let mut out = vec![f16::ZERO; q.len()];
    cost::take_launches();
    host::paged_prefill_attention(
        &p,
        &mut out,
        &q,
        &k,
        &v,
        &ids,
        &starts,
        &lens,
        tiling::VECTOR_CORES,
    )
    .expect("prefill attention");
    // Its roofline: each sequence's K and V read once (HBM), or the multiply-adds of Q.K and
    // P.V on the vector units at one 64-lane f32 repeat per cycle, whichever is longer.
    let f = cost::Figures::ASCEND_910B;
    let bytes = 2 * (SEQS * CTX * KV_HEADS * HEAD * 2) + 2 * q.len() * 2;
    let visible: usize = (0..CHUNK).map(|i| CTX - CHUNK + i + 1).sum::<usize>() * SEQS;
    let repeats = (visible * HEADS * HEAD * 2) as f64 / 64.0;
    let vector = repeats / (f.vector_cores as f64 * f.clock_hz);
    let roof = f.roofline(bytes as u64).max(vector);
    println!(
        "  (prefill roofline: HBM {:.1} µs, vector multiply-adds {:.1} µs; the cube unit CANN's \
         fused operator uses would do them in {:.1} µs at 256 TFLOPS f16)",
        f.roofline(bytes as u64) * 1e6,
        vector * 1e6,
        (visible * HEADS * HEAD * 4) as f64 / 256e12 * 1e6,
    );
    report_launches("paged_prefill_attention", &cost::take_launches(), roof);
}

fn block_copies(rng: &mut Rng) {
    const PAIRS: usize = 64;
    let cache = CacheShape {
        num_blocks: 2 * PAIRS,
        block_size: 128,
        num_kv_heads: KV_HEADS,
        head_size: HEAD,
    };
    let (mut kc, mut vc) = (values(cache.elements(), rng), values(cache.elements(), rng));
    let pairs: Vec<(u32, u32)> = (0..PAIRS as u32).map(|i| (i, PAIRS as u32 + i)).collect();
    host::copy_blocks(&cache, &mut kc, &mut vc, &pairs, cores(PAIRS)).expect("copy_blocks");
    let bytes = 4 * PAIRS * cache.block_stride() * 2;
    report("copy_blocks", bytes as u64);
}

fn rope(rng: &mut Rng, style: RopeStyle) {
    let p = Rotary {
        num_tokens: CHUNK_TOKENS,
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_size: HEAD,
        rotary_dim: HEAD,
        max_position: 8192,
        style,
    };
    let positions: Vec<i64> = (0..CHUNK_TOKENS as i64).collect();
    let mut q = values(CHUNK_TOKENS * HEADS * HEAD, rng);
    let mut k = values(CHUNK_TOKENS * KV_HEADS * HEAD, rng);
    let cs: Vec<f32> = (0..8192 * HEAD).map(|i| (i as f32 * 1e-3).sin()).collect();
    host::rotary_embedding(&p, &positions, &mut q, &mut k, &cs, cores(CHUNK_TOKENS)).expect("rope");
    let bytes = 2 * (q.len() + k.len()) * 2 + CHUNK_TOKENS * HEAD * 4;
    report(
        match style {
            RopeStyle::Neox => "rotary_embedding (NeoX)",
            RopeStyle::GptJ => "rotary_embedding (GPT-J)",
        },
        bytes as u64,
    );
}

fn norm(rng: &mut Rng) {
    const HIDDEN: usize = 4096;
    let p = RmsNorm {
        num_tokens: CHUNK_TOKENS,
        hidden: HIDDEN,
        eps: 1e-6,
    };
    let x = values(CHUNK_TOKENS * HIDDEN, rng);
    let w = values(HIDDEN, rng);
    let mut out = vec![f16::ZERO; x.len()];
    host::rms_norm(&p, &mut out, &x, &w, cores(CHUNK_TOKENS)).expect("rms_norm");
    let bytes = 2 * x.len() * 2 + HIDDEN * 2;
    report("rms_norm", bytes as u64);
}

fn cache_write(rng: &mut Rng) {
    let cache = CacheShape {
        num_blocks: CHUNK_TOKENS / 128 + 1,
        block_size: 128,
        num_kv_heads: KV_HEADS,
        head_size: HEAD,
    };
    let p = ReshapeAndCache {
        num_tokens: CHUNK_TOKENS,
        cache,
    };
    let row = KV_HEADS * HEAD;
    let (key, value) = (
        values(CHUNK_TOKENS * row, rng),
        values(CHUNK_TOKENS * row, rng),
    );
    let (mut kc, mut vc) = (
        vec![f16::ZERO; cache.elements()],
        vec![f16::ZERO; cache.elements()],
    );
    let slots: Vec<i32> = (0..CHUNK_TOKENS as i32).map(|t| t + 128).collect();
    host::reshape_and_cache(
        &p,
        &key,
        &value,
        &mut kc,
        &mut vc,
        &slots,
        cores(CHUNK_TOKENS),
    )
    .expect("reshape_and_cache");
    let bytes = 4 * CHUNK_TOKENS * row * 2 + CHUNK_TOKENS * 4;
    report("reshape_and_cache", bytes as u64);
}

fn main() {
    // `cargo bench` passes --bench; a filter argument, as criterion takes, is ignored.
    let f = cost::Figures::ASCEND_910B;
    println!(
        "modelled 910B time ({} vector cores, {:.2} GHz, HBM {:.1} TB/s): estimate vs roofline, µs",
        f.vector_cores,
        f.clock_hz / 1e9,
        f.hbm_bytes_per_s / 1e12
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>8}  {:<14} slowest core's busy pipes, µs",
        "kernel", "estimate", "overlap", "roofline", "ratio", "bound"
    );
    let mut rng = Rng(0xc057);
    attention(&mut rng, 32, 2048);
    attention(&mut rng, 1, 2048);
    attention(&mut rng, 1, 8192);
    prefill(&mut rng);
    rope(&mut rng, RopeStyle::Neox);
    rope(&mut rng, RopeStyle::GptJ);
    norm(&mut rng);
    cache_write(&mut rng);
    block_copies(&mut rng);
}
