//! All-reduce on the CPU communicator (`hal_mock::CpuCommunicator`) against a memcpy of the same
//! bytes, in one run: 2 and 4 ranks, 1 MiB and 16 MiB of f32 per rank, in place, every rank's
//! stream synchronised per iteration. The ratio is what a tensor-parallel step pays the CPU
//! stand-in per all-reduce, relative to touching its bytes once; it says nothing about HCCL on
//! an NPU (which moves the data over HCCS / RoCE), only that the CPU path used by CI and by
//! engines without an NPU stays cheap.

use std::time::Duration;

use ascend_hal::comm::{CommunicatorExt, ReduceOp};
use ascend_hal::prelude::*;
use criterion::{BenchmarkId, Criterion, Throughput};
use hal_mock::{CpuBackend, CpuCommunicator, DeviceProfile};

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let mut groups = Vec::new();
    for ranks in [2usize, 4] {
        for mib in [1usize, 16] {
            let n = mib * (1 << 20) / 4;
            let backend = CpuBackend::builder()
                .devices(ranks, DeviceProfile::custom("Rank", 256 << 20))
                .build();
            let devices: Vec<_> = (0..ranks)
                .map(|i| backend.device(i).expect("device"))
                .collect();
            let comms = CpuCommunicator::init_all(&devices).expect("group");
            let streams: Vec<_> = devices
                .iter()
                .map(|d| d.new_stream().expect("stream"))
                .collect();
            let mut bufs: Vec<_> = streams
                .iter()
                .map(|s| DeviceBuffer::from_slice(s, &vec![1.0f32; n]).expect("buffer"))
                .collect();
            let src = vec![1u8; n * 4];
            let mut dst = vec![0u8; n * 4];
            let group = format!("all_reduce_{ranks}ranks_{mib}MiB");
            let mut g = c.benchmark_group(&group);
            g.throughput(Throughput::Bytes((n * 4) as u64));
            g.bench_function(BenchmarkId::from_parameter("all_reduce"), |b| {
                b.iter(|| {
                    for ((comm, s), buf) in comms.iter().zip(&streams).zip(bufs.iter_mut()) {
                        comm.all_reduce_in_place(s, buf, ReduceOp::Max)
                            .expect("all_reduce");
                    }
                    for s in &streams {
                        s.synchronize().expect("sync");
                    }
                })
            });
            g.bench_function(BenchmarkId::from_parameter("memcpy"), |b| {
                b.iter(|| {
                    dst.copy_from_slice(std::hint::black_box(&src));
                    std::hint::black_box(&mut dst);
                })
            });
            g.finish();
            // Max of ones stays one: the data went through the reduction.
            assert!(streams[0]
                .clone_to_host(&bufs[0])
                .expect("read")
                .iter()
                .all(|&x| x == 1.0));
            groups.push(group);
        }
    }
    c.final_summary();
    let rows: Vec<(&str, &str, &str)> = groups
        .iter()
        .map(|g| (g.as_str(), "all_reduce", "memcpy"))
        .collect();
    ascend_benches::print_ratios("All-reduce on the CPU communicator (time ratios)", &rows);
}
