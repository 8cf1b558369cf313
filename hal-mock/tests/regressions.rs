//! Regression tests for what an outside review found in the CPU backend and the safe layer over
//! it: each failed (crashed, hung or corrupted memory) before its fix.

use std::sync::mpsc;
use std::time::Duration;

use ascend_hal::prelude::*;
use ascend_hal::Error;
use hal_mock::{CpuBackend, DeviceProfile, MockOp};

fn backend(mib: u64) -> CpuBackend {
    CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", mib << 20))
        .build()
}

/// Runs `f` on a thread and fails if it has not returned after `secs` seconds (a hang).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} hung for {secs} s"))
}

/// A fence that cannot be recorded, with a synchronisation that fails too, used to leave a
/// queued device-to-host copy unfenced; dropping the pinned buffer freed its memory and the copy
/// then wrote 64 KiB into whatever reused it.
#[test]
fn an_unfenced_pinned_buffer_is_poisoned_and_leaked_not_freed() {
    let backend = backend(64);
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    const N: usize = 64 << 10;
    let src = DeviceBuffer::<CpuBackend, u8>::from_slice(&stream, &vec![0xAB; N]).unwrap();
    let mut host = PinnedBuffer::<CpuBackend, u8>::new(&device, N).unwrap();
    let open = stream.hold().unwrap();
    backend.faults().fail_nth(MockOp::Record, 1).unwrap();
    backend.faults().fail_nth(MockOp::Synchronize, 1).unwrap();
    let err = stream.copy_d2h(&src, &mut host).unwrap_err();
    assert!(
        matches!(err, Error::Injected { op: "record", .. }),
        "{err:?}"
    );
    let err = host.as_slice().unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err:?}");
    assert!(err.to_string().contains("never freed"), "{err}");
    // A poisoned buffer takes no more copies either.
    let err = stream.copy_d2h(&src, &mut host).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err:?}");
    drop(host); // leaked, with a warning: the queued copy still targets it
    let bystander = vec![0u8; N]; // what the freed memory would have been reused for
    drop(open);
    stream.synchronize().unwrap();
    assert!(
        bystander.iter().all(|&b| b == 0),
        "the queued copy wrote into memory the buffer no longer owned"
    );
}

/// A host task that synchronises its own stream (or the device) waited for itself forever.
#[test]
fn a_host_task_waiting_for_its_own_stream_is_an_error_not_a_hang() {
    let backend = backend(64);
    let device = backend.device(0).unwrap();
    let stream = std::sync::Arc::new(device.new_stream().unwrap());
    let inner = std::sync::Arc::clone(&stream);
    let dev = device.clone();
    let (tx, rx) = mpsc::channel();
    stream
        .enqueue_host_task("waits for itself", move || {
            let own = inner.synchronize();
            let all = dev.synchronize();
            let _ = tx.send((own, all));
            Ok(())
        })
        .unwrap();
    let (own, all) = rx.recv_timeout(Duration::from_secs(20)).expect("hung");
    for err in [own.unwrap_err(), all.unwrap_err()] {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert!(
            err.to_string().contains("waits for its own stream"),
            "{err}"
        );
    }
    within(20, "the stream after the task", move || {
        stream.synchronize().unwrap()
    });
}

/// A host task that waits for an event recorded after it on its own stream.
#[test]
fn a_host_task_waiting_for_a_later_event_of_its_stream_is_an_error() {
    let backend = backend(64);
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let event = std::sync::Arc::new(device.new_event().unwrap());
    let (tx, rx) = mpsc::channel();
    let (go, gate) = mpsc::channel::<()>();
    let e = std::sync::Arc::clone(&event);
    stream
        .enqueue_host_task("waits for a later event", move || {
            let _ = gate.recv(); // until the record below is queued
            let _ = tx.send(e.synchronize());
            Ok(())
        })
        .unwrap();
    stream.record(&event).unwrap();
    go.send(()).unwrap();
    let err = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("hung")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot complete before the task does"),
        "{err}"
    );
    stream.synchronize().unwrap();
}

/// Recording an event published its signal before queueing the record, so a concurrent wait on
/// the same stream could queue ahead of it and the worker waited for itself (3 runs of 3). The
/// model check (`tests/model_check.rs`) covers every interleaving; this runs the real threads.
#[test]
fn concurrent_record_and_wait_on_one_stream_do_not_deadlock() {
    within(60, "record/wait race", || {
        let backend = backend(64);
        let device = backend.device(0).unwrap();
        let stream = std::sync::Arc::new(device.new_stream().unwrap());
        let event = std::sync::Arc::new(device.new_event().unwrap());
        let recorder = {
            let (stream, event) = (stream.clone(), event.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    stream.record(&event).unwrap();
                }
            })
        };
        for _ in 0..20_000 {
            stream.wait(&event).unwrap();
        }
        recorder.join().unwrap();
        stream.synchronize().unwrap();
    });
}

/// The device kept a `Weak` for every stream ever created until its next synchronisation.
#[test]
fn dropped_streams_leave_no_trace_on_the_device() {
    let backend = backend(64);
    let device = backend.device(0).unwrap();
    let keep = device.new_stream().unwrap();
    for _ in 0..500 {
        drop(device.new_stream().unwrap());
    }
    assert_eq!(device.tracked_streams(), 1);
    drop(keep);
    assert_eq!(device.tracked_streams(), 0);
}

/// Two `CpuBackend` values handed out the same device addresses, so a buffer of one written
/// through the other's stream landed in an unrelated buffer.
#[test]
fn two_backends_never_share_device_addresses() {
    let (one, two) = (backend(64), backend(64));
    let (d1, d2) = (one.device(0).unwrap(), two.device(0).unwrap());
    let s2 = d2.new_stream().unwrap();
    let mut a = DeviceBuffer::<CpuBackend, u8>::alloc(&d1, 4096).unwrap();
    let b = DeviceBuffer::<CpuBackend, u8>::zeros(&s2, 4096).unwrap();
    assert_ne!(a.view().device_ptr(), b.view().device_ptr());
    let err = s2.copy_h2d_sync(&[7u8; 4096], &mut a).unwrap_err();
    assert!(err.to_string().contains("not inside live memory"), "{err}");
    assert_eq!(
        s2.clone_to_host(&b).unwrap(),
        vec![0; 4096],
        "b was written"
    );
}

/// Dropping a buffer gave its capacity back at once although a queued copy still used it.
#[test]
fn capacity_comes_back_when_queued_work_is_done() {
    let backend = backend(64);
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let base = device.memory_info().unwrap().used();
    let mut buf = DeviceBuffer::<CpuBackend, u8>::alloc(&device, 3 << 20).unwrap();
    let held = device.memory_info().unwrap().used() - base;
    assert_eq!(held, 4 << 20, "3 MiB + ACL's padding, in 2 MiB pages");
    let open = stream.hold().unwrap();
    stream.memset(&mut buf, 1).unwrap();
    drop(buf);
    assert_eq!(
        device.memory_info().unwrap().used() - base,
        held,
        "capacity returned while a queued memset still uses the memory"
    );
    drop(open);
    stream.synchronize().unwrap();
    assert_eq!(device.memory_info().unwrap().used(), base);
}

/// `empty_cache` synchronised the device *before* taking the allocator's lock, so a block
/// freed (after new work was queued on it) between the two was released under that work. The
/// lock is now held across the synchronisation: a free that arrives meanwhile waits for
/// `empty_cache` to finish, and so cannot slip its block in between.
#[test]
fn a_block_freed_during_empty_cache_waits_for_it() {
    use ascend_hal::alloc::{Allocator, CachingAllocator};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let backend = backend(256);
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let alloc = Arc::new(
        CachingAllocator::<CpuBackend>::new(&device, "expandable_segments:True".parse().unwrap())
            .unwrap(),
    );
    let block = alloc.allocate(4 << 20, &stream).unwrap();
    let open = stream.hold().unwrap(); // empty_cache's device synchronisation waits for this
    let gate_opened = Arc::new(AtomicBool::new(false));
    let emptier = {
        let alloc = Arc::clone(&alloc);
        std::thread::spawn(move || alloc.empty_cache())
    };
    std::thread::sleep(Duration::from_millis(200)); // the emptier is now synchronising
    let freer = {
        let gate_opened = Arc::clone(&gate_opened);
        std::thread::spawn(move || {
            drop(block);
            gate_opened.load(Ordering::SeqCst)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    gate_opened.store(true, Ordering::SeqCst);
    drop(open);
    emptier.join().unwrap().unwrap();
    assert!(
        freer.join().unwrap(),
        "the block was freed while empty_cache was between its synchronisation and its lock"
    );
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved, 0);
}
