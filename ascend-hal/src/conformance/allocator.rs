//! The allocator conformance suite: any [`Allocator`] runs the same checks against itself.
//!
//! Implement [`AllocatorHarness`] and expand
//! [`allocator_conformance_tests!`](crate::allocator_conformance_tests) in a test file (inside a
//! module per allocator, since each check becomes a `#[test]` of the same name):
//!
//! ```ignore
//! struct Caching;
//! impl ascend_hal::conformance::allocator::AllocatorHarness for Caching {
//!     type Backend = hal_mock::CpuBackend;
//!     type Allocator = ascend_hal::alloc::CachingAllocator<hal_mock::CpuBackend>;
//!     fn backend(&self) -> Self::Backend { /* two devices of a few hundred MiB */ }
//!     fn allocator(&self, device: &hal_mock::CpuDevice) -> Self::Allocator { /* ... */ }
//! }
//! mod caching { ascend_hal::allocator_conformance_tests!(super::Caching); }
//! ```
//!
//! What every allocator must do, checked after every step of seeded random runs:
//! - live blocks never overlap, are at least as large as asked, 64-byte aligned, on the
//!   allocator's device, and keep their contents (a block's bytes are written and read back);
//! - statistics add up: `allocated` is the sum of the live blocks' sizes,
//!   `reserved >= active >= allocated`, peaks are at least the current values, `num_allocs`
//!   counts successes, and the device has at least `reserved` bytes in use;
//! - a failed allocation (zero bytes, more than the device, `usize::MAX`, a stream of another
//!   device) changes no block, no live byte and no counter but `num_ooms` (and `reserved`, which a
//!   cache may release to make room);
//! - a block dropped while another stream still uses it (after `record_stream`) is not handed
//!   out again, on any stream, before that work is done;
//! - `record_stream` refuses a block of another allocator;
//! - after every block is dropped and `empty_cache` has run, nothing is allocated or reserved and
//!   the device's memory is back where it started;
//! - concurrent use from several threads keeps all of the above.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::alloc::{Allocator, AllocatorStats};
use crate::prelude::*;
use crate::Error;

/// How the suite gets an allocator to test.
pub trait AllocatorHarness: Sync {
    /// The backend the allocator runs on.
    type Backend: Backend;
    /// The allocator under test.
    type Allocator: Allocator<Self::Backend>;

    /// A fresh backend for one check; two devices or more let the wrong-device check run.
    fn backend(&self) -> Self::Backend;

    /// A fresh allocator for `device`; each call returns a new, independent one.
    fn allocator(&self, device: &<Self::Backend as Backend>::Device) -> Self::Allocator;

    /// Holds `stream`: work enqueued on it after this call does not run until the returned
    /// function is called. Return `None` if the backend cannot (the stream-reuse check then
    /// keeps the stream busy with large memsets instead, which catches a wrong allocator by
    /// timing rather than for certain).
    fn hold_stream(
        &self,
        stream: &<Self::Backend as Backend>::Stream,
    ) -> Option<Box<dyn FnOnce() + Send>> {
        let _ = stream;
        None
    }

    /// Whether the checks must run one at a time (a process-wide runtime under test).
    fn serialize(&self) -> bool {
        false
    }
}

/// Held by each generated test while it runs, when the harness asks for serial checks.
pub fn exclusive<H: AllocatorHarness>(h: &H) -> Option<std::sync::MutexGuard<'static, ()>> {
    h.serialize()
        .then(|| super::SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Expands to one `#[test]` per allocator check, each calling it with the harness `$h`.
#[macro_export]
macro_rules! allocator_conformance_tests {
    ($h:expr) => {
        $crate::allocator_conformance_tests!(@each $h;
            blocks_do_not_overlap_and_keep_their_bytes, failed_allocations_change_nothing,
            freed_blocks_wait_for_other_streams, foreign_blocks_are_refused,
            wrong_device_is_refused, everything_returns_at_the_end, typed_buffers,
            many_threads);
    };
    (@each $h:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let _serial = $crate::conformance::allocator::exclusive(&$h);
                $crate::conformance::allocator::$name(&$h);
            }
        )*
    };
}

type B<H> = <H as AllocatorHarness>::Backend;
type Dev<H> = <B<H> as Backend>::Device;
type Strm<H> = <B<H> as Backend>::Stream;

/// One live buffer of a check: what was asked and the byte it was filled with.
struct Live<H: AllocatorHarness> {
    buf: DeviceBuffer<B<H>, u8>,
    asked: usize,
    fill: u8,
}

/// A check's allocator with its device, streams and what the check expects of it.
struct Bench<H: AllocatorHarness> {
    backend: B<H>,
    device: Dev<H>,
    alloc: H::Allocator,
    streams: Vec<Strm<H>>,
    /// Device memory in use before the allocator was made.
    base_used: u64,
    /// Successful allocations so far.
    allocs: u64,
    next_fill: u8,
}

impl<H: AllocatorHarness> Bench<H> {
    fn new(h: &H, streams: usize) -> Self {
        let backend = h.backend();
        let device = backend.device(0).expect("device 0");
        let streams = (0..streams).map(|_| device.new_stream().unwrap()).collect();
        let base_used = device.memory_info().unwrap().used();
        let alloc = h.allocator(&device);
        Bench {
            backend,
            device,
            alloc,
            streams,
            base_used,
            allocs: 0,
            next_fill: 0,
        }
    }

    /// Allocates `n` bytes on stream `s` and fills them with a byte of their own.
    fn allocate(&mut self, n: usize, s: usize) -> crate::Result<Live<H>> {
        let mut buf = DeviceBuffer::<B<H>, u8>::alloc_in(&self.alloc, &self.streams[s], n)?;
        self.allocs += 1;
        self.next_fill = self.next_fill % 254 + 1;
        let fill = self.next_fill;
        self.streams[s].memset(&mut buf, fill).unwrap();
        Ok(Live {
            buf,
            asked: n,
            fill,
        })
    }

    fn sync(&self) {
        for s in &self.streams {
            s.synchronize().unwrap();
        }
    }

    /// Every invariant that holds between operations.
    fn check(&self, live: &[Live<H>], step: &str) {
        let stats = self.alloc.stats();
        let mut spans = Vec::with_capacity(live.len());
        let mut sum = 0u64;
        for l in live {
            let block = l
                .buf
                .block()
                .unwrap_or_else(|| panic!("{step}: a buffer of {} bytes has no block", l.asked));
            assert!(
                block.size() >= l.asked,
                "{step}: asked {} bytes, got a block of {}",
                l.asked,
                block.size()
            );
            assert_eq!(
                block.ptr().0 % 64,
                0,
                "{step}: block at {:?} is not 64-byte aligned",
                block.ptr()
            );
            assert_eq!(block.device_ordinal(), self.device.ordinal(), "{step}");
            assert!(
                self.alloc.owns(block),
                "{step}: the allocator disowns its block"
            );
            spans.push((block.ptr().0, block.ptr().0 + block.size() as u64));
            sum += block.size() as u64;
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "{step}: live blocks overlap: {:#x}..{:#x} and {:#x}..{:#x}",
                w[0].0,
                w[0].1,
                w[1].0,
                w[1].1
            );
        }
        check_stats(&stats, sum, step);
        assert_eq!(
            stats.num_allocs, self.allocs,
            "{step}: num_allocs counts successful allocations"
        );
        let used = self.device.memory_info().unwrap().used() - self.base_used;
        assert!(
            used >= stats.reserved,
            "{step}: the device has {used} bytes in use but the allocator reserves {}",
            stats.reserved
        );
    }

    /// Reads the first and last bytes of every live buffer back.
    fn check_bytes(&self, live: &[Live<H>], step: &str) {
        self.sync();
        let stream = &self.streams[0];
        for l in live {
            let n = l.buf.len();
            for range in [0..n.min(64), n.saturating_sub(64)..n] {
                let got = stream.clone_to_host(&l.buf.slice(range).unwrap()).unwrap();
                assert!(
                    got.iter().all(|&b| b == l.fill),
                    "{step}: a block of {} bytes lost its contents (another block overlaps it?)",
                    l.asked
                );
            }
        }
    }
}

fn check_stats(s: &AllocatorStats, live_bytes: u64, step: &str) {
    assert_eq!(
        s.allocated, live_bytes,
        "{step}: allocated is the sum of the live blocks' sizes: {s:?}"
    );
    assert!(
        s.reserved >= s.active && s.active >= s.allocated,
        "{step}: reserved >= active >= allocated: {s:?}"
    );
    assert!(
        s.peak_allocated >= s.allocated
            && s.peak_active >= s.active
            && s.peak_reserved >= s.reserved,
        "{step}: peaks below current values: {s:?}"
    );
}

/// A deterministic xorshift stream.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    /// A size from one of three classes: small, medium, large.
    fn size(&mut self) -> usize {
        match self.below(3) {
            0 => 1 + self.below(4096),
            1 => 4096 + self.below(2 << 20),
            _ => (2 << 20) + self.below(4 << 20),
        }
    }
}

/// A seeded run of allocations, frees and cross-stream uses; returns the blocks still live.
fn random_run<H: AllocatorHarness>(bench: &mut Bench<H>, seed: u64, steps: usize) -> Vec<Live<H>> {
    let mut rng = Rng(seed | 1);
    let mut live: Vec<Live<H>> = Vec::new();
    for step in 0..steps {
        let what = format!("seed {seed} step {step}");
        match rng.below(10) {
            0..=4 if live.len() < 24 => {
                let (n, s) = (rng.size(), rng.below(bench.streams.len()));
                let before = bench.alloc.stats();
                match bench.allocate(n, s) {
                    Ok(l) => live.push(l),
                    Err(e) => {
                        assert!(e.is_out_of_memory(), "{what}: {n} bytes: {e}");
                        assert_unchanged(&before, &bench.alloc.stats(), &what);
                    }
                }
            }
            0..=7 if !live.is_empty() => {
                let i = rng.below(live.len());
                live.swap_remove(i);
            }
            _ if !live.is_empty() => {
                // Use a block on another stream (rewrite it with its own byte), then say so.
                let i = rng.below(live.len());
                let s = rng.below(bench.streams.len());
                let l = &mut live[i];
                bench.streams[s].memset(&mut l.buf, l.fill).unwrap();
                l.buf.record_stream(&bench.streams[s]).unwrap();
            }
            _ => {}
        }
        bench.check(&live, &what);
        if step % 50 == 49 {
            bench.check_bytes(&live, &what);
        }
    }
    bench.check_bytes(&live, &format!("seed {seed} end"));
    live
}

fn assert_unchanged(before: &AllocatorStats, after: &AllocatorStats, what: &str) {
    assert_eq!(
        after.allocated, before.allocated,
        "{what}: allocated changed"
    );
    assert_eq!(after.active, before.active, "{what}: active changed");
    assert_eq!(after.num_allocs, before.num_allocs, "{what}: num_allocs");
    assert!(
        after.reserved <= before.reserved,
        "{what}: a failed allocation reserved memory: {before:?} -> {after:?}"
    );
}

/// Live blocks never overlap and keep their bytes through random allocations, frees and uses on
/// other streams; the statistics add up after every step.
pub fn blocks_do_not_overlap_and_keep_their_bytes<H: AllocatorHarness>(h: &H) {
    for seed in [1, 2] {
        let mut bench = Bench::new(h, 3);
        let live = random_run(&mut bench, seed, 300);
        drop(live);
        bench.check(&[], &format!("seed {seed}, all dropped"));
    }
}

/// Zero bytes, more than the device, `usize::MAX` and a stream of another device are refused
/// with the right error, and change nothing.
pub fn failed_allocations_change_nothing<H: AllocatorHarness>(h: &H) {
    let mut bench = Bench::new(h, 2);
    let live: Vec<Live<H>> = (0..4)
        .map(|i| bench.allocate((i + 1) * 300_000, i % 2).unwrap())
        .collect();
    bench.sync();
    let total = bench.device.memory_info().unwrap().total;
    let too_big = usize::try_from(total)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    for (asked, what) in [
        (0usize, "zero bytes"),
        (too_big, "more than the device"),
        (usize::MAX, "usize::MAX"),
        (usize::MAX - 511, "usize::MAX - 511"),
    ] {
        let before = bench.alloc.stats();
        let err = bench
            .alloc
            .allocate(asked, &bench.streams[0])
            .expect_err(what);
        if asked == 0 {
            assert!(
                matches!(err, Error::InvalidArgument { .. }),
                "{what}: {err:?}"
            );
        } else {
            assert!(
                err.is_out_of_memory() || matches!(err, Error::InvalidArgument { .. }),
                "{what}: {err:?}"
            );
            if err.is_out_of_memory() {
                let msg = err.to_string();
                assert!(msg.contains("requested"), "{what}: {msg}");
            }
        }
        let after = bench.alloc.stats();
        assert_unchanged(&before, &after, what);
        bench.check(&live, what);
        bench.check_bytes(&live, what);
    }
    // Still usable.
    let more = bench.allocate(1 << 20, 1).unwrap();
    let mut live = live;
    live.push(more);
    bench.check(&live, "after the failures");
    bench.check_bytes(&live, "after the failures");
}

/// A block dropped while another stream still uses it is not handed out again, on its own
/// stream or any other, before that work is done.
pub fn freed_blocks_wait_for_other_streams<H: AllocatorHarness>(h: &H) {
    const N: usize = 256 << 10;
    let mut bench = Bench::new(h, 3);
    let mut a = bench.allocate(N, 0).unwrap();
    bench.sync();
    let user = &bench.streams[1];
    let mut scratch = DeviceBuffer::<B<H>, u8>::alloc(&bench.device, 32 << 20).unwrap();
    let release = h.hold_stream(user);
    if release.is_none() {
        for v in 0..6 {
            user.memset(&mut scratch, v).unwrap(); // keep the user busy
        }
    }
    // The user overwrites the block later, after the block has been dropped.
    user.memset(&mut a.buf, 0x11).unwrap();
    a.buf.record_stream(user).unwrap();
    drop(a);
    // New blocks on the block's own stream and on a third: whatever memory they get, their
    // contents must be theirs once the user's work has run.
    let mut mine = bench.allocate(N, 0).unwrap();
    let mut third = bench.allocate(N, 2).unwrap();
    bench.streams[0].memset(&mut mine.buf, 0x22).unwrap();
    bench.streams[2].memset(&mut third.buf, 0x33).unwrap();
    mine.fill = 0x22;
    third.fill = 0x33;
    bench.streams[0].synchronize().unwrap();
    bench.streams[2].synchronize().unwrap();
    if let Some(release) = release {
        release();
    }
    bench.sync();
    for l in [&mine, &third] {
        let got = bench.streams[0].clone_to_host(&l.buf).unwrap();
        let wrong = got.iter().filter(|&&b| b != l.fill).count();
        assert_eq!(
            wrong, 0,
            "{wrong} of {N} bytes were overwritten by another stream's queued work: the block \
             was handed out again before the work of a stream it was recorded on had run"
        );
    }
    let live = vec![mine, third];
    bench.check(&live, "after the reuse");
    drop(scratch);
}

/// `record_stream` with a block of another allocator is refused and changes nothing.
pub fn foreign_blocks_are_refused<H: AllocatorHarness>(h: &H) {
    let bench = Bench::<H>::new(h, 2);
    let other = h.allocator(&bench.device);
    let foreign = other.allocate(4096, &bench.streams[0]).unwrap();
    assert!(other.owns(&foreign));
    assert!(
        !bench.alloc.owns(&foreign),
        "owns another allocator's block"
    );
    let before = bench.alloc.stats();
    let err = bench
        .alloc
        .record_stream(&foreign, &bench.streams[1])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { .. }),
        "expected InvalidArgument, got {err:?}"
    );
    assert!(err.to_string().contains("another allocator"), "{err}");
    assert_eq!(bench.alloc.stats(), before);
    // Its own allocator takes it.
    other.record_stream(&foreign, &bench.streams[1]).unwrap();
    drop(foreign);
    bench.sync();
    other.empty_cache().unwrap();
    assert_eq!(other.stats().allocated, 0);
}

/// A stream of another device is refused by `allocate` and `record_stream`, changing nothing.
pub fn wrong_device_is_refused<H: AllocatorHarness>(h: &H) {
    let mut bench = Bench::<H>::new(h, 1);
    if bench.backend.device_count().unwrap() < 2 {
        return;
    }
    let far = bench.backend.device(1).unwrap().new_stream().unwrap();
    let before = bench.alloc.stats();
    let err = bench.alloc.allocate(4096, &far).unwrap_err();
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    assert_eq!(bench.alloc.stats(), before);
    let l = bench.allocate(4096, 0).unwrap();
    let before = bench.alloc.stats();
    let err = l.buf.record_stream(&far).unwrap_err();
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    let err = bench
        .alloc
        .record_stream(l.buf.block().unwrap(), &far)
        .unwrap_err();
    assert!(matches!(err, Error::WrongDevice { .. }), "{err:?}");
    assert_eq!(bench.alloc.stats(), before);
    bench.check(&[l], "after the refusals");
}

/// Once every block is dropped and the cache emptied, nothing is allocated or reserved and the
/// device's memory is back where it started.
pub fn everything_returns_at_the_end<H: AllocatorHarness>(h: &H) {
    let mut bench = Bench::new(h, 3);
    let live = random_run(&mut bench, 3, 200);
    drop(live);
    bench.sync();
    bench.alloc.empty_cache().unwrap();
    let s = bench.alloc.stats();
    assert_eq!(
        (s.allocated, s.active, s.reserved),
        (0, 0, 0),
        "memory still held after empty_cache: {s:?}"
    );
    assert!(
        s.peak_allocated > 0 && s.peak_reserved >= s.peak_allocated,
        "{s:?}"
    );
    assert_eq!(
        bench.device.memory_info().unwrap().used(),
        bench.base_used,
        "the device did not get its memory back"
    );
}

/// Typed buffers: zero elements take nothing, data round-trips, a block too small for the
/// elements is refused.
pub fn typed_buffers<H: AllocatorHarness>(h: &H) {
    let bench = Bench::<H>::new(h, 1);
    let stream = &bench.streams[0];
    let before = bench.alloc.stats();
    let empty = DeviceBuffer::<B<H>, f32>::alloc_in(&bench.alloc, stream, 0).unwrap();
    assert!(empty.is_empty() && empty.block().is_none());
    assert_eq!(bench.alloc.stats(), before, "an empty buffer took memory");
    let data: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5).collect();
    let buf = DeviceBuffer::<B<H>, f32>::from_slice_in(&bench.alloc, stream, &data).unwrap();
    assert_eq!(stream.clone_to_host(&buf).unwrap(), data);
    let zeros = DeviceBuffer::<B<H>, i32>::zeros_in(&bench.alloc, stream, 777).unwrap();
    assert_eq!(stream.clone_to_host(&zeros).unwrap(), vec![0; 777]);
    let block = bench.alloc.allocate(100, stream).unwrap();
    let size = block.size();
    let err = DeviceBuffer::<B<H>, i64>::from_block(block, size / 8 + 1).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("the block holds"), "{err}");
    check_stats(
        &bench.alloc.stats(),
        [&buf.block(), &zeros.block()]
            .iter()
            .map(|b| b.map_or(0, |b| b.size() as u64))
            .sum(),
        "the refused block went back",
    );
}

/// Four threads allocate and free concurrently, each on its own stream; no two live blocks
/// ever overlap.
pub fn many_threads<H: AllocatorHarness>(h: &H) {
    let bench = Bench::<H>::new(h, 4);
    let spans: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());
    let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = bench
            .streams
            .iter()
            .enumerate()
            .map(|(t, stream)| {
                let (alloc, spans) = (&bench.alloc, &spans);
                scope.spawn(move || thread_run(alloc, stream, spans, t as u64 * 7919 + 3))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for outcome in outcomes {
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }
    bench.sync();
    let s = bench.alloc.stats();
    check_stats(&s, 0, "after the threads");
}

/// One thread of [`many_threads`]: allocates and frees on its stream, recording every live span
/// in `spans`; the first overlap it sees is its error.
fn thread_run<A: Allocator<BB>, BB: Backend>(
    alloc: &A,
    stream: &BB::Stream,
    spans: &Mutex<BTreeMap<u64, u64>>,
    seed: u64,
) -> Result<(), String> {
    let lock = || spans.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = Rng(seed);
    let mut mine = Vec::new();
    let mut outcome = Ok(());
    for _ in 0..150 {
        if mine.len() < 6 && rng.below(3) != 0 {
            let n = if rng.below(4) == 0 {
                rng.size()
            } else {
                1 + rng.below(8192)
            };
            let Ok(block) = alloc.allocate(n, stream) else {
                continue;
            };
            let (lo, hi) = (block.ptr().0, block.ptr().0 + block.size() as u64);
            let mut map = lock();
            if let Some((&p, &e)) = map.range(..hi).next_back() {
                if e > lo {
                    outcome = Err(format!(
                        "live blocks overlap: {lo:#x}..{hi:#x} and {p:#x}..{e:#x}"
                    ));
                    break;
                }
            }
            map.insert(lo, hi);
            drop(map);
            mine.push(block);
        } else if !mine.is_empty() {
            let block = mine.swap_remove(rng.below(mine.len()));
            lock().remove(&block.ptr().0);
            drop(block);
        }
    }
    for block in mine {
        lock().remove(&block.ptr().0);
    }
    outcome
}
