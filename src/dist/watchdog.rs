//! A timeout on blocking collectives: a rank whose peers stop answering (a rank was
//! killed and the launcher did not stop the job, or a rank hangs) reports it and exits
//! instead of waiting forever inside MPI, which offers no timeout of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variable: seconds a collective may wait for the other ranks before this
/// rank gives up (default [`DEFAULT_TIMEOUT_S`]).
pub const TIMEOUT_ENV: &str = "DEIT_PIPE_DIST_TIMEOUT";

/// Default of [`TIMEOUT_ENV`]: longer than any step of the recipes we ship, short enough
/// that a dead job does not hold a machine for long. Rank 0's file I/O (checkpoints, the
/// start-up state) is waited for under [`IO_TIMEOUT_ENV`] instead.
pub const DEFAULT_TIMEOUT_S: u64 = 300;

/// Environment variable: seconds the other ranks wait for rank 0's file I/O (a checkpoint
/// write, reading the checkpoint to resume from) before giving up (default
/// [`DEFAULT_IO_TIMEOUT_S`]). Separate from [`TIMEOUT_ENV`], so that a slow network
/// filesystem does not look like a hung rank.
pub const IO_TIMEOUT_ENV: &str = "DEIT_PIPE_DIST_IO_TIMEOUT";

/// Default of [`IO_TIMEOUT_ENV`]: one hour.
pub const DEFAULT_IO_TIMEOUT_S: u64 = 3600;

type Pending = Arc<Mutex<Option<(Instant, String, Duration)>>>;

/// Watches the collective in progress, if any, from a background thread.
pub struct Watchdog {
    pending: Pending,
    timeout: Duration,
}

/// Marks a collective as in progress until dropped.
pub struct Watch<'a> {
    pending: &'a Pending,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            *p = None;
        }
    }
}

impl Watchdog {
    /// Starts the watching thread for rank `rank` of `world`.
    pub fn start(timeout: Duration, rank: usize, world: usize) -> Self {
        let pending: Pending = Arc::new(Mutex::new(None));
        let seen = pending.clone();
        let tick = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let default_limit = timeout;
        std::thread::Builder::new()
            .name("deit-pipe-dist-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let late = match seen.lock() {
                    Ok(p) => p
                        .as_ref()
                        .filter(|(since, _, limit)| since.elapsed() > *limit)
                        .map(|(_, what, limit)| (what.clone(), *limit)),
                    Err(_) => None,
                };
                if let Some((what, limit)) = late {
                    let env = if limit == timeout {
                        TIMEOUT_ENV
                    } else {
                        IO_TIMEOUT_ENV
                    };
                    eprintln!(
                        "error: rank {rank} of {world}: the other ranks did not answer for {} s \
                         during {what}; a rank has died or hangs. Stopping this rank. Restart \
                         the job with --resume to continue from the last checkpoint ({env} \
                         sets this timeout in seconds).",
                        limit.as_secs()
                    );
                    // Exit without unwinding or MPI_Finalize: the main thread is blocked
                    // inside MPI, and finalizing would wait for the dead rank too.
                    unsafe { libc::_exit(1) };
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog {
            pending,
            timeout: default_limit,
        }
    }

    /// Marks `what` as in progress until the returned guard is dropped, under the
    /// collective timeout.
    pub fn watch(&self, what: impl Into<String>) -> Watch<'_> {
        self.watch_for(what, self.timeout)
    }

    /// Marks `what` as in progress until the returned guard is dropped, under `limit`
    /// (waits for rank 0's file I/O).
    pub fn watch_for(&self, what: impl Into<String>, limit: Duration) -> Watch<'_> {
        if let Ok(mut p) = self.pending.lock() {
            *p = Some((Instant::now(), what.into(), limit));
        }
        Watch {
            pending: &self.pending,
        }
    }
}

/// The timeout from [`TIMEOUT_ENV`], or the default.
pub fn timeout_from_env() -> anyhow::Result<Duration> {
    seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
}

/// The file-I/O wait limit from [`IO_TIMEOUT_ENV`], or the default; never shorter than
/// the collective timeout.
pub fn io_timeout_from_env() -> anyhow::Result<Duration> {
    Ok(seconds_from_env(IO_TIMEOUT_ENV, DEFAULT_IO_TIMEOUT_S)?.max(timeout_from_env()?))
}

fn seconds_from_env(key: &str, default: u64) -> anyhow::Result<Duration> {
    match std::env::var(key) {
        Err(_) => Ok(Duration::from_secs(default)),
        Ok(v) => {
            let s: u64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{key}={v:?}: expected a whole number of seconds"))?;
            if s == 0 {
                anyhow::bail!("{key}=0: the timeout must be at least 1 second");
            }
            Ok(Duration::from_secs(s))
        }
    }
}
