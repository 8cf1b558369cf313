//! A backend-independent conformance suite: every backend runs the same checks against itself.
//!
//! Implement [`Harness`] for your backend and expand [`conformance_tests!`](crate::conformance_tests)
//! in a test file; each check becomes one `#[test]` (the CPU backend does this in
//! `hal-mock/tests/conformance.rs`):
//!
//! ```ignore
//! struct Cpu;
//! impl ascend_hal::conformance::Harness for Cpu {
//!     type Backend = hal_mock::CpuBackend;
//!     fn backend(&self) -> Self::Backend { /* two small devices */ }
//! }
//! ascend_hal::conformance_tests!(Cpu);
//! ```
//!
//! The checks panic with a message on failure (they are tests). They cover copies of every kind
//! and size (0 bytes, unaligned lengths and offsets, several MiB), every dtype, memset, stream
//! ordering, events across streams, elapsed time, memory accounting, use from many threads, and
//! every error a caller can provoke: bad ordinal, out of memory, length mismatch, out-of-bounds
//! views, wrong device, lost device.
//!
//! [`allocator`] is the same for [`Allocator`] implementations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod allocator;

use crate::prelude::*;
use crate::{Error, MemoryInfo};

/// How the suite gets backends to test.
pub trait Harness: Sync {
    /// The backend under test.
    type Backend: Backend;

    /// A fresh backend for one check. Checks may exhaust memory or lose a device, so each gets
    /// its own where the backend allows it. Two devices or more let the wrong-device check run.
    fn backend(&self) -> Self::Backend;

    /// Makes device `ordinal` of `backend` lost. Return `false` if the harness cannot (the
    /// lost-device check is then skipped).
    fn lose_device(&self, backend: &Self::Backend, ordinal: usize) -> bool {
        let _ = (backend, ordinal);
        false
    }

    /// Whether the checks must run one at a time, because every `backend()` shares state that
    /// one check's accounting would see another's allocations in (a process-wide runtime).
    fn serialize(&self) -> bool {
        false
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by each generated test while it runs, when the harness asks for serial checks.
pub fn exclusive<H: Harness>(h: &H) -> Option<std::sync::MutexGuard<'static, ()>> {
    h.serialize()
        .then(|| SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Expands to one `#[test]` per conformance check, each calling it with the harness `$h`.
#[macro_export]
macro_rules! conformance_tests {
    ($h:expr) => {
        $crate::conformance_tests!(@each $h;
            device_enumeration, invalid_ordinal, memory_info_accounting, out_of_memory,
            round_trip_sizes, round_trip_dtypes, sub_slice_copies, memset_range,
            stream_ordering, events_order_streams, event_query_and_elapsed,
            length_mismatch, out_of_bounds_views, wrong_device, lost_device,
            many_threads, pinned_host_access_waits, device_synchronize_covers_streams,
            zero_length_operations);
    };
    (@each $h:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let _serial = $crate::conformance::exclusive(&$h);
                $crate::conformance::$name(&$h);
            }
        )*
    };
}

type B<H> = <H as Harness>::Backend;
type Dev<H> = <B<H> as Backend>::Device;

fn device0<H: Harness>(h: &H) -> (B<H>, Dev<H>) {
    let backend = h.backend();
    let device = backend.device(0).expect("device 0");
    (backend, device)
}

/// Deterministic test data: `n` bytes from a seed (xorshift).
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Devices are enumerated with matching ordinals and names.
pub fn device_enumeration<H: Harness>(h: &H) {
    let backend = h.backend();
    let count = backend.device_count().unwrap();
    assert!(count >= 1, "a backend under test needs a device");
    for i in 0..count {
        let d = backend.device(i).unwrap();
        assert_eq!(d.ordinal(), i);
        assert!(!d.name().is_empty(), "device {i} has an empty name");
        let s = d.new_stream().unwrap();
        assert_eq!(s.device_ordinal(), i);
    }
}

/// A bad ordinal is `InvalidDevice` with the ordinal and the count in the message.
pub fn invalid_ordinal<H: Harness>(h: &H) {
    let backend = h.backend();
    let count = backend.device_count().unwrap();
    let err = backend.device(count + 3).unwrap_err();
    assert!(
        matches!(err, Error::InvalidDevice { ordinal, count: c, .. } if ordinal == count + 3 && c == count),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("ordinal {}", count + 3)), "{msg}");
    assert!(msg.contains(&format!("{count} device(s)")), "{msg}");
}

/// Allocations reduce free memory by at least their size; dropping them gives it back.
pub fn memory_info_accounting<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let before = device.memory_info().unwrap();
    assert!(
        before.total > 0 && before.free <= before.total,
        "{before:?}"
    );
    let sizes = [1usize, 100, 4096, 3 << 20];
    let bufs: Vec<DeviceBuffer<B<H>, u8>> = sizes
        .iter()
        .map(|&n| DeviceBuffer::alloc(&device, n).unwrap())
        .collect();
    let during = device.memory_info().unwrap();
    assert_eq!(during.total, before.total);
    let taken = before.free - during.free;
    let asked: u64 = sizes.iter().map(|&n| n as u64).sum();
    assert!(
        taken >= asked,
        "free fell by {taken} bytes for {asked} bytes allocated"
    );
    drop(bufs);
    let after: MemoryInfo = device.memory_info().unwrap();
    assert_eq!(after.free, before.free, "memory was not returned");
}

/// Asking for more than the device has is `OutOfMemory` with requested, free and total bytes; the
/// device stays usable.
pub fn out_of_memory<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let info = device.memory_info().unwrap();
    let ask = info.total as usize + 1;
    let err = DeviceBuffer::<B<H>, u8>::alloc(&device, ask).unwrap_err();
    match &err {
        Error::OutOfMemory {
            requested,
            free,
            total,
            ..
        } => {
            assert_eq!(*requested, ask as u64);
            assert_eq!(*total, info.total);
            assert!(*free <= *total);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let msg = err.to_string();
    for n in [ask as u64, info.total] {
        assert!(msg.contains(&n.to_string()), "{msg} lacks {n}");
    }
    assert!(msg.contains("free unused buffers"), "{msg} gives no advice");
    assert_eq!(
        device.memory_info().unwrap().free,
        info.free,
        "a failed allocation leaked"
    );
    let stream = device.new_stream().unwrap();
    let b = DeviceBuffer::<B<H>, u8>::from_slice(&stream, &[7; 10]).unwrap();
    assert_eq!(stream.clone_to_host(&b).unwrap(), vec![7; 10]);
}

/// host -> device -> device -> host, asynchronously through pinned buffers and synchronously
/// from slices, for sizes from 0 bytes through unaligned lengths to several MiB.
pub fn round_trip_sizes<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    for (i, &n) in [
        0usize,
        1,
        3,
        31,
        32,
        33,
        63,
        64,
        65,
        4095,
        4097,
        65_537,
        (8 << 20) + 13,
    ]
    .iter()
    .enumerate()
    {
        let data = pattern(n, i as u64);
        let host = PinnedBuffer::<B<H>, u8>::from_slice(&device, &data).unwrap();
        let mut a = DeviceBuffer::<B<H>, u8>::alloc(&device, n).unwrap();
        let mut b = DeviceBuffer::<B<H>, u8>::alloc(&device, n).unwrap();
        let mut back = PinnedBuffer::<B<H>, u8>::new(&device, n).unwrap();
        stream.copy_h2d(&host, &mut a).unwrap();
        stream.copy_d2d(&a, &mut b).unwrap();
        stream.copy_d2h(&b, &mut back).unwrap();
        assert!(
            back.as_slice().unwrap() == data.as_slice(),
            "async round trip of {n} bytes"
        );

        let c = DeviceBuffer::<B<H>, u8>::from_slice(&stream, &data).unwrap();
        let mut out = vec![0u8; n];
        stream.copy_d2h_sync(&c, &mut out).unwrap();
        assert!(out == data, "sync round trip of {n} bytes");
    }
    stream.synchronize().unwrap();
}

fn round_trip_typed<H: Harness, T: Element + PartialEq>(h: &H, data: Vec<T>) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let a = DeviceBuffer::<B<H>, T>::from_slice(&stream, &data).unwrap();
    let mut b = DeviceBuffer::<B<H>, T>::alloc(&device, data.len()).unwrap();
    stream.copy_d2d(&a, &mut b).unwrap();
    let back = stream.clone_to_host(&b).unwrap();
    assert!(back == data, "{} round trip", T::DTYPE);
}

/// Every element type survives a round trip bit for bit.
pub fn round_trip_dtypes<H: Harness>(h: &H) {
    let n = 1001usize;
    round_trip_typed(
        h,
        (0..n).map(|i| i as f32 * 0.5 - 7.25).collect::<Vec<f32>>(),
    );
    round_trip_typed(
        h,
        (0..n)
            .map(|i| half::f16::from_f32(i as f32 / 8.0))
            .collect::<Vec<_>>(),
    );
    round_trip_typed(
        h,
        (0..n)
            .map(|i| half::bf16::from_f32(-(i as f32)))
            .collect::<Vec<_>>(),
    );
    round_trip_typed(h, (0..n).map(|i| (i % 256) as i8).collect::<Vec<i8>>());
    round_trip_typed(h, (0..n).map(|i| i as i32 - 500).collect::<Vec<i32>>());
    round_trip_typed(h, (0..n).map(|i| (i as i64) << 40).collect::<Vec<i64>>());
}

/// Copies into and out of views at odd element offsets touch exactly their range.
pub fn sub_slice_copies<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let n = 1000;
    let base = pattern(n, 1);
    let patch = pattern(333, 2);
    let mut buf = DeviceBuffer::<B<H>, u8>::from_slice(&stream, &base).unwrap();
    stream
        .copy_h2d_sync(&patch, &mut buf.slice_mut(101..434).unwrap())
        .unwrap();
    let mut expected = base.clone();
    expected[101..434].copy_from_slice(&patch);
    assert_eq!(stream.clone_to_host(&buf).unwrap(), expected);

    let mut other = DeviceBuffer::<B<H>, u8>::zeros(&stream, n).unwrap();
    stream
        .copy_d2d(
            &buf.slice(7..507).unwrap(),
            &mut other.slice_mut(493..993).unwrap(),
        )
        .unwrap();
    let mut expected_other = vec![0u8; n];
    expected_other[493..993].copy_from_slice(&expected[7..507]);
    assert_eq!(stream.clone_to_host(&other).unwrap(), expected_other);
    assert_eq!(
        stream.clone_to_host(&buf.slice(990..).unwrap()).unwrap(),
        expected[990..].to_vec()
    );
}

/// Memset fills its range with the byte and leaves the neighbours alone.
pub fn memset_range<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let mut buf = DeviceBuffer::<B<H>, i32>::from_slice(&stream, &[5; 64]).unwrap();
    stream
        .memset(&mut buf.slice_mut(3..61).unwrap(), 0xAB)
        .unwrap();
    let got = stream.clone_to_host(&buf).unwrap();
    let filled = i32::from_ne_bytes([0xAB; 4]);
    for (i, v) in got.iter().enumerate() {
        let want = if (3..61).contains(&i) { filled } else { 5 };
        assert_eq!(*v, want, "element {i}");
    }
    let z = DeviceBuffer::<B<H>, f32>::zeros(&stream, 4097).unwrap();
    assert!(stream.clone_to_host(&z).unwrap().iter().all(|&x| x == 0.0));
}

/// A long chain of dependent operations on one stream gives the sequential result.
pub fn stream_ordering<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let n = 1 << 16;
    let mut a = DeviceBuffer::<B<H>, u8>::zeros(&stream, n).unwrap();
    let mut b = DeviceBuffer::<B<H>, u8>::zeros(&stream, n).unwrap();
    let hosts: Vec<_> = (0..8)
        .map(|i| PinnedBuffer::<B<H>, u8>::from_slice(&device, &vec![i as u8 + 1; n]).unwrap())
        .collect();
    // Each round: upload, memset the first half, copy to b, copy back: only stream order makes
    // the final contents right.
    for host in &hosts {
        stream.copy_h2d(host, &mut a).unwrap();
        stream
            .memset(&mut a.slice_mut(..n / 2).unwrap(), 0xEE)
            .unwrap();
        stream.copy_d2d(&a, &mut b).unwrap();
        stream.memset(&mut a, 0).unwrap();
        stream
            .copy_d2d(
                &b.slice(n / 4..).unwrap(),
                &mut a.slice_mut(..n - n / 4).unwrap(),
            )
            .unwrap();
    }
    let got = stream.clone_to_host(&a).unwrap();
    let mut want = vec![8u8; n];
    want[..n / 2].fill(0xEE);
    want.rotate_left(n / 4);
    want[n - n / 4..].fill(0);
    assert!(got == want, "stream did not run in order");
}

/// An event recorded on a producer stream orders a consumer stream's work after it.
pub fn events_order_streams<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let producer = device.new_stream().unwrap();
    let consumer = device.new_stream().unwrap();
    let n = 4 << 20;
    let mut shared = DeviceBuffer::<B<H>, u8>::zeros(&producer, n).unwrap();
    let mut out = DeviceBuffer::<B<H>, u8>::zeros(&producer, n).unwrap();
    let mut scratch = DeviceBuffer::<B<H>, u8>::alloc(&device, 16 << 20).unwrap();
    producer.synchronize().unwrap();
    let event = device.new_event().unwrap();
    for round in 1..=6u8 {
        let host = PinnedBuffer::<B<H>, u8>::from_slice(&device, &vec![round; n]).unwrap();
        // Keep the producer busy first, so a consumer that ignored the event would copy early.
        for v in 0..4 {
            producer.memset(&mut scratch, v).unwrap();
        }
        producer.copy_h2d(&host, &mut shared).unwrap();
        producer.record(&event).unwrap();
        consumer.wait(&event).unwrap();
        consumer.copy_d2d(&shared, &mut out).unwrap();
        let done = consumer.record_new_event().unwrap();
        producer.wait(&done).unwrap(); // the next upload must not overwrite `shared` early
        let got = consumer
            .clone_to_host(&out.slice(n - 16..).unwrap())
            .unwrap();
        assert_eq!(
            got,
            vec![round; 16],
            "round {round}: consumer ran before the producer"
        );
    }
    producer.synchronize().unwrap();
}

/// Events complete, report completion, and time the work between them.
pub fn event_query_and_elapsed<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let start = device.new_event().unwrap();
    let end = device.new_event().unwrap();
    assert!(
        !start.query().unwrap(),
        "an event never recorded reads as not complete"
    );
    let err = start.elapsed_ms(&end).unwrap_err();
    assert!(matches!(err, Error::NotReady { .. }), "{err:?}");
    start.synchronize().unwrap(); // never recorded: returns at once

    let mut buf = DeviceBuffer::<B<H>, u8>::alloc(&device, 16 << 20).unwrap();
    stream.record(&start).unwrap();
    for v in 0..8 {
        stream.memset(&mut buf, v).unwrap();
    }
    stream.record(&end).unwrap();
    end.synchronize().unwrap();
    assert!(start.query().unwrap() && end.query().unwrap());
    let ms = start.elapsed_ms(&end).unwrap();
    assert!((0.0..60_000.0).contains(&ms), "elapsed {ms} ms");
    assert_eq!(
        stream.clone_to_host(&buf.slice(..4).unwrap()).unwrap(),
        vec![7; 4]
    );
}

/// Mismatched lengths are rejected before anything is queued, naming both lengths.
pub fn length_mismatch<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let mut dst = DeviceBuffer::<B<H>, f32>::zeros(&stream, 8).unwrap();
    let err = stream.copy_h2d_sync(&[1.0f32; 9], &mut dst).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LengthMismatch {
                expected: 9,
                actual: 8,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("copy_h2d_sync") && msg.contains('8') && msg.contains('9'),
        "{msg}"
    );
    let src = DeviceBuffer::<B<H>, f32>::zeros(&stream, 7).unwrap();
    assert!(matches!(
        stream.copy_d2d(&src, &mut dst).unwrap_err(),
        Error::LengthMismatch { op: "copy_d2d", .. }
    ));
    let mut host = PinnedBuffer::<B<H>, f32>::new(&device, 3).unwrap();
    assert!(matches!(
        stream.copy_d2h(&dst, &mut host).unwrap_err(),
        Error::LengthMismatch { op: "copy_d2h", .. }
    ));
    let mut small = [0f32; 2];
    assert!(matches!(
        stream.copy_d2h_sync(&dst, &mut small).unwrap_err(),
        Error::LengthMismatch { .. }
    ));
    // Nothing was written by the rejected calls.
    assert_eq!(stream.clone_to_host(&dst).unwrap(), vec![0.0; 8]);
}

/// Views outside a buffer are `OutOfBounds` errors, not panics.
pub fn out_of_bounds_views<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let mut buf = DeviceBuffer::<B<H>, u8>::alloc(&device, 10).unwrap();
    let err = buf.slice(5..11).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfBounds {
                start: 5,
                end: 11,
                len: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("5..11"), "{err}");
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = buf.slice_mut(8..3).unwrap_err();
    assert!(matches!(reversed, Error::OutOfBounds { .. }));
    assert_eq!(buf.slice(10..).unwrap().len(), 0);
}

/// A buffer or event of one device used on another device's stream is `WrongDevice`.
pub fn wrong_device<H: Harness>(h: &H) {
    let backend = h.backend();
    if backend.device_count().unwrap() < 2 {
        eprintln!("wrong_device: skipped, the harness backend has one device");
        return;
    }
    let d0 = backend.device(0).unwrap();
    let d1 = backend.device(1).unwrap();
    let s0 = d0.new_stream().unwrap();
    let s1 = d1.new_stream().unwrap();
    let mut on1 = DeviceBuffer::<B<H>, i32>::from_slice(&s1, &[1, 2, 3]).unwrap();
    let on0 = DeviceBuffer::<B<H>, i32>::from_slice(&s0, &[4, 5, 6]).unwrap();
    let err = s0.copy_d2d(&on0, &mut on1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongDevice {
                what: "dst",
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("device 1"), "{err}");
    assert!(matches!(
        s0.clone_to_host(&on1).unwrap_err(),
        Error::WrongDevice { what: "src", .. }
    ));
    let e1 = d1.new_event().unwrap();
    assert!(matches!(
        s0.record(&e1).unwrap_err(),
        Error::WrongDevice { .. }
    ));
    assert!(matches!(
        s0.wait(&e1).unwrap_err(),
        Error::WrongDevice { .. }
    ));
    assert_eq!(
        s1.clone_to_host(&on1).unwrap(),
        vec![1, 2, 3],
        "dst was modified"
    );
}

/// After a device is lost, every call on it fails with `DeviceLost`, and nothing hangs.
pub fn lost_device<H: Harness>(h: &H) {
    let backend = h.backend();
    let device = backend.device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let mut buf = DeviceBuffer::<B<H>, u8>::zeros(&stream, 1 << 20).unwrap();
    let host = PinnedBuffer::<B<H>, u8>::new(&device, 1 << 20).unwrap();
    for _ in 0..4 {
        stream.copy_h2d(&host, &mut buf).unwrap();
    }
    if !h.lose_device(&backend, 0) {
        eprintln!("lost_device: skipped, the harness cannot lose a device");
        return;
    }
    let lost = |r: crate::Result<()>, what: &str| match r {
        Err(e) if e.is_device_lost() => {
            assert!(e.to_string().contains("lost"), "{what}: {e}");
        }
        other => panic!("{what}: expected DeviceLost, got {other:?}"),
    };
    lost(stream.synchronize(), "synchronize");
    lost(stream.memset(&mut buf, 1), "memset");
    lost(device.synchronize(), "device synchronize");
    lost(device.memory_info().map(|_| ()), "memory_info");
    lost(
        DeviceBuffer::<B<H>, u8>::alloc(&device, 64).map(|_| ()),
        "alloc",
    );
    lost(device.new_stream().map(|_| ()), "new_stream");
    lost(stream.clone_to_host(&buf).map(|_| ()), "copy to host");
    lost(backend.device(0).map(|_| ()), "Backend::device");
    drop(host); // must not hang on the fences of the lost device
}

/// One device driven from several threads at once, each with its own stream.
pub fn many_threads<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let device = device.clone();
            scope.spawn(move || {
                let stream = device.new_stream().unwrap();
                for round in 0..20 {
                    let data = pattern(1000 + round * 37, t * 100 + round as u64);
                    let host = PinnedBuffer::<B<H>, u8>::from_slice(&device, &data).unwrap();
                    let mut d = DeviceBuffer::<B<H>, u8>::alloc(&device, data.len()).unwrap();
                    stream.copy_h2d(&host, &mut d).unwrap();
                    let mut back = PinnedBuffer::<B<H>, u8>::new(&device, data.len()).unwrap();
                    stream.copy_d2h(&d, &mut back).unwrap();
                    assert!(
                        back.as_slice().unwrap() == data.as_slice(),
                        "thread {t} round {round}"
                    );
                }
            });
        }
    });
    device.synchronize().unwrap();
}

/// Host access to a pinned buffer waits for the copies into it, and copies out of it are not
/// disturbed by host writes made after them.
pub fn pinned_host_access_waits<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let n = 8 << 20;
    let src = DeviceBuffer::<B<H>, u8>::from_slice(&stream, &vec![0x5A; n]).unwrap();
    let mut host = PinnedBuffer::<B<H>, u8>::new(&device, n).unwrap();
    stream.copy_d2h(&src, &mut host).unwrap();
    // No explicit synchronisation: the accessor must wait.
    assert!(host.as_slice().unwrap().iter().all(|&b| b == 0x5A));

    let mut dst = DeviceBuffer::<B<H>, u8>::alloc(&device, n).unwrap();
    stream.copy_h2d(&host, &mut dst).unwrap();
    host.as_mut_slice().unwrap().fill(0); // waits for the upload to read the old bytes
    let back = stream.clone_to_host(&dst.slice(n - 8..).unwrap()).unwrap();
    assert_eq!(back, vec![0x5A; 8]);
}

/// `Device::synchronize` waits for every stream of the device.
pub fn device_synchronize_covers_streams<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let streams: Vec<_> = (0..3).map(|_| device.new_stream().unwrap()).collect();
    let mut bufs: Vec<_> = (0..3)
        .map(|_| DeviceBuffer::<B<H>, u8>::alloc(&device, 4 << 20).unwrap())
        .collect();
    for (i, (s, b)) in streams.iter().zip(bufs.iter_mut()).enumerate() {
        s.memset(b, i as u8 + 1).unwrap();
    }
    device.synchronize().unwrap();
    for s in &streams {
        assert!(
            s.query().unwrap(),
            "a stream still had work after Device::synchronize"
        );
    }
    for (i, (s, b)) in streams.iter().zip(&bufs).enumerate() {
        assert_eq!(
            s.clone_to_host(&b.slice(..2).unwrap()).unwrap(),
            vec![i as u8 + 1; 2]
        );
    }
}

/// Empty buffers and zero-length copies are valid and do nothing.
pub fn zero_length_operations<H: Harness>(h: &H) {
    let (_b, device) = device0(h);
    let stream = device.new_stream().unwrap();
    let before = device.memory_info().unwrap();
    let mut a = DeviceBuffer::<B<H>, f32>::alloc(&device, 0).unwrap();
    let b = DeviceBuffer::<B<H>, f32>::zeros(&stream, 0).unwrap();
    let host = PinnedBuffer::<B<H>, f32>::new(&device, 0).unwrap();
    stream.copy_h2d(&host, &mut a).unwrap();
    stream.copy_d2d(&b, &mut a).unwrap();
    stream.memset(&mut a, 9).unwrap();
    stream.copy_h2d_sync(&[], &mut a).unwrap();
    assert!(stream.clone_to_host(&a).unwrap().is_empty());
    assert!(host.as_slice().unwrap().is_empty());
    assert_eq!(device.memory_info().unwrap().free, before.free);
    stream.synchronize().unwrap();
}
