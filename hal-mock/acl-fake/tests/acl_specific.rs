//! ACL-specific behaviour over the fake runtime: use from many threads (the context binding),
//! every injected ACL error surfacing by name, and what the fake itself enforces.
//!
//! The fake's fault plan is process-wide, so these tests run one at a time under `SERIAL`.

mod common;

use std::ffi::c_void;
use std::sync::Mutex;

use ascend_hal::acl::AclBackend;
use ascend_hal::prelude::*;
use ascend_hal::Error;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

type Buf<T> = DeviceBuffer<AclBackend, T>;

#[test]
fn handles_work_from_threads_that_never_called_acl() {
    let _s = serial();
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let event = device.new_event().unwrap();
    let mut buf = Buf::<i32>::zeros(&stream, 1024).unwrap();
    let host = PinnedBuffer::<AclBackend, i32>::from_slice(&device, &[7; 1024]).unwrap();

    // Fresh threads have no current context: without the binding every call below would fail
    // with ACL_ERROR_RT_CONTEXT_NULL.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            stream.copy_h2d(&host, &mut buf).unwrap();
            stream.record(&event).unwrap();
        });
    });
    std::thread::scope(|scope| {
        scope.spawn(|| {
            event.synchronize().unwrap();
            assert_eq!(stream.clone_to_host(&buf).unwrap(), vec![7; 1024]);
        });
    });

    // Eight threads, each with its own stream on one device, and two devices interleaved.
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            let backend = backend.clone();
            scope.spawn(move || {
                let device = backend.device((t % 2) as usize).unwrap();
                let stream = device.new_stream().unwrap();
                for round in 0..10u32 {
                    let data: Vec<i32> = (0..4096).map(|i| (i * t + round) as i32).collect();
                    let d = Buf::<i32>::from_slice(&stream, &data).unwrap();
                    let mut e = Buf::<i32>::alloc(&device, data.len()).unwrap();
                    stream.copy_d2d(&d, &mut e).unwrap();
                    assert_eq!(
                        stream.clone_to_host(&e).unwrap(),
                        data,
                        "thread {t} round {round}"
                    );
                }
            });
        }
    });
}

#[test]
fn the_fake_enforces_a_current_context() {
    let _s = serial();
    let _backend = common::backend();
    let code = std::thread::spawn(|| {
        // SAFETY: the fake exports `aclrtMalloc` with the ACL signature; the out-pointer is
        // valid. This thread never set a device.
        unsafe {
            let lib = common::library(&common::fake_path());
            let malloc: libloading::Symbol<
                '_,
                unsafe extern "C" fn(*mut *mut c_void, usize, u32) -> i32,
            > = lib.get(b"aclrtMalloc").unwrap();
            let mut p = std::ptr::null_mut();
            malloc(&mut p, 64, 0)
        }
    })
    .join()
    .unwrap();
    assert_eq!(code, 107_002, "ACL_ERROR_RT_CONTEXT_NULL");
}

/// Each row: the fault to inject, what to do, and the ACL name the error must carry.
#[test]
fn every_injected_error_surfaces_by_name() {
    let _s = serial();
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let mut buf = Buf::<u8>::zeros(&stream, 256).unwrap();
    let mut buf2 = Buf::<u8>::zeros(&stream, 256).unwrap();
    let host = PinnedBuffer::<AclBackend, u8>::new(&device, 256).unwrap();
    stream.synchronize().unwrap();

    type Action<'a> = Box<dyn FnMut() -> ascend_hal::Result<()> + 'a>;
    let cases: Vec<(&str, &str, &str, Action<'_>)> = vec![
        (
            "aclrtCreateStream:1:207008",
            "aclrtCreateStream",
            "ACL_ERROR_RT_NO_STREAM_RESOURCE",
            Box::new(|| device.new_stream().map(|_| ())),
        ),
        (
            "aclrtCreateEventWithFlag:1:207007",
            "aclrtCreateEventWithFlag",
            "ACL_ERROR_RT_NO_EVENT_RESOURCE",
            Box::new(|| device.new_event().map(|_| ())),
        ),
        (
            "aclrtMallocHost:1:200000",
            "aclrtMallocHost",
            "ACL_ERROR_BAD_ALLOC",
            Box::new(|| PinnedBuffer::<AclBackend, u8>::new(&device, 8).map(|_| ())),
        ),
        (
            "aclrtGetMemInfo:1:507899",
            "aclrtGetMemInfo",
            "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
            Box::new(|| device.memory_info().map(|_| ())),
        ),
        (
            "aclrtMemsetAsync:1:107008",
            "aclrtMemsetAsync",
            "ACL_ERROR_RT_ADDR_UNALIGNED",
            Box::new(|| stream.memset(&mut Buf::<u8>::alloc(&device, 8)?, 0)),
        ),
        (
            "aclrtMemcpyAsync:1:507052",
            "aclrtMemcpyAsync",
            "ACL_ERROR_RT_COPY_DATA",
            Box::new(|| stream.copy_h2d(&host, &mut buf)),
        ),
        (
            "aclrtSynchronizeStream:1:507046",
            "aclrtSynchronizeStream",
            "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
            Box::new(|| stream.synchronize()),
        ),
        (
            "aclrtSynchronizeDevice:1:507001",
            "aclrtSynchronizeDevice",
            "ACL_ERROR_RT_TS_ERROR",
            Box::new(|| device.synchronize()),
        ),
        (
            "aclrtRecordEvent:1:107003",
            "aclrtRecordEvent",
            "ACL_ERROR_RT_STREAM_CONTEXT",
            Box::new(|| stream.record_new_event().map(|_| ())),
        ),
        (
            "aclrtMemcpy:1:507013",
            "aclrtMemcpy",
            "ACL_ERROR_RT_SYS_DMA",
            Box::new(|| stream.copy_h2d_sync(&[1u8; 256], &mut buf2)),
        ),
        (
            "aclrtGetDeviceCount:1:207004",
            "aclrtGetDeviceCount",
            "ACL_ERROR_RT_NO_DEVICE",
            Box::new(|| backend.device_count().map(|_| ())),
        ),
    ];
    for (fault, function, name, mut action) in cases {
        common::set_faults(fault);
        let err = action().expect_err(fault);
        let msg = err.to_string();
        match err.root() {
            Error::Acl {
                function: f,
                name: n,
                recent,
                ..
            } => {
                assert_eq!((*f, *n), (function, name), "{fault}: {msg}");
                assert!(
                    recent.contains("injected fault"),
                    "{fault}: recent message {recent:?}"
                );
            }
            other => panic!("{fault}: expected an ACL error, got {other:?}"),
        }
        assert!(
            msg.contains(function) && msg.contains(name),
            "{fault}: {msg}"
        );
        common::set_faults("");
        stream.synchronize().unwrap();
    }

    // Out of memory becomes `OutOfMemory` with the numbers, keeping the ACL name.
    common::set_faults("aclrtMalloc:1:207001");
    let err = Buf::<u8>::alloc(&device, 1 << 20).unwrap_err();
    assert!(err.is_out_of_memory(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("requested 1048576 B") && msg.contains("ACL_ERROR_RT_MEMORY_ALLOCATION"));

    // A device-side failure: the call succeeds, the next synchronisation names the code and the
    // operations queued since the last one.
    common::set_faults("aclrtMemsetAsync:2:507015:stream");
    stream.memset(&mut buf, 1).unwrap();
    stream.memset(&mut buf, 2).unwrap();
    stream
        .copy_d2h(&buf, &mut PinnedBuffer::new(&device, 256).unwrap())
        .ok();
    let err = stream.synchronize().unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.acl_code(), Some(507_015), "{msg}");
    assert!(msg.contains("ACL_ERROR_RT_AICORE_EXCEPTION"), "{msg}");
    assert!(
        msg.contains("queued on the stream since its last synchronize: memset x2"),
        "{msg}"
    );
    // The failure comes first, the list of what was queued after it.
    assert!(
        msg.find("ACL_ERROR_RT_AICORE_EXCEPTION") < msg.find("queued on the stream"),
        "{msg}"
    );
    common::set_faults("");
    stream.synchronize().unwrap();

    // Hundreds of queued operations make a short list.
    common::set_faults("aclrtMemsetAsync:300:507015:stream");
    for i in 0..300u32 {
        stream.memset(&mut buf, (i % 7) as u8).unwrap();
        if i % 50 == 0 {
            stream
                .copy_d2h(&buf, &mut PinnedBuffer::new(&device, 256).unwrap())
                .unwrap();
        }
    }
    let msg = stream.synchronize().unwrap_err().to_string();
    assert!(
        msg.contains("memset x50, copy_d2h, record, memset x9, and 248 more"),
        "{msg}"
    );
    assert!(msg.len() < 1200, "{} bytes: {msg}", msg.len());
    common::set_faults("");
    stream.synchronize().unwrap();
}

#[test]
fn discover_picks_acl_when_the_runtime_reports_devices() {
    let _s = serial();
    let d = ascend_hal::discover_using(
        ascend_hal::BackendPreference::Auto,
        || Ok(common::backend()),
        || Ok(hal_mock::CpuBackend::new()),
    )
    .unwrap();
    assert_eq!(d.name(), "acl");
    assert!(d.reason.contains("reports 2 device(s)"), "{}", d.reason);
    assert!(d.reason.contains("libascendcl_fake.so"), "{}", d.reason);
}

#[test]
fn versions_and_names_come_from_the_runtime() {
    let _s = serial();
    let backend = common::backend();
    let v = backend.versions().unwrap();
    assert_eq!(v.acl_api, (1, 16, 0));
    assert_eq!(v.cann.as_deref(), Some("8.5.0 (acl-fake)"));
    assert_eq!(backend.device(1).unwrap().name(), "Ascend910B4");
    assert!(backend.library_path().ends_with("libascendcl_fake.so"));
    assert!(backend.supports_virtual_memory());
    assert_eq!(
        backend.device(0).unwrap().virtual_memory_granularity(),
        Some(2 << 20)
    );
    for symbol in ascend_hal::acl::required_symbols() {
        // SAFETY: only looks the symbol up.
        let found = unsafe {
            common::library(&common::fake_path())
                .get::<*const c_void>(symbol.as_bytes())
                .is_ok()
        };
        assert!(found, "the fake lacks {symbol}");
    }
}

#[test]
fn caching_allocator_with_expandable_segments_over_acl() {
    use ascend_hal::alloc::CachingAllocator;
    let _s = serial();
    let backend = common::backend();
    let device = backend.device(1).unwrap();
    let before = device.memory_info().unwrap();
    let maps = common::call_count("aclrtMapMem");
    let alloc =
        CachingAllocator::<AclBackend>::new(&device, "expandable_segments:True".parse().unwrap())
            .unwrap();
    assert!(alloc.uses_expandable_segments());
    let stream = device.new_stream().unwrap();
    // 12 MiB: six 2 MiB chunks mapped into one range, written and read across their seams.
    let mut a = DeviceBuffer::<AclBackend, i32>::alloc_in(&alloc, &stream, 3 << 20).unwrap();
    let data: Vec<i32> = (0..3 << 20).collect();
    stream.copy_h2d_sync(&data, &mut a).unwrap();
    assert_eq!(stream.clone_to_host(&a).unwrap(), data);
    let stats = alloc.stats();
    assert_eq!((stats.reserved, stats.segments), (12 << 20, 1));
    assert_eq!(common::call_count("aclrtMapMem") - maps, 6);
    assert_eq!(device.memory_info().unwrap().free, before.free - (12 << 20));
    drop(a);
    alloc.empty_cache().unwrap();
    assert_eq!(alloc.stats().reserved, 0);
    assert_eq!(device.memory_info().unwrap(), before, "memory left mapped");
    assert!(common::call_count("aclrtUnmapMem") >= 6);
}

/// An event that another stream's queued wait still refers to was destroyed at once on drop
/// (`acl_rt.h`: waits must finish first); it now waits for that stream to drain. A re-recorded
/// event takes a fresh ACL event, since CANN promises re-record semantics only for the `Ex`
/// events.
#[test]
fn events_outlive_the_waits_on_them_and_re_records_take_fresh_events() {
    let _s = serial();
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let (producer, consumer) = (device.new_stream().unwrap(), device.new_stream().unwrap());
    let created = common::call_count("aclrtCreateEventWithFlag");
    let destroyed = common::call_count("aclrtDestroyEvent");
    let event = device.new_event().unwrap();
    producer.record(&event).unwrap();
    consumer.wait(&event).unwrap();
    // A second record: a fresh ACL event; the first, waited on, is retired, not destroyed.
    producer.record(&event).unwrap();
    assert_eq!(common::call_count("aclrtCreateEventWithFlag") - created, 2);
    assert_eq!(device.retired_events(), 1);
    assert_eq!(common::call_count("aclrtDestroyEvent"), destroyed);
    consumer.wait(&event).unwrap();
    drop(event);
    assert_eq!(
        device.retired_events(),
        2,
        "dropped while the consumer may wait"
    );
    assert_eq!(common::call_count("aclrtDestroyEvent"), destroyed);
    // The producer draining frees nothing: only the consumer waited.
    producer.synchronize().unwrap();
    assert_eq!(device.retired_events(), 2);
    consumer.synchronize().unwrap();
    assert_eq!(device.retired_events(), 0);
    assert_eq!(common::call_count("aclrtDestroyEvent") - destroyed, 2);
    // An event nobody waited on goes at once; a device synchronisation clears the rest.
    let lonely = device.new_event().unwrap();
    producer.record(&lonely).unwrap();
    drop(lonely);
    assert_eq!(common::call_count("aclrtDestroyEvent") - destroyed, 3);
    let waited = device.new_event().unwrap();
    producer.record(&waited).unwrap();
    consumer.wait(&waited).unwrap();
    drop(waited);
    assert_eq!(device.retired_events(), 1);
    device.synchronize().unwrap();
    assert_eq!(device.retired_events(), 0);
    assert_eq!(common::call_count("aclrtDestroyEvent") - destroyed, 4);
}

#[test]
fn checks_after_sync_run_once_the_work_is_done_and_report_at_that_sync() {
    let _s = serial();
    let backend = common::backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    // A "kernel" writes a status word on the device; the check reads it once the work is done.
    let host = PinnedBuffer::<AclBackend, i32>::from_slice(&device, &[3; 8]).unwrap();
    let mut status = Buf::<i32>::zeros(&stream, 8).unwrap();
    stream.copy_h2d(&host, &mut status).unwrap();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = ran.clone();
    stream.check_after_sync(move |s| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let words = s.clone_to_host(&status)?;
        if words[0] != 0 {
            return Err(Error::InvalidArgument {
                op: "status_kernel",
                message: format!("{} entries refused", words[0]),
            });
        }
        Ok(())
    });
    let e = stream.synchronize().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { op: "status_kernel", message } if message == "3 entries refused"),
        "{e}"
    );
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Reported once: the next synchronisation is clean, and the check does not run again.
    stream.synchronize().unwrap();
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A passing check leaves the synchronisation's own result.
    stream.check_after_sync(|_| Ok(()));
    stream.synchronize().unwrap();
}
