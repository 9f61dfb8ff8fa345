//! How the ranks of a data-parallel job start from one state, as PyTorch DDP and Horovod
//! do: rank 0 decides and the others follow, so ranks >= 1 need no access to rank 0's
//! `--out` (node-local disks), nor to the files the weights come from.
//!
//! 1. [`agree_on_config`]: rank 0's resolved settings (and whether the job continues a
//!    run) go to every rank; a rank whose own settings differ says so and trains with
//!    rank 0's (its own device kept: `cuda:LOCAL_RANK`).
//! 2. [`agree_on_start`]: rank 0 alone reads the run folder and picks the checkpoint to
//!    continue from (or none); every rank learns which one, with its state, and checks
//!    its own copy of the data against rank 0's fingerprint.
//! 3. [`share_state`]: rank 0's weights (buffers included), AdamW moments and step
//!    counts, EMA and training state (epoch, step; every random choice derives from the
//!    run seed and these counters) are broadcast, every rank loads them, and every rank
//!    checks that the digest of what it now holds equals rank 0's before the first step.
//!
//! A failure on any rank stops every rank at once ([`crate::dist::agree_ok`]).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::checkpoint::{Checkpoint, TrainState};
use super::config::TrainConfig;
use crate::dist::{agree_ok, Collective};
use crate::ema::ModelEma;
use crate::grads::named_vars;
use crate::optim::AdamW;

#[derive(Serialize, Deserialize)]
struct Opening {
    config: TrainConfig,
    resume: bool,
}

/// Phase 1: every rank trains with rank 0's settings and rank 0's `--resume` decision.
/// Returns the config and resume flag this rank uses. With one rank, its own.
pub fn agree_on_config(
    comm: &dyn Collective,
    cfg: &TrainConfig,
    resume: bool,
) -> Result<(TrainConfig, bool)> {
    if comm.world() <= 1 {
        return Ok((cfg.clone(), resume));
    }
    let mut bytes = if comm.is_primary() {
        serde_json::to_vec(&Opening {
            config: cfg.clone(),
            resume,
        })?
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(&mut bytes)
        .context("receiving rank 0's settings")?;
    let local = if comm.is_primary() {
        Ok((cfg.clone(), resume))
    } else {
        adopt(comm.rank(), cfg, &bytes)
    };
    agree_ok(comm, local, "to take rank 0's settings")
}

fn adopt(rank: usize, own: &TrainConfig, bytes: &[u8]) -> Result<(TrainConfig, bool)> {
    let o: Opening =
        serde_json::from_slice(bytes).context("rank 0's settings are not a training config")?;
    let mut theirs = o.config;
    theirs.validate().context("rank 0's settings")?;
    if let Some((field, was, now)) = theirs.first_difference(own) {
        tracing::warn!(
            "rank {rank}: {field} is {now} here but {was} on rank 0; every rank trains with \
             rank 0's settings and starts from rank 0's state"
        );
    }
    if o.resume {
        tracing::debug!("rank {rank}: rank 0 continues its run (--resume)");
    }
    theirs.run.device = own.run.device.clone();
    Ok((theirs, o.resume))
}

#[derive(Serialize, Deserialize)]
struct StartPoint {
    config_hash: String,
    fingerprint: String,
    /// The checkpoint folder relative to rank 0's run folder, and its state.
    checkpoint: Option<(String, TrainState)>,
}

/// Phase 2: the checkpoint the job continues from, as rank 0 found it. `mine` is rank
/// 0's reading of its run folder (its checks included); the other ranks pass `Ok(None)`
/// and never look at their own `--out`. Every rank checks its config hash and its data
/// fingerprint against rank 0's. The returned checkpoint's folder is rank 0's, named
/// under this rank's `run_dir` (only rank 0 reads or writes it).
pub fn agree_on_start(
    comm: &dyn Collective,
    run_dir: &Path,
    mine: Result<Option<Checkpoint>>,
    config_hash: &str,
    fingerprint: &str,
) -> Result<Option<Checkpoint>> {
    if comm.world() <= 1 {
        return mine;
    }
    let mine = agree_ok(comm, mine, "to read the run folder")?;
    let mut bytes = if comm.is_primary() {
        let checkpoint = mine.as_ref().map(|ck| {
            let rel = ck.dir.strip_prefix(run_dir).unwrap_or(&ck.dir);
            (rel.to_string_lossy().into_owned(), ck.state.clone())
        });
        serde_json::to_vec(&StartPoint {
            config_hash: config_hash.to_string(),
            fingerprint: fingerprint.to_string(),
            checkpoint,
        })?
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(&mut bytes)
        .context("receiving rank 0's start point")?;
    if comm.is_primary() {
        return agree_ok(comm, Ok(mine), "to agree on the start point");
    }
    let rank = comm.rank();
    let local = (|| -> Result<Option<Checkpoint>> {
        let p: StartPoint =
            serde_json::from_slice(&bytes).context("rank 0's start point is not valid")?;
        if p.config_hash != config_hash {
            bail!(
                "rank {rank}: the training config hashes to {config_hash} here but to {} on \
                 rank 0",
                p.config_hash
            );
        }
        if p.fingerprint != fingerprint {
            bail!(
                "rank {rank}: the training shards here have fingerprint {fingerprint} but rank \
                 0's have {}; every rank must read the same data set (copy the same shards to \
                 every machine)",
                p.fingerprint
            );
        }
        Ok(p.checkpoint.map(|(rel, state)| Checkpoint {
            dir: run_dir.join(rel),
            state,
        }))
    })();
    agree_ok(comm, local, "to agree on the start point")
}

const STATE_KEY: &str = "train_state";
const OPTIM_META_KEY: &str = "optimizer_meta";
const EMA_DECAY_KEY: &str = "ema_decay";

/// Phase 3: rank 0's weights, optimizer state, EMA and training state replace every
/// other rank's, then every rank checks that it holds what rank 0 holds (digest of
/// [`state_digest`]). Returns the digest; `None` with one rank, where nothing happens.
pub fn share_state(
    comm: &dyn Collective,
    varmap: &VarMap,
    opt: &mut AdamW,
    ema: &mut Option<ModelEma>,
    state: &mut TrainState,
    device: &Device,
) -> Result<Option<String>> {
    if comm.world() <= 1 {
        return Ok(None);
    }
    let mut bytes = if comm.is_primary() {
        encode(varmap, opt, ema.as_ref(), state)?
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(&mut bytes)
        .context("receiving rank 0's weights and optimizer state")?;
    let local = if comm.is_primary() {
        Ok(())
    } else {
        decode(&bytes, varmap, opt, ema, state, device)
            .with_context(|| format!("rank {}: loading rank 0's state", comm.rank()))
    };
    drop(bytes);
    agree_ok(comm, local, "to load rank 0's state")?;
    let digest = state_digest(varmap, opt, ema.as_ref(), state)?;
    let mut theirs = digest.clone().into_bytes();
    comm.broadcast_bytes(&mut theirs)
        .context("receiving rank 0's state digest")?;
    let local = if theirs == digest.as_bytes() {
        Ok(digest)
    } else {
        Err(anyhow::anyhow!(
            "rank {}: after the broadcast this rank's state has digest {digest} but rank 0's \
             has {}",
            comm.rank(),
            String::from_utf8_lossy(&theirs)
        ))
    };
    agree_ok(comm, local, "to agree on the start state").map(Some)
}

fn host(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.contiguous()?)
}

fn encode(
    varmap: &VarMap,
    opt: &AdamW,
    ema: Option<&ModelEma>,
    state: &TrainState,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, v) in named_vars(varmap)? {
        tensors.push((format!("model.{name}"), host(v.as_tensor())?));
    }
    let (opt_tensors, opt_meta) = opt.state_tensors()?;
    for (name, t) in opt_tensors {
        tensors.push((format!("optim.{name}"), host(&t)?));
    }
    let mut meta = HashMap::new();
    meta.insert(STATE_KEY.to_string(), serde_json::to_string(state)?);
    meta.insert(
        OPTIM_META_KEY.to_string(),
        serde_json::to_string(&opt_meta)?,
    );
    if let Some(e) = ema {
        meta.insert(EMA_DECAY_KEY.to_string(), e.decay().to_string());
        for (name, t) in e.tensors() {
            tensors.push((format!("ema.{name}"), host(t)?));
        }
    }
    safetensors::serialize(tensors, Some(meta)).context("serializing the start state")
}

fn decode(
    bytes: &[u8],
    varmap: &VarMap,
    opt: &mut AdamW,
    ema: &mut Option<ModelEma>,
    state: &mut TrainState,
    device: &Device,
) -> Result<()> {
    let meta = formats::weights::check_safetensors_header(bytes, "rank 0's state")?;
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).context("reading rank 0's state")?;
    let get_meta = |k: &str| {
        meta.get(k)
            .with_context(|| format!("rank 0's state has no {k}"))
    };
    let new_state: TrainState = serde_json::from_str(get_meta(STATE_KEY)?)?;
    let opt_meta: HashMap<String, String> = serde_json::from_str(get_meta(OPTIM_META_KEY)?)?;
    let mut model = BTreeMap::new();
    let mut optim = HashMap::new();
    let mut shadow = BTreeMap::new();
    for (k, t) in tensors {
        if let Some(n) = k.strip_prefix("model.") {
            model.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("ema.") {
            shadow.insert(n.to_string(), t);
        } else {
            bail!("rank 0's state holds an unknown entry {k}");
        }
    }
    let vars = named_vars(varmap)?;
    if vars.len() != model.len() {
        bail!(
            "rank 0's model has {} variables, this rank's {}",
            model.len(),
            vars.len()
        );
    }
    for (name, v) in &vars {
        let t = model
            .get(name)
            .with_context(|| format!("rank 0's model has no {name}"))?;
        if t.dims() != v.as_tensor().dims() {
            bail!(
                "{name}: shape {:?} on rank 0, {:?} here",
                t.dims(),
                v.as_tensor().dims()
            );
        }
        v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)
            .with_context(|| format!("setting {name}"))?;
    }
    opt.load_state_tensors(&optim, &opt_meta)?;
    match (ema.as_mut(), meta.get(EMA_DECAY_KEY)) {
        (Some(e), Some(d)) => {
            let decay: f64 = d.parse().context("rank 0's EMA decay")?;
            *e = ModelEma::new(decay, shadow.iter().map(|(n, t)| (n.as_str(), t)))?;
        }
        (None, None) => {}
        (Some(_), None) => bail!("rank 0 sent no EMA but this rank keeps one"),
        (None, Some(_)) => bail!("rank 0 sent an EMA but this rank keeps none"),
    }
    *state = new_state;
    Ok(())
}

/// 16-hex-digit blake3 digest of everything a rank trains from: the training state
/// (epoch, step, counters, config hash, data fingerprint), every variable, the AdamW
/// moments and step counts, the EMA. Equal digests on every rank mean equal starts.
pub fn state_digest(
    varmap: &VarMap,
    opt: &AdamW,
    ema: Option<&ModelEma>,
    state: &TrainState,
) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(b"deit-pipe start state v1");
    h.update(serde_json::to_string(state)?.as_bytes());
    let mut add = |kind: &str, name: &str, t: &Tensor| -> Result<()> {
        h.update(kind.as_bytes());
        h.update(name.as_bytes());
        for d in t.dims() {
            h.update(&(*d as u64).to_le_bytes());
        }
        let t = t.to_device(&Device::Cpu)?;
        let t = if t.dtype() == DType::I64 {
            t
        } else {
            t.to_dtype(DType::F32)?
        };
        match t.dtype() {
            DType::I64 => {
                for x in t.flatten_all()?.to_vec1::<i64>()? {
                    h.update(&x.to_le_bytes());
                }
            }
            _ => {
                for x in t.flatten_all()?.to_vec1::<f32>()? {
                    h.update(&x.to_le_bytes());
                }
            }
        }
        Ok(())
    };
    for (name, v) in named_vars(varmap)? {
        add("model", &name, v.as_tensor())?;
    }
    let (opt_tensors, _) = opt.state_tensors()?;
    for (name, t) in &opt_tensors {
        add("optim", name, t)?;
    }
    if let Some(e) = ema {
        for (name, t) in e.tensors() {
            add("ema", name, t)?;
        }
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}
