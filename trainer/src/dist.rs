//! Data-parallel training: the one seam between the training loop and a transport.
//!
//! [`Collective`] is the small set of collective operations data-parallel training needs
//! (all-reduce of one flat buffer, a barrier, rank and world size). The training loop
//! and the teacher-cache command use only this trait; the implementations live in the
//! `deit-pipe` binary behind cargo features: MPI (`MPI_Allreduce` between CPU processes,
//! feature `mpi`) and NCCL (between GPUs, bootstrapped over MPI, features `cuda,mpi`).
//! [`SingleProcess`] is the world of one, which every reduction leaves untouched, so a
//! single process computes exactly what it did before data parallelism existed.
//!
//! Gradients travel as one flat buffer per optimizer step ([`mean_gradients`]): every
//! gradient, in parameter-name order, concatenated, summed across ranks in one call and
//! divided by the world size, like Horovod's fused all-reduce and PyTorch DDP's buckets.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::grads::NamedGrads;
use crate::models::layers::BatchShard;

/// Collective operations over the ranks of one job.
///
/// Every rank must call the same operations in the same order with buffers of the same
/// length (the usual MPI contract); the training loop guarantees this by taking the same
/// steps on every rank.
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Rank among the processes of this machine (which GPU a rank takes).
    fn local_rank(&self) -> usize {
        self.rank()
    }
    /// What moves the data (`single process`, `MPI`, `NCCL over MPI`), for logs.
    fn transport(&self) -> &str;
    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Replaces `buf` on every rank by the element-wise sum over ranks.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// The element-wise sum over ranks of a rank-1 f32 tensor. The default copies through
    /// host memory ([`Collective::all_reduce_sum_f32`]); a GPU transport reduces on the
    /// device.
    fn all_reduce_sum_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        let mut host = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_sum_f32(&mut host)?;
        Ok(Tensor::from_vec(host, flat.elem_count(), flat.device())?)
    }
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Replaces `bytes` on every rank by rank 0's (the other ranks' buffers take rank
    /// 0's length): how the start-up state travels. Rank 0 may read files first (a
    /// checkpoint), so a transport waits here under its file-I/O limit, not the hang
    /// detector's. The default goes through [`Collective::all_reduce_sum_f32`] (rank 0
    /// adds its bytes to the others' zeros, exact for byte values); MPI broadcasts.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let primary = self.is_primary();
        let mut len = [if primary { bytes.len() as f64 } else { 0.0 }];
        self.all_reduce_sum_f64(&mut len)?;
        let n = len[0] as usize;
        let mut buf: Vec<f32> = if primary {
            bytes.iter().map(|&b| b as f32).collect()
        } else {
            vec![0.0; n]
        };
        self.all_reduce_sum_f32(&mut buf)?;
        *bytes = buf.iter().map(|&x| x as u8).collect();
        Ok(())
    }

    /// Every rank's `mine`, in rank order, on every rank (small records: per-rank
    /// reports gathered for one summary). The default goes through
    /// [`Collective::all_reduce_sum_f64`] (lengths) and
    /// [`Collective::all_reduce_sum_f32`] (each rank adds its bytes into its own segment
    /// of zeros, exact for byte values).
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (rank, world) = (self.rank(), self.world());
        if world <= 1 {
            return Ok(vec![mine.to_vec()]);
        }
        let mut lens = vec![0.0f64; world];
        lens[rank] = mine.len() as f64;
        self.all_reduce_sum_f64(&mut lens)
            .context("gathering the lengths of the ranks' records")?;
        let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
        let start: usize = lens[..rank].iter().sum();
        let mut buf = vec![0.0f32; lens.iter().sum()];
        for (slot, &b) in buf[start..start + mine.len()].iter_mut().zip(mine) {
            *slot = f32::from(b);
        }
        self.all_reduce_sum_f32(&mut buf)
            .context("gathering the ranks' records")?;
        let mut out = Vec::with_capacity(world);
        let mut at = 0;
        for n in lens {
            out.push(buf[at..at + n].iter().map(|&x| x as u8).collect());
            at += n;
        }
        Ok(out)
    }

    /// A barrier that waits as long as rank 0's file I/O may take (a checkpoint being
    /// written on a slow network filesystem): called right after rank 0 wrote files, so
    /// that the next collective's hang detector counts none of it. Transports with a
    /// hang detector give this wait its own, longer limit.
    fn io_barrier(&self) -> Result<()> {
        self.barrier()
    }

    /// The part of each global batch this rank holds (for drop-path masks).
    fn batch_shard(&self) -> BatchShard {
        BatchShard {
            rank: self.rank(),
            world: self.world(),
            ..BatchShard::WHOLE
        }
    }
    /// Whether this rank writes the job's files (checkpoints, metrics, cache summaries)
    /// and draws progress: rank 0.
    fn is_primary(&self) -> bool {
        self.rank() == 0
    }
}

/// The world of one process: every reduction is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn transport(&self) -> &str {
        "single process"
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_tensor(&self, flat: &Tensor) -> Result<Tensor> {
        Ok(flat.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Averages gradients over the ranks: one flat buffer (every gradient of `params`, in
/// the given order, flattened and concatenated), one all-reduce, then `1 / world`.
///
/// Every rank must hold a gradient for the same parameters (they run the same model and
/// loss); a parameter the loss did not reach on any rank stays without one. With one
/// rank the gradients are returned unchanged.
pub fn mean_gradients(
    comm: &dyn Collective,
    grads: NamedGrads,
    params: &[(String, Var)],
) -> Result<NamedGrads> {
    let world = comm.world();
    if world <= 1 {
        return Ok(grads);
    }
    let mut parts = Vec::new();
    let mut layout = Vec::new();
    for (name, _) in params {
        if let Some(g) = grads.get(name) {
            let g = g.to_dtype(DType::F32)?;
            layout.push((name.clone(), g.dims().to_vec(), g.elem_count()));
            parts.push(g.flatten_all()?);
        }
    }
    if parts.is_empty() {
        return Ok(grads);
    }
    // The parameter count and the buffer length must agree across ranks, or the
    // reduction would mix different parameters: check it first (two numbers).
    let total: usize = layout.iter().map(|l| l.2).sum();
    let mut shape = [layout.len() as f64, total as f64];
    let mine = shape;
    comm.all_reduce_sum_f64(&mut shape)?;
    if shape != [mine[0] * world as f64, mine[1] * world as f64] {
        bail!(
            "rank {}: the ranks hold gradients of different parameter sets ({} tensors of \
             {} values here); every rank must train the same model",
            comm.rank(),
            layout.len(),
            total
        );
    }
    let flat = Tensor::cat(&parts, 0)?;
    drop(parts);
    let summed = comm
        .all_reduce_sum_tensor(&flat)
        .context("all-reducing the gradients")?;
    let mean = (summed * (1.0 / world as f64))?;
    let mut out = NamedGrads::new();
    let mut offset = 0;
    for (name, dims, n) in layout {
        let g = mean.narrow(0, offset, n)?.reshape(dims)?;
        offset += n;
        out.insert(name, g);
    }
    Ok(out)
}

/// Averages variables over the ranks in place (BatchNorm's running statistics, which
/// each rank updates from its own part of the batch, as PyTorch DDP without SyncBN
/// does; averaging them every step keeps every rank's model identical). Nothing
/// happens with one rank.
pub fn mean_variables(comm: &dyn Collective, vars: &[(String, Var)]) -> Result<()> {
    let world = comm.world();
    if world <= 1 || vars.is_empty() {
        return Ok(());
    }
    let mut host = Vec::new();
    let mut sizes = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        let t = v.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        sizes.push(t.elem_count());
        host.extend(t.to_vec1::<f32>()?);
    }
    comm.all_reduce_sum_f32(&mut host)
        .context("all-reducing the BatchNorm statistics")?;
    let scale = 1.0 / world as f32;
    let mut offset = 0;
    for ((name, v), n) in vars.iter().zip(sizes) {
        let vals: Vec<f32> = host[offset..offset + n].iter().map(|x| x * scale).collect();
        offset += n;
        let t = Tensor::from_vec(vals, v.as_tensor().dims(), &Device::Cpu)?
            .to_device(v.as_tensor().device())?
            .to_dtype(v.as_tensor().dtype())?;
        v.set(&t).with_context(|| format!("setting {name}"))?;
    }
    Ok(())
}

/// Makes every rank fail together: each passes its own outcome of a step that may fail
/// on some ranks only (checks of the run folder, the data, the state); when any rank
/// failed, every rank returns an error (its own, or one saying another rank failed),
/// instead of the healthy ranks waiting for the failed one until the hang detector
/// stops them. With one rank `local` is returned as it is.
pub fn agree_ok<T>(comm: &dyn Collective, local: Result<T>, what: &str) -> Result<T> {
    if comm.world() <= 1 {
        return local;
    }
    let mut failed = [if local.is_err() { 1.0 } else { 0.0 }];
    comm.all_reduce_sum_f64(&mut failed)
        .with_context(|| format!("agreeing on {what}"))?;
    match local {
        Err(e) => Err(e),
        Ok(_) if failed[0] > 0.0 => bail!(
            "rank {} of {}: {} other rank(s) failed {what} (their messages say why); \
             stopping this rank too",
            comm.rank(),
            comm.world(),
            failed[0] as usize
        ),
        Ok(v) => Ok(v),
    }
}

/// Element-wise sum over the ranks of a few scalars (losses, counts), for logs and
/// metrics; the input is returned unchanged with one rank.
pub fn sum_scalars<const N: usize>(comm: &dyn Collective, mut v: [f64; N]) -> Result<[f64; N]> {
    if comm.world() > 1 {
        comm.all_reduce_sum_f64(&mut v)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A fake world of two ranks for unit tests: the "other" rank's buffers are given,
    /// and each reduction adds them.
    struct TwoRanks {
        rank: usize,
        other_f32: RefCell<Vec<Vec<f32>>>,
        other_f64: RefCell<Vec<Vec<f64>>>,
    }

    impl Collective for TwoRanks {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world(&self) -> usize {
            2
        }
        fn transport(&self) -> &str {
            "test"
        }
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            let o = self.other_f32.borrow_mut().remove(0);
            assert_eq!(o.len(), buf.len());
            for (b, o) in buf.iter_mut().zip(o) {
                *b += o;
            }
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            let o = self.other_f64.borrow_mut().remove(0);
            for (b, o) in buf.iter_mut().zip(o) {
                *b += o;
            }
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    fn var(name: &str, v: Vec<f32>, dims: &[usize]) -> (String, Var) {
        let t = Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
        (name.to_string(), Var::from_tensor(&t).unwrap())
    }

    #[test]
    fn single_process_leaves_gradients_alone() {
        let params = vec![var("a", vec![0.0; 3], &[3])];
        let mut g = NamedGrads::new();
        g.insert("a", Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap());
        let out = mean_gradients(&SingleProcess, g, &params).unwrap();
        assert_eq!(
            out.get("a").unwrap().to_vec1::<f32>().unwrap(),
            vec![1., 2., 3.]
        );
    }

    #[test]
    fn two_ranks_average_in_parameter_order_with_shapes() {
        let params = vec![
            var("a.weight", vec![0.0; 4], &[2, 2]),
            var("b.bias", vec![0.0; 2], &[2]),
        ];
        let mut g = NamedGrads::new();
        g.insert(
            "a.weight",
            Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap(),
        );
        g.insert("b.bias", Tensor::new(&[10f32, 20.], &Device::Cpu).unwrap());
        let comm = TwoRanks {
            rank: 0,
            // the other rank's flat buffer: a.weight then b.bias
            other_f32: RefCell::new(vec![vec![3., 2., 1., 0., 30., 40.]]),
            other_f64: RefCell::new(vec![vec![2.0, 6.0]]),
        };
        let out = mean_gradients(&comm, g, &params).unwrap();
        assert_eq!(
            out.get("a.weight").unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![2., 2.], vec![2., 2.]]
        );
        assert_eq!(
            out.get("b.bias").unwrap().to_vec1::<f32>().unwrap(),
            vec![20., 30.]
        );
    }

    #[test]
    fn mismatched_parameter_sets_are_refused() {
        let params = vec![var("a", vec![0.0; 3], &[3])];
        let mut g = NamedGrads::new();
        g.insert("a", Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap());
        let comm = TwoRanks {
            rank: 1,
            other_f32: RefCell::new(vec![]),
            // the other rank says 2 tensors of 5 values
            other_f64: RefCell::new(vec![vec![2.0, 5.0]]),
        };
        let err = mean_gradients(&comm, g, &params).unwrap_err().to_string();
        assert!(err.contains("different parameter sets"), "{err}");
    }

    #[test]
    fn all_gather_bytes_puts_each_rank_in_its_place() {
        // Rank 1 holds "xyz"; rank 0 (3 bytes "ab\xff") sees the other rank's
        // contribution: its length in slot 1, its bytes after rank 0's segment.
        let comm = TwoRanks {
            rank: 1,
            other_f32: RefCell::new(vec![vec![b'a' as f32, b'b' as f32, 255.0, 0.0, 0.0, 0.0]]),
            other_f64: RefCell::new(vec![vec![3.0, 0.0]]),
        };
        let got = comm.all_gather_bytes(b"xyz").unwrap();
        assert_eq!(got, vec![b"ab\xff".to_vec(), b"xyz".to_vec()]);
        assert_eq!(
            SingleProcess.all_gather_bytes(b"solo").unwrap(),
            vec![b"solo".to_vec()]
        );
    }

    #[test]
    fn variables_are_averaged() {
        let vars = vec![var("bn.running_mean", vec![1., 3.], &[2])];
        let comm = TwoRanks {
            rank: 0,
            other_f32: RefCell::new(vec![vec![3., 5.]]),
            other_f64: RefCell::new(vec![]),
        };
        mean_variables(&comm, &vars).unwrap();
        assert_eq!(
            vars[0].1.as_tensor().to_vec1::<f32>().unwrap(),
            vec![2., 4.]
        );
    }

    #[test]
    fn sharded_drop_path_masks_equal_the_whole_batch_masks() {
        use crate::models::layers::DropPathRng;
        let mut whole = DropPathRng::new(7, BatchShard::WHOLE);
        let mut r0 = DropPathRng::new(
            7,
            BatchShard {
                rank: 0,
                world: 2,
                ..BatchShard::WHOLE
            },
        );
        let mut r1 = DropPathRng::new(
            7,
            BatchShard {
                rank: 1,
                world: 2,
                ..BatchShard::WHOLE
            },
        );
        for _branch in 0..5 {
            let w = whole.scales(8, 0.5);
            let (a, b) = (r0.scales(4, 0.5), r1.scales(4, 0.5));
            assert_eq!(vec![a[0], a[1], b[0], b[1], a[2], a[3], b[2], b[3]], w);
            assert!(w.contains(&0.0) || w.iter().all(|&x| x == 2.0));
        }
    }

    #[test]
    fn accumulated_micro_batches_draw_the_masks_of_the_whole_step() {
        use crate::models::layers::DropPathRng;
        // global batch 8 = 2 per pass x 2 micro-batches x 2 ranks
        let mut whole = DropPathRng::new(11, BatchShard::WHOLE);
        let shard = |rank, micro| {
            let s = BatchShard {
                rank,
                world: 2,
                ..BatchShard::WHOLE
            };
            DropPathRng::new(11, s.micro_batch(micro, 2))
        };
        let (mut a, mut b, mut c, mut d) = (shard(0, 0), shard(1, 0), shard(0, 1), shard(1, 1));
        for _branch in 0..5 {
            let w = whole.scales(8, 0.5);
            // rank r's micro-batch m holds global pair 2m + r
            let (a, b, c, d) = (
                a.scales(2, 0.5),
                b.scales(2, 0.5),
                c.scales(2, 0.5),
                d.scales(2, 0.5),
            );
            assert_eq!([a, b, c, d].concat(), w);
        }
        // one process, batch 4 x 2 micro-batches = batch 8
        let mut whole = DropPathRng::new(5, BatchShard::WHOLE);
        let one = |m| DropPathRng::new(5, BatchShard::WHOLE.micro_batch(m, 2));
        let (mut m0, mut m1) = (one(0), one(1));
        for _branch in 0..3 {
            let w = whole.scales(8, 0.3);
            assert_eq!([m0.scales(4, 0.3), m1.scales(4, 0.3)].concat(), w);
        }
    }

    #[test]
    fn shard_positions_interleave_pairs_by_rank() {
        // world 2, local batch 4: rank 0 holds pairs 0 and 2 of the global batch of 8,
        // rank 1 pairs 1 and 3.
        let r0 = BatchShard {
            rank: 0,
            world: 2,
            ..BatchShard::WHOLE
        };
        let r1 = BatchShard {
            rank: 1,
            world: 2,
            ..BatchShard::WHOLE
        };
        let g0: Vec<usize> = (0..4).map(|i| r0.global_index(i)).collect();
        let g1: Vec<usize> = (0..4).map(|i| r1.global_index(i)).collect();
        assert_eq!(g0, vec![0, 1, 4, 5]);
        assert_eq!(g1, vec![2, 3, 6, 7]);
        assert_eq!(
            (0..6)
                .map(|i| BatchShard::WHOLE.global_index(i))
                .collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
    }
}
