//! The caching allocator on the CPU backend:
//!
//! 1. an allocate/free pair served from the cache against the same pair from the raw backend
//!    allocation, measured in one run (the time ratio), and through the direct allocator (the
//!    cost of the `Allocator` trait and its block bookkeeping over the raw allocation);
//! 2. a replayed LLM-serving trace (batches and sequence lengths that vary step to step,
//!    activations freed in a different order than allocated, longer-lived buffers interleaved),
//!    with and without expandable segments: peak reserved / peak allocated on a fresh allocator
//!    (the memory the cache holds beyond what the engine uses at its peak), and the replay time
//!    on the warmed-up cache.

use std::time::Duration;

use ascend_benches::Rng;
use ascend_hal::alloc::{AllocatorStats, CachingAllocator, DirectAllocator};
use ascend_hal::prelude::*;
use criterion::{BenchmarkId, Criterion};
use hal_mock::{CpuBackend, CpuStream, DeviceProfile};

type Buf = DeviceBuffer<CpuBackend, half::f16>;

const HIDDEN: usize = 4096;
const INTERMEDIATE: usize = 11008;
const STEPS: usize = 400;

/// Replays the trace; returns the allocator's final statistics.
fn replay(alloc: &dyn Allocator<CpuBackend>, stream: &CpuStream) -> AllocatorStats {
    let mut rng = Rng(0xa110c);
    let mut long_lived: Vec<Buf> = Vec::new();
    for step in 0..STEPS {
        // Mostly decode steps (a token per sequence), with prefill chunks mixed in.
        let batch = rng.range(1, 64);
        let tokens = if step % 7 == 0 {
            batch * rng.range(64, 1024)
        } else {
            batch
        };
        let mut step_bufs: Vec<Buf> = Vec::new();
        for width in [
            HIDDEN,
            3 * HIDDEN,
            HIDDEN,
            2 * INTERMEDIATE,
            INTERMEDIATE,
            HIDDEN,
        ] {
            step_bufs.push(Buf::alloc_in(alloc, stream, tokens * width).expect("activation"));
            // Some intermediates die as soon as the next layer has consumed them.
            if step_bufs.len() > 2 && rng.next_u64().is_multiple_of(2) {
                let i = rng.range(0, step_bufs.len());
                step_bufs.swap_remove(i);
            }
        }
        // Occasionally a buffer outlives the step (sampling state, logits kept for a request).
        if rng.next_u64().is_multiple_of(5) {
            long_lived.push(Buf::alloc_in(alloc, stream, batch * 32_000).expect("logits"));
        }
        if long_lived.len() > 12 {
            let i = rng.range(0, long_lived.len());
            long_lived.swap_remove(i);
        }
        // The rest of the step's buffers go in no particular order.
        while !step_bufs.is_empty() {
            let i = rng.range(0, step_bufs.len());
            step_bufs.swap_remove(i);
        }
    }
    drop(long_lived);
    alloc.stats()
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    let backend = CpuBackend::builder()
        .device(DeviceProfile::ascend_910b1())
        .build();
    let device = backend.device(0).expect("device");
    let stream = device.new_stream().expect("stream");

    // 1. One allocate/free pair: cache vs raw backend.
    let cached =
        CachingAllocator::<CpuBackend>::new(&device, Default::default()).expect("allocator");
    let direct = DirectAllocator::<CpuBackend>::new(&device);
    for (label, elems) in [("64KiB", 32 << 10), ("4MiB", 2 << 20)] {
        let mut group = c.benchmark_group(format!("alloc_free_{label}"));
        group.bench_function(BenchmarkId::from_parameter("raw"), |b| {
            b.iter(|| {
                drop(std::hint::black_box(
                    Buf::alloc(&device, elems).expect("raw"),
                ))
            })
        });
        group.bench_function(BenchmarkId::from_parameter("direct"), |b| {
            b.iter(|| {
                drop(std::hint::black_box(
                    Buf::alloc_in(&direct, &stream, elems).expect("direct"),
                ))
            })
        });
        group.bench_function(BenchmarkId::from_parameter("cached"), |b| {
            b.iter(|| {
                drop(std::hint::black_box(
                    Buf::alloc_in(&cached, &stream, elems).expect("cached"),
                ))
            })
        });
        group.finish();
    }

    // 2. The serving trace, with and without expandable segments.
    let mut peaks = Vec::new();
    let mut group = c.benchmark_group("serving_trace");
    for (name, config) in [("segments", ""), ("expandable", "expandable_segments:True")] {
        // The first replay on a fresh allocator gives the peaks (growth included); the timed
        // replays run on the warmed-up cache, as a serving engine does after its first steps.
        let alloc = CachingAllocator::<CpuBackend>::new(&device, config.parse().expect("config"))
            .expect("allocator");
        peaks.push((name, replay(&alloc, &stream)));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| std::hint::black_box(replay(&alloc, &stream)))
        });
        alloc.empty_cache().expect("empty cache");
    }
    group.finish();
    c.final_summary();

    ascend_benches::print_ratios(
        "Allocate + free, cached vs raw backend allocation (time ratio)",
        &[
            ("alloc_free_64KiB", "cached", "raw"),
            ("alloc_free_4MiB", "cached", "raw"),
            ("alloc_free_64KiB", "direct", "raw"),
            ("alloc_free_4MiB", "direct", "raw"),
            ("serving_trace", "expandable", "segments"),
        ],
    );
    println!("\nServing trace ({STEPS} steps): memory held at peak");
    println!(
        "{:<12} {:>16} {:>16} {:>10} {:>10} {:>10}",
        "mode", "peak allocated", "peak reserved", "reserved/", "cache", "segments"
    );
    println!(
        "{:<12} {:>16} {:>16} {:>10} {:>10}",
        "", "", "", "allocated", "hit rate"
    );
    for (name, s) in peaks {
        println!(
            "{:<12} {:>13.1} MiB {:>13.1} MiB {:>10.3} {:>9.1}% {:>10}",
            name,
            s.peak_allocated as f64 / (1 << 20) as f64,
            s.peak_reserved as f64 / (1 << 20) as f64,
            s.peak_reserved as f64 / s.peak_allocated as f64,
            100.0 * s.cache_hits as f64 / s.num_allocs as f64,
            s.segments
        );
    }
}
