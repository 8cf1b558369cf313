//! The CPU communicator against a sequential model of each collective (every rank's result
//! computed on the host from every rank's input), in several group sizes and dtypes; and its
//! failures: ranks that call different collectives, a rank that never arrives, injected faults,
//! and bad arguments, each reported by name.

// Ranks index several parallel vectors (communicators, streams, buffers, inputs).
#![allow(clippy::needless_range_loop)]

use std::time::Duration;

use ascend_hal::comm::{CommunicatorExt, ReduceOp};
use ascend_hal::prelude::*;
use ascend_hal::{Element, Error};
use hal_mock::{CpuBackend, CpuCommunicator, CpuStream, DeviceProfile};
use half::f16;
use proptest::prelude::*;

struct Group {
    comms: Vec<CpuCommunicator>,
    streams: Vec<CpuStream>,
}

fn group(size: usize) -> Group {
    let backend = CpuBackend::builder()
        .devices(size, DeviceProfile::custom("Rank", 64 << 20))
        .build();
    let devices: Vec<_> = (0..size).map(|i| backend.device(i).unwrap()).collect();
    let comms = CpuCommunicator::init_all(&devices).unwrap();
    let streams = devices.iter().map(|d| d.new_stream().unwrap()).collect();
    Group { comms, streams }
}

/// Rank `r`'s input: small integers (exact in every float type) that differ per rank.
fn input(r: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 + r * 13) % 11) as f32 - 5.0)
        .collect()
}

fn reduce(op: ReduceOp, values: impl Iterator<Item = f32>) -> f32 {
    values
        .reduce(|a, b| match op {
            ReduceOp::Sum => a + b,
            ReduceOp::Prod => a * b,
            ReduceOp::Max => a.max(b),
            ReduceOp::Min => a.min(b),
        })
        .unwrap()
}

fn upload<T: Element>(g: &Group, r: usize, data: &[T]) -> DeviceBuffer<CpuBackend, T> {
    DeviceBuffer::from_slice(&g.streams[r], data).unwrap()
}

fn all_reduce_case<T: Element>(
    size: usize,
    n: usize,
    op: ReduceOp,
    to: impl Fn(f32) -> T,
    from: impl Fn(T) -> f32,
) {
    let g = group(size);
    let inputs: Vec<Vec<f32>> = (0..size).map(|r| input(r, n)).collect();
    let sends: Vec<_> = (0..size)
        .map(|r| upload(&g, r, &inputs[r].iter().map(|&x| to(x)).collect::<Vec<T>>()))
        .collect();
    let mut recvs: Vec<_> = (0..size)
        .map(|r| upload(&g, r, &vec![to(0.0); n]))
        .collect();
    for r in 0..size {
        g.comms[r]
            .all_reduce(&g.streams[r], &sends[r], &mut recvs[r], op)
            .unwrap();
    }
    let want: Vec<f32> = (0..n)
        .map(|i| reduce(op, inputs.iter().map(|x| x[i])))
        .collect();
    for r in 0..size {
        let got: Vec<f32> = g.streams[r]
            .clone_to_host(&recvs[r])
            .unwrap()
            .into_iter()
            .map(&from)
            .collect();
        assert_eq!(got, want, "size {size}, {op}, rank {r}");
    }
}

#[test]
fn all_reduce_matches_the_sequential_model_for_every_op_and_dtype() {
    for size in [1usize, 2, 3, 4] {
        for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min] {
            all_reduce_case::<f32>(size, 37, op, |x| x, |x| x);
            all_reduce_case::<f16>(size, 16, op, f16::from_f32, f16::to_f32);
            all_reduce_case::<i32>(size, 9, op, |x| x as i32, |x| x as f32);
            all_reduce_case::<i64>(size, 5, op, |x| x as i64, |x| x as f32);
        }
    }
}

#[test]
fn in_place_all_reduce_gather_scatter_broadcast_and_a_ring_of_sends() {
    let (size, n) = (4usize, 10usize);
    let g = group(size);
    let inputs: Vec<Vec<f32>> = (0..size).map(|r| input(r, n)).collect();

    // In place.
    let mut bufs: Vec<_> = (0..size).map(|r| upload(&g, r, &inputs[r])).collect();
    for r in 0..size {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    let sum: Vec<f32> = (0..n).map(|i| inputs.iter().map(|x| x[i]).sum()).collect();
    for r in 0..size {
        assert_eq!(
            g.streams[r].clone_to_host(&bufs[r]).unwrap(),
            sum,
            "in place, rank {r}"
        );
    }

    // All-gather: every rank's input end to end, in rank order.
    let sends: Vec<_> = (0..size).map(|r| upload(&g, r, &inputs[r])).collect();
    let mut gathered: Vec<_> = (0..size)
        .map(|r| upload(&g, r, &vec![0f32; n * size]))
        .collect();
    for r in 0..size {
        g.comms[r]
            .all_gather(&g.streams[r], &sends[r], &mut gathered[r])
            .unwrap();
    }
    let concat: Vec<f32> = inputs.concat();
    for r in 0..size {
        assert_eq!(
            g.streams[r].clone_to_host(&gathered[r]).unwrap(),
            concat,
            "gather, rank {r}"
        );
    }

    // Reduce-scatter: rank r gets its share of the element-wise max of every rank's whole input.
    let wide: Vec<Vec<f32>> = (0..size).map(|r| input(r + 5, n * size)).collect();
    let sends: Vec<_> = (0..size).map(|r| upload(&g, r, &wide[r])).collect();
    let mut shares: Vec<_> = (0..size).map(|r| upload(&g, r, &vec![0f32; n])).collect();
    for r in 0..size {
        g.comms[r]
            .reduce_scatter(&g.streams[r], &sends[r], &mut shares[r], ReduceOp::Max)
            .unwrap();
    }
    for r in 0..size {
        let want: Vec<f32> = (r * n..(r + 1) * n)
            .map(|i| reduce(ReduceOp::Max, wide.iter().map(|x| x[i])))
            .collect();
        assert_eq!(
            g.streams[r].clone_to_host(&shares[r]).unwrap(),
            want,
            "scatter, rank {r}"
        );
    }

    // Broadcast from rank 2.
    let mut bufs: Vec<_> = (0..size).map(|r| upload(&g, r, &inputs[r])).collect();
    for r in 0..size {
        g.comms[r]
            .broadcast(&g.streams[r], &mut bufs[r], 2)
            .unwrap();
    }
    for r in 0..size {
        assert_eq!(
            g.streams[r].clone_to_host(&bufs[r]).unwrap(),
            inputs[2],
            "broadcast, rank {r}"
        );
    }

    // A ring: each rank sends its input to the next and receives the previous one's.
    let sends: Vec<_> = (0..size).map(|r| upload(&g, r, &inputs[r])).collect();
    let mut recvs: Vec<_> = (0..size).map(|r| upload(&g, r, &vec![0f32; n])).collect();
    for r in 0..size {
        g.comms[r]
            .send(&g.streams[r], &sends[r], (r + 1) % size)
            .unwrap();
        g.comms[r]
            .recv(&g.streams[r], &mut recvs[r], (r + size - 1) % size)
            .unwrap();
    }
    for r in 0..size {
        let from = (r + size - 1) % size;
        assert_eq!(
            g.streams[r].clone_to_host(&recvs[r]).unwrap(),
            inputs[from],
            "ring, rank {r}"
        );
    }
}

fn sync_error(s: &CpuStream) -> String {
    s.synchronize().unwrap_err().to_string()
}

#[test]
fn ranks_that_call_different_collectives_all_fail_naming_both() {
    let g = group(2);
    let a = upload(&g, 0, &[1f32; 4]);
    let mut b = upload(&g, 0, &[0f32; 4]);
    g.comms[0]
        .all_reduce(&g.streams[0], &a, &mut b, ReduceOp::Sum)
        .unwrap();
    let c = upload(&g, 1, &[1f32; 4]);
    let mut d = upload(&g, 1, &[0f32; 8]);
    g.comms[1].all_gather(&g.streams[1], &c, &mut d).unwrap();
    for s in &g.streams {
        let e = sync_error(s);
        assert!(
            e.contains("collective #0 does not match across ranks"),
            "{e}"
        );
        assert!(e.contains("rank 0 called all_reduce(4 x F32, sum)"), "{e}");
        assert!(e.contains("rank 1 called all_gather(4 x F32)"), "{e}");
    }
}

#[test]
fn a_rank_that_never_arrives_times_the_others_out_naming_it() {
    let g = group(3);
    g.comms[0].set_timeout(Duration::from_millis(200));
    let mut bufs: Vec<_> = (0..3).map(|r| upload(&g, r, &[r as f32; 4])).collect();
    for r in [0, 2] {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    for r in [0, 2] {
        let e = sync_error(&g.streams[r]);
        assert!(
            e.contains(&format!("collective all_reduce (rank {r} of 3) failed")),
            "{e}"
        );
        assert!(e.contains("rank(s) 1 did not reach collective #0"), "{e}");
    }
    // The late rank gets the same failure, not a hang, and its buffer is untouched.
    g.comms[1]
        .all_reduce_in_place(&g.streams[1], &mut bufs[1], ReduceOp::Sum)
        .unwrap();
    assert!(sync_error(&g.streams[1]).contains("did not reach collective #0"));
    assert_eq!(g.streams[1].clone_to_host(&bufs[1]).unwrap(), [1.0; 4]);
}

#[test]
fn an_injected_fault_fails_every_rank_naming_the_rank_and_the_next_collective_works() {
    let g = group(4);
    g.comms[2].fail_next(1);
    let mut bufs: Vec<_> = (0..4)
        .map(|r| upload(&g, r, &[r as f32 + 1.0; 3]))
        .collect();
    for r in 0..4 {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    for r in 0..4 {
        let e = sync_error(&g.streams[r]);
        assert!(
            e.contains("rank 2 failed (injected fault) at collective #0"),
            "rank {r}: {e}"
        );
        // Nothing was written.
        assert_eq!(
            g.streams[r].clone_to_host(&bufs[r]).unwrap(),
            [r as f32 + 1.0; 3]
        );
    }
    for r in 0..4 {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    for r in 0..4 {
        assert_eq!(g.streams[r].clone_to_host(&bufs[r]).unwrap(), [10.0; 3]);
    }
    // A receive whose sender fails is reported too.
    g.comms[0].set_timeout(Duration::from_millis(200));
    g.comms[1].fail_next(1);
    let a = upload(&g, 1, &[5f32; 2]);
    g.comms[1].send(&g.streams[1], &a, 0).unwrap();
    let mut b = upload(&g, 0, &[0f32; 2]);
    g.comms[0].recv(&g.streams[0], &mut b, 1).unwrap();
    assert!(sync_error(&g.streams[1]).contains("rank 1 failed (injected fault) sending to 0"));
    // The receiver hears at once why (not after its timeout).
    let e = sync_error(&g.streams[0]);
    assert!(
        e.contains(
            "rank 1's matching send did not run: rank 1 failed (injected fault) sending to 0"
        ),
        "{e}"
    );
}

/// Fails `r`'s stream with a host task, as a kernel fault would.
fn fail_stream(g: &Group, r: usize) {
    g.streams[r]
        .enqueue_host_task("boom", || {
            Err(Error::KernelFault {
                op: "boom",
                message: "the root cause".into(),
            })
        })
        .unwrap();
}

#[test]
fn a_rank_whose_stream_failed_fails_the_others_at_once_with_its_cause() {
    let g = group(3);
    // Waiting for ever: only the skipped arrival can end the others' wait.
    g.comms[0].set_timeout(Duration::MAX);
    let mut bufs: Vec<_> = (0..3).map(|r| upload(&g, r, &[r as f32; 4])).collect();
    fail_stream(&g, 1);
    let start = std::time::Instant::now();
    for r in 0..3 {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    let e1 = sync_error(&g.streams[1]);
    assert!(e1.contains("boom") && e1.contains("the root cause"), "{e1}");
    for r in [0, 2] {
        let e = sync_error(&g.streams[r]);
        assert!(
            e.contains("rank 1 cannot take part in collective #0 (all_reduce(4 x F32, sum)): its stream failed before it"),
            "{e}"
        );
        assert!(e.contains("the root cause"), "{e}");
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    // A send skipped the same way reaches its receiver as a failure.
    let c = upload(&g, 2, &[1f32; 2]);
    let mut b = upload(&g, 1, &[0f32; 2]);
    fail_stream(&g, 2);
    g.comms[2].send(&g.streams[2], &c, 1).unwrap();
    g.comms[1].recv(&g.streams[1], &mut b, 2).unwrap();
    let e = sync_error(&g.streams[1]);
    assert!(e.contains("rank 2's matching send did not run"), "{e}");
    assert!(e.contains("the root cause"), "{e}");
    assert!(sync_error(&g.streams[2]).contains("the root cause"));
}

#[test]
fn a_rank_that_left_the_group_fails_the_others_at_once() {
    let mut g = group(3);
    g.comms[0].set_timeout(Duration::MAX);
    let mut bufs: Vec<_> = (0..3).map(|r| upload(&g, r, &[r as f32; 4])).collect();
    let start = std::time::Instant::now();
    // Rank 2 enqueues one collective, then stops (its communicator is dropped).
    for r in 0..3 {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    let gone = g.comms.pop().unwrap();
    drop(gone);
    // Its queued collective still completes with the others.
    for r in 0..3 {
        g.streams[r].synchronize().unwrap();
        assert_eq!(g.streams[r].clone_to_host(&bufs[r]).unwrap(), [3.0; 4]);
    }
    for r in 0..2 {
        g.comms[r]
            .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
            .unwrap();
    }
    for r in 0..2 {
        let e = sync_error(&g.streams[r]);
        assert!(
            e.contains("rank(s) 2 left the group before collective #1"),
            "rank {r}: {e}"
        );
    }
    let mut b = upload(&g, 0, &[0f32; 2]);
    g.comms[0].recv(&g.streams[0], &mut b, 1).unwrap();
    drop(g.comms.pop());
    let e = sync_error(&g.streams[0]);
    assert!(
        e.contains("rank 1 left the group without sending to rank 0"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn any_timeout_is_accepted_and_long_rank_lists_are_cut_short() {
    let g = group(12);
    for t in [Duration::MAX, Duration::ZERO, Duration::from_secs(u64::MAX)] {
        g.comms[0].set_timeout(t);
        let mut bufs: Vec<_> = (0..12).map(|r| upload(&g, r, &[1f32; 2])).collect();
        if t.is_zero() {
            // Nobody waits: rank 0 alone times out at once, listing the others briefly.
            g.comms[0]
                .all_reduce_in_place(&g.streams[0], &mut bufs[0], ReduceOp::Sum)
                .unwrap();
            let e = sync_error(&g.streams[0]);
            assert!(
                e.contains("rank(s) 1, 2, 3, 4, 5, 6, 7, 8 and 3 more did not reach"),
                "{e}"
            );
            for r in 1..12 {
                g.comms[r]
                    .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
                    .unwrap();
                g.streams[r].synchronize().unwrap_err();
            }
            continue;
        }
        for r in 0..12 {
            g.comms[r]
                .all_reduce_in_place(&g.streams[r], &mut bufs[r], ReduceOp::Sum)
                .unwrap();
        }
        for r in 0..12 {
            assert_eq!(g.streams[r].clone_to_host(&bufs[r]).unwrap(), [12.0; 2]);
        }
    }
}

#[test]
fn devices_of_two_backends_do_not_make_a_group() {
    let a = CpuBackend::builder()
        .devices(2, DeviceProfile::custom("A", 1 << 20))
        .build();
    let b = CpuBackend::builder()
        .devices(2, DeviceProfile::custom("B", 1 << 20))
        .build();
    let e = CpuCommunicator::init_all(&[a.device(0).unwrap(), b.device(0).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("devices[1] (device 0) belongs to another CpuBackend than devices[0]"),
        "{e}"
    );
    assert!(!e.contains("given twice"), "{e}");
    let e = CpuCommunicator::init_all(&[a.device(0).unwrap(), a.device(0).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("device 0 is given twice"), "{e}");
}

#[test]
fn bad_arguments_are_refused_at_the_call() {
    let g = group(2);
    let a = upload(&g, 0, &[1f32; 4]);
    let mut short = upload(&g, 0, &[0f32; 3]);
    let e = g.comms[0]
        .all_reduce(&g.streams[0], &a, &mut short, ReduceOp::Sum)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                op: "all_reduce",
                what: "recv",
                expected: 4,
                actual: 3
            }
        ),
        "{e}"
    );
    let e = g.comms[0]
        .all_gather(&g.streams[0], &a, &mut short)
        .unwrap_err();
    assert!(
        matches!(e, Error::LengthMismatch { expected: 8, .. }),
        "{e}"
    );
    // Rank 0's communicator with rank 1's stream.
    let e = g.comms[0]
        .all_reduce(&g.streams[1], &a, &mut short, ReduceOp::Sum)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongDevice {
                what: "stream",
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains(
            "the stream runs on device 1, but this communicator's rank is on device 0; enqueue \
             a rank's collectives on a stream of its own device"
        ),
        "{e}"
    );
    let mut other = upload(&g, 1, &[0f32; 4]);
    let e = g.comms[0]
        .all_reduce(&g.streams[0], &a, &mut other, ReduceOp::Sum)
        .unwrap_err();
    assert!(matches!(e, Error::WrongDevice { what: "recv", .. }), "{e}");
    let mut buf = upload(&g, 0, &[0f32; 4]);
    let e = g.comms[0]
        .broadcast(&g.streams[0], &mut buf, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("root 2 is not a rank of this group of 2"), "{e}");
    let e = g.comms[0]
        .send(&g.streams[0], &a, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot send to itself"), "{e}");
    let e = g.comms[0]
        .recv(&g.streams[0], &mut buf, 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("peer 5 is not a rank"), "{e}");
    // Nothing was queued: the streams are clean.
    g.streams[0].synchronize().unwrap();
    let backend = CpuBackend::builder()
        .devices(1, DeviceProfile::custom("One", 1 << 20))
        .build();
    let d = backend.device(0).unwrap();
    let e = CpuCommunicator::init_all(&[d.clone(), d])
        .unwrap_err()
        .to_string();
    assert!(e.contains("device 0 is given twice"), "{e}");
    assert!(CpuCommunicator::init_all(&[]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random sizes, counts and ops, several collectives in a row on each rank: every result
    /// equals the sequential model, on every rank.
    #[test]
    fn sequences_of_collectives_match_the_model(
        size in 1usize..5,
        ops in proptest::collection::vec((0usize..4, 1usize..40, 0usize..4), 1..6),
    ) {
        let g = group(size);
        for (step, &(kind, n, op)) in ops.iter().enumerate() {
            let op = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min][op];
            let inputs: Vec<Vec<f32>> = (0..size).map(|r| input(r + step, n)).collect();
            let sends: Vec<_> = (0..size).map(|r| upload(&g, r, &inputs[r])).collect();
            let out_len = if kind == 1 { n * size } else { n };
            let mut outs: Vec<_> = (0..size).map(|r| upload(&g, r, &vec![0f32; out_len])).collect();
            let wide: Vec<Vec<f32>> = (0..size).map(|r| input(r + 3 * step, n * size)).collect();
            let wide_bufs: Vec<_> = (0..size).map(|r| upload(&g, r, &wide[r])).collect();
            for r in 0..size {
                let (c, s) = (&g.comms[r], &g.streams[r]);
                match kind {
                    0 => c.all_reduce(s, &sends[r], &mut outs[r], op).unwrap(),
                    1 => c.all_gather(s, &sends[r], &mut outs[r]).unwrap(),
                    2 => c.reduce_scatter(s, &wide_bufs[r], &mut outs[r], op).unwrap(),
                    _ => {
                        s.copy_d2d(&sends[r], &mut outs[r]).unwrap();
                        c.broadcast(s, &mut outs[r], step % size).unwrap()
                    }
                }
            }
            for r in 0..size {
                let want: Vec<f32> = match kind {
                    0 => (0..n).map(|i| reduce(op, inputs.iter().map(|x| x[i]))).collect(),
                    1 => inputs.concat(),
                    2 => (r * n..(r + 1) * n).map(|i| reduce(op, wide.iter().map(|x| x[i]))).collect(),
                    _ => inputs[step % size].clone(),
                };
                prop_assert_eq!(g.streams[r].clone_to_host(&outs[r]).unwrap(), want);
            }
        }
    }
}
