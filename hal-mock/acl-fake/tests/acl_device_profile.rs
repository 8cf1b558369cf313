//! The vector cores a device reports, per SoC: `aclGetDeviceCapability` in the fake (CANN 8.1's
//! platform descriptions: 48 on a 910B1/B2, 40 on a 910B3/B4) and `AclDevice::vector_cores`,
//! which sizes every Ascend C launch. Alone in its process: it reconfigures the fake between
//! runtimes.

use std::ffi::CString;

use ascend_hal::acl::{AclBackend, CoreCountSource};
use ascend_hal::prelude::*;
use ascendcl_fake::abi;

fn configure(lib: &libloading::Library, spec: &str) -> i32 {
    let spec = CString::new(spec).unwrap();
    // SAFETY: the fake exports `int32_t aclfakeConfigure(const char *)`; `lib` stays loaded.
    unsafe {
        let f: libloading::Symbol<'_, unsafe extern "C" fn(*const std::ffi::c_char) -> i32> =
            lib.get(b"aclfakeConfigure").unwrap();
        f(spec.as_ptr())
    }
}

#[test]
fn each_soc_reports_its_vector_cores_and_launches_use_them() {
    let path = ascendcl_fake::library_path().expect("the fake is built with this crate's tests");
    // SAFETY: the fake's initialisers only set up its own state; kept loaded for the test.
    let lib = unsafe { libloading::Library::new(&path) }.unwrap();
    for (soc, cores) in [
        ("Ascend910B1", 48),
        ("Ascend910B3", 40),
        ("Ascend910B4", 40),
    ] {
        assert_eq!(
            configure(&lib, &format!("devices=2;memory=268435456;soc={soc}")),
            0,
            "{soc}"
        );
        let backend = AclBackend::load_from(&path).unwrap();
        for ordinal in 0..2 {
            let device = backend.device(ordinal).unwrap();
            assert_eq!(device.soc_name(), soc);
            assert_eq!(device.vector_cores(), cores, "{soc} device {ordinal}");
            assert_eq!(device.vector_core_source(), CoreCountSource::Runtime);
        }
        // Dropping the last handle finalizes the runtime, so the next SoC can be configured.
        drop(backend);
    }
    // A SoC the fake has no platform description of is refused, naming the ones it has.
    let code = configure(&lib, "soc=Ascend310P3");
    assert_eq!(code, 100_000);
}

#[test]
fn the_capability_call_checks_its_arguments_as_the_runtime_does() {
    let mut v = 0i64;
    // The in-process fake (its default configuration: one Ascend910B4).
    assert_eq!(abi::aclGetDeviceCapability(0, 1, &mut v), 0);
    assert_eq!(v, 40);
    assert_eq!(abi::aclGetDeviceCapability(0, 0, &mut v), 0);
    assert_eq!(v, 20, "AI cores of a 910B4");
    assert_eq!(abi::aclGetDeviceCapability(0, 2, &mut v), 0);
    assert_eq!(v, 100_663_296, "L2 bytes of a 910B4");
    assert_eq!(abi::aclGetDeviceCapability(0, 3, &mut v), 100_000);
    assert!(recent().contains("not an aclDeviceInfo"), "{}", recent());
    assert_eq!(abi::aclGetDeviceCapability(0, -1, &mut v), 100_000);
    assert_eq!(abi::aclGetDeviceCapability(7, 1, &mut v), 107_001);
    assert!(recent().contains("device 7 does not exist"), "{}", recent());
    assert_eq!(abi::aclGetDeviceCapability(u32::MAX, 1, &mut v), 107_001);
    assert_eq!(
        abi::aclGetDeviceCapability(0, 1, std::ptr::null_mut()),
        100_000
    );
}

fn recent() -> String {
    let p = abi::aclGetRecentErrMsg();
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the fake returns NULL or a NUL-terminated string valid until its next call.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}
