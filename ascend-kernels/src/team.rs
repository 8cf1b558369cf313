//! A team of helper threads that wait for work by spinning, for the GEMMs of a decode step.
//!
//! A batch-1 decode step runs ~120 small GEMMs (tens of microseconds each) with serial ops
//! between them. Split by rayon, each GEMM wakes a sleeping helper thread (a futex wake, an
//! inter-processor interrupt on a VM), which costs about as much as the helper then saves:
//! measured on a 2-core machine, 2 threads decoded no faster than 1. The team's helpers instead
//! spin for a short while after each job (as llama.cpp's thread pool does), so the next GEMM
//! starts on them without a system call; they sleep once no work has come for [`SPIN`].
//!
//! One team serves the process; `cpu`'s GEMMs and attention use it (the decode step's row ops
//! run on the calling thread). A caller that finds it busy (another stream's work) runs on
//! rayon instead. Interleaved runs of SmolLM2 Q4_1 batch-1 decode on 2 cores: 116 tokens/s on
//! rayon, 125 with the one-row GEMMs on the team (means of 8 pairs), 132 with attention too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_micros(300);

/// A task: `task(i, slot)`, `slot` the participant that runs it (0 the caller, 1.. the helpers),
/// so that a participant can keep state across its tasks.
pub(crate) type Task<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// A value alone on its cache line (two, for the adjacent-line prefetcher), so that one
/// participant's writes to it do not move the lines the others use.
#[repr(align(128))]
pub(crate) struct Line<T>(pub(crate) T);

/// One call's tasks: `task(i, slot)` for `i < n`, taken in order by whoever comes.
struct Job {
    /// The caller's closure, its lifetime erased: it is only called for `i < n`, and the
    /// caller waits until every such call has returned before it returns (and drops it).
    task: *const Task<'static>,
    n: usize,
    /// The next task to take: the one line every task moves between the cores.
    next: Line<AtomicUsize>,
    /// Tasks finished, added once per participant as it leaves (not per task: each add moves
    /// this line between the cores, and small GEMMs have tasks of a microsecond).
    done: Line<AtomicUsize>,
    panicked: AtomicBool,
}

// SAFETY: `task` points at a `Sync` closure that outlives every call made through it (the
// caller waits for them, see `Job::task`); the rest is atomics.
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    /// Runs tasks as participant `slot` until none is left.
    fn work(&self, slot: usize) {
        let mut finished = 0;
        loop {
            let i = self.next.0.fetch_add(1, Relaxed);
            if i >= self.n {
                break;
            }
            // SAFETY: `i < n`, so the caller is still waiting for this call (`Job::task`).
            let task = unsafe { &*self.task };
            if catch_unwind(AssertUnwindSafe(|| task(i, slot))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            finished += 1;
        }
        if finished > 0 {
            self.done.0.fetch_add(finished, Release);
        }
    }
}

struct Shared {
    /// Bumped for each job.
    generation: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    sleeping: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

struct Team {
    shared: Arc<Shared>,
    /// Held by the caller whose job the team runs.
    busy: Mutex<()>,
}

fn team(helpers: usize) -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            sleeping: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 0..helpers {
            let s = Arc::clone(&shared);
            // A helper that cannot be spawned leaves the caller to do the work alone.
            let _ = std::thread::Builder::new()
                .name(format!("gemm team {}", i + 1))
                .spawn(move || helper(&s, i + 1));
        }
        Team {
            shared,
            busy: Mutex::new(()),
        }
    })
}

fn helper(s: &Shared, slot: usize) {
    let mut seen = s.generation.load(Acquire);
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && started.elapsed() > SPIN {
                let mut guard = s.park.lock().unwrap_or_else(|p| p.into_inner());
                s.sleeping.fetch_add(1, SeqCst);
                while s.generation.load(SeqCst) == seen {
                    guard = s.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                s.sleeping.fetch_sub(1, SeqCst);
                seen = s.generation.load(Acquire);
                break;
            }
            std::hint::spin_loop();
        }
        let job = s.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(job) = job {
            job.work(slot);
        }
    }
}

/// Calls `task(i, slot)` for every `i < n` on the calling thread (slot 0) and the team's
/// `helpers` helper threads (slots 1 to `helpers`; created on the first call, whose count
/// stays). Returns `false` without calling anything when the team is busy with another
/// caller's job, or has another number of helpers than asked (its slots would not match the
/// caller's).
///
/// # Panics
/// If a task panicked (after every task has run).
pub(crate) fn for_each(helpers: usize, n: usize, task: &Task<'_>) -> bool {
    static HELPERS: OnceLock<usize> = OnceLock::new();
    if *HELPERS.get_or_init(|| helpers) != helpers {
        return false;
    }
    let team = team(helpers);
    let _busy = match team.busy.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return false,
    };
    let s = &team.shared;
    // SAFETY: only the lifetime changes, and this function returns only after `done == n`,
    // that is after every call through the pointer has returned (`Job::task`).
    let task: *const Task<'static> =
        unsafe { std::mem::transmute::<&Task<'_>, &'static Task<'static>>(task) };
    let job = Arc::new(Job {
        task,
        n,
        next: Line(AtomicUsize::new(0)),
        done: Line(AtomicUsize::new(0)),
        panicked: AtomicBool::new(false),
    });
    *s.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&job));
    // With `sleeping` below, SeqCst: either this load sees a helper that went to sleep, or
    // that helper sees the new generation before it sleeps.
    s.generation.fetch_add(1, SeqCst);
    if s.sleeping.load(SeqCst) > 0 {
        let _g = s.park.lock().unwrap_or_else(|p| p.into_inner());
        s.wake.notify_all();
    }
    job.work(0);
    let mut spins = 0u32;
    while job.done.0.load(Acquire) < n {
        // A helper descheduled mid-task (more threads than free cores) gets the core back.
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    *s.job.lock().unwrap_or_else(|p| p.into_inner()) = None;
    assert!(!job.panicked.load(Relaxed), "a GEMM task panicked");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task runs once, on slots within range, over many calls (helpers asleep and awake),
    /// and a call while the team is busy falls back.
    #[test]
    fn every_task_runs_once_per_call() {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let mut runs = 0;
        for round in 0..200 {
            let n = 1 + round % 17;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let slots = AtomicUsize::new(0);
            let ran = for_each(helpers, n, &|i, slot| {
                hits[i].fetch_add(1, Relaxed);
                slots.fetch_max(slot, Relaxed);
            });
            if ran {
                runs += 1;
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "round {round}");
                assert!(slots.load(Relaxed) <= helpers);
            } else {
                assert!(hits.iter().all(|h| h.load(Relaxed) == 0), "round {round}");
            }
            if round % 50 == 0 {
                std::thread::sleep(SPIN * 2); // let the helper fall asleep
            }
        }
        assert!(runs > 0, "the team was never free");
        assert!(
            !for_each(helpers + 1, 4, &|_, _| {}),
            "another number of helpers than the team has"
        );
    }
}
