//! Device report and doctor, in the spirit of `npu-smi info`: the CANN runtime this process
//! loads, its devices (SoC, HBM free/total), the runtime and driver versions, and checks of what
//! breaks most deployments. Exits non-zero when no NPU is usable, after saying what was tried.
//!
//! ```text
//! cargo run --example npu_info
//! ASCEND_HAL_ACL_LIB=target/debug/libascendcl_fake.so cargo run --example npu_info   # the CI fake
//! ```

use std::process::ExitCode;

use ascend_hal::acl::doctor::{run_checks, Status};
use ascend_hal::acl::AclBackend;
use ascend_hal::prelude::*;
use ascend_hal::{Bytes, Error};

fn main() -> ExitCode {
    println!("== CANN runtime");
    let usable = match AclBackend::load() {
        Ok(backend) => report(&backend),
        Err(e) => {
            match &e {
                Error::LibraryNotFound { .. } => println!("no NPU runtime found. {e}"),
                _ => println!("the NPU runtime did not start: {e}"),
            }
            false
        }
    };

    println!("\n== environment checks");
    let checks = run_checks(&|k| std::env::var(k).ok(), std::path::Path::new("/"));
    for c in &checks {
        println!("[{:>4}] {:<26} {}", c.status, c.name, c.detail);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    println!();
    if usable {
        println!("NPU usable; {failed} check(s) failed");
        ExitCode::SUCCESS
    } else {
        println!("no usable NPU on this machine; {failed} check(s) failed (see above)");
        ExitCode::FAILURE
    }
}

/// Prints the runtime and its devices; whether at least one device works.
fn report(backend: &AclBackend) -> bool {
    println!("library     {}", backend.library_path());
    match backend.versions() {
        Ok(v) => {
            let (a, b, c) = v.acl_api;
            println!("ACL API     {a}.{b}.{c}");
            println!(
                "CANN        {}",
                v.cann.as_deref().unwrap_or("(not reported)")
            );
            println!(
                "driver      {}",
                v.driver.as_deref().unwrap_or("(not reported)")
            );
        }
        Err(e) => println!("versions    unavailable: {e}"),
    }
    println!(
        "VMM         {}",
        if backend.supports_virtual_memory() {
            "available (expandable segments possible)"
        } else {
            "not exported by this runtime"
        }
    );
    match ascend_hal::acl::hccl::Hccl::load(backend) {
        Ok(h) => println!("HCCL        {}", h.library_path()),
        Err(e) => println!("HCCL        unavailable (one device only): {e}"),
    }
    let count = match backend.device_count() {
        Ok(n) => n,
        Err(e) => {
            println!("devices     none: {e}");
            return false;
        }
    };
    println!("devices     {count}");
    let mut working = 0;
    for i in 0..count {
        match backend
            .device(i)
            .and_then(|d| Ok((d.name(), d.memory_info()?)))
        {
            Ok((name, info)) => {
                working += 1;
                println!(
                    "  NPU {i:<3} {name:<14} HBM {} free of {} ({} used)",
                    Bytes(info.free),
                    Bytes(info.total),
                    Bytes(info.used())
                );
            }
            Err(e) => println!("  NPU {i:<3} unusable: {e}"),
        }
    }
    working > 0
}
