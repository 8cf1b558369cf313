//! Model check of the CPU backend's stream / event protocol with shuttle: the real stream and
//! event code, built on shuttle's primitives (feature `model-check`), under many thread
//! interleavings chosen by shuttle's PCT scheduler. Shuttle fails a test on a deadlock (every
//! thread blocked) as well as on a panic.
//!
//! Run: `cargo test -p hal-mock --features model-check --test model_check` (`.ci/run` does).
#![cfg(feature = "model-check")]

use std::sync::Arc;

use ascend_hal::prelude::*;
use hal_mock::{CpuBackend, CpuDevice, DeviceProfile};
use shuttle::thread;

const ITERATIONS: usize = 2000;
const DEPTH: usize = 3;

/// The old-order switch is process-wide: the checks run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` under the model checker, with the old record order on or off.
fn check(f: fn(), iterations: usize, old_order: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            hal_mock::model_check::use_old_record_order(false);
        }
    }
    let _reset = Reset;
    hal_mock::model_check::use_old_record_order(old_order);
    shuttle::check_pct(f, iterations, DEPTH);
}

fn device() -> (CpuBackend, CpuDevice) {
    let backend = CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 1 << 20))
        .build();
    let device = backend.device(0).unwrap();
    (backend, device)
}

/// One thread records an event on a stream while another makes the same stream wait on it:
/// the interleaving that deadlocked when the record was published before it was queued.
fn record_and_wait_on_one_stream() {
    let (_b, device) = device();
    let stream = Arc::new(device.new_stream().unwrap());
    let event = Arc::new(device.new_event().unwrap());
    stream.record(&event).unwrap();
    let recorder = {
        let (stream, event) = (Arc::clone(&stream), Arc::clone(&event));
        thread::spawn(move || {
            stream.record(&event).unwrap();
        })
    };
    stream.wait(&event).unwrap();
    recorder.join().unwrap();
    stream.synchronize().unwrap();
    assert!(event.query().unwrap());
}

/// Two streams each record an event and wait for the other's, from two threads, then both
/// synchronise and drop their streams.
fn crossed_waits_across_streams() {
    let (_b, device) = device();
    let (s1, s2) = (
        Arc::new(device.new_stream().unwrap()),
        Arc::new(device.new_stream().unwrap()),
    );
    let (e1, e2) = (
        Arc::new(device.new_event().unwrap()),
        Arc::new(device.new_event().unwrap()),
    );
    let other = {
        let (s1, s2, e1, e2) = (s1.clone(), s2.clone(), e1.clone(), e2.clone());
        thread::spawn(move || {
            s2.record(&e2).unwrap();
            s2.wait(&e1).unwrap();
            s2.synchronize().unwrap();
            drop((s1, s2));
        })
    };
    s1.record(&e1).unwrap();
    s1.wait(&e2).unwrap();
    s1.synchronize().unwrap();
    other.join().unwrap();
    e1.synchronize().unwrap();
    e2.synchronize().unwrap();
}

/// Two threads record an event each on their own stream while a third makes each stream wait
/// for the other's event: with the old order, both waits could be queued ahead of the records
/// they wait behind, and the two streams waited for each other forever.
fn records_and_crossed_waits_from_three_threads() {
    let (_b, device) = device();
    let (s1, s2) = (
        Arc::new(device.new_stream().unwrap()),
        Arc::new(device.new_stream().unwrap()),
    );
    let (e1, e2) = (
        Arc::new(device.new_event().unwrap()),
        Arc::new(device.new_event().unwrap()),
    );
    let recorders: Vec<_> = [(s1.clone(), e1.clone()), (s2.clone(), e2.clone())]
        .into_iter()
        .map(|(s, e)| thread::spawn(move || s.record(&e).unwrap()))
        .collect();
    s1.wait(&e2).unwrap();
    s2.wait(&e1).unwrap();
    for r in recorders {
        r.join().unwrap();
    }
    s1.synchronize().unwrap();
    s2.synchronize().unwrap();
}

/// Three streams in a chain with events re-recorded from several threads, the device
/// synchronised while work is queued, and streams dropped with work pending.
fn chain_of_three_with_device_sync_and_drops() {
    let (_b, device) = device();
    let streams: Vec<_> = (0..3)
        .map(|_| Arc::new(device.new_stream().unwrap()))
        .collect();
    let events: Vec<_> = (0..3)
        .map(|_| Arc::new(device.new_event().unwrap()))
        .collect();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (s, e) = (streams[i].clone(), events[i].clone());
            let (next_s, prev_e) = (streams[(i + 1) % 3].clone(), events[(i + 2) % 3].clone());
            thread::spawn(move || {
                s.record(&e).unwrap();
                next_s.wait(&e).unwrap();
                s.wait(&prev_e).unwrap();
                s.record(&e).unwrap();
            })
        })
        .collect();
    device.synchronize().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    drop(streams);
    for e in &events {
        e.synchronize().unwrap();
    }
}

#[test]
fn record_and_wait_on_one_stream_never_deadlock() {
    check(record_and_wait_on_one_stream, ITERATIONS, false);
}

#[test]
fn crossed_waits_never_deadlock() {
    check(crossed_waits_across_streams, ITERATIONS, false);
}

#[test]
fn records_and_crossed_waits_from_three_threads_never_deadlock() {
    check(
        records_and_crossed_waits_from_three_threads,
        ITERATIONS,
        false,
    );
}

#[test]
fn a_chain_of_three_streams_never_deadlocks() {
    check(chain_of_three_with_device_sync_and_drops, ITERATIONS, false);
}

/// The checker finds the deadlock of the old record order (publish, then queue): two streams
/// that wait for each other's records end up each blocked behind a wait for the other.
#[test]
#[should_panic(expected = "deadlock")]
fn the_old_record_order_deadlocks_across_streams() {
    check(records_and_crossed_waits_from_three_threads, 4000, true);
}

/// On one stream the old order queues a wait ahead of its own record; the backend now reports
/// that as an error (a worker waiting for a signal only it can complete) instead of hanging, and
/// the checker finds the interleaving.
#[test]
#[should_panic(expected = "cannot complete before the task does")]
fn the_old_record_order_on_one_stream_is_found() {
    check(record_and_wait_on_one_stream, ITERATIONS, true);
}
