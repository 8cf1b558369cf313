//! The HCCL binding (`ascend_hal::acl::hccl`) over the fake's HCCL functions: groups made with
//! `HcclCommInitAll` and with root information joined from one thread per rank, collectives
//! against a sequential model, and failures (the library missing, an injected `HcclResult`,
//! ranks calling different collectives) reported by name. One test function: the library's
//! location is process-wide state (`ASCEND_HAL_HCCL_LIB`).

// Ranks index several parallel vectors (communicators, streams, buffers, inputs).
#![allow(clippy::needless_range_loop)]

use ascend_hal::acl::hccl::{Hccl, HcclCommunicator, RootInfo};
use ascend_hal::acl::{AclBackend, AclDevice, AclStream};
use ascend_hal::comm::{Communicator, CommunicatorExt, ReduceOp};
use ascend_hal::prelude::*;
use ascend_hal::Error;
use half::f16;

mod common;

const RANKS: usize = 4;

/// The fake, configured with four devices before this binary's first `aclInit`.
fn configure() -> std::path::PathBuf {
    let path = ascendcl_fake::library_path().expect("libascendcl_fake.so is built");
    let code = common::call_str(
        &path,
        "aclfakeConfigure",
        "devices=4;memory=268435456;soc=Ascend910B4",
    );
    assert!(
        code == 0 || code == 100_002,
        "aclfakeConfigure returned {code}"
    );
    path
}

fn set_faults(path: &std::path::PathBuf, spec: &str) {
    assert_eq!(
        common::call_str(path, "aclfakeSetFaults", spec),
        0,
        "{spec}"
    );
}

fn input(r: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 5 + r * 3) % 7) as f32 - 2.0).collect()
}

fn check_collectives(comms: &[HcclCommunicator], streams: &[AclStream]) {
    let (size, n) = (comms.len(), 12usize);
    let inputs: Vec<Vec<f32>> = (0..size).map(|r| input(r, n)).collect();
    // All-reduce (sum) and, in f16, max.
    let sends: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::from_slice(&streams[r], &inputs[r]).unwrap())
        .collect();
    let mut recvs: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::<AclBackend, f32>::zeros(&streams[r], n).unwrap())
        .collect();
    let halves: Vec<Vec<f16>> = inputs
        .iter()
        .map(|x| x.iter().map(|&v| f16::from_f32(v)).collect())
        .collect();
    let mut hbufs: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::from_slice(&streams[r], &halves[r]).unwrap())
        .collect();
    for r in 0..size {
        comms[r]
            .all_reduce(&streams[r], &sends[r], &mut recvs[r], ReduceOp::Sum)
            .unwrap();
        comms[r]
            .all_reduce_in_place(&streams[r], &mut hbufs[r], ReduceOp::Max)
            .unwrap();
    }
    let sum: Vec<f32> = (0..n).map(|i| inputs.iter().map(|x| x[i]).sum()).collect();
    let max: Vec<f16> = (0..n)
        .map(|i| f16::from_f32(inputs.iter().map(|x| x[i]).fold(f32::MIN, f32::max)))
        .collect();
    for r in 0..size {
        assert_eq!(
            streams[r].clone_to_host(&recvs[r]).unwrap(),
            sum,
            "rank {r}"
        );
        assert_eq!(
            streams[r].clone_to_host(&hbufs[r]).unwrap(),
            max,
            "rank {r}"
        );
    }
    // All-gather, reduce-scatter, broadcast, a ring of sends.
    let mut gathered: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::<AclBackend, f32>::zeros(&streams[r], n * size).unwrap())
        .collect();
    let wide: Vec<Vec<f32>> = (0..size).map(|r| input(r + 1, n * size)).collect();
    let wides: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::from_slice(&streams[r], &wide[r]).unwrap())
        .collect();
    let mut shares: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::<AclBackend, f32>::zeros(&streams[r], n).unwrap())
        .collect();
    let mut bcast: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::from_slice(&streams[r], &inputs[r]).unwrap())
        .collect();
    let mut ring: Vec<_> = (0..size)
        .map(|r| DeviceBuffer::<AclBackend, f32>::zeros(&streams[r], n).unwrap())
        .collect();
    for r in 0..size {
        let (c, s) = (&comms[r], &streams[r]);
        c.all_gather(s, &sends[r], &mut gathered[r]).unwrap();
        c.reduce_scatter(s, &wides[r], &mut shares[r], ReduceOp::Sum)
            .unwrap();
        c.broadcast(s, &mut bcast[r], size - 1).unwrap();
        if size > 1 {
            c.send(s, &sends[r], (r + 1) % size).unwrap();
            c.recv(s, &mut ring[r], (r + size - 1) % size).unwrap();
        }
    }
    for r in 0..size {
        let s = &streams[r];
        assert_eq!(s.clone_to_host(&gathered[r]).unwrap(), inputs.concat());
        let share: Vec<f32> = (r * n..(r + 1) * n)
            .map(|i| wide.iter().map(|x| x[i]).sum())
            .collect();
        assert_eq!(s.clone_to_host(&shares[r]).unwrap(), share);
        assert_eq!(s.clone_to_host(&bcast[r]).unwrap(), inputs[size - 1]);
        if size > 1 {
            assert_eq!(
                s.clone_to_host(&ring[r]).unwrap(),
                inputs[(r + size - 1) % size]
            );
        }
    }
}

#[test]
fn hccl_groups_collectives_and_failures_over_the_fake() {
    let path = configure();
    let backend = AclBackend::load_from(&path).unwrap();
    let devices: Vec<AclDevice> = (0..RANKS).map(|i| backend.device(i).unwrap()).collect();

    // Not found: the override names nothing, and nothing else has libhccl.so.
    // SAFETY: this test binary's only test; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("ASCEND_HAL_HCCL_LIB", "/nonexistent/libhccl.so") };
    let e = Hccl::load(&backend).unwrap_err();
    assert!(
        matches!(
            e,
            Error::HcclLibraryNotFound {
                library: "libhccl.so",
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("/nonexistent/libhccl.so") && text.contains("set_env.sh"),
        "{text}"
    );

    // SAFETY: as above.
    unsafe { std::env::set_var("ASCEND_HAL_HCCL_LIB", &path) };
    let hccl = Hccl::load(&backend).unwrap();
    assert_eq!(hccl.library_path(), path.to_str().unwrap());

    // One process, every device: HcclCommInitAll.
    let comms = HcclCommunicator::init_all(&devices).unwrap();
    let streams: Vec<AclStream> = devices.iter().map(|d| d.new_stream().unwrap()).collect();
    for (r, c) in comms.iter().enumerate() {
        assert_eq!((c.rank(), c.size(), c.device_ordinal()), (r, RANKS, r));
    }
    check_collectives(&comms, &streams);

    // An injected HcclResult, named.
    set_faults(&path, "HcclAllReduce:1:7");
    let mut buf = DeviceBuffer::<AclBackend, f32>::zeros(&streams[0], 4).unwrap();
    let e = comms[0]
        .all_reduce_in_place(&streams[0], &mut buf, ReduceOp::Sum)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Hccl {
                function: "HcclAllReduce",
                code: 7,
                name: "HCCL_E_UNAVAIL",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("resource unavailable"), "{e}");
    set_faults(&path, "");

    // Ranks calling different collectives: every stream's synchronisation fails, naming both.
    let a = DeviceBuffer::<AclBackend, f32>::zeros(&streams[0], 4).unwrap();
    let mut b = DeviceBuffer::<AclBackend, f32>::zeros(&streams[0], 4).unwrap();
    comms[0]
        .all_reduce(&streams[0], &a, &mut b, ReduceOp::Sum)
        .unwrap();
    let mut bufs: Vec<_> = (1..RANKS)
        .map(|r| DeviceBuffer::<AclBackend, f32>::zeros(&streams[r], 4).unwrap())
        .collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        comms[i + 1].broadcast(&streams[i + 1], buf, 0).unwrap();
    }
    for s in &streams {
        let e = s.synchronize().unwrap_err().to_string();
        assert!(e.contains("does not match across ranks"), "{e}");
        assert!(
            e.contains("HcclAllReduce") || e.contains("HcclBroadcast"),
            "{e}"
        );
    }
    drop(comms);

    // One thread per rank: root information from rank 0, joined by every rank.
    let root = hccl.root_info(&devices[0]).unwrap();
    let bytes = root.as_bytes().to_vec();
    assert!(RootInfo::from_bytes(&bytes[..100]).is_err());
    let joined: Vec<HcclCommunicator> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..RANKS)
            .map(|r| {
                let (device, bytes) = (devices[r].clone(), bytes.clone());
                scope.spawn(move || {
                    let root = RootInfo::from_bytes(&bytes).unwrap();
                    HcclCommunicator::init_root_info(&device, RANKS, &root, r).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let streams: Vec<AclStream> = devices.iter().map(|d| d.new_stream().unwrap()).collect();
    check_collectives(&joined, &streams);
    let e = HcclCommunicator::init_root_info(&devices[0], RANKS, &root, RANKS).unwrap_err();
    assert!(e.to_string().contains("rank 4 of a group of 4"), "{e}");
}
