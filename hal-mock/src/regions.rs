//! Giving host code (the CPU kernels) access to device ranges on a stream worker: lock every
//! allocation involved, in address order, and hand out byte slices of the ranges. A range that
//! spans several mapped chunks is gathered into a temporary buffer (and scattered back if
//! written); everything else is borrowed in place.

use std::sync::{Arc, MutexGuard};

use ascend_hal::Result;

use crate::memory::{Allocation, HostBytes, Piece};

/// Where one argument's bytes are during the task.
enum Place {
    Empty,
    Borrowed {
        lock: usize,
        offset: usize,
        len: usize,
    },
    Gathered(Vec<u8>),
}

/// Runs `task` over the ranges. The caller checked that written ranges overlap nothing.
pub(crate) fn run(
    reads: &[Vec<Piece>],
    writes: &[Vec<Piece>],
    task: impl FnOnce(&[&[u8]], &mut [&mut [u8]]) -> Result<()>,
) -> Result<()> {
    // Lock each allocation once, in address order: no deadlock with other workers.
    let mut allocations: Vec<Arc<Allocation>> = reads
        .iter()
        .chain(writes)
        .flatten()
        .map(|(a, _, _)| Arc::clone(a))
        .collect();
    allocations.sort_by_key(|a| a.base);
    allocations.dedup_by_key(|a| a.base);
    let mut guards: Vec<MutexGuard<'_, HostBytes>> = allocations.iter().map(|a| a.lock()).collect();
    let bases: Vec<*mut u8> = guards
        .iter_mut()
        .map(|g| g.as_mut_slice().as_mut_ptr())
        .collect();
    let lock_of = |a: &Arc<Allocation>| allocations.partition_point(|b| b.base < a.base);

    let place = |pieces: &Vec<Piece>| -> Place {
        match pieces.as_slice() {
            [] => Place::Empty,
            [(a, offset, len)] => Place::Borrowed {
                lock: lock_of(a),
                offset: *offset,
                len: *len,
            },
            many => {
                let mut buf = Vec::with_capacity(many.iter().map(|p| p.2).sum());
                for (a, offset, len) in many {
                    let base = bases[lock_of(a)];
                    // SAFETY: `base` is the start of the locked allocation's storage, and
                    // `offset + len` lies inside it (resolved against the live allocation).
                    buf.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(base.add(*offset), *len)
                    });
                }
                Place::Gathered(buf)
            }
        }
    };
    let mut read_places: Vec<Place> = reads.iter().map(place).collect();
    let mut write_places: Vec<Place> = writes.iter().map(place).collect();

    let result = {
        let read_slices: Vec<&[u8]> = read_places
            .iter_mut()
            .map(|p| match p {
                Place::Empty => &[][..],
                // SAFETY: inside the locked storage (see above); read ranges may overlap each
                // other, but no written range overlaps them, so shared slices do not alias a
                // mutable one.
                Place::Borrowed { lock, offset, len } => unsafe {
                    std::slice::from_raw_parts(bases[*lock].add(*offset), *len)
                },
                Place::Gathered(v) => &v[..],
            })
            .collect();
        let mut write_slices: Vec<&mut [u8]> = write_places
            .iter_mut()
            .map(|p| match p {
                Place::Empty => &mut [][..],
                // SAFETY: inside the locked storage; a written range overlaps no other range
                // (checked at enqueue), so this is the only reference to these bytes.
                Place::Borrowed { lock, offset, len } => unsafe {
                    std::slice::from_raw_parts_mut(bases[*lock].add(*offset), *len)
                },
                Place::Gathered(v) => &mut v[..],
            })
            .collect();
        task(&read_slices, &mut write_slices)
    };

    // Scatter gathered written ranges back.
    for (pieces, place) in writes.iter().zip(&write_places) {
        if let Place::Gathered(buf) = place {
            let mut at = 0;
            for (a, offset, len) in pieces {
                let base = bases[lock_of(a)];
                // SAFETY: as above; no slice handed to the task is alive any more.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf[at..].as_ptr(), base.add(*offset), *len)
                };
                at += len;
            }
        }
    }
    drop(guards);
    result
}

/// One argument of a device kernel run on the host: where its bytes are during the task, and
/// how many bytes the kernel may touch from there.
#[derive(Debug, Clone, Copy)]
pub struct KernelArg {
    /// Host address of the argument's first byte (null for a null device address).
    pub ptr: *mut u8,
    /// Bytes from `ptr` to the end of the memory the argument lies in (0 for a null address).
    pub len: usize,
}

/// Runs `task` over kernel arguments: each argument's extent (see `AddressSpace::extent`),
/// borrowed in place when it is one allocation, gathered and scattered back when it spans
/// mapped chunks. Unlike [`run`], arguments may overlap, as device kernel arguments may: the
/// task gets raw pointers, not slices, and aliasing is its business.
///
/// The task sees one coherent memory, as a kernel on the device does: arguments in the same
/// allocation or the same run of mapped chunks point into the same bytes (one gathered copy
/// per run, written back once), so a write through one argument is seen through any other that
/// covers the same address, and nothing is written back over what the task wrote. (An
/// argument's extent runs to the end of its run, so two arguments in one run share their tail:
/// one copy per argument would write the earlier one's stale copy over the later one's bytes.)
pub(crate) fn run_raw(
    args: &[Option<Vec<Piece>>],
    task: impl FnOnce(&[KernelArg]) -> Result<()>,
) -> Result<()> {
    let mut allocations: Vec<Arc<Allocation>> = args
        .iter()
        .flatten()
        .flatten()
        .map(|(a, _, _)| Arc::clone(a))
        .collect();
    allocations.sort_by_key(|a| a.base);
    allocations.dedup_by_key(|a| a.base);
    let mut guards: Vec<MutexGuard<'_, HostBytes>> = allocations.iter().map(|a| a.lock()).collect();
    let bases: Vec<*mut u8> = guards
        .iter_mut()
        .map(|g| g.as_mut_slice().as_mut_ptr())
        .collect();
    let lock_of = |a: &Arc<Allocation>| allocations.partition_point(|b| b.base < a.base);

    // Each argument's device address range, `start..end` (`end` is its run's end).
    let span = |pieces: &[Piece]| -> Option<(u64, u64)> {
        let (a, offset, _) = pieces.first()?;
        let start = a.base + *offset as u64;
        Some((
            start,
            start + pieces.iter().map(|p| p.2 as u64).sum::<u64>(),
        ))
    };
    // Runs, by the argument that starts first in each: (start, end, host address of start,
    // the gathered copy if the run spans chunks, the pieces to scatter it back to).
    struct Run<'p> {
        start: u64,
        end: u64,
        host: *mut u8,
        gathered: Option<Vec<u8>>,
        pieces: &'p [Piece],
    }
    let mut order: Vec<usize> = (0..args.len())
        .filter(|&i| args[i].as_deref().and_then(span).is_some())
        .collect();
    order.sort_by_key(|&i| args[i].as_deref().and_then(span).map(|(s, _)| s));
    let mut runs: Vec<Run<'_>> = Vec::new();
    let mut kernel_args = vec![
        KernelArg {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        args.len()
    ];
    for i in order {
        let Some(pieces) = args[i].as_deref() else {
            continue;
        };
        let Some((start, end)) = span(pieces) else {
            continue;
        };
        let inside = runs.last().is_some_and(|r| start < r.end);
        if !inside {
            let run = match pieces {
                [(a, offset, _)] => Run {
                    start,
                    end,
                    // SAFETY: `offset` lies inside the locked allocation (resolved against it).
                    host: unsafe { bases[lock_of(a)].add(*offset) },
                    gathered: None,
                    pieces,
                },
                many => {
                    let mut buf = Vec::with_capacity((end - start) as usize);
                    for (a, offset, len) in many {
                        // SAFETY: `offset + len` lies inside the locked allocation.
                        buf.extend_from_slice(unsafe {
                            std::slice::from_raw_parts(bases[lock_of(a)].add(*offset), *len)
                        });
                    }
                    Run {
                        start,
                        end,
                        host: buf.as_mut_ptr(),
                        gathered: Some(buf),
                        pieces,
                    }
                }
            };
            runs.push(run);
        }
        let Some(run) = runs.last() else { continue };
        // Extents end where their run ends, so a later argument of the run lies inside it.
        let at = (start - run.start) as usize;
        kernel_args[i] = KernelArg {
            // SAFETY: `start` lies in `run.start..run.end`, which `run.host` maps (the run's
            // first allocation's storage in place, or its gathered copy).
            ptr: unsafe { run.host.add(at) },
            len: (end.min(run.end) - start) as usize,
        };
    }
    let result = task(&kernel_args);
    for run in &runs {
        let Some(buf) = &run.gathered else { continue };
        let mut at = 0;
        for (a, offset, len) in run.pieces {
            // SAFETY: as above; the task has ended, so no pointer into the storage is used.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf[at..].as_ptr(),
                    bases[lock_of(a)].add(*offset),
                    *len,
                )
            };
            at += len;
        }
    }
    drop(guards);
    result
}
