//! A small pool of persistent helper threads that join the calling thread
//! on one large piece of work (a big `to_f32` conversion): [`broadcast`]
//! runs a task on the calling thread and, at the same time, on the helpers
//! that are free, and returns once every one of those calls has returned.
//! The task shares its work out itself (its callers claim chunks from an
//! atomic counter), so it is correct with any number of participants, the
//! caller alone included: a helper that is slow to wake finds the work done
//! and returns at once, and the caller never waits for more than the chunk a
//! helper is in the middle of.
//!
//! Waking a parked thread costs tens of µs on a VM, more than a whole
//! conversion saves; so a helper, after a job, spins for [`SPIN`] before it
//! parks, the way OpenMP's workers do (GOMP's spin-wait), and back-to-back
//! conversions find it awake.
//!
//! A helper is only worth anything on another CPU than its caller's. On the
//! same one (a scheduler that packs threads onto few CPUs, as some VMs' do,
//! or a busy machine) it would only take turns with the caller, and
//! spinning there would steal the caller's time; so a helper that finds
//! itself on its caller's CPU (Linux: `sched_getcpu`) gets out of the way:
//! it leaves the task to the caller and parks, and callers on that CPU let it
//! be for [`RETRY`] before they wake it again.
//!
//! `TRACEDUMP_THREADS=1` in the environment starts no helper at all (every
//! conversion stays on its calling thread); `TRACEDUMP_THREADS=N` lets up to
//! N threads share one ([`helper_count`]).
//!
//! One caller at a time uses the helpers: another caller that finds them
//! busy runs its task alone (those cores are busy anyway). A pool that
//! cannot start a thread has fewer helpers, or none: the work then runs on
//! the calling thread only, never fails.
//!
//! `unsafe` here: handing the borrowed task to the helpers (a lifetime the
//! threads cannot see; [`Retrieve`] keeps [`broadcast`] from returning or
//! unwinding before every helper is done with it), and `sched_getcpu`.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a helper spins (checking for the next job) after finishing one
/// before it parks. Like OpenMP's spin-wait: waking a parked thread costs
/// tens of µs on a VM (more than splitting a conversion saves), so
/// conversions that come back to back (a loop over a trace's tensors) find
/// the helper awake; a helper that has nothing to do for this long gives its
/// core back.
pub(crate) const SPIN: Duration = Duration::from_micros(150);

/// How long a caller waiting for a helper to finish the chunk it is in the
/// middle of (a few µs) spins before it yields its CPU instead.
const WAIT_SPIN: Duration = Duration::from_micros(20);

/// How long callers on a CPU leave parked a helper that found itself on
/// that CPU (waking it again would likely put it there again, at the cost
/// of two context switches to the caller): 10 ms, against a few µs for a
/// try.
const RETRY: Duration = Duration::from_millis(10);

/// At most this many helper threads: the conversions are bound by memory
/// bandwidth, which a few cores saturate.
const MAX_HELPERS: usize = 3;

/// A CPU number not known (`sched_getcpu` failed, or not Linux).
const NO_CPU: usize = usize::MAX;

/// A task as the helpers hold it: its real lifetime is erased (see
/// [`broadcast`]).
type Task = &'static (dyn Fn() + Sync);

/// What one helper thread and its callers share.
struct Slot {
    /// The posted task: taken by the helper when it starts it, or taken
    /// back by the caller if the helper has not started it yet.
    task: Mutex<Option<Task>>,
    /// A task was posted: what the spinning helper checks.
    posted: AtomicBool,
    /// The helper has returned from the task it took.
    done: AtomicBool,
    /// The panic of the task it took, if it panicked.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// The CPU of the caller that posted the last task.
    caller_cpu: AtomicUsize,
    /// The CPU the helper last found itself sharing with its caller, and
    /// when (ns since the pool started); NO_CPU if none.
    shared_cpu: AtomicUsize,
    shared_at: AtomicU64,
}

/// The helper threads (none where the machine has one core).
struct Pool {
    helpers: Vec<(Arc<Slot>, Thread)>,
    /// Held by the one caller using the helpers.
    busy: Mutex<()>,
    start: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a task runs outside every lock, so poisoning cannot happen; if it
    // did, the data (an Option) is still whole
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The CPU the calling thread runs on, or NO_CPU.
fn current_cpu() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `sched_getcpu` takes nothing and only reads the CPU
        // number (a negative value when it cannot).
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).unwrap_or(NO_CPU)
    }
    #[cfg(not(target_os = "linux"))]
    NO_CPU
}

/// `a` and `b` are the same known CPU.
fn same_cpu(a: usize, b: usize) -> bool {
    a != NO_CPU && a == b
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let start = Instant::now();
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = helper_count(cores, std::env::var("TRACEDUMP_THREADS").ok().as_deref());
        let mut helpers = Vec::new();
        for i in 0..wanted {
            let slot = Arc::new(Slot {
                task: Mutex::new(None),
                posted: AtomicBool::new(false),
                done: AtomicBool::new(false),
                panic: Mutex::new(None),
                caller_cpu: AtomicUsize::new(NO_CPU),
                shared_cpu: AtomicUsize::new(NO_CPU),
                shared_at: AtomicU64::new(0),
            });
            let theirs = Arc::clone(&slot);
            match thread::Builder::new()
                .name(format!("trace-reader-helper-{i}"))
                .spawn(move || helper(&theirs, start))
            {
                Ok(handle) => helpers.push((slot, handle.thread().clone())),
                // fewer helpers (or none): the callers do the rest
                Err(_) => break,
            }
        }
        Pool {
            helpers,
            busy: Mutex::new(()),
            start,
        }
    })
}

/// How many helpers to start on a machine with `cores` CPUs: one fewer
/// than the threads that should share a conversion, which is every core up
/// to [`MAX_HELPERS`] + 1, or `TRACEDUMP_THREADS` (`threads`) where it is a
/// number: `1` keeps every conversion on its calling thread (no helper
/// threads at all). Anything else there is ignored.
fn helper_count(cores: usize, threads: Option<&str>) -> usize {
    let threads = threads
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(cores);
    threads.saturating_sub(1).min(MAX_HELPERS)
}

/// How many helper threads the pool has (0 on a one-core machine, or where
/// none could be started).
pub(crate) fn helpers() -> usize {
    pool().helpers.len()
}

fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A helper thread: wait for a task (spinning for [`SPIN`], then parked),
/// run it, say so, and wait again; on its caller's CPU, park at once.
fn helper(slot: &Slot, start: Instant) {
    let mut in_the_way = false;
    loop {
        let idle = Instant::now();
        while !slot.posted.load(Ordering::Acquire) {
            if !in_the_way && idle.elapsed() < SPIN {
                std::hint::spin_loop();
                // running on the caller's CPU: only while it is not
                in_the_way = same_cpu(current_cpu(), slot.caller_cpu.load(Ordering::Relaxed));
                continue;
            }
            if in_the_way {
                slot.shared_at.store(since(start), Ordering::Relaxed);
                slot.shared_cpu.store(current_cpu(), Ordering::Release);
            }
            // returns at once if unparked since the check above
            thread::park();
        }
        slot.posted.store(false, Ordering::Relaxed);
        // woken onto the caller's CPU (so the caller is not running): leave
        // the task to it, and park
        in_the_way = same_cpu(current_cpu(), slot.caller_cpu.load(Ordering::Relaxed));
        if in_the_way {
            continue;
        }
        let panic = match lock(&slot.task).take() {
            Some(task) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).err(),
            // the caller took it back (it finished without us)
            None => continue,
        };
        // the task is gone from this thread: the caller may return
        *lock(&slot.panic) = panic;
        slot.done.store(true, Ordering::Release);
    }
}

/// Run `task` on the calling thread and on the helper threads at once (on
/// the calling thread only when another caller has the helpers, or there
/// are none, or they are on this CPU), and return when every call has
/// returned. A panic of the task on a helper is resumed here, after all of
/// them are done.
pub(crate) fn broadcast(task: &(dyn Fn() + Sync)) {
    let pool = pool();
    let Some(_busy) = pool
        .busy
        .try_lock()
        .ok()
        .filter(|_| !pool.helpers.is_empty())
    else {
        task();
        return;
    };
    // SAFETY: only the lifetime changes. The helpers use the reference only
    // between taking it from their slot and setting `done`; `retrieve`
    // (dropped on every way out of this function, unwinding included) takes
    // back every posted copy no helper has taken, and waits for `done` from
    // every helper that took one, so no helper touches `task` after this
    // function has returned or unwound.
    let erased: Task = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Task>(task) };
    let mut retrieve = Retrieve {
        helpers: &pool.helpers,
        posted: [false; MAX_HELPERS],
    };
    let cpu = current_cpu();
    let now = since(pool.start);
    for (i, (slot, thread)) in pool.helpers.iter().enumerate() {
        if same_cpu(slot.shared_cpu.load(Ordering::Acquire), cpu)
            && now.saturating_sub(slot.shared_at.load(Ordering::Relaxed)) < RETRY.as_nanos() as u64
        {
            // it parked on this CPU a moment ago: let it be
            continue;
        }
        slot.shared_cpu.store(NO_CPU, Ordering::Relaxed);
        slot.caller_cpu.store(cpu, Ordering::Relaxed);
        slot.done.store(false, Ordering::Relaxed);
        // a panic left by a task this caller's own panic cut short
        lock(&slot.panic).take();
        *lock(&slot.task) = Some(erased);
        retrieve.posted[i] = true;
        slot.posted.store(true, Ordering::Release);
        // no system call when the helper is spinning
        thread.unpark();
    }
    task();
    let posted = retrieve.posted;
    drop(retrieve);
    for ((slot, _), _) in pool.helpers.iter().zip(posted).filter(|(_, p)| *p) {
        if let Some(panic) = lock(&slot.panic).take() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Makes sure, on every way out of [`broadcast`], that no helper still
/// holds its task: takes each posted task back, or waits for the helper
/// that took it to return from it.
struct Retrieve<'p> {
    helpers: &'p [(Arc<Slot>, Thread)],
    /// Which of them a task was posted to.
    posted: [bool; MAX_HELPERS],
}

impl Drop for Retrieve<'_> {
    fn drop(&mut self) {
        for ((slot, _), _) in self.helpers.iter().zip(self.posted).filter(|(_, p)| *p) {
            if lock(&slot.task).take().is_some() {
                // never started: it will find the slot empty
                continue;
            }
            // started: it is running (or about to set `done`), so this is
            // at most the rest of one chunk of its work
            let start = Instant::now();
            while !slot.done.load(Ordering::Acquire) {
                if start.elapsed() < WAIT_SPIN {
                    std::hint::spin_loop();
                } else {
                    // descheduled, or on this CPU: give it the CPU
                    thread::yield_now();
                }
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("helpers", &self.helpers.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work shared out by claiming from a counter: every item done once,
    /// however many threads joined.
    fn count_to(n: usize) -> Vec<usize> {
        let next = AtomicUsize::new(0);
        let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        broadcast(&|| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(s) = seen.get(i) else { break };
            s.fetch_add(1, Ordering::Relaxed);
        });
        seen.into_iter().map(AtomicUsize::into_inner).collect()
    }

    #[test]
    fn helper_count_follows_the_cores_and_tracedump_threads() {
        assert_eq!(helper_count(1, None), 0);
        assert_eq!(helper_count(2, None), 1);
        assert_eq!(helper_count(64, None), MAX_HELPERS);
        assert_eq!(helper_count(8, Some("1")), 0);
        assert_eq!(helper_count(8, Some(" 2 ")), 1);
        assert_eq!(helper_count(8, Some("99")), MAX_HELPERS);
        // not a count: the default
        assert_eq!(helper_count(2, Some("0")), 1);
        assert_eq!(helper_count(2, Some("many")), 1);
    }

    #[test]
    fn many_jobs_back_to_back_and_after_parking() {
        for round in 0..2000 {
            assert!(
                count_to(round % 97 + 1).iter().all(|&c| c == 1),
                "round {round}"
            );
        }
        // long enough for the helpers to park: they are woken again
        for _ in 0..3 {
            std::thread::sleep(SPIN * 4);
            assert!(count_to(1000).iter().all(|&c| c == 1));
        }
    }

    #[test]
    fn concurrent_callers() {
        thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for round in 0..500 {
                        let n = (round * 7 + t) % 300 + 1;
                        assert!(
                            count_to(n).iter().all(|&c| c == 1),
                            "thread {t} round {round}"
                        );
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_task_is_resumed_in_the_caller_and_the_pool_lives_on() {
        for _ in 0..20 {
            let calls = AtomicUsize::new(0);
            let r = std::panic::catch_unwind(|| {
                broadcast(&|| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    panic!("task");
                })
            });
            assert!(r.is_err());
            assert!(calls.load(Ordering::Relaxed) >= 1);
        }
        assert!(count_to(500).iter().all(|&c| c == 1));
    }
}
