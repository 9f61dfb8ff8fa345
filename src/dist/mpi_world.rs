//! The MPI transport (feature `mpi`): `MPI_Allreduce` over `MPI_COMM_WORLD` between the
//! processes an MPI launcher started, one flat buffer per call.

use super::launch::Launch;
use super::watchdog::{io_timeout_from_env, timeout_from_env, Watchdog};
use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use std::time::Duration;
use trainer::dist::Collective;

/// This process's membership of an MPI job.
pub struct MpiWorld {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    watchdog: Watchdog,
    io_timeout: Duration,
    // Dropped last: finalizes MPI.
    _universe: Universe,
}

impl MpiWorld {
    /// Initializes MPI (only the main thread calls it) and checks that MPI sees the
    /// same job as the launcher's environment.
    pub fn init(launch: &Launch) -> Result<Self> {
        end_with_the_launcher();
        set_mpi_defaults();
        let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        else {
            bail!("MPI was already initialized in this process");
        };
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if size == 1 && launch.world > 1 && launch.source.starts_with("Slurm") {
            bail!(
                "Slurm says this process is rank {} of {} ({}) but MPI started it alone: this \
                 is a Slurm job step without an MPI launch (srun without PMI/PMIx support, or \
                 a plain command run once per task), so the ranks cannot reach each other. \
                 Start the job with `srun --mpi=pmix deit-pipe ...` (`srun --mpi=list` shows \
                 what this cluster offers) or with `mpirun -np {} deit-pipe ...` inside the \
                 allocation (README: \"Several processes\")",
                launch.rank,
                launch.world,
                launch.source,
                launch.world
            );
        }
        if (rank, size) != (launch.rank, launch.world) {
            bail!(
                "the launcher says rank {} of {} ({}) but MPI says rank {rank} of {size}: \
                 deit-pipe was linked against another MPI library than the one whose \
                 launcher started it (use the mpirun of the MPI that `mpicc -show` names)",
                launch.rank,
                launch.world,
                launch.source
            );
        }
        let local_rank = world.split_shared(rank as i32).rank() as usize;
        let watchdog = Watchdog::start(timeout_from_env()?, rank, size);
        let io_timeout = io_timeout_from_env()?;
        tracing::debug!("MPI rank {rank} of {size}, local rank {local_rank}");
        Ok(MpiWorld {
            world,
            rank,
            size,
            local_rank,
            watchdog,
            io_timeout,
            _universe: universe,
        })
    }

    /// The MPI communicator of the job (`MPI_COMM_WORLD`).
    #[cfg(feature = "cuda")]
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// Marks a blocking operation as in progress for the collective timeout.
    #[cfg(feature = "cuda")]
    pub fn watch(&self, what: impl Into<String>) -> super::watchdog::Watch<'_> {
        self.watchdog.watch(what)
    }

    fn all_reduce<T>(&self, buf: &mut [T]) -> Result<()>
    where
        T: mpi::datatype::Equivalence + Copy + Default,
    {
        let _watch = self
            .watchdog
            .watch(format!("an all-reduce of {} values", buf.len()));
        let mut out = vec![T::default(); buf.len()];
        self.world
            .all_reduce_into(&buf[..], &mut out[..], SystemOperation::sum());
        buf.copy_from_slice(&out);
        Ok(())
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn transport(&self) -> &str {
        "MPI"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.all_reduce(buf)
    }
    fn barrier(&self) -> Result<()> {
        let _watch = self.watchdog.watch("a barrier");
        self.world.barrier();
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let _watch = self.watchdog.watch_for(
            "a broadcast from rank 0 (which may be reading files)",
            self.io_timeout,
        );
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        if self.rank != 0 {
            bytes.clear();
            bytes.resize(len as usize, 0);
        }
        // MPI counts are C ints: large states go in pieces.
        for piece in bytes.chunks_mut(1 << 30) {
            root.broadcast_into(piece);
        }
        Ok(())
    }
    fn io_barrier(&self) -> Result<()> {
        let _watch = self
            .watchdog
            .watch_for("a wait for rank 0's file I/O", self.io_timeout);
        self.world.barrier();
        Ok(())
    }
}

/// Open MPI settings (MCA parameters) data-parallel training needs, as
/// `(name, value, why)`: applied at start-up unless the user set them
/// (`mpirun --mca NAME VALUE` and `-x OMPI_MCA_NAME=VALUE` both arrive as
/// `OMPI_MCA_NAME` in the environment, which wins over these).
pub const MCA_DEFAULTS: &[(&str, &str, &str)] = &[(
    "OMPI_MCA_mpi_yield_when_idle",
    "1",
    "a rank waiting in a collective yields its core instead of busy-polling it: on CPU, \
     ranks share cores with their own loader and compute threads and with the other ranks \
     of the machine (measured in BENCHMARKS.md)",
)];

/// Sets [`MCA_DEFAULTS`] in this process's environment where the user did not, before
/// `MPI_Init` reads them (Open MPI reads MCA parameters from the environment at
/// initialization; other MPI libraries ignore these names).
fn set_mpi_defaults() {
    for (name, value, _) in MCA_DEFAULTS {
        if std::env::var_os(name).is_none() {
            // Called on the main thread before MPI starts and before this process reads
            // its environment from other threads.
            std::env::set_var(name, value);
            tracing::debug!("MPI: {name}={value} (deit-pipe's default)");
        }
    }
}

/// Makes the kernel end this process (SIGKILL) when its launcher (`mpirun`, `orted`,
/// `srun`'s step daemon) exits, so that no rank outlives its job: a rank that was stopped
/// (SIGSTOP, a debugger) or hangs outside a collective cannot run its own watchdog, and
/// the launcher's SIGTERM waits forever on a stopped process, but SIGKILL reaches it.
/// Linux only; elsewhere the launcher's own clean-up applies.
fn end_with_the_launcher() {
    #[cfg(target_os = "linux")]
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        // The launcher may have gone between our start and the call above.
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
}
