//! Paged decode attention on the CPU: the same kernel over a paged cache (shuffled block table)
//! and over a contiguous cache, measured in one run (block sizes 128 and 16, contexts 512 to
//! 8192, a batch of 8, Llama-3-8B-like heads in f16), and the achieved KV bandwidth against a
//! plain memory copy of the same number of bytes in the same run.

use std::time::Duration;

use ascend_benches::Rng;
use ascend_kernels::{cpu, CacheShape, PagedAttention};
use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;

const BATCH: usize = 8;
const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD: usize = 128;

fn values(n: usize, rng: &mut Rng) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32((rng.next_u64() % 2000) as f32 / 1000.0 - 1.0))
        .collect()
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let mut pairs = Vec::new();
    let mut groups = Vec::new();
    for block_size in [128usize, 16] {
        for ctx in [512usize, 2048, 8192] {
            let mut rng = Rng(0xa77e + ctx as u64);
            let blocks_per_seq = ctx.div_ceil(block_size);
            let cache = CacheShape {
                num_blocks: BATCH * blocks_per_seq + 1,
                block_size,
                num_kv_heads: KV_HEADS,
                head_size: HEAD,
            };
            let p = PagedAttention {
                num_seqs: BATCH,
                num_heads: HEADS,
                cache,
                max_blocks_per_seq: blocks_per_seq,
                scale: 1.0 / (HEAD as f32).sqrt(),
                sliding_window: None,
            };
            let k = values(cache.elements(), &mut rng);
            let v = values(cache.elements(), &mut rng);
            let q = values(BATCH * HEADS * HEAD, &mut rng);
            // Every sequence's blocks scattered over the cache.
            let mut ids: Vec<i32> = (1..cache.num_blocks as i32).collect();
            for i in (1..ids.len()).rev() {
                ids.swap(i, rng.range(0, i + 1));
            }
            let tables: Vec<i32> = ids[..BATCH * blocks_per_seq].to_vec();
            let lens = vec![ctx as i32; BATCH];
            // The same keys and values, contiguous per sequence.
            let stride = cache.token_stride();
            let mut kc = vec![f16::ZERO; BATCH * ctx * stride];
            let mut vc = vec![f16::ZERO; BATCH * ctx * stride];
            for s in 0..BATCH {
                for t in 0..ctx {
                    let b = tables[s * blocks_per_seq + t / block_size] as usize;
                    let at = (b * block_size + t % block_size) * stride;
                    kc[(s * ctx + t) * stride..][..stride].copy_from_slice(&k[at..at + stride]);
                    vc[(s * ctx + t) * stride..][..stride].copy_from_slice(&v[at..at + stride]);
                }
            }
            let kv_bytes = 2 * BATCH * ctx * stride * std::mem::size_of::<f16>();
            let src = vec![1u8; kv_bytes];
            let mut dst = vec![0u8; kv_bytes];
            let mut out = vec![f16::ZERO; q.len()];

            let group = format!("decode_bs{block_size}_ctx{ctx}");
            let mut g = c.benchmark_group(&group);
            g.throughput(Throughput::Bytes(kv_bytes as u64));
            g.bench_function(BenchmarkId::from_parameter("paged"), |b| {
                b.iter(|| {
                    cpu::paged_attention(&p, &mut out, &q, &k, &v, &tables, &lens).expect("paged")
                })
            });
            g.bench_function(BenchmarkId::from_parameter("contiguous"), |b| {
                b.iter(|| {
                    cpu::contiguous_attention(&p, ctx, &mut out, &q, &kc, &vc, &lens)
                        .expect("contiguous")
                })
            });
            g.bench_function(BenchmarkId::from_parameter("memcpy"), |b| {
                b.iter(|| {
                    dst.copy_from_slice(std::hint::black_box(&src));
                    std::hint::black_box(&mut dst);
                })
            });
            g.finish();
            assert!(out.iter().all(|x| x.to_f32().is_finite()));
            groups.push((group.clone(), kv_bytes));
            pairs.push(group);
        }
    }
    c.final_summary();
    let rows: Vec<(&str, &str, &str)> = pairs
        .iter()
        .flat_map(|g| {
            [
                (g.as_str(), "paged", "contiguous"),
                (g.as_str(), "paged", "memcpy"),
            ]
        })
        .collect();
    ascend_benches::print_ratios("Paged decode attention (time ratios)", &rows);
    println!("\nAchieved KV bandwidth (K+V bytes read per call / time)");
    for (g, bytes) in groups {
        let gib = |ns: f64| bytes as f64 / (1u64 << 30) as f64 / (ns / 1e9);
        if let (Some(p), Some(m)) = (
            ascend_benches::mean_ns(&g, "paged"),
            ascend_benches::mean_ns(&g, "memcpy"),
        ) {
            println!(
                "{g:<24} paged {:>7.2} GiB/s   memcpy {:>7.2} GiB/s   paged/memcpy {:>6.3}",
                gib(p),
                gib(m),
                gib(p) / gib(m)
            );
        }
    }
}
