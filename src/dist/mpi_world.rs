//! The MPI transport (feature `mpi`): `MPI_Allreduce` over `MPI_COMM_WORLD` between the
//! processes an MPI launcher started, one flat buffer per call.

use super::launch::Launch;
use super::watchdog::{timeout_from_env, Watchdog};
use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;
use trainer::dist::Collective;

/// This process's membership of an MPI job.
pub struct MpiWorld {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    watchdog: Watchdog,
    // Dropped last: finalizes MPI.
    _universe: Universe,
}

impl MpiWorld {
    /// Initializes MPI (only the main thread calls it) and checks that MPI sees the
    /// same job as the launcher's environment.
    pub fn init(launch: &Launch) -> Result<Self> {
        let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled)
        else {
            bail!("MPI was already initialized in this process");
        };
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
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
        tracing::debug!("MPI rank {rank} of {size}, local rank {local_rank}");
        Ok(MpiWorld {
            world,
            rank,
            size,
            local_rank,
            watchdog,
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
}
