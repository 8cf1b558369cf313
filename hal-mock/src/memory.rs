//! Device memory of the CPU backend: host-heap storage behind a per-device address space.
//!
//! Each device hands out [`DevicePtr`] addresses from its own range (`(ordinal + 1) << 48`),
//! never reusing one, with a 4 KiB unmapped gap after every allocation. Stream operations resolve
//! addresses back to allocations, so an address that was freed, belongs to another device, or runs
//! past its allocation is an error rather than a silent write into a neighbour. The bytes
//! themselves are reachable only through the trait API.
//!
//! Capacity is accounted the way ACL's `aclrtMalloc` with the huge-page-first policy rounds:
//! up to 1 MiB, `round_up(size, 32) + 32`; above, the padded size rounded up to 2 MiB huge pages.
//! Storage is allocated zeroed and lazily by the OS, so a 64 GiB profile runs on a small machine.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ascend_hal::{DevicePtr, Error, Result};

use crate::device::DeviceShared;

/// Alignment of every allocation, device or host (ACL guarantees 64 bytes).
pub(crate) const ALIGN: usize = 64;
const GUARD_GAP: u64 = 4096;
const HUGE_PAGE: u64 = 2 << 20;
const SMALL_LIMIT: u64 = 1 << 20;

/// Bytes an allocation of `bytes` takes from the device's capacity.
/// Saturates at `u64::MAX` for sizes no device has, which then fail the capacity check.
pub(crate) fn accounted_size(bytes: usize) -> u64 {
    let padded = (bytes as u64)
        .div_ceil(32)
        .saturating_mul(32)
        .saturating_add(32);
    if bytes as u64 <= SMALL_LIMIT {
        padded
    } else {
        padded.div_ceil(HUGE_PAGE).saturating_mul(HUGE_PAGE)
    }
}

/// A zero-filled, 64-byte aligned heap allocation that is freed on drop.
///
/// It is allocated with the allocator's natural alignment and over-allocated by `ALIGN` bytes,
/// then offset to a 64-byte boundary: asking the allocator for 64-byte alignment directly makes
/// Rust's system allocator zero the memory by hand (touching every page), while the natural
/// alignment goes to `calloc`, which maps large blocks lazily. That keeps a 20 GiB simulated
/// allocation at the cost of the pages actually written.
pub(crate) struct HostBytes {
    /// What the allocator returned.
    raw: NonNull<u8>,
    /// `raw` rounded up to `ALIGN`.
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `HostBytes` owns its allocation exclusively (like a `Box<[u8]>`); access goes through
// `&mut self` or through raw pointers whose users uphold the HAL's fencing contracts.
unsafe impl Send for HostBytes {}
// SAFETY: shared references only hand out a raw pointer; see `Send`.
unsafe impl Sync for HostBytes {}

impl HostBytes {
    fn layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len.checked_add(ALIGN)?, 1).ok()
    }

    /// Allocates `len > 0` zeroed bytes; `None` if the host cannot.
    pub(crate) fn zeroed(len: usize) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let layout = Self::layout(len)?;
        // SAFETY: `layout` has a non-zero size (`len + ALIGN`).
        let raw = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        let offset = raw.as_ptr().align_offset(ALIGN);
        if offset >= ALIGN {
            // SAFETY: allocated just above with this layout.
            unsafe { std::alloc::dealloc(raw.as_ptr(), layout) };
            return None;
        }
        // SAFETY: `offset < ALIGN`, so `raw + offset .. raw + offset + len` lies inside the
        // `len + ALIGN` bytes just allocated, and the result is non-null.
        let ptr = unsafe { NonNull::new_unchecked(raw.as_ptr().add(offset)) };
        Some(HostBytes { raw, ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `len` bytes (inside the allocation, zero-initialised), and
        // `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for HostBytes {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: `raw` was allocated in `zeroed` with exactly this layout.
            unsafe { std::alloc::dealloc(self.raw.as_ptr(), layout) }
        }
    }
}

/// The bytes behind an allocation, or behind a physical chunk that may be mapped.
pub(crate) type Storage = Arc<Mutex<HostBytes>>;

/// Bytes counted against a device's capacity, given back when the charge drops.
pub(crate) struct Charge {
    bytes: u64,
    used: Arc<AtomicU64>,
}

impl Charge {
    pub(crate) fn new(bytes: u64, used: &Arc<AtomicU64>) -> Self {
        used.fetch_add(bytes, Ordering::SeqCst);
        Charge {
            bytes,
            used: Arc::clone(used),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// One mapped range of a device's address space: an ordinary allocation, or a physical chunk
/// mapped into a reserved range. Its storage is locked for every access.
///
/// Queued operations hold it through their [`Piece`]s, so an ordinary allocation's capacity
/// (its [`Charge`]) comes back only when the last operation that uses it has finished, not when
/// its owner drops it.
pub(crate) struct Allocation {
    pub(crate) base: u64,
    pub(crate) size: usize,
    /// What this entry counts against the capacity (none for a mapping: the physical chunk
    /// counts itself).
    _charge: Option<Charge>,
    data: Storage,
}

impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocation")
            .field("base", &DevicePtr(self.base))
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Allocation {
    /// Locks the storage. Stream workers lock at most two allocations at a time, in address
    /// order, so they cannot deadlock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HostBytes> {
        // A panic inside a copy leaves bytes half-copied, which device memory may legitimately
        // be; the lock is still usable.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `len` bytes at `offset` of one allocation: a piece of a device range.
pub(crate) type Piece = (Arc<Allocation>, usize, usize);

/// Bits of address per device: each device of every CPU backend in the process gets its own
/// 256 TiB of addresses, so a buffer of one backend is never a valid address of another.
const SPACE_BITS: u32 = 48;
/// The next address space to hand out (space 0 is never used: address 0 stays invalid).
static NEXT_SPACE: AtomicU64 = AtomicU64::new(1);

/// The live allocations and mappings of one device, and its usage.
pub(crate) struct AddressSpace {
    live: BTreeMap<u64, Arc<Allocation>>,
    next: u64,
    end: u64,
    used: Arc<AtomicU64>,
}

impl AddressSpace {
    /// A fresh range of addresses, unique in the process (after 65,535 devices the ranges are
    /// handed out again).
    pub(crate) fn new() -> Self {
        let index = NEXT_SPACE.fetch_add(1, Ordering::Relaxed) % ((1 << (64 - SPACE_BITS)) - 1) + 1;
        let start = index << SPACE_BITS;
        AddressSpace {
            live: BTreeMap::new(),
            next: start,
            end: start + ((1u64 << SPACE_BITS) - 1),
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes counted against the capacity (live allocations, memory queued work still uses,
    /// physical chunks).
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Counts `bytes` against the capacity until the returned charge drops.
    pub(crate) fn charge(&self, bytes: u64) -> Charge {
        Charge::new(bytes, &self.used)
    }

    /// Takes `size` bytes of fresh addresses, followed by an unmapped guard gap; `None` when the
    /// device's addresses are used up.
    pub(crate) fn reserve(&mut self, size: usize) -> Option<u64> {
        let base = self.next;
        let next = base
            .checked_add(size as u64)?
            .checked_add(GUARD_GAP)?
            .checked_next_multiple_of(HUGE_PAGE)?;
        if next > self.end {
            return None;
        }
        self.next = next;
        Some(base)
    }

    /// Adds an allocation of `size` bytes backed by `data`; the caller checked capacity.
    pub(crate) fn insert(
        &mut self,
        size: usize,
        accounted: u64,
        data: HostBytes,
    ) -> Option<Arc<Allocation>> {
        let base = self.reserve(size)?;
        let allocation = Arc::new(Allocation {
            base,
            size,
            _charge: Some(self.charge(accounted)),
            data: Arc::new(Mutex::new(data)),
        });
        self.live.insert(base, Arc::clone(&allocation));
        Some(allocation)
    }

    /// Maps `data` (`size` bytes) at `base`, inside a reserved range; the caller checked that
    /// nothing is mapped there.
    pub(crate) fn map_at(&mut self, base: u64, size: usize, data: Storage) {
        self.live.insert(
            base,
            Arc::new(Allocation {
                base,
                size,
                _charge: None,
                data,
            }),
        );
    }

    /// Bases of the entries inside `base..base + size`.
    pub(crate) fn mapped_in(&self, base: u64, size: usize) -> Vec<u64> {
        self.live
            .range(base..base + size as u64)
            .map(|(&b, _)| b)
            .collect()
    }

    /// Whether anything is mapped in `base..base + size`.
    pub(crate) fn overlaps(&self, base: u64, size: usize) -> bool {
        let end = base + size as u64;
        self.live
            .range(..end)
            .next_back()
            .is_some_and(|(&b, a)| b + a.size as u64 > base)
    }

    /// Removes the allocation or mapping starting at `base` from the address space; returns
    /// whether there was one. Its capacity comes back once queued work no longer holds it.
    pub(crate) fn remove(&mut self, base: u64) -> bool {
        self.live.remove(&base).is_some()
    }

    /// The memory a kernel argument at `ptr` can reach: from `ptr` to the end of its allocation,
    /// or of the run of adjacent mapped chunks it starts in (what a real NPU's MMU lets a kernel
    /// touch without a fault). `None` if `ptr` is not inside live memory.
    pub(crate) fn extent(&self, ptr: DevicePtr) -> Option<Vec<Piece>> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut at = ptr.0;
        while let Some((&base, a)) = self.live.range(..=at).next_back() {
            let offset = (at - base) as usize;
            if offset >= a.size || (!pieces.is_empty() && offset != 0) {
                break;
            }
            pieces.push((Arc::clone(a), offset, a.size - offset));
            at = base + a.size as u64;
        }
        (!pieces.is_empty()).then_some(pieces)
    }

    /// The pieces of `ptr..ptr + bytes`: one for an ordinary allocation, several across the
    /// adjacent chunks of a mapped range. Every byte must be mapped.
    pub(crate) fn resolve(
        &self,
        ptr: DevicePtr,
        bytes: usize,
        op: &'static str,
        device: &str,
    ) -> Result<Vec<Piece>> {
        let mut pieces = Vec::with_capacity(1);
        let (mut at, mut left) = (ptr.0, bytes);
        loop {
            let piece = self.live.range(..=at).next_back().and_then(|(&base, a)| {
                let offset = (at - base) as usize;
                (offset < a.size && (pieces.is_empty() || offset == 0))
                    .then(|| (Arc::clone(a), offset, left.min(a.size - offset)))
            });
            let Some(piece) = piece else {
                return Err(Error::InvalidArgument {
                    op,
                    message: format!(
                        "device range {:#x}..{:#x} ({bytes} bytes) is not inside live memory of \
                         {device}: freed, out of bounds, unmapped, or another device's address",
                        ptr.0,
                        ptr.0.saturating_add(bytes as u64)
                    ),
                });
            };
            at += piece.2 as u64;
            left -= piece.2;
            pieces.push(piece);
            if left == 0 {
                return Ok(pieces);
            }
        }
    }
}

/// A raw device allocation of the CPU backend; frees itself on drop.
///
/// Queued operations hold the storage alive, so dropping this while copies are pending is safe:
/// the address becomes invalid at once, the bytes go away when the last operation finishes.
pub struct CpuDeviceMemory {
    pub(crate) allocation: Arc<Allocation>,
    pub(crate) device: Arc<DeviceShared>,
}

impl ascend_hal::DeviceMemory for CpuDeviceMemory {
    fn ptr(&self) -> DevicePtr {
        DevicePtr(self.allocation.base)
    }
    fn size(&self) -> usize {
        self.allocation.size
    }
    fn device_ordinal(&self) -> usize {
        self.device.ordinal
    }
}

impl Drop for CpuDeviceMemory {
    fn drop(&mut self) {
        self.device.memory().remove(self.allocation.base);
    }
}

impl fmt::Debug for CpuDeviceMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuDeviceMemory")
            .field("device", &self.device.ordinal)
            .field("ptr", &DevicePtr(self.allocation.base))
            .field("size", &self.allocation.size)
            .finish()
    }
}

/// A reserved range of the CPU backend's device addresses (nothing is backed until mapped).
pub struct CpuVirtualRange {
    pub(crate) base: u64,
    pub(crate) size: usize,
    pub(crate) device: Arc<DeviceShared>,
}

impl ascend_hal::VirtualRange for CpuVirtualRange {
    fn ptr(&self) -> DevicePtr {
        DevicePtr(self.base)
    }
    fn size(&self) -> usize {
        self.size
    }
}

impl Drop for CpuVirtualRange {
    fn drop(&mut self) {
        // Mappings left behind would keep addresses of a released range alive: remove them.
        let mut space = self.device.memory();
        let leftovers: Vec<u64> = space.mapped_in(self.base, self.size);
        for base in leftovers {
            space.remove(base);
        }
    }
}

impl fmt::Debug for CpuVirtualRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuVirtualRange")
            .field("ptr", &DevicePtr(self.base))
            .field("size", &self.size)
            .finish()
    }
}

/// A physical chunk of the CPU backend's device memory, counted against its capacity.
pub struct CpuPhysicalMemory {
    pub(crate) storage: Storage,
    pub(crate) size: usize,
    /// Its capacity, given back on drop (unmapped by then, by the `Device::unmap` contract).
    pub(crate) _charge: Charge,
}

impl ascend_hal::PhysicalMemory for CpuPhysicalMemory {
    fn size(&self) -> usize {
        self.size
    }
}

impl fmt::Debug for CpuPhysicalMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuPhysicalMemory")
            .field("size", &self.size)
            .finish()
    }
}

/// Page-locked host memory of the CPU backend (ordinary heap memory, 64-byte aligned).
pub struct CpuHostMemory {
    pub(crate) bytes: HostBytes,
}

// SAFETY: (1) `HostBytes` is non-null, 64-byte aligned and valid for `len` bytes while alive;
// (2) it is owned by this value alone; (3) pointer and length never change.
unsafe impl ascend_hal::HostMemory for CpuHostMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.bytes.as_ptr()
    }
    fn size(&self) -> usize {
        self.bytes.len()
    }
}

impl fmt::Debug for CpuHostMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuHostMemory")
            .field("size", &self.bytes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_follows_acl_huge_first_rounding() {
        assert_eq!(accounted_size(1), 64);
        assert_eq!(accounted_size(32), 64);
        assert_eq!(accounted_size(33), 96);
        assert_eq!(accounted_size(1 << 20), (1 << 20) + 32);
        assert_eq!(accounted_size((1 << 20) + 1), 2 << 20);
        assert_eq!(accounted_size(2 << 20), 4 << 20);
        assert_eq!(accounted_size((4 << 20) - 64), 4 << 20);
    }

    #[test]
    fn resolve_rejects_gaps_and_overruns() {
        let mut space = AddressSpace::new();
        let a = space
            .insert(100, 160, HostBytes::zeroed(100).unwrap())
            .unwrap();
        let b = space
            .insert(100, 160, HostBytes::zeroed(100).unwrap())
            .unwrap();
        assert!(b.base >= a.base + 100 + GUARD_GAP);
        let pieces = space
            .resolve(DevicePtr(a.base + 10), 90, "t", "cpu:0")
            .unwrap();
        assert_eq!(pieces.len(), 1);
        assert_eq!(
            (pieces[0].0.base, pieces[0].1, pieces[0].2),
            (a.base, 10, 90)
        );
        let err = space
            .resolve(DevicePtr(a.base + 10), 91, "t", "cpu:0")
            .unwrap_err();
        assert!(
            err.to_string().contains("not inside live memory of cpu:0"),
            "{err}"
        );
        assert!(space
            .resolve(DevicePtr(a.base + 200), 1, "t", "cpu:0")
            .is_err());
        assert_eq!(space.used(), 320);
        let a_base = a.base;
        space.remove(a_base);
        assert_eq!(space.used(), 320, "`a` still holds its capacity");
        drop((a, pieces));
        assert_eq!(space.used(), 160);
        assert!(space.resolve(DevicePtr(a_base), 1, "t", "cpu:0").is_err());
    }

    #[test]
    fn mapped_chunks_resolve_as_one_range() {
        let mut space = AddressSpace::new();
        let base = space.reserve(3 * 64).unwrap();
        let chunk = || Arc::new(Mutex::new(HostBytes::zeroed(64).unwrap()));
        space.map_at(base, 64, chunk());
        space.map_at(base + 64, 64, chunk());
        assert!(space.overlaps(base + 60, 8));
        assert!(!space.overlaps(base + 128, 64));
        let pieces = space
            .resolve(DevicePtr(base + 60), 10, "t", "cpu:0")
            .unwrap();
        let spans: Vec<_> = pieces.iter().map(|p| (p.0.base - base, p.1, p.2)).collect();
        assert_eq!(spans, vec![(0, 60, 4), (64, 0, 6)]);
        // The third chunk is not mapped.
        assert!(space
            .resolve(DevicePtr(base + 120), 16, "t", "cpu:0")
            .is_err());
        assert!(space.remove(base + 64));
        assert!(space
            .resolve(DevicePtr(base + 60), 10, "t", "cpu:0")
            .is_err());
    }
}
