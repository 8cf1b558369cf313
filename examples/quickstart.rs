//! Quickstart: discover a backend, show its devices, and move data host -> device -> device ->
//! host on two streams ordered by an event, checking the round trip and timing each hop.
//!
//! ```text
//! cargo run --release --example quickstart            # 64 MiB
//! cargo run --release --example quickstart -- 256     # 256 MiB
//! ASCEND_HAL_BACKEND=cpu cargo run --release --example quickstart
//! ```

use std::process::ExitCode;

use ascend_hal::prelude::*;
use ascend_hal::{BackendVisitor, Bytes, Result};

/// The generic body, entered once the backend is known.
struct Quickstart {
    mib: usize,
}

impl BackendVisitor for Quickstart {
    type Output = Result<()>;

    fn visit<B: Backend>(self, backend: B) -> Result<()> {
        run(&backend, self.mib)
    }
}

fn main() -> ExitCode {
    let mib = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 64,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: quickstart [MiB > 0]");
            return ExitCode::from(2);
        }
    };
    let discovery = match hal_mock::discover() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{discovery}");
    match discovery.run(Quickstart { mib }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gib_per_s(bytes: usize, ms: f32) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / (ms as f64 / 1e3)
}

fn run<B: Backend>(backend: &B, mib: usize) -> Result<()> {
    for ordinal in 0..backend.device_count()? {
        let device = backend.device(ordinal)?;
        let info = device.memory_info()?;
        println!(
            "device {ordinal}: {} | memory free {} of {}",
            device.name(),
            Bytes(info.free),
            Bytes(info.total)
        );
    }

    let device = backend.device(0)?;
    let (upload, compute) = (device.new_stream()?, device.new_stream()?);
    let len = mib * (1 << 20) / std::mem::size_of::<f32>();
    let bytes = len * std::mem::size_of::<f32>();
    let data: Vec<f32> = (0..len).map(|i| (i % 1_000_003) as f32 * 0.25).collect();

    let host = PinnedBuffer::<B, f32>::from_slice(&device, &data)?;
    let mut back = PinnedBuffer::<B, f32>::new(&device, len)?;
    let mut a = DeviceBuffer::<B, f32>::alloc(&device, len)?;
    let mut b = DeviceBuffer::<B, f32>::alloc(&device, len)?;
    let info = device.memory_info()?;
    println!(
        "allocated 2 x {} on device 0 | memory free {} of {}",
        Bytes(bytes as u64),
        Bytes(info.free),
        Bytes(info.total)
    );

    // Upload on one stream; the compute stream waits for it through an event, then copies
    // device to device and downloads. Every call below returns before its work is done. The
    // second pass is the one reported: the first also pays for first-touch page faults.
    let mut ok = true;
    for pass in 0..2 {
        let t0 = upload.record_new_event()?;
        upload.copy_h2d(&host, &mut a)?;
        let uploaded = upload.record_new_event()?;
        compute.wait(&uploaded)?;
        let t1 = compute.record_new_event()?;
        compute.copy_d2d(&a, &mut b)?;
        let t2 = compute.record_new_event()?;
        compute.copy_d2h(&b, &mut back)?;
        let t3 = compute.record_new_event()?;

        ok &= back.as_slice()? == data.as_slice(); // waits for the download
        t3.synchronize()?;
        if pass == 0 {
            continue;
        }
        let hops = [
            ("host -> device  ", t0.elapsed_ms(&uploaded)?),
            ("device -> device", t1.elapsed_ms(&t2)?),
            ("device -> host  ", t2.elapsed_ms(&t3)?),
        ];
        for (name, ms) in hops {
            println!(
                "{name}: {} in {ms:8.3} ms = {:7.2} GiB/s",
                Bytes(bytes as u64),
                gib_per_s(bytes, ms)
            );
        }
    }
    if !ok {
        return Err(ascend_hal::Error::InvalidArgument {
            op: "quickstart",
            message: "round trip mismatch: the data read back differs from the data sent".into(),
        });
    }
    println!("round trip ok: {len} f32 values identical after host -> device -> device -> host");
    Ok(())
}
