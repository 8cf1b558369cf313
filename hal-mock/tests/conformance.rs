//! The backend-independent conformance suite, run on the CPU backend.

use hal_mock::{CpuBackend, DeviceProfile};

struct Cpu;

impl ascend_hal::conformance::Harness for Cpu {
    type Backend = CpuBackend;

    fn backend(&self) -> CpuBackend {
        CpuBackend::builder()
            .device(DeviceProfile::custom("Ascend910B4", 256 << 20))
            .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
            .poison_allocations(true)
            .build()
    }

    fn lose_device(&self, backend: &CpuBackend, ordinal: usize) -> bool {
        backend.lose_device(ordinal).is_ok()
    }
}

ascend_hal::conformance_tests!(Cpu);
