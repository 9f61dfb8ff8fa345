//! A timeout on blocking collectives: a rank whose peers stop answering (a rank was
//! killed and the launcher did not stop the job, or a rank hangs) reports it and exits
//! instead of waiting forever inside MPI, which offers no timeout of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variable: seconds a collective may wait for the other ranks before this
/// rank gives up (default [`DEFAULT_TIMEOUT_S`]).
pub const TIMEOUT_ENV: &str = "DEIT_PIPE_DIST_TIMEOUT";

/// Default of [`TIMEOUT_ENV`]: longer than any step or checkpoint write of the recipes
/// we ship, short enough that a dead job does not hold a machine for long.
pub const DEFAULT_TIMEOUT_S: u64 = 300;

type Pending = Arc<Mutex<Option<(Instant, String)>>>;

/// Watches the collective in progress, if any, from a background thread.
pub struct Watchdog {
    pending: Pending,
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
        std::thread::Builder::new()
            .name("deit-pipe-dist-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let late = match seen.lock() {
                    Ok(p) => p
                        .as_ref()
                        .filter(|(since, _)| since.elapsed() > timeout)
                        .map(|(_, what)| what.clone()),
                    Err(_) => None,
                };
                if let Some(what) = late {
                    eprintln!(
                        "error: rank {rank} of {world}: the other ranks did not answer for {} s \
                         during {what}; a rank has died or hangs. Stopping this rank. Restart \
                         the job with --resume to continue from the last checkpoint ({TIMEOUT_ENV} \
                         sets the timeout in seconds).",
                        timeout.as_secs()
                    );
                    // Exit without unwinding or MPI_Finalize: the main thread is blocked
                    // inside MPI, and finalizing would wait for the dead rank too.
                    unsafe { libc::_exit(1) };
                }
            })
            .expect("spawning the watchdog thread");
        Watchdog { pending }
    }

    /// Marks `what` as in progress until the returned guard is dropped.
    pub fn watch(&self, what: impl Into<String>) -> Watch<'_> {
        if let Ok(mut p) = self.pending.lock() {
            *p = Some((Instant::now(), what.into()));
        }
        Watch {
            pending: &self.pending,
        }
    }
}

/// The timeout from [`TIMEOUT_ENV`], or the default.
pub fn timeout_from_env() -> anyhow::Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_S)),
        Ok(v) => {
            let s: u64 = v.trim().parse().map_err(|_| {
                anyhow::anyhow!("{TIMEOUT_ENV}={v:?}: expected a whole number of seconds")
            })?;
            if s == 0 {
                anyhow::bail!("{TIMEOUT_ENV}=0: the timeout must be at least 1 second");
            }
            Ok(Duration::from_secs(s))
        }
    }
}
