//! The NCCL transport (features `cuda` and `mpi`): gradients are summed between GPUs by
//! `ncclAllReduce` on the device, as Horovod and PyTorch DDP do; MPI starts the ranks,
//! carries NCCL's unique id from rank 0 to the others, and does the small host
//! reductions (losses, evaluation counts) and barriers.
//!
//! The communicator is made on the first device reduction, on the CUDA stream of the
//! tensor being reduced (candle's stream for this rank's GPU), so NCCL's kernels are
//! ordered after the backward pass's kernels without extra synchronization.

use std::cell::OnceCell;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DeviceSlice;
use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
use mpi::traits::{Communicator, Root};
use trainer::dist::Collective;

use super::mpi_world::MpiWorld;

/// MPI for the job, NCCL for device buffers.
pub struct NcclWorld {
    mpi: MpiWorld,
    comm: OnceCell<Rc<Comm>>,
}

impl NcclWorld {
    /// Wraps an initialized MPI job; NCCL starts on the first device reduction.
    pub fn init(mpi: MpiWorld) -> Result<Self> {
        Ok(NcclWorld {
            mpi,
            comm: OnceCell::new(),
        })
    }

    /// The communicator, made on `device`'s stream the first time (a collective call:
    /// every rank reaches it at its first gradient reduction).
    fn comm(&self, device: &Device) -> Result<Rc<Comm>> {
        if let Some(c) = self.comm.get() {
            return Ok(c.clone());
        }
        let Device::Cuda(dev) = device else {
            bail!("the NCCL transport reduces CUDA tensors; this one is on {device:?}");
        };
        // Rank 0 makes the id; MPI broadcasts its 128 bytes.
        let id = if self.mpi.rank() == 0 {
            Some(Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?)
        } else {
            None
        };
        let mut bytes: [i8; 128] = id.as_ref().map_or([0; 128], |id| {
            let mut b = [0i8; 128];
            for (d, s) in b.iter_mut().zip(id.internal().iter()) {
                *d = *s as i8;
            }
            b
        });
        {
            let _watch = self.mpi.watch("broadcasting the NCCL id");
            self.mpi
                .communicator()
                .process_at_rank(0)
                .broadcast_into(&mut bytes[..]);
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(bytes.iter()) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(
            dev.cuda_stream(),
            self.mpi.rank(),
            self.mpi.world(),
            Id::uninit(internal),
        )
        .map_err(|e| anyhow::anyhow!("ncclCommInitRank (rank {}): {e:?}", self.mpi.rank()))?;
        tracing::info!(
            "rank {} of {}: NCCL communicator on GPU {}",
            self.mpi.rank(),
            self.mpi.world(),
            self.mpi.local_rank()
        );
        let comm = Rc::new(comm);
        let _ = self.comm.set(comm.clone());
        Ok(comm)
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world(&self) -> usize {
        self.mpi.world()
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn transport(&self) -> &str {
        "NCCL over MPI"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.mpi.all_reduce_sum_f32(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.mpi.all_reduce_sum_f64(buf)
    }
    fn all_reduce_sum_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        if !flat.device().is_cuda() {
            return self.mpi.all_reduce_sum_tensor(flat);
        }
        let op = AllReduceSum {
            comm: self.comm(flat.device())?,
        };
        let _watch = self.mpi.watch(format!(
            "an NCCL all-reduce of {} values",
            flat.elem_count()
        ));
        let out = flat
            .contiguous()?
            .apply_op1_no_bwd(&op)
            .context("ncclAllReduce")?;
        // Wait for the reduction here, so that the watchdog sees a dead peer.
        out.device().synchronize()?;
        Ok(out)
    }
    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        self.mpi.broadcast_bytes(bytes)
    }
    fn io_barrier(&self) -> Result<()> {
        self.mpi.io_barrier()
    }
}

/// `ncclAllReduce(sum)` of an f32 CUDA tensor into a new one, as a candle op.
struct AllReduceSum {
    comm: Rc<Comm>,
}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce takes CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor");
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let dev = s.device().clone();
        // SAFETY: every element is written by the all-reduce before it is read.
        let mut dst = unsafe { dev.alloc::<f32>(end - start) }?;
        debug_assert_eq!(dst.len(), end - start);
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
