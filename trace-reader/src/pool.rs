//! The threads that share one large conversion (a big `to_f32`): a rayon
//! thread pool of the reader's own, started on first use, so that the
//! conversions neither wait for nor crowd out the work a program runs on
//! rayon's global pool.
//!
//! `TRACEDUMP_THREADS=1` in the environment starts no pool at all (every
//! conversion stays on its calling thread); `TRACEDUMP_THREADS=N` gives the
//! pool N threads ([`thread_count`]). A pool that cannot be started is the
//! same as none: the work runs on the calling thread, never fails.

#![forbid(unsafe_code)]

use std::sync::OnceLock;

/// At most this many threads share a conversion: it is bound by memory
/// bandwidth, which a few cores saturate.
const MAX_THREADS: usize = 4;

/// The pool, or `None` where conversions stay on their calling thread (one
/// core, `TRACEDUMP_THREADS=1`, or a pool that could not be started).
pub(crate) fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = thread_count(cores, std::env::var("TRACEDUMP_THREADS").ok().as_deref());
        if threads < 2 {
            return None;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("trace-reader-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// How many threads share a conversion on a machine with `cores` CPUs:
/// every core up to [`MAX_THREADS`], or `TRACEDUMP_THREADS` (`threads`)
/// where it is a number (`1`: none but the calling thread). Anything else
/// there is ignored.
fn thread_count(cores: usize, threads: Option<&str>) -> usize {
    threads
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(cores)
        .min(MAX_THREADS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_follows_the_cores_and_tracedump_threads() {
        assert_eq!(thread_count(1, None), 1);
        assert_eq!(thread_count(2, None), 2);
        assert_eq!(thread_count(64, None), MAX_THREADS);
        assert_eq!(thread_count(8, Some("1")), 1);
        assert_eq!(thread_count(8, Some(" 2 ")), 2);
        assert_eq!(thread_count(8, Some("99")), MAX_THREADS);
        // not a count: the default
        assert_eq!(thread_count(2, Some("0")), 2);
        assert_eq!(thread_count(2, Some("many")), 2);
    }
}
