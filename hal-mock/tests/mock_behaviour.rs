//! Behaviour specific to the CPU backend: real asynchrony, fault injection, capacity profiles,
//! failures inside streams, lost devices.

use std::time::{Duration, Instant};

use ascend_hal::prelude::*;
use ascend_hal::{DeviceMemory, Error};
use hal_mock::{CpuBackend, CpuStream, DeviceProfile, MockOp};

type Buf<T> = DeviceBuffer<CpuBackend, T>;

fn small_backend() -> CpuBackend {
    CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
        .build()
}

/// Holds `stream` busy until the returned hold is released or dropped.
fn gate(stream: &CpuStream) -> hal_mock::StreamHold {
    stream.hold().unwrap()
}

#[test]
fn host_returns_before_queued_work_completes() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let mut buf = Buf::<u8>::zeros(&stream, 1 << 20).unwrap();
    stream.synchronize().unwrap();

    let open = gate(&stream);
    stream.memset(&mut buf, 0x42).unwrap(); // returns although the stream is blocked
    let done = stream.record_new_event().unwrap();
    assert!(
        !done.query().unwrap(),
        "the event completed before the stream ran its work"
    );
    assert!(!stream.query().unwrap());
    assert_eq!(
        stream.pending(),
        3,
        "gate, memset and record are all still queued"
    );

    open.release();
    done.synchronize().unwrap();
    assert!(done.query().unwrap());
    stream.synchronize().unwrap();
    assert_eq!(stream.pending(), 0);
    assert_eq!(
        stream.clone_to_host(&buf.slice(..4).unwrap()).unwrap(),
        vec![0x42; 4]
    );
}

#[test]
fn waiting_stream_really_waits_for_the_event() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let (producer, consumer) = (device.new_stream().unwrap(), device.new_stream().unwrap());
    let src = Buf::<u8>::from_slice(&producer, &[1; 64]).unwrap();
    let mut dst = Buf::<u8>::zeros(&consumer, 64).unwrap();
    consumer.synchronize().unwrap();

    let open = gate(&producer);
    let ready = producer.record_new_event().unwrap();
    consumer.wait(&ready).unwrap();
    consumer.copy_d2d(&src, &mut dst).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !consumer.query().unwrap(),
        "the consumer ran past an event not yet reached"
    );
    drop(open);
    assert_eq!(consumer.clone_to_host(&dst).unwrap(), vec![1; 64]);
}

#[test]
fn failure_inside_stream_is_reported_at_next_synchronize_naming_the_operation() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let mut buf = Buf::<u8>::zeros(&stream, 16).unwrap();
    stream.synchronize().unwrap();
    let calls_before = backend.faults().calls(MockOp::CopyD2d);
    backend.faults().fail_nth(MockOp::CopyD2d, 2).unwrap();

    let ones = Buf::<u8>::from_slice(&stream, &[1; 16]).unwrap();
    let twos = Buf::<u8>::from_slice(&stream, &[2; 16]).unwrap();
    let threes = Buf::<u8>::from_slice(&stream, &[3; 16]).unwrap();
    stream.copy_d2d(&ones, &mut buf).unwrap();
    stream.copy_d2d(&twos, &mut buf).unwrap(); // fails inside the stream, not here
    stream.copy_d2d(&threes, &mut buf).unwrap(); // skipped after the failure

    let err = stream.synchronize().unwrap_err();
    match &err {
        Error::StreamOperation { op, source, .. } => {
            assert_eq!(*op, "copy_d2d");
            assert_eq!(
                **source,
                Error::Injected {
                    op: "copy_d2d",
                    call: calls_before + 2
                }
            );
        }
        other => panic!("expected StreamOperation, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("copy_d2d on cpu:0/stream"), "{msg}");
    assert!(msg.contains("injected fault"), "{msg}");

    // Reported once; the stream works again, and the work after the failure did not run.
    stream.synchronize().unwrap();
    assert_eq!(stream.clone_to_host(&buf).unwrap(), vec![1; 16]);
}

#[test]
fn failure_reaches_event_waiters_on_other_streams() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let (a, b) = (device.new_stream().unwrap(), device.new_stream().unwrap());
    let mut buf = Buf::<u8>::zeros(&a, 16).unwrap();
    a.synchronize().unwrap();
    backend.faults().fail_nth(MockOp::Memset, 1).unwrap();
    a.memset(&mut buf, 9).unwrap();
    let event = a.record_new_event().unwrap();

    let from_event = event.synchronize().unwrap_err();
    assert!(
        matches!(&from_event, Error::StreamOperation { op: "memset", .. }),
        "{from_event:?}"
    );

    b.wait(&event).unwrap();
    let from_waiter = b.synchronize().unwrap_err();
    match &from_waiter {
        Error::StreamOperation {
            op: "wait", source, ..
        } => {
            assert!(matches!(
                **source,
                Error::StreamOperation { op: "memset", .. }
            ));
        }
        other => panic!("expected a failed wait, got {other:?}"),
    }
    assert!(matches!(
        from_waiter.root(),
        Error::Injected { op: "memset", .. }
    ));
    assert!(a.synchronize().unwrap_err().to_string().contains("memset"));
}

#[test]
fn injected_allocation_faults_change_nothing() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let before = device.memory_info().unwrap();

    backend.faults().fail_nth(MockOp::Allocate, 1).unwrap();
    let err = Buf::<f32>::alloc(&device, 10).unwrap_err();
    assert!(
        matches!(err, Error::Injected { op: "allocate", .. }),
        "{err:?}"
    );
    assert_eq!(device.memory_info().unwrap(), before);
    Buf::<f32>::alloc(&device, 10).unwrap(); // only the one call fails

    backend.faults().fail_allocations_above(Some(1 << 20));
    let err = Buf::<u8>::alloc(&device, (1 << 20) + 1).unwrap_err();
    assert!(err.is_out_of_memory(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("requested 1048577 B") && msg.contains("injected"),
        "{msg}"
    );
    Buf::<u8>::alloc(&device, 1 << 20).unwrap();
    backend.faults().clear();
    Buf::<u8>::alloc(&device, 2 << 20).unwrap();
    assert_eq!(device.memory_info().unwrap(), before);

    let err = backend.faults().fail_nth(MockOp::Allocate, 0).unwrap_err();
    assert!(err.to_string().contains("counts calls from 1"), "{err}");
    let err = "alloc".parse::<MockOp>().unwrap_err();
    assert!(err.to_string().contains("allocate, allocate_host"), "{err}");
}

#[test]
fn injected_call_faults_fail_at_the_call() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let event = device.new_event().unwrap();
    let call = |op: MockOp| match op {
        MockOp::NewStream => device.new_stream().map(|_| ()),
        MockOp::NewEvent => device.new_event().map(|_| ()),
        MockOp::Record => stream.record(&event),
        MockOp::Wait => stream.wait(&event),
        MockOp::Synchronize => stream.synchronize(),
        MockOp::AllocateHost => device.allocate_host(64).map(|_| ()),
        other => panic!("{other} is not a call-time fault"),
    };
    for op in [
        MockOp::NewStream,
        MockOp::NewEvent,
        MockOp::Record,
        MockOp::Wait,
        MockOp::Synchronize,
        MockOp::AllocateHost,
    ] {
        call(op).unwrap();
        backend.faults().fail_nth(op, 2).unwrap();
        call(op).unwrap();
        let err = call(op).unwrap_err();
        assert_eq!(
            err,
            Error::Injected {
                op: op.name(),
                call: backend.faults().calls(op)
            }
        );
        call(op).unwrap();
    }
    stream.synchronize().unwrap();
}

#[test]
fn capacity_follows_the_profile_and_only_allocated_bytes_are_backed() {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::ascend_910b1())
        .device(DeviceProfile::ascend_910b4())
        .build();
    let big = backend.device(0).unwrap();
    let small = backend.device(1).unwrap();
    assert_eq!(big.memory_info().unwrap().total, 64 << 30);
    assert_eq!(small.memory_info().unwrap().total, 32 << 30);
    assert!(big.name().contains("Ascend910B1"));

    // 20 GiB on a 32 GiB device: reserved, but the host only backs pages that are touched.
    let held = Buf::<u8>::alloc(&small, 20 << 30).unwrap();
    let info = small.memory_info().unwrap();
    assert_eq!(
        info.used(),
        (20 << 30) + (2 << 20),
        "rounded up to 2 MiB huge pages"
    );
    let err = Buf::<u8>::alloc(&small, 12 << 30).unwrap_err();
    match err {
        Error::OutOfMemory {
            requested,
            free,
            total,
            ref device,
            ..
        } => {
            assert_eq!(requested, 12 << 30);
            assert_eq!(free, info.free);
            assert_eq!(total, 32 << 30);
            assert_eq!(device, "cpu:1");
        }
        ref other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert!(
        err.to_string().contains("12884901888 B (12.00 GiB)"),
        "{err}"
    );
    // The other device is unaffected.
    assert_eq!(big.memory_info().unwrap().free, 64 << 30);
    drop(held);
    assert_eq!(small.memory_info().unwrap().free, 32 << 30);
}

#[test]
fn lost_device_with_queued_work_fails_everything_without_hanging() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let (a, b) = (device.new_stream().unwrap(), device.new_stream().unwrap());
    let mut buf = Buf::<u8>::zeros(&a, 4096).unwrap();
    let open = gate(&a);
    for _ in 0..100 {
        a.memset(&mut buf, 1).unwrap();
    }
    let event = a.record_new_event().unwrap();
    b.wait(&event).unwrap();
    backend.lose_device(0).unwrap();
    drop(open);

    let started = Instant::now();
    assert!(a.synchronize().unwrap_err().is_device_lost());
    assert!(event.synchronize().unwrap_err().is_device_lost());
    assert!(b.synchronize().unwrap_err().is_device_lost());
    assert!(device.synchronize().unwrap_err().is_device_lost());
    assert!(a.record(&event).unwrap_err().is_device_lost());
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = backend.device(0).unwrap_err();
    assert!(err.to_string().contains("device cpu:0 is lost"), "{err}");
}

#[test]
fn panicking_host_task_is_an_error_not_a_hang() {
    let backend = small_backend();
    let stream = backend.device(0).unwrap().new_stream().unwrap();
    stream
        .enqueue_host_task("kernel", || panic!("index out of range"))
        .unwrap();
    let err = stream.synchronize().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("kernel") && msg.contains("index out of range"),
        "{msg}"
    );
    stream.enqueue_host_task("ok", || Ok(())).unwrap();
    stream.synchronize().unwrap();
}

#[test]
fn stale_and_foreign_addresses_are_rejected() {
    let backend = CpuBackend::builder()
        .devices(2, DeviceProfile::custom("Tiny", 1 << 20))
        .build();
    let d0 = backend.device(0).unwrap();
    let d1 = backend.device(1).unwrap();
    let stream = d0.new_stream().unwrap();
    let memory = d0.allocate(256).unwrap();
    let stale = memory.ptr();
    drop(memory);
    // SAFETY: deliberately breaks the "live allocation" precondition; the CPU backend must turn
    // it into an error instead of touching memory.
    let err = unsafe { stream.enqueue_memset(stale, 0, 16) }.unwrap_err();
    assert!(
        err.to_string().contains("not inside live memory of cpu:0"),
        "{err}"
    );

    let foreign = d1.allocate(256).unwrap();
    // SAFETY: as above, with another device's address.
    let err = unsafe { stream.enqueue_memset(foreign.ptr(), 0, 16) }.unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { op: "memset", .. }),
        "{err:?}"
    );

    let own = d0.allocate(256).unwrap();
    // SAFETY: as above, running 1 byte past the end.
    let err = unsafe { stream.enqueue_memset(own.ptr().add(128), 0, 129) }.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    let err = d0.allocate(0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "allocate", .. }));
}

#[test]
fn poisoned_allocations_read_as_nan() {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Tiny", 1 << 20))
        .poison_allocations(true)
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let f = Buf::<f32>::alloc(&device, 8).unwrap();
    assert!(stream.clone_to_host(&f).unwrap().iter().all(|x| x.is_nan()));
    let h = Buf::<half::f16>::alloc(&device, 8).unwrap();
    assert!(stream.clone_to_host(&h).unwrap().iter().all(|x| x.is_nan()));
}

#[test]
fn discover_falls_back_to_the_cpu_backend_and_says_why() {
    use ascend_hal::{acl::AclBackend, discover_using, BackendPreference};
    // The loader is passed in, so the result does not depend on what this machine has.
    let missing = || AclBackend::load_from("/nonexistent/libascendcl.so");
    let d = discover_using(BackendPreference::Auto, missing, || Ok(CpuBackend::new())).unwrap();
    assert_eq!(d.name(), "cpu");
    assert!(
        d.reason.contains("ACL backend is unavailable")
            && d.reason.contains("libascendcl.so not found in 1 place(s)"),
        "{}",
        d.reason
    );
    let forced = discover_using(BackendPreference::Cpu, missing, || Ok(CpuBackend::new())).unwrap();
    assert!(
        forced.reason.contains("ASCEND_HAL_BACKEND=cpu"),
        "{}",
        forced.reason
    );
    let err =
        discover_using(BackendPreference::Acl, missing, || Ok(CpuBackend::new())).unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("ASCEND_HAL_BACKEND=acl") && msg.contains("/nonexistent"),
        "{msg}"
    );

    struct Count;
    impl ascend_hal::BackendVisitor for Count {
        type Output = usize;
        fn visit<B: Backend>(self, backend: B) -> usize {
            backend.device_count().unwrap()
        }
    }
    assert_eq!(d.run(Count), 1);
}

#[test]
fn virtual_memory_maps_chunks_into_one_contiguous_range() {
    use ascend_hal::{DevicePtr, VirtualRange};
    use hal_mock::VMM_GRANULARITY as G;
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Tiny", 8 * G as u64))
        .build();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    assert_eq!(device.virtual_memory_granularity(), Some(G));
    let range = device.reserve_virtual(4 * G).unwrap();
    assert_eq!(
        device.memory_info().unwrap().used(),
        0,
        "a reservation costs no memory"
    );
    let a = device.allocate_physical(G).unwrap();
    let b = device.allocate_physical(2 * G).unwrap();
    assert_eq!(device.memory_info().unwrap().used(), 3 * G as u64);
    // SAFETY: offsets are granular, inside the range, unmapped; each chunk mapped once.
    unsafe {
        device.map(&range, 0, &a).unwrap();
        device.map(&range, G, &b).unwrap();
        let err = device.map(&range, G, &a).unwrap_err();
        assert!(err.to_string().contains("already mapped"), "{err}");
    }
    // A write and a read across the chunk boundary.
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let at = DevicePtr(range.ptr().0 + G as u64 - 1000);
    let mut back = vec![0u8; data.len()];
    // SAFETY: `data` and `back` outlive the blocking calls; the range is mapped there.
    unsafe {
        stream
            .copy_h2d_blocking(data.as_ptr(), at, data.len())
            .unwrap();
        stream
            .copy_d2h_blocking(at, back.as_mut_ptr(), back.len())
            .unwrap();
    }
    assert_eq!(back, data);
    // Past the mapped part is an error, not a write.
    let end = DevicePtr(range.ptr().0 + 3 * G as u64 - 10);
    // SAFETY: deliberately out of the mapped part; the backend must refuse.
    assert!(unsafe { stream.enqueue_memset(end, 0, 20) }.is_err());
    // SAFETY: nothing queued uses the chunks any more (the copies above were blocking).
    unsafe {
        device.unmap(&range, G).unwrap();
        device.unmap(&range, 0).unwrap();
    }
    // SAFETY: as above: now unmapped, so refused.
    assert!(unsafe { stream.enqueue_memset(at, 0, 1) }.is_err());
    drop((a, b));
    assert_eq!(device.memory_info().unwrap().used(), 0);
    let err = device.allocate_physical(9 * G).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    assert!(device.reserve_virtual(G + 1).is_err());
}

/// The default device is sized from the host's memory (half of it, 1..=64 GiB), and discovery
/// says so; a 64 GiB default on a small host made default KV sizing ask for more than the host
/// has.
#[test]
fn the_default_device_is_sized_from_the_host_and_says_so() {
    use hal_mock::DeviceProfile;
    const GIB: u64 = 1 << 30;
    assert_eq!(DeviceProfile::host_sized_memory(Some(24 * GIB)), 12 * GIB);
    assert_eq!(DeviceProfile::host_sized_memory(Some(GIB)), GIB);
    assert_eq!(DeviceProfile::host_sized_memory(Some(1024 * GIB)), 64 * GIB);
    assert_eq!(DeviceProfile::host_sized_memory(None), 8 * GIB);
    let device = hal_mock::CpuBackend::new().device(0).unwrap();
    assert_eq!(device.profile(), &DeviceProfile::host_sized());
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    if let Some(host) = host {
        assert!(device.memory_info().unwrap().total <= host.max(2 * GIB));
    }
    let d = ascend_hal::discover_with(ascend_hal::BackendPreference::Cpu, || {
        Ok(hal_mock::CpuBackend::new())
    })
    .unwrap();
    assert!(
        !d.reason.contains("of memory"),
        "the HAL knows nothing of CPU devices"
    );
    // SAFETY: this test binary reads ASCEND_HAL_BACKEND only here.
    unsafe { std::env::set_var("ASCEND_HAL_BACKEND", "cpu") };
    let d = hal_mock::discover().unwrap();
    let two = hal_mock::discover_devices(2).unwrap();
    // SAFETY: as above.
    unsafe { std::env::remove_var("ASCEND_HAL_BACKEND") };
    assert!(d.reason.contains("its device has"), "{}", d.reason);
    assert!(
        d.reason.contains("DeviceProfile for another size"),
        "{}",
        d.reason
    );
    assert!(two.reason.contains("2 devices of"), "{}", two.reason);
}

#[test]
fn split_views_write_their_own_elements_and_refuse_a_split_past_the_end() {
    let backend = small_backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let mut buf = Buf::<u8>::zeros(&stream, 8).unwrap();
    let (mut head, tail) = buf.view_mut().split_at(3).unwrap();
    assert_eq!((head.len(), tail.len()), (3, 5));
    let (mut middle, mut last) = tail.split_at(5).unwrap();
    assert_eq!(last.len(), 0, "a split at the end leaves an empty tail");
    stream.memset(&mut head, 1).unwrap();
    stream.memset(&mut middle, 2).unwrap();
    stream.memset(&mut last, 9).unwrap();
    assert_eq!(
        stream.clone_to_host(&buf).unwrap(),
        vec![1, 1, 1, 2, 2, 2, 2, 2]
    );

    let (front, back) = buf.view().split_at(6).unwrap();
    assert_eq!(
        stream.clone_to_host(&front).unwrap(),
        vec![1, 1, 1, 2, 2, 2]
    );
    assert_eq!(stream.clone_to_host(&back).unwrap(), vec![2, 2]);

    let err = buf.view_mut().split_at(9).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                op: "DeviceSliceMut::split_at",
                start: 0,
                end: 9,
                len: 8
            }
        ),
        "{err:?}"
    );
    let err = buf.view().split_at(usize::MAX).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                op: "DeviceSlice::split_at",
                start: 0,
                end: usize::MAX,
                len: 8
            }
        ),
        "{err:?}"
    );
    // The failed splits changed nothing.
    assert_eq!(
        stream.clone_to_host(&buf).unwrap(),
        vec![1, 1, 1, 2, 2, 2, 2, 2]
    );
}
