//! Data-parallel jobs: how this process learns its rank, and the transports behind
//! [`trainer::dist::Collective`].
//!
//! A job of several processes is started by an MPI launcher (`mpirun`, `mpiexec`, or
//! Slurm's `srun` through PMI), which tells each process its rank and the world size in
//! its environment ([`launch`]). A binary built with the `mpi` cargo feature then joins
//! the job through MPI ([`mpi_world`]); with `--device cuda` and the `cuda` feature too,
//! gradients travel between GPUs over NCCL, bootstrapped over MPI ([`nccl`]). A binary
//! without the feature that finds itself one of several ranks refuses to start rather
//! than train N unrelated copies. Without a launcher, or with a world of one, the job is
//! [`trainer::dist::SingleProcess`] and no MPI library is touched.

pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi_world;
#[cfg(all(feature = "mpi", feature = "cuda"))]
pub mod nccl;
#[cfg(feature = "mpi")]
mod watchdog;

use anyhow::Result;
use trainer::dist::{Collective, SingleProcess};

/// Which transport a job's gradients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Host buffers over MPI (CPU training, and the teacher cache's coordination).
    Host,
    /// Device buffers over NCCL (CUDA training), bootstrapped over MPI.
    Gpu,
}

/// Joins the job this process was launched into: [`SingleProcess`] when no launcher
/// started it (or it is alone), MPI otherwise. Errors when the launcher says there are
/// several ranks but this binary was built without the `mpi` feature, or (for
/// [`Transport::Gpu`]) without `cuda`.
pub fn join(transport: Transport) -> Result<Box<dyn Collective>> {
    let Some(launch) = launch::detect()? else {
        return Ok(Box::new(SingleProcess));
    };
    join_launched(launch, transport)
}

#[cfg(not(feature = "mpi"))]
fn join_launched(launch: launch::Launch, _transport: Transport) -> Result<Box<dyn Collective>> {
    if launch.world > 1 {
        anyhow::bail!(
            "this process is rank {} of {} ({}), but this deit-pipe was built without MPI \
             support, so the ranks could not exchange gradients and would each train alone. \
             Rebuild with `cargo build --release --features mpi` (README: \"Several \
             processes\"), or start one process without mpirun/srun",
            launch.rank,
            launch.world,
            launch.source
        );
    }
    Ok(Box::new(SingleProcess))
}

#[cfg(feature = "mpi")]
fn join_launched(launch: launch::Launch, transport: Transport) -> Result<Box<dyn Collective>> {
    let world = mpi_world::MpiWorld::init(&launch)?;
    match transport {
        Transport::Host => Ok(Box::new(world)),
        Transport::Gpu => gpu_world(world),
    }
}

#[cfg(all(feature = "mpi", feature = "cuda"))]
fn gpu_world(world: mpi_world::MpiWorld) -> Result<Box<dyn Collective>> {
    if world.world() <= 1 {
        return Ok(Box::new(world));
    }
    Ok(Box::new(nccl::NcclWorld::init(world)?))
}

#[cfg(all(feature = "mpi", not(feature = "cuda")))]
fn gpu_world(_world: mpi_world::MpiWorld) -> Result<Box<dyn Collective>> {
    anyhow::bail!(
        "--device cuda with several ranks needs a build with `--features cuda,mpi` \
         (tools/build-cuda.sh)"
    )
}

/// The device a rank trains on: with several ranks, `cuda` means the GPU of this rank's
/// place on its machine (`cuda:LOCAL_RANK`), as `torchrun` and Horovod assign them; an
/// explicit `cuda:N` or `cpu` is kept.
pub fn device_for_rank(device: &str, comm: &dyn Collective) -> String {
    if device == "cuda" && comm.world() > 1 {
        format!("cuda:{}", comm.local_rank())
    } else {
        device.to_string()
    }
}
