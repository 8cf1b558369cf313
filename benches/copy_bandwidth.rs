//! Host <-> device copy bandwidth on the CPU backend, against a plain `copy_from_slice` of the
//! same size measured in the same run.
//!
//! Each device copy is enqueued and waited for, so the figure includes the stream round trip
//! (queueing to the worker thread and waking the host), which is what an engine pays per copy.

use std::time::Duration;

use ascend_hal::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput};
use hal_mock::{CpuBackend, DeviceProfile};

const SIZES: [usize; 3] = [64 << 10, 1 << 20, 16 << 20];

fn label(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{}KiB", bytes >> 10)
    }
}

fn bench(c: &mut Criterion) {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::ascend_910b4())
        .build();
    let device = backend.device(0).expect("device 0");
    let stream = device.new_stream().expect("stream");

    for bytes in SIZES {
        let mut group = c.benchmark_group(format!("copy_{}", label(bytes)));
        group.throughput(Throughput::Bytes(bytes as u64));
        let src = vec![0x5Au8; bytes];
        let mut dst = vec![0u8; bytes];
        group.bench_function(BenchmarkId::from_parameter("copy_from_slice"), |b| {
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            })
        });

        let host = PinnedBuffer::<CpuBackend, u8>::from_slice(&device, &src).expect("pinned");
        let mut back = PinnedBuffer::<CpuBackend, u8>::new(&device, bytes).expect("pinned");
        let mut dev = DeviceBuffer::<CpuBackend, u8>::alloc(&device, bytes).expect("alloc");
        let mut dev2 = DeviceBuffer::<CpuBackend, u8>::alloc(&device, bytes).expect("alloc");
        group.bench_function(BenchmarkId::from_parameter("h2d"), |b| {
            b.iter(|| {
                stream.copy_h2d(&host, &mut dev).expect("h2d");
                stream.synchronize().expect("sync");
            })
        });
        group.bench_function(BenchmarkId::from_parameter("d2h"), |b| {
            b.iter(|| {
                stream.copy_d2h(&dev, &mut back).expect("d2h");
                std::hint::black_box(back.as_slice().expect("wait"));
            })
        });
        group.bench_function(BenchmarkId::from_parameter("d2d"), |b| {
            b.iter(|| {
                stream.copy_d2d(&dev, &mut dev2).expect("d2d");
                stream.synchronize().expect("sync");
            })
        });
        group.bench_function(BenchmarkId::from_parameter("h2d_sync_pageable"), |b| {
            b.iter(|| stream.copy_h2d_sync(&src, &mut dev).expect("h2d sync"))
        });
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    let pairs: Vec<(String, &str)> = SIZES
        .iter()
        .flat_map(|&b| {
            ["h2d", "d2h", "d2d", "h2d_sync_pageable"].map(|k| (format!("copy_{}", label(b)), k))
        })
        .collect();
    let rows: Vec<(&str, &str, &str)> = pairs
        .iter()
        .map(|(g, k)| (g.as_str(), *k, "copy_from_slice"))
        .collect();
    ascend_benches::print_ratios("CPU backend copies vs copy_from_slice (time ratio)", &rows);
}
