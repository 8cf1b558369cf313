//! The CPU GEMM at SmolLM2-135M's shapes (`f32` weights `[n, k]`): one row (a batch-1 decode
//! step, bound by reading the weights) against a plain memory copy of the weight bytes, and 8
//! rows (a batch-8 decode step) against one row, measured in one run. The first ratio says how
//! close a decode step's GEMMs come to memory bandwidth; the second how much a batch costs over
//! one row (8.0 would mean no reuse of the weights at all). The same weights in GGUF's block
//! formats through `cpu::quant_matmul_interleaved` (Q4_0, Q4_1, Q8_0 in the CPU backend's
//! interleaved layout; activations quantized to int8 blocks), against the `f32` GEMM in the same
//! run: what computing on the blocks buys a decode step; Q4_1 also on GGUF's blocks as stored
//! (`cpu::quant_matmul`), against which the interleaved layout is measured, and on the rows
//! cut to whole groups of 8 blocks (k = 512 of 576), against which a partial last group's cost
//! is measured; and
//! 64 rows (a prefill chunk), where the blocks' tiles of one weight row x 8 activation rows run,
//! against the `f32` GEMM's 64 rows, and, on a CPU with AMX (which then runs them), against
//! the VNNI loop with AMX off (`cpu::set_amx(false)`). W8A8 (int8 per output channel,
//! activations quantized to int8 per token: exact int32 sums) is measured the same way. At 8 and
//! 64 rows, the narrower int8 loops the CPU also has (`cpu::limit_quant_matmul_loop`: AVX-VNNI,
//! the loop of client CPUs without AVX-512, and AVX2; AMX off) against AVX2.

use std::time::Duration;

use ascend_benches::Rng;
use ascend_kernels::quant::quantize;
use ascend_kernels::{cpu, interleaved, Matmul, QuantFormat, QuantMatmul};
use criterion::{BenchmarkId, Criterion, Throughput};

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    // gate+up, down, and the tied output projection of SmolLM2-135M.
    for (name, n, k) in [
        ("gate_up", 3072usize, 576usize),
        ("down", 576, 1536),
        ("lm_head", 49152, 576),
    ] {
        let mut rng = Rng(0x6e6d + n as u64);
        let w: Vec<f32> = (0..n * k)
            .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let x: Vec<f32> = (0..PREFILL * k)
            .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let mut out = vec![0f32; PREFILL * n];
        let bytes = n * k * 4;
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        let group = format!("{name}_{n}x{k}");
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Bytes(bytes as u64));
        for m in [1usize, 8, PREFILL] {
            let p = Matmul { m, n, k };
            g.bench_function(BenchmarkId::from_parameter(format!("m{m}")), |b| {
                b.iter(|| cpu::matmul(&p, &mut out[..m * n], &x[..m * k], &w).expect("matmul"))
            });
        }
        for format in QuantFormat::EVERY {
            let mut wq = Vec::new();
            for row in w.chunks(k) {
                quantize(format, row, &mut wq).expect("quantize");
            }
            let wi = interleaved::interleave(format, n, k, &wq).expect("interleave");
            // Q4_1 also on the rows cut to whole groups of 8 blocks (k = 512 for k = 576): the
            // time per block of a row with a partial last group against one without.
            let whole = k / 256 * 256;
            let cut = (format == QuantFormat::Q4_1 && whole > 0 && whole < k).then(|| {
                let mut wq = Vec::new();
                for row in w.chunks(k) {
                    quantize(format, &row[..whole], &mut wq).expect("quantize");
                }
                interleaved::interleave(format, n, whole, &wq).expect("interleave")
            });
            for m in [1usize, 8, PREFILL] {
                let p = QuantMatmul { m, n, k, format };
                g.bench_function(BenchmarkId::from_parameter(format!("{format}_m{m}")), |b| {
                    b.iter(|| {
                        cpu::quant_matmul_interleaved(&p, &mut out[..m * n], &x[..m * k], &wi)
                            .expect("quant_matmul")
                    })
                });
                if let Some(wc) = cut.as_ref().filter(|_| m < PREFILL) {
                    let p = QuantMatmul { k: whole, ..p };
                    let id = format!("{format}_k{whole}_m{m}");
                    g.bench_function(BenchmarkId::from_parameter(id), |b| {
                        b.iter(|| {
                            cpu::quant_matmul_interleaved(
                                &p,
                                &mut out[..m * n],
                                &x[..m * whole],
                                wc,
                            )
                            .expect("quant_matmul")
                        })
                    });
                }
                if m == PREFILL && format.is_blocks() && cpu::amx_available() {
                    // The same prefill chunk with AMX off: the VNNI loop it replaces.
                    let id = format!("{format}_vnni_m{m}");
                    g.bench_function(BenchmarkId::from_parameter(id), |b| {
                        cpu::set_amx(false);
                        b.iter(|| {
                            cpu::quant_matmul_interleaved(&p, &mut out[..m * n], &x[..m * k], &wi)
                                .expect("quant_matmul")
                        });
                        cpu::set_amx(true);
                    });
                }
                if m > 1 {
                    // The narrower int8 loops this CPU also has (AVX-VNNI, the loop of client
                    // CPUs without AVX-512, and AVX2), AMX off: the same bits, their times.
                    for limit in [cpu::Int8Loop::AvxVnni, cpu::Int8Loop::Avx2] {
                        if !limit.available() {
                            continue;
                        }
                        let id = format!("{format}_{}_m{m}", limit.name());
                        g.bench_function(BenchmarkId::from_parameter(id), |b| {
                            cpu::limit_quant_matmul_loop(limit);
                            cpu::set_amx(false);
                            b.iter(|| {
                                cpu::quant_matmul_interleaved(
                                    &p,
                                    &mut out[..m * n],
                                    &x[..m * k],
                                    &wi,
                                )
                                .expect("quant_matmul")
                            });
                            cpu::set_amx(true);
                            cpu::limit_quant_matmul_loop(cpu::Int8Loop::Vnni512);
                        });
                    }
                }
                if format == QuantFormat::Q4_1 && m < PREFILL {
                    let id = format!("{format}_blocks_m{m}");
                    g.bench_function(BenchmarkId::from_parameter(id), |b| {
                        b.iter(|| {
                            cpu::quant_matmul(&p, &mut out[..m * n], &x[..m * k], &wq)
                                .expect("quant_matmul")
                        })
                    });
                }
            }
        }
        g.bench_function(BenchmarkId::from_parameter("memcpy"), |b| {
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            })
        });
        g.finish();
        assert!(out.iter().all(|v| v.is_finite()));
        groups.push((group, k / 256 * 256, k));
    }
    c.final_summary();
    for (g, whole, k) in &groups {
        rows.push((g.as_str(), "m1", "memcpy"));
        rows.push((g.as_str(), "m8", "m1"));
        for q in ["Q4_0", "Q4_1", "Q8_0", "W8A8"] {
            rows.push((g.as_str(), leak(format!("{q}_m1")), "m1"));
            rows.push((g.as_str(), leak(format!("{q}_m8")), leak(format!("{q}_m1"))));
            rows.push((
                g.as_str(),
                leak(format!("{q}_m{PREFILL}")),
                leak(format!("m{PREFILL}")),
            ));
        }
        if cpu::amx_available() {
            for q in ["Q4_0", "Q4_1", "Q8_0"] {
                rows.push((
                    g.as_str(),
                    leak(format!("{q}_m{PREFILL}")),
                    leak(format!("{q}_vnni_m{PREFILL}")),
                ));
            }
        }
        for q in ["Q4_0", "Q4_1", "Q8_0", "W8A8"] {
            for m in [8, PREFILL] {
                let avx2 = leak(format!("{q}_avx2_m{m}"));
                if cpu::Int8Loop::Avx2.available() {
                    // The default loop at 8 rows; at 64 the VNNI loop AMX replaces.
                    let best = if m == 8 || !q.starts_with('Q') || !cpu::amx_available() {
                        format!("{q}_m{m}")
                    } else {
                        format!("{q}_vnni_m{m}")
                    };
                    rows.push((g.as_str(), leak(best), avx2));
                }
                if cpu::Int8Loop::AvxVnni.available() {
                    rows.push((g.as_str(), leak(format!("{q}_avx-vnni_m{m}")), avx2));
                }
            }
        }
        rows.push((g.as_str(), "Q4_1_m1", "Q4_1_blocks_m1"));
        rows.push((g.as_str(), "Q4_1_m8", "Q4_1_blocks_m8"));
        // k against its first values in whole groups (576 against 512): k / whole (1.125) if
        // the last blocks cost what the others do per block.
        if whole < k && *whole > 0 {
            for m in [1, 8] {
                rows.push((
                    g.as_str(),
                    leak(format!("Q4_1_m{m}")),
                    leak(format!("Q4_1_k{whole}_m{m}")),
                ));
            }
        }
    }
    ascend_benches::print_ratios("CPU GEMM (time ratios)", &rows);
}

/// Rows of a prefill chunk.
const PREFILL: usize = 64;

/// A bench name for the ratio table, which takes `&str`s that outlive it.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
