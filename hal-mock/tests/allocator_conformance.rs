//! The allocator conformance suite on the CPU backend: the direct allocator, the caching
//! allocator (ordinary and expandable segments), and a deliberately broken allocator that the
//! suite must catch.

use std::sync::{Arc, Mutex};

use ascend_hal::alloc::{
    Allocator, AllocatorStats, BlockOwner, CachingAllocator, DirectAllocator, MemoryBlock,
};
use ascend_hal::conformance::allocator::{self as suite, AllocatorHarness};
use ascend_hal::{Backend, Device, DevicePtr, Result, Stream};
use hal_mock::{CpuBackend, CpuDevice, CpuStream, DeviceProfile};

fn backend() -> CpuBackend {
    CpuBackend::builder()
        .device(DeviceProfile::custom("Ascend910B4", 512 << 20))
        .device(DeviceProfile::custom("Ascend910B4", 64 << 20))
        .poison_allocations(true)
        .build()
}

/// Holds a CPU stream until the returned function runs.
fn hold(stream: &CpuStream) -> Option<Box<dyn FnOnce() + Send>> {
    let held = stream.hold().ok()?;
    Some(Box::new(move || held.release()))
}

struct Direct;
impl AllocatorHarness for Direct {
    type Backend = CpuBackend;
    type Allocator = DirectAllocator<CpuBackend>;
    fn backend(&self) -> CpuBackend {
        backend()
    }
    fn allocator(&self, device: &CpuDevice) -> Self::Allocator {
        DirectAllocator::new(device)
    }
    fn hold_stream(&self, stream: &CpuStream) -> Option<Box<dyn FnOnce() + Send>> {
        hold(stream)
    }
}

struct Caching(&'static str);
impl AllocatorHarness for Caching {
    type Backend = CpuBackend;
    type Allocator = CachingAllocator<CpuBackend>;
    fn backend(&self) -> CpuBackend {
        backend()
    }
    fn allocator(&self, device: &CpuDevice) -> Self::Allocator {
        CachingAllocator::new(device, self.0.parse().unwrap()).unwrap()
    }
    fn hold_stream(&self, stream: &CpuStream) -> Option<Box<dyn FnOnce() + Send>> {
        hold(stream)
    }
}

mod direct {
    ascend_hal::allocator_conformance_tests!(super::Direct);
}

mod caching {
    ascend_hal::allocator_conformance_tests!(super::Caching(""));
}

mod caching_expandable {
    ascend_hal::allocator_conformance_tests!(super::Caching("expandable_segments:True"));
}

mod caching_max_split {
    ascend_hal::allocator_conformance_tests!(super::Caching(
        "max_split_size_mb:20,garbage_collection_threshold:0.5"
    ));
}

/// A test-only allocator with a deliberate bug: every third block it hands out is the
/// previous block again, so two live blocks overlap.
struct Overlapping {
    inner: DirectAllocator<CpuBackend>,
    state: Arc<OverlapState>,
}

#[derive(Default)]
struct OverlapState {
    calls: Mutex<(u64, Option<(DevicePtr, usize)>)>,
    stats: Mutex<AllocatorStats>,
    /// Blocks of `inner` held while their aliases live.
    held: Mutex<Vec<MemoryBlock<CpuBackend>>>,
}

impl BlockOwner<CpuBackend> for OverlapState {
    fn record_stream(&self, _: &MemoryBlock<CpuBackend>, _: &CpuStream) -> Result<()> {
        Ok(())
    }
    fn release(&self, block: &MemoryBlock<CpuBackend>) {
        let mut s = self.stats.lock().unwrap();
        s.allocated -= block.size() as u64;
        s.active -= block.size() as u64;
        s.reserved -= block.size() as u64;
    }
}

impl std::fmt::Debug for Overlapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Overlapping")
    }
}

impl Allocator<CpuBackend> for Overlapping {
    fn name(&self) -> &str {
        "overlapping (broken on purpose)"
    }
    fn device(&self) -> &CpuDevice {
        self.inner.device()
    }
    fn allocate(&self, bytes: usize, stream: &CpuStream) -> Result<MemoryBlock<CpuBackend>> {
        let mut calls = self.state.calls.lock().unwrap();
        calls.0 += 1;
        let (ptr, size) = match calls.1 {
            Some((ptr, size)) if calls.0.is_multiple_of(3) && size >= bytes => (ptr, size),
            _ => {
                let block = self.inner.allocate(bytes, stream)?;
                let (ptr, size) = (block.ptr(), block.size());
                self.state.held.lock().unwrap().push(block);
                (ptr, size)
            }
        };
        calls.1 = Some((ptr, size));
        let mut s = self.state.stats.lock().unwrap();
        s.note_reserved(size as u64);
        s.note_allocation(size as u64);
        let owner: Arc<dyn BlockOwner<CpuBackend>> = self.state.clone();
        // SAFETY: deliberately violated (3: blocks overlap) to show that the suite catches it.
        // Nothing unsound follows on the CPU backend: device addresses are numbers it checks,
        // and the memory stays allocated in `held` for the allocator's lifetime.
        Ok(unsafe { MemoryBlock::from_raw_parts(ptr, size, 0, stream.id(), 0, owner) })
    }
    fn owns(&self, block: &MemoryBlock<CpuBackend>) -> bool {
        block.is_owned_by(&self.state)
    }
    fn stats(&self) -> AllocatorStats {
        *self.state.stats.lock().unwrap()
    }
    fn empty_cache(&self) -> Result<()> {
        Ok(())
    }
}

struct Broken;
impl AllocatorHarness for Broken {
    type Backend = CpuBackend;
    type Allocator = Overlapping;
    fn backend(&self) -> CpuBackend {
        backend()
    }
    fn allocator(&self, device: &CpuDevice) -> Overlapping {
        Overlapping {
            inner: DirectAllocator::new(device),
            state: Arc::default(),
        }
    }
}

#[test]
#[should_panic(expected = "live blocks overlap")]
fn the_suite_catches_overlapping_blocks() {
    suite::blocks_do_not_overlap_and_keep_their_bytes(&Broken);
}

#[test]
#[should_panic(expected = "overlap")]
fn the_thread_check_catches_overlapping_blocks() {
    suite::many_threads(&Broken);
}

#[test]
fn the_broken_allocator_is_otherwise_well_formed() {
    // Without the overlap the same allocator passes, so the failures above are the overlap's.
    let device = backend().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let a = Broken.allocator(&device);
    let x = a.allocate(100, &stream).unwrap();
    let y = a.allocate(100, &stream).unwrap();
    assert_ne!(x.ptr(), y.ptr());
    let z = a.allocate(100, &stream).unwrap(); // the third: y again
    assert_eq!(z.ptr(), y.ptr());
    assert_eq!(a.stats().allocated, 300);
}
