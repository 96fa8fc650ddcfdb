//! The kernels' thread pool: `threads - 1` workers that, between tasks, spin on a generation counter
//! for [`SPIN`] before sleeping on a condition variable. A decode step runs a few hundred small
//! parallel loops (one per matrix, one per attention); waking sleeping threads for each of them (what a
//! work-stealing pool like rayon does after a short spin) costs more than the loops themselves.
//!
//! [`run`]`(n, f)` calls `f(0..n)` spread over the caller and the workers (indices claimed by a
//! compare-and-swap on one word holding the task's generation, size and next index) and returns when
//! all are done; a worker that other processes keep off the CPU delays a task only if it already
//! claimed an index. Concurrent callers take turns; a call from inside a task runs serially.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Task = *const (dyn Fn(usize) + Sync);

/// The claim word: generation (24 bits), task size `n` (20 bits) and next index (20 bits), so a claim
/// (a compare-and-swap) can only take an index of the task it read.
#[derive(Clone, Copy)]
struct Claim(u64);

impl Claim {
    fn new(gen: u64, n: usize) -> Claim {
        Claim((gen & 0xff_ffff) << 40 | (n as u64) << 20)
    }
    fn n(self) -> usize {
        (self.0 >> 20 & 0xf_ffff) as usize
    }
    fn next(self) -> usize {
        (self.0 & 0xf_ffff) as usize
    }
}

/// Most indices of one task.
const MAX_TASKS: usize = 0xf_ffff;

struct Shared {
    claim: AtomicU64,
    /// The current task (written by the caller before it publishes `claim`; read by a worker only
    /// after it claimed an index, and the caller does not return before that index is done).
    task: UnsafeCell<Task>,
    /// Indices of the current task done.
    done: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: see `task`.
unsafe impl Sync for Shared {}

struct Pool {
    workers: usize,
    shared: &'static Shared,
    caller: Mutex<u64>,
}

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Never more threads than cores: a spinning pool with more threads than cores loses whole
        // time slices to a descheduled thread holding a claimed index (measured: -t 4 on 2 cores ran
        // at half the speed of -t 2).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = rayon::current_num_threads().clamp(1, cores);
        let noop: &'static (dyn Fn(usize) + Sync) = &|_| {};
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            claim: AtomicU64::new(Claim::new(0, 0).0),
            task: UnsafeCell::new(noop as Task),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 1..threads {
            std::thread::Builder::new()
                .name(format!("bushu-worker-{i}"))
                .spawn(move || worker(shared))
                .expect("cannot start a worker thread");
        }
        Pool {
            workers: threads - 1,
            shared,
            caller: Mutex::new(0),
        }
    })
}

/// Threads that [`run`] spreads work over (the caller included): the rayon pool size (`--threads`),
/// at most the number of cores.
pub fn threads() -> usize {
    pool().workers + 1
}

/// Claims one index of the current task and runs it; false when there is none left.
fn work_one(s: &Shared) -> bool {
    let mut c = Claim(s.claim.load(SeqCst));
    loop {
        if c.next() >= c.n() {
            return false;
        }
        match s.claim.compare_exchange_weak(c.0, c.0 + 1, SeqCst, SeqCst) {
            Ok(_) => break,
            Err(now) => c = Claim(now),
        }
    }
    // SAFETY: the task of the claimed generation stays alive until its indices are all done.
    let f = unsafe { &**s.task.get() };
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(c.next()))).is_err() {
        s.panicked.store(true, SeqCst);
    }
    s.done.fetch_add(1, SeqCst);
    true
}

fn has_work(s: &Shared) -> bool {
    let c = Claim(s.claim.load(SeqCst));
    c.next() < c.n()
}

fn worker(s: &'static Shared) {
    INSIDE.with(|c| c.set(true));
    loop {
        while work_one(s) {}
        // Idle: spin, then sleep until there is work.
        let t0 = Instant::now();
        let mut spins = 0u32;
        while !has_work(s) {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && t0.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while !has_work(s) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
    }
}

/// Calls `f(i)` for every `i` in `0..n`, spread over the pool; returns when all calls are done.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if n <= 1 || p.workers == 0 || n > MAX_TASKS || INSIDE.with(|c| c.get()) {
        return (0..n).for_each(f);
    }
    let mut gen = p.caller.lock().unwrap_or_else(|e| e.into_inner());
    *gen += 1;
    let s = p.shared;
    INSIDE.with(|c| c.set(true));
    s.done.store(0, SeqCst);
    // SAFETY: every index of the previous task is done, so no worker reads `task` now; the lifetime
    // is erased because this function returns only after every index of this task is done.
    unsafe { *s.task.get() = std::mem::transmute::<&(dyn Fn(usize) + Sync), Task>(f) };
    s.claim.store(Claim::new(*gen, n).0, SeqCst);
    if s.sleepers.load(SeqCst) > 0 {
        let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    while work_one(s) {}
    let mut spins = 0u32;
    while s.done.load(SeqCst) < n {
        // An index claimed by a worker that other processes descheduled: wait without taking its core.
        spins += 1;
        if spins < 1 << 14 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    INSIDE.with(|c| c.set(false));
    if s.panicked.swap(false, SeqCst) {
        panic!("a kernel panicked on a pool thread");
    }
}

/// `f(i, chunk)` for every chunk of `size` elements of `out` (the last may be shorter), spread over
/// the pool in about eight tasks per thread.
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], size: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let len = out.len();
    let chunks = len.div_ceil(size.max(1));
    let per_task = chunks.div_ceil(threads() * 8).max(1);
    let base = SendPtr(out.as_mut_ptr());
    run(chunks.div_ceil(per_task), &|t| {
        for i in t * per_task..chunks.min((t + 1) * per_task) {
            let (a, b) = (i * size, len.min((i + 1) * size));
            // SAFETY: chunks are disjoint parts of `out`, which outlives the call.
            f(i, unsafe { std::slice::from_raw_parts_mut(base.get().add(a), b - a) });
        }
    });
}

/// A pointer that tasks on other threads may write through (to disjoint parts).
pub(crate) struct SendPtr<T>(pub *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: users write disjoint parts only.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    pub fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_from_concurrent_and_nested_callers() {
        let callers: Vec<_> = (0..4)
            .map(|k| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let n = 1 + (round * 7 + k) % 97;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        run(n, &|i| {
                            hits[i].fetch_add(1, SeqCst);
                            // A nested call runs serially on this thread.
                            run(3, &|_| {});
                        });
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_index_panics_the_caller_and_the_pool_goes_on() {
        let r = std::panic::catch_unwind(|| run(64, &|i| assert!(i != 37, "index 37")));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        run(64, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 64);
    }

    #[test]
    fn chunks_cover_the_slice() {
        for (len, size) in [(0, 4), (1, 4), (37, 4), (1000, 7), (64, 64)] {
            let mut v = vec![0usize; len];
            for_each_chunk_mut(&mut v, size, &|i, c| c.iter_mut().for_each(|x| *x += i + 1));
            assert!(v.iter().enumerate().all(|(j, &x)| x == j / size + 1), "{len} {size}");
        }
    }
}
