//! A cost model of the Ascend C kernels on a 910B, fed by what the host implementation counts
//! while it runs a kernel: per simulated core, the bytes and instructions of each pipe (MTE2
//! loads, MTE3 stores, vector instructions and their 256-byte repeats, scalar accesses, flag
//! waits, queue operations). [`Figures`] turns the counts into an estimated time.
//!
//! The estimate is a model, not a measurement: it exists to compare kernel designs before there
//! is hardware to time them on, and to say how far a kernel is from the HBM roofline. Every
//! figure in [`Figures::ASCEND_910B`] says where it comes from; most are assumptions to replace
//! with measurements on a 910B. The counts come from the `host-kernels` feature's runners
//! (`last_launch` is there only with it).
//!
//! ```
//! # #[cfg(feature = "host-kernels")] {
//! use ascend_kernels::ascendc::{cost, host};
//! use ascend_kernels::RmsNorm;
//! let p = RmsNorm { num_tokens: 96, hidden: 4096, eps: 1e-6 };
//! let (x, w) = (vec![0.5f32; 96 * 4096], vec![1.0f32; 4096]);
//! let mut out = vec![0.0f32; x.len()];
//! host::rms_norm(&p, &mut out, &x, &w, 48)?;
//! let cores = cost::last_launch();
//! assert_eq!(cores.len(), 48);
//! let est = cost::Figures::ASCEND_910B.estimate(&cores);
//! // Each row is read and written once, plus the weight once per core.
//! assert_eq!(cost::total(&cores).mte3_bytes, 96 * 4096 * 4);
//! assert!(est.seconds > 0.0);
//! # }
//! # Ok::<(), ascend_hal::Error>(())
//! ```

use std::fmt;

/// What one simulated core's run asked of each pipe (mirrors `AscendC::CoreCost`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCost {
    /// Bytes moved from global memory into the Unified Buffer (MTE2).
    pub mte2_bytes: u64,
    /// `DataCopy` GM → UB instructions.
    pub mte2_copies: u64,
    /// Contiguous global-memory runs within them (a strided copy has one per burst).
    pub mte2_bursts: u64,
    /// Bytes moved from the Unified Buffer to global memory (MTE3).
    pub mte3_bytes: u64,
    /// `DataCopy` UB → GM instructions.
    pub mte3_copies: u64,
    /// Contiguous global-memory runs within them.
    pub mte3_bursts: u64,
    /// Vector instructions (including those inside library calls such as `ReduceMax`).
    pub vec_instrs: u64,
    /// Their 256-byte repeats.
    pub vec_repeats: u64,
    /// Scalar `GetValue` / `SetValue` on the Unified Buffer.
    pub scalar_ub: u64,
    /// Scalar `GetValue` / `SetValue` on global memory.
    pub scalar_gm: u64,
    /// `WaitFlag`s, explicit or inside library calls.
    pub flag_waits: u64,
    /// `EnQue` / `DeQue` calls.
    pub queue_ops: u64,
}

const _: () = assert!(std::mem::size_of::<CoreCost>() == 12 * 8);

/// One event of a core's instruction stream, in the order its scalar unit issued it (mirrors
/// `AscendC::TraceEvent`): an op on a pipe, a flag set by one pipe for another, the wait for it,
/// or a barrier. [`Figures::simulate`] replays them on a timeline.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// 0 op, 1 set, 2 wait, 3 barrier (`PipeBarrier<PIPE_ALL>`).
    pub kind: u8,
    /// Op: its pipe; set: the pipe that sets; wait: the pipe that waits. 0 S, 1 V, 2 MTE2,
    /// 3 MTE3.
    pub pipe: u8,
    /// Set: the pipe signalled; wait: the pipe waited for.
    pub other: u8,
    /// Zero.
    pub pad: u8,
    /// Which flag (a queue buffer's offset, a `SetFlag` id, or the library's own).
    pub id: u32,
    /// Op: MTE bytes, V repeats, or S accesses to the UB.
    pub a: u64,
    /// Op: MTE contiguous runs, V instructions, or S accesses to global memory.
    pub b: u64,
}

const _: () = assert!(std::mem::size_of::<TraceEvent>() == 24);

/// A core's instruction stream, whole or cut at the host implementation's cap (a cut stream is
/// costed from its totals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The events, in issue order.
    pub events: Vec<TraceEvent>,
    /// Whether the stream was longer than the host implementation keeps.
    pub truncated: bool,
}

/// One launch: per core, its totals and its instruction stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Launch {
    /// Per-core totals.
    pub cores: Vec<CoreCost>,
    /// Per-core instruction streams (as many as `cores`).
    pub traces: Vec<Trace>,
}

#[cfg(feature = "host-kernels")]
extern "C" {
    fn ascendc_host_last_costs(out: *mut CoreCost, cap: usize) -> usize;
    fn ascendc_host_last_trace(
        core: usize,
        out: *mut TraceEvent,
        cap: usize,
        truncated: *mut i32,
    ) -> usize;
}

#[cfg(feature = "host-kernels")]
thread_local! {
    static RECENT: std::cell::RefCell<Vec<Launch>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps the last launch (called by the host runners after each launch; a runner may launch
/// more than once, as a split decode does).
#[cfg(feature = "host-kernels")]
pub(crate) fn record_last_launch() {
    let launch = last_launch_traced();
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        // A bound, for callers that never take them.
        if r.len() >= 64 {
            r.remove(0);
        }
        r.push(launch);
    });
}

/// The launches the host runners made on this thread since the last call, in order (at most the
/// last 64): what a runner that launches more than once (a split decode and its merge) cost.
#[cfg(feature = "host-kernels")]
pub fn take_launches() -> Vec<Launch> {
    RECENT.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// The last host-implementation launch on this thread, with every core's instruction stream
/// (empty if it failed, as [`last_launch`]).
#[cfg(feature = "host-kernels")]
pub fn last_launch_traced() -> Launch {
    let cores = last_launch();
    let traces = (0..cores.len())
        .map(|core| {
            let mut truncated = 0i32;
            // SAFETY: a null pointer with capacity 0 only asks for the length.
            let n = unsafe {
                ascendc_host_last_trace(core, std::ptr::null_mut(), 0, std::ptr::null_mut())
            };
            let mut events = vec![TraceEvent::default(); n];
            // SAFETY: `events` holds `n` entries of the C layout (size asserted above).
            unsafe { ascendc_host_last_trace(core, events.as_mut_ptr(), n, &mut truncated) };
            Trace {
                events,
                truncated: truncated != 0,
            }
        })
        .collect();
    Launch { cores, traces }
}

/// The per-core costs of the last host-implementation launch on this thread (empty if it failed
/// on a simulated core, or there was none; a runner that refuses its arguments before launching
/// leaves the previous launch's costs). Each host runner launches once: call this right after.
#[cfg(feature = "host-kernels")]
pub fn last_launch() -> Vec<CoreCost> {
    // SAFETY: a null pointer with capacity 0 only asks for the count.
    let n = unsafe { ascendc_host_last_costs(std::ptr::null_mut(), 0) };
    let mut cores = vec![CoreCost::default(); n];
    // SAFETY: `cores` holds `n` entries, the capacity passed; the C side writes at most that
    // many plain-integer structs of this layout (size asserted above).
    unsafe { ascendc_host_last_costs(cores.as_mut_ptr(), n) };
    cores
}

/// The sum over cores (saturating).
pub fn total(cores: &[CoreCost]) -> CoreCost {
    cores.iter().fold(CoreCost::default(), |a, c| CoreCost {
        mte2_bytes: a.mte2_bytes.saturating_add(c.mte2_bytes),
        mte2_copies: a.mte2_copies.saturating_add(c.mte2_copies),
        mte2_bursts: a.mte2_bursts.saturating_add(c.mte2_bursts),
        mte3_bytes: a.mte3_bytes.saturating_add(c.mte3_bytes),
        mte3_copies: a.mte3_copies.saturating_add(c.mte3_copies),
        mte3_bursts: a.mte3_bursts.saturating_add(c.mte3_bursts),
        vec_instrs: a.vec_instrs.saturating_add(c.vec_instrs),
        vec_repeats: a.vec_repeats.saturating_add(c.vec_repeats),
        scalar_ub: a.scalar_ub.saturating_add(c.scalar_ub),
        scalar_gm: a.scalar_gm.saturating_add(c.scalar_gm),
        flag_waits: a.flag_waits.saturating_add(c.flag_waits),
        queue_ops: a.queue_ops.saturating_add(c.queue_ops),
    })
}

/// The hardware figures the estimate uses. Times are in cycles of the AI core clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// AI core clock. 1.85 GHz: `cube_freq=1850` in the 910B1 platform ini (third-party dump;
    /// `shared/reference/ascendc.md`).
    pub clock_hz: f64,
    /// Vector cores that run at once. 48 (24 AI cores × 2 AIV on 910B1/B2): the launch default
    /// of [`tiling::VECTOR_CORES`](super::tiling::VECTOR_CORES); a 910B3 has 40.
    pub vector_cores: u32,
    /// HBM bandwidth shared by all cores. 1.6 TB/s: a third-party 910B2/B3 hardware table;
    /// **unconfirmed** (other third-party figures go down to 0.4 TB/s).
    pub hbm_bytes_per_s: f64,
    /// One core's MTE2 / MTE3 streaming rate. **Assumption**: 64 B per cycle (118 GB/s), so
    /// that about 14 cores streaming at once saturate the HBM figure.
    pub mte_bytes_per_cycle: f64,
    /// Fixed cost of one `DataCopy` instruction. Derived: the 910B guide says a `DataCopy` of
    /// 16 KB or more reaches peak bandwidth; this setup makes a 16 KB copy run at 90 % of it.
    pub copy_setup_cycles: f64,
    /// Extra cost of each contiguous run after the first in a strided copy. **Assumption**:
    /// one 512-byte transaction's time (the guide: GM bursts are split into 128/256/512 B;
    /// keep the inner axis 512-byte aligned).
    pub burst_cycles: f64,
    /// Vector throughput: one 256-byte repeat per cycle. **Assumption** (a 2048-bit vector unit,
    /// as Huawei presents the DaVinci core).
    pub repeat_cycles: f64,
    /// Fixed cost of issuing one vector instruction and waiting out its pipeline when the next
    /// depends on it. **Assumption**: 16 cycles.
    pub vector_issue_cycles: f64,
    /// A scalar load or store to the Unified Buffer. **Assumption**: 4 cycles.
    pub scalar_ub_cycles: f64,
    /// A scalar load or store to global memory (through the 32 KB data cache). **Assumption**:
    /// 100 cycles.
    pub scalar_gm_cycles: f64,
    /// A `WaitFlag` that drains the pipe it waits on. **Assumption**: 30 cycles.
    pub flag_wait_cycles: f64,
    /// An `EnQue` or `DeQue` (a flag set or wait between pipes that double buffering usually
    /// hides). **Assumption**: 4 cycles.
    pub queue_op_cycles: f64,
    /// What the scalar unit spends issuing one instruction to another pipe (a copy, a vector
    /// instruction, a flag) in the timeline. **Assumption**: 1 cycle.
    pub issue_cycles: f64,
}

impl Figures {
    /// The figures for an Ascend 910B (see each field for its source).
    pub const ASCEND_910B: Figures = Figures {
        clock_hz: 1.85e9,
        vector_cores: 48,
        hbm_bytes_per_s: 1.6e12,
        mte_bytes_per_cycle: 64.0,
        copy_setup_cycles: 16384.0 / 64.0 / 9.0,
        burst_cycles: 512.0 / 64.0,
        repeat_cycles: 1.0,
        vector_issue_cycles: 16.0,
        scalar_ub_cycles: 4.0,
        scalar_gm_cycles: 100.0,
        flag_wait_cycles: 30.0,
        queue_op_cycles: 4.0,
        issue_cycles: 1.0,
    };

    /// The time to move `bytes` through HBM at full bandwidth: the roofline of a kernel that
    /// must read and write that much.
    pub fn roofline(&self, bytes: u64) -> f64 {
        bytes as f64 / self.hbm_bytes_per_s
    }

    /// One core's pipes, in seconds.
    pub fn core(&self, c: &CoreCost) -> PipeTimes {
        let cycles = 1.0 / self.clock_hz;
        let copy = |bytes: u64, copies: u64, bursts: u64| {
            (bytes as f64 / self.mte_bytes_per_cycle
                + copies as f64 * self.copy_setup_cycles
                + bursts.saturating_sub(copies) as f64 * self.burst_cycles)
                * cycles
        };
        PipeTimes {
            mte2: copy(c.mte2_bytes, c.mte2_copies, c.mte2_bursts),
            mte3: copy(c.mte3_bytes, c.mte3_copies, c.mte3_bursts),
            vector: (c.vec_repeats as f64 * self.repeat_cycles
                + c.vec_instrs as f64 * self.vector_issue_cycles)
                * cycles,
            scalar: (c.scalar_ub as f64 * self.scalar_ub_cycles
                + c.scalar_gm as f64 * self.scalar_gm_cycles
                + c.flag_waits as f64 * self.flag_wait_cycles
                + c.queue_ops as f64 * self.queue_op_cycles)
                * cycles,
        }
    }

    /// Replays one core's instruction stream on a timeline: the scalar unit issues every event
    /// in order; each pipe runs its ops in order, an op starting once it is issued and its pipe
    /// is free; a flag is set when its pipe has finished everything issued to it before; a wait
    /// holds its pipe until that set (a wait on the scalar unit, such as the V_S of a
    /// `ReduceMax` or a `GetValue` after vector work, stops all issuing: the scalar stall that
    /// keeps the next chunk's load from starting under the current chunk's compute). A copy
    /// takes the longer of its engine time (bytes at [`mte_bytes_per_cycle`], a setup, a
    /// transaction per extra contiguous run) and its bytes at `mte_share` bytes per cycle (this
    /// core's share of the HBM when all the cores of a wave stream at once).
    ///
    /// [`mte_bytes_per_cycle`]: Self::mte_bytes_per_cycle
    pub fn simulate(&self, trace: &[TraceEvent], mte_share: f64) -> Timeline {
        const S: usize = 0;
        let mut issue = 0.0f64;
        let mut free = [0.0f64; 4];
        let mut busy = [0.0f64; 4];
        let mut stalled = 0.0f64;
        let mut flags: std::collections::HashMap<(u8, u8, u32), std::collections::VecDeque<f64>> =
            std::collections::HashMap::new();
        let mte = self
            .mte_bytes_per_cycle
            .min(mte_share)
            .max(f64::MIN_POSITIVE);
        for e in trace {
            let pipe = (e.pipe as usize).min(3);
            match e.kind {
                0 => {
                    let cycles = match pipe {
                        S => {
                            e.a as f64 * self.scalar_ub_cycles + e.b as f64 * self.scalar_gm_cycles
                        }
                        1 => {
                            e.a as f64 * self.repeat_cycles + e.b as f64 * self.vector_issue_cycles
                        }
                        _ => {
                            // The engine's own time (its rate, a setup, a transaction per
                            // extra run), or the bytes at this core's share of the HBM, the
                            // longer: the engine keeps issuing while the HBM catches up.
                            let engine = e.a as f64 / self.mte_bytes_per_cycle
                                + self.copy_setup_cycles
                                + e.b.saturating_sub(1) as f64 * self.burst_cycles;
                            engine.max(e.a as f64 / mte)
                        }
                    };
                    if pipe == S {
                        issue += cycles;
                        busy[S] += cycles;
                    } else {
                        let start = issue.max(free[pipe]);
                        free[pipe] = start + cycles;
                        busy[pipe] += cycles;
                        issue += self.issue_cycles;
                    }
                }
                1 => {
                    let at = if pipe == S {
                        issue
                    } else {
                        issue.max(free[pipe])
                    };
                    flags
                        .entry((e.pipe, e.other, e.id))
                        .or_default()
                        .push_back(at);
                    if pipe != S {
                        issue += self.issue_cycles;
                    }
                }
                2 => {
                    let at = flags
                        .get_mut(&(e.other, e.pipe, e.id))
                        .and_then(|q| q.pop_front())
                        .unwrap_or(0.0);
                    if pipe == S {
                        if at > issue {
                            stalled += at - issue;
                            issue = at;
                        }
                    } else {
                        free[pipe] = free[pipe].max(at);
                        issue += self.issue_cycles;
                    }
                }
                _ => {
                    let all = free.iter().copied().fold(issue, f64::max);
                    stalled += all - issue;
                    issue = all;
                    free = [all; 4];
                }
            }
        }
        let end = free.iter().copied().fold(issue, f64::max);
        let s = 1.0 / self.clock_hz;
        Timeline {
            seconds: end * s,
            scalar_stalled: stalled * s,
            busy: PipeTimes {
                scalar: busy[S] * s,
                vector: busy[1] * s,
                mte2: busy[2] * s,
                mte3: busy[3] * s,
            },
        }
    }

    /// Estimates a launch from every core's instruction stream ([`simulate`](Self::simulate)),
    /// with each core's copies at its share of the HBM when all the cores of a wave stream;
    /// cores beyond [`vector_cores`](Self::vector_cores) run in later waves, and the launch goes
    /// no faster than its bytes through HBM. A core whose stream was cut is costed as
    /// [`estimate`](Self::estimate) costs it (perfect overlap).
    pub fn estimate_launch(&self, launch: &Launch) -> Estimate {
        let n = launch.cores.len();
        let wave = n.min(self.vector_cores.max(1) as usize).max(1);
        let share = self.hbm_bytes_per_s / self.clock_hz / wave as f64;
        let waves = n.div_ceil(self.vector_cores.max(1) as usize).max(1);
        let mut slowest = (0.0f64, PipeTimes::default(), 0.0f64);
        for (i, c) in launch.cores.iter().enumerate() {
            let (time, pipes, stalled) = match launch.traces.get(i) {
                Some(t) if !t.truncated => {
                    let tl = self.simulate(&t.events, share);
                    (tl.seconds, tl.busy, tl.scalar_stalled)
                }
                _ => {
                    let p = self.core(c);
                    (p.longest(), p, 0.0)
                }
            };
            if time > slowest.0 {
                slowest = (time, pipes, stalled);
            }
        }
        let t = total(&launch.cores);
        let hbm = self.roofline(t.mte2_bytes.saturating_add(t.mte3_bytes));
        let cores_time = slowest.0 * waves as f64;
        let (seconds, bound) = if hbm >= cores_time {
            (hbm, Bound::Hbm)
        } else if slowest.2 > 0.25 * slowest.0 {
            (cores_time, Bound::Scalar)
        } else {
            (cores_time, slowest.1.bound())
        };
        Estimate {
            seconds,
            bound,
            slowest_core: slowest.1,
            hbm_seconds: hbm,
        }
    }

    /// Estimates a launch from its per-core costs alone, assuming perfect overlap: a core's time
    /// is the longest of its MTE2 stream, its MTE3 stream and its compute (vector plus scalar
    /// work). A lower bound: [`estimate_launch`](Self::estimate_launch) replays the order the
    /// pipes actually wait on each other in. Cores beyond [`vector_cores`](Self::vector_cores) run in later waves; the whole
    /// launch can go no faster than its bytes through HBM.
    pub fn estimate(&self, cores: &[CoreCost]) -> Estimate {
        let per_core: Vec<PipeTimes> = cores.iter().map(|c| self.core(c)).collect();
        let waves = cores
            .len()
            .div_ceil(self.vector_cores.max(1) as usize)
            .max(1);
        let slowest = per_core
            .iter()
            .copied()
            .max_by(|a, b| a.longest().total_cmp(&b.longest()))
            .unwrap_or_default();
        let t = total(cores);
        let hbm = self.roofline(t.mte2_bytes.saturating_add(t.mte3_bytes));
        let cores_time = slowest.longest() * waves as f64;
        let (seconds, bound) = if hbm >= cores_time {
            (hbm, Bound::Hbm)
        } else {
            (cores_time, slowest.bound())
        };
        Estimate {
            seconds,
            bound,
            slowest_core: slowest,
            hbm_seconds: hbm,
        }
    }
}

/// One core's replayed instruction stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timeline {
    /// When its last pipe finished.
    pub seconds: f64,
    /// What each pipe was busy for.
    pub busy: PipeTimes,
    /// How long the scalar unit waited on other pipes (nothing was issued meanwhile).
    pub scalar_stalled: f64,
}

/// One core's time per pipe, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PipeTimes {
    /// Loads (MTE2).
    pub mte2: f64,
    /// Stores (MTE3).
    pub mte3: f64,
    /// Vector instructions.
    pub vector: f64,
    /// Scalar work: accesses, flag waits, queue operations.
    pub scalar: f64,
}

impl PipeTimes {
    fn compute(&self) -> f64 {
        self.vector + self.scalar
    }
    fn longest(&self) -> f64 {
        self.mte2.max(self.mte3).max(self.compute())
    }
    fn bound(&self) -> Bound {
        if self.compute() >= self.mte2.max(self.mte3) {
            if self.vector >= self.scalar {
                Bound::Vector
            } else {
                Bound::Scalar
            }
        } else if self.mte2 >= self.mte3 {
            Bound::Mte2
        } else {
            Bound::Mte3
        }
    }
}

/// What limits an estimated launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The bytes through HBM (the roofline).
    Hbm,
    /// One core's loads.
    Mte2,
    /// One core's stores.
    Mte3,
    /// One core's vector instructions.
    Vector,
    /// One core's scalar work and synchronisation.
    Scalar,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::Hbm => "HBM",
            Bound::Mte2 => "MTE2 (loads)",
            Bound::Mte3 => "MTE3 (stores)",
            Bound::Vector => "vector",
            Bound::Scalar => "scalar + sync",
        })
    }
}

/// An estimated launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Estimated kernel time (without the launch overhead).
    pub seconds: f64,
    /// What limits it.
    pub bound: Bound,
    /// The pipes of the core that finishes last.
    pub slowest_core: PipeTimes,
    /// All the launch's bytes through HBM at full bandwidth.
    pub hbm_seconds: f64,
}

#[cfg(all(test, feature = "host-kernels"))]
mod tests {
    use super::*;
    use crate::ascendc::host;
    use crate::RmsNorm;

    #[test]
    fn counts_follow_the_kernel() {
        // Two rows of 64 floats on one core: the weight and each row come in (3 copies of
        // 256 bytes), each row goes out; every copy is an EnQue + DeQue.
        let p = RmsNorm {
            num_tokens: 2,
            hidden: 64,
            eps: 1e-6,
        };
        let (x, w) = (vec![1.0f32; 128], vec![1.0f32; 64]);
        let mut out = vec![0.0f32; 128];
        host::rms_norm(&p, &mut out, &x, &w, 1).unwrap();
        let cores = last_launch();
        assert_eq!(cores.len(), 1);
        let c = cores[0];
        assert_eq!((c.mte2_bytes, c.mte2_copies, c.mte2_bursts), (768, 3, 3));
        assert_eq!((c.mte3_bytes, c.mte3_copies), (512, 2));
        assert_eq!(c.queue_ops, 10);
        assert_eq!(c.scalar_gm, 0);
        // Per row: ReduceSum's scalar store and our GetValue; its V_S/S_V/S_MTE3 and our V_S.
        assert_eq!(c.scalar_ub, 4);
        assert_eq!(c.flag_waits, 8);
        // Per row: ToFloat, Mul, ReduceSum, Muls, Adds, Sqrt, Muls, Mul, FromFloat; plus the
        // weight's ToFloat. Each is one repeat (at most 256 bytes).
        assert_eq!(c.vec_instrs, 2 * 9 + 1);
        assert_eq!(c.vec_repeats, c.vec_instrs);

        // Twice the rows on the same core: twice the row traffic, and a longer estimate.
        let f = Figures::ASCEND_910B;
        let before = f.estimate(&cores).seconds;
        let p4 = RmsNorm { num_tokens: 4, ..p };
        let (x4, mut out4) = (vec![1.0f32; 256], vec![0.0f32; 256]);
        host::rms_norm(&p4, &mut out4, &x4, &w, 1).unwrap();
        let c4 = last_launch()[0];
        assert_eq!(c4.mte3_bytes, 2 * c.mte3_bytes);
        assert!(f.estimate(&[c4]).seconds > before);

        // A launch that fails on the simulated core leaves no costs behind.
        assert!(host::run_violation(host::Violation::UbOverflow).is_err());
        assert!(last_launch().is_empty());
    }

    #[test]
    fn the_estimate_is_the_slowest_pipe_or_the_hbm() {
        let f = Figures::ASCEND_910B;
        // One core streaming 1 MiB in 16 KiB copies: MTE2-bound, 8192 cycles + setups.
        let stream = CoreCost {
            mte2_bytes: 1 << 20,
            mte2_copies: 64,
            mte2_bursts: 64,
            ..CoreCost::default()
        };
        let e = f.estimate(&[stream]);
        assert_eq!(e.bound, Bound::Mte2);
        let want = (16384.0 + 64.0 * f.copy_setup_cycles) / f.clock_hz;
        assert!((e.seconds - want).abs() < 1e-12, "{} vs {want}", e.seconds);
        // 48 such cores move 48 MiB: more than the HBM moves in that time.
        let e = f.estimate(&[stream; 48]);
        assert_eq!(e.bound, Bound::Hbm);
        assert!((e.seconds - f.roofline(48 << 20)).abs() < 1e-12);
        // Scalar-heavy work is scalar-bound; 96 cores on 48 run in two waves.
        let scalar = CoreCost {
            scalar_gm: 10_000,
            ..CoreCost::default()
        };
        let one = f.estimate(&[scalar]);
        assert_eq!(one.bound, Bound::Scalar);
        let two = f.estimate(&[scalar; 96]);
        assert!((two.seconds - 2.0 * one.seconds).abs() < 1e-12);
    }

    fn op(pipe: u8, a: u64, b: u64) -> TraceEvent {
        TraceEvent {
            kind: 0,
            pipe,
            a,
            b,
            ..TraceEvent::default()
        }
    }
    fn flag(kind: u8, from: u8, to: u8, id: u32) -> TraceEvent {
        // A set is recorded on the setting pipe, a wait on the waiting one.
        let (pipe, other) = if kind == 1 { (from, to) } else { (to, from) };
        TraceEvent {
            kind,
            pipe,
            other,
            id,
            ..TraceEvent::default()
        }
    }

    #[test]
    fn the_timeline_charges_the_scalar_stall_that_serialises_loads_and_compute() {
        let f = Figures::ASCEND_910B;
        // Four chunks of 16 KiB, each with 256 vector repeats. Serialised: the next load is
        // issued only after a V_S wait on the current chunk's compute (a scalar read of its
        // result). Prefetched: the next load is issued before the current chunk's compute, and
        // nothing waits on the scalar unit.
        let (mte, v) = (2u8, 1u8);
        let load = |id| [op(mte, 16384, 1), flag(1, mte, v, id)];
        let compute = |id| [flag(2, mte, v, id), op(v, 256, 4)];
        let mut serial = Vec::new();
        for c in 0..4 {
            serial.extend(load(c));
            serial.extend(compute(c));
            serial.extend([flag(1, v, 0, 99), flag(2, v, 0, 99), op(0, 1, 0)]);
        }
        let mut prefetched: Vec<TraceEvent> = load(0).to_vec();
        for c in 0..4 {
            if c < 3 {
                prefetched.extend(load(c + 1));
            }
            prefetched.extend(compute(c));
        }
        let (a, b) = (f.simulate(&serial, 64.0), f.simulate(&prefetched, 64.0));
        let load_cycles = 16384.0 / 64.0 + f.copy_setup_cycles;
        let compute_cycles = 256.0 + 4.0 * f.vector_issue_cycles;
        let s = 1.0 / f.clock_hz;
        // Serialised: every load and every compute back to back, plus the scalar read.
        let want = 4.0 * (load_cycles + compute_cycles + f.scalar_ub_cycles);
        assert!(
            a.seconds >= want * s * 0.99,
            "{} vs {}",
            a.seconds / s,
            want
        );
        assert!(a.scalar_stalled > 0.0);
        // Prefetched: the loads hide under compute (or the other way round), bar the first.
        let overlapped = load_cycles + 4.0 * compute_cycles.max(load_cycles);
        assert!(
            b.seconds <= overlapped * s * 1.05,
            "{} vs {}",
            b.seconds / s,
            overlapped
        );
        assert!(b.seconds < 0.8 * a.seconds);
        // The same busy time either way: only the order differs.
        assert!((a.busy.mte2 - b.busy.mte2).abs() < 1e-12);
        // A core's share of the HBM slows its copies.
        assert!(f.simulate(&prefetched, 16.0).seconds > b.seconds);
    }

    #[test]
    fn extreme_inputs_give_numbers_not_panics() {
        let f = Figures::ASCEND_910B;
        // No cores: nothing to do.
        let e = f.estimate(&[]);
        assert_eq!(e.seconds, 0.0);
        // Counts at u64::MAX saturate in the total and stay finite.
        let huge = CoreCost {
            mte2_bytes: u64::MAX,
            mte3_bytes: u64::MAX,
            mte2_copies: u64::MAX,
            mte2_bursts: 0,
            vec_repeats: u64::MAX,
            ..CoreCost::default()
        };
        assert_eq!(total(&[huge, huge]).mte2_bytes, u64::MAX);
        let e = f.estimate(&[huge, huge]);
        assert!(e.seconds.is_finite() && e.seconds > 1e6, "{e:?}");
        // Zero cores in the figures count as one; NaN figures give NaN, not a panic.
        let zero = Figures {
            vector_cores: 0,
            ..f
        };
        assert!(zero.estimate(&[huge]).seconds.is_finite());
        let nan = Figures {
            clock_hz: f64::NAN,
            ..f
        };
        assert!(nan.estimate(&[huge]).seconds.is_nan());
    }
}
