//! `train --resume FILE.pth`: start a run from a checkpoint that DeiT's `main.py` wrote
//! (`output_dir/checkpoint.pth`, a `torch.save` zip of a dict with `model`,
//! `optimizer`, `lr_scheduler`, `epoch`, `model_ema`, `scaler`, `args`), as main.py's own
//! `--resume` does: the weights, the AdamW moments and step counts, the EMA weights, and
//! the next epoch (`epoch + 1`). The learning rate comes from this run's schedule at that
//! epoch (main.py's scheduler state holds the same cosine); `scaler` (AMP loss scale)
//! and `args` are not used.
//!
//! The file is read with candle's pickle reader (`candle_core::pickle::Stack`, which
//! only builds a tree of values and never runs code), the tensors from the zip's
//! storage records. `weights::read_state_dict` reads the `model` entry; this module adds
//! what it has no way to reach: `optimizer`'s nested, integer-keyed state, `model_ema`
//! and `epoch`.
//!
//! main.py's optimizer state names parameters by index: timm's `create_optimizer_v2`
//! puts the parameters in two groups (no weight decay, then weight decay), each in
//! `model.named_parameters()` order, and `Optimizer.state_dict()` numbers them through
//! both groups. For a DeiT that order is fixed by timm's module layout (see
//! [`timm_deit_param_order`]); the group sizes and every tensor's shape are checked
//! against it.

use crate::models::{Arch, ModelSpec};
use crate::optim::{no_weight_decay, AdamW};
use crate::weights::{load_state_dict_into, LoadOptions};
use anyhow::{bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One AdamW parameter group of main.py's optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Parameter indices.
    pub params: Vec<usize>,
    /// Weight decay of the group.
    pub weight_decay: f64,
    /// (beta1, beta2).
    pub betas: (f64, f64),
    /// Epsilon.
    pub eps: f64,
}

/// Per-parameter AdamW state, by index.
#[derive(Debug, Clone)]
pub struct ParamState {
    /// First moment.
    pub exp_avg: Tensor,
    /// Second moment.
    pub exp_avg_sq: Tensor,
    /// Steps taken.
    pub step: u64,
}

/// What this trainer uses of a main.py checkpoint.
#[derive(Debug)]
pub struct MainPyCheckpoint {
    /// The file.
    pub path: PathBuf,
    /// `checkpoint['model']`.
    pub model: BTreeMap<String, Tensor>,
    /// `checkpoint['model_ema']`, when present.
    pub model_ema: Option<BTreeMap<String, Tensor>>,
    /// `checkpoint['optimizer']`: groups and state by parameter index.
    pub optimizer: Option<(Vec<ParamGroup>, BTreeMap<usize, ParamState>)>,
    /// `checkpoint['epoch']`: the last finished epoch (0-based).
    pub epoch: Option<usize>,
}

/// A pickle file inside the zip and a way to read its storage records.
struct Archive {
    zip: zip::ZipArchive<std::io::BufReader<std::fs::File>>,
    /// `<archive>/data` (storages are `<archive>/data/<key>`).
    data_dir: PathBuf,
}

impl Archive {
    fn tensor(&mut self, obj: Object, what: &str) -> Result<Tensor> {
        let info = obj
            .into_tensor_info(Object::Unicode(what.into()), &self.data_dir)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_context(|| format!("{what} is not a tensor"))?;
        let layout = &info.layout;
        ensure!(
            layout.is_contiguous(),
            "{what}: non-contiguous tensors are not supported"
        );
        let mut f = self
            .zip
            .by_name(&info.path)
            .with_context(|| format!("{what}: storage {} missing", info.path))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .with_context(|| format!("{what}: reading storage {}", info.path))?;
        let start = layout.start_offset();
        let len = layout.shape().elem_count() * info.dtype.size_in_bytes();
        ensure!(
            start + len <= bytes.len(),
            "{what}: storage {} holds {} bytes, the tensor needs {}",
            info.path,
            bytes.len(),
            start + len
        );
        let t = Tensor::from_raw_buffer(
            &bytes[start..start + len],
            info.dtype,
            layout.dims(),
            &Device::Cpu,
        )?;
        Ok(t)
    }

    fn state_dict(&mut self, obj: Object, what: &str) -> Result<BTreeMap<String, Tensor>> {
        let Object::Dict(items) = obj else {
            bail!("{what} is not a dict of tensors");
        };
        let mut out = BTreeMap::new();
        for (k, v) in items {
            let Object::Unicode(name) = k else {
                bail!("{what} has a key that is not a string");
            };
            // The OrderedDict's `_metadata` attribute (module versions), merged into the
            // dict by the unpickler's BUILD.
            if name == "_metadata" {
                continue;
            }
            let t = self.tensor(v, &format!("{what}[{name:?}]"))?;
            let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            out.insert(name, t.to_dtype(DType::F32)?);
        }
        Ok(out)
    }
}

fn key_str(k: &Object) -> Option<&str> {
    match k {
        Object::Unicode(s) => Some(s),
        _ => None,
    }
}

fn as_int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

fn as_float(o: &Object) -> Option<f64> {
    match o {
        Object::Float(f) => Some(*f),
        Object::Int(i) => Some(*i as f64),
        Object::Long(i) => Some(*i as f64),
        _ => None,
    }
}

fn dict_get<'a>(items: &'a [(Object, Object)], key: &str) -> Option<&'a Object> {
    items
        .iter()
        .find(|(k, _)| key_str(k) == Some(key))
        .map(|(_, v)| v)
}

fn parse_group(g: &Object, i: usize) -> Result<ParamGroup> {
    let Object::Dict(items) = g else {
        bail!("optimizer param_groups[{i}] is not a dict");
    };
    let field = |k: &str| {
        dict_get(items, k).with_context(|| format!("optimizer param_groups[{i}] has no '{k}'"))
    };
    let params = match field("params")? {
        Object::List(v) | Object::Tuple(v) => v
            .iter()
            .map(|o| as_int(o).map(|x| x as usize))
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!("optimizer param_groups[{i}]['params'] is not a list of ints")
            })?,
        _ => bail!("optimizer param_groups[{i}]['params'] is not a list"),
    };
    let num = |k: &str| -> Result<f64> {
        as_float(field(k)?)
            .with_context(|| format!("optimizer param_groups[{i}]['{k}'] is not a number"))
    };
    let betas = match field("betas")? {
        Object::Tuple(v) | Object::List(v) if v.len() == 2 => (
            as_float(&v[0]).context("beta1 is not a number")?,
            as_float(&v[1]).context("beta2 is not a number")?,
        ),
        _ => bail!("optimizer param_groups[{i}]['betas'] is not a pair"),
    };
    Ok(ParamGroup {
        params,
        weight_decay: num("weight_decay")?,
        betas,
        eps: num("eps")?,
    })
}

impl MainPyCheckpoint {
    /// Read a main.py checkpoint (`torch.save` zip format).
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_inner(path).with_context(|| {
            format!(
                "reading {} as a DeiT main.py checkpoint (a torch.save zip of a dict with \
                 'model', 'optimizer', 'epoch', ...)",
                path.display()
            )
        })
    }

    fn read_inner(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).context("opening the file")?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .context("not a zip archive (torch.save's format since torch 1.6)")?;
        let pkl = (0..zip.len())
            .filter_map(|i| {
                zip.by_index(i)
                    .ok()
                    .and_then(|f| f.name().ok().map(|n| n.into_owned()))
            })
            .find(|n| n.ends_with("data.pkl"))
            .context("no data.pkl in the archive")?;
        let obj = {
            let reader = zip.by_name(&pkl)?;
            let mut reader = std::io::BufReader::new(reader);
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut reader)
                .map_err(|e| anyhow::anyhow!("unpickling {pkl}: {e}"))?;
            stack
                .finalize()
                .map_err(|e| anyhow::anyhow!("unpickling {pkl}: {e}"))?
        };
        let data_dir = PathBuf::from(pkl.trim_end_matches(".pkl"));
        let mut ar = Archive { zip, data_dir };
        let Object::Dict(top) = obj else {
            bail!("the pickled object is not a dict");
        };
        let mut has_model = false;
        let mut model_ema = None;
        let mut optimizer = None;
        let mut epoch = None;
        for (k, v) in top {
            match key_str(&k) {
                Some("model") => has_model = true,
                Some("model_ema") if v != Object::None => {
                    model_ema = Some(ar.state_dict(v, "checkpoint['model_ema']")?)
                }
                Some("epoch") => {
                    let e = as_int(&v).context("checkpoint['epoch'] is not an int")?;
                    ensure!(e >= 0, "checkpoint['epoch'] is {e}");
                    epoch = Some(e as usize);
                }
                Some("optimizer") => optimizer = Some(Self::optimizer(&mut ar, v)?),
                _ => {}
            }
        }
        ensure!(has_model, "the checkpoint has no 'model' entry");
        // The weights through the project's .pth reader (the same tensors, `module.`
        // prefixes stripped), so its checks apply here too.
        let model = crate::weights::read_state_dict(path)?;
        Ok(MainPyCheckpoint {
            path: path.to_path_buf(),
            model,
            model_ema,
            optimizer,
            epoch,
        })
    }

    fn optimizer(
        ar: &mut Archive,
        v: Object,
    ) -> Result<(Vec<ParamGroup>, BTreeMap<usize, ParamState>)> {
        let Object::Dict(items) = v else {
            bail!("checkpoint['optimizer'] is not a dict");
        };
        let mut groups = Vec::new();
        let mut state = BTreeMap::new();
        for (k, v) in items {
            match (key_str(&k), v) {
                (Some("param_groups"), Object::List(gs)) => {
                    for (i, g) in gs.iter().enumerate() {
                        groups.push(parse_group(g, i)?);
                    }
                }
                (Some("state"), Object::Dict(entries)) => {
                    for (idx, st) in entries {
                        let idx = as_int(&idx)
                            .context("optimizer state key is not a parameter index")?
                            as usize;
                        let Object::Dict(fields) = st else {
                            bail!("optimizer state[{idx}] is not a dict");
                        };
                        let mut m = None;
                        let mut v2 = None;
                        let mut step = None;
                        for (fk, fv) in fields {
                            match key_str(&fk) {
                                Some("exp_avg") => {
                                    m = Some(ar.tensor(
                                        fv,
                                        &format!("optimizer state[{idx}]['exp_avg']"),
                                    )?)
                                }
                                Some("exp_avg_sq") => {
                                    v2 = Some(ar.tensor(
                                        fv,
                                        &format!("optimizer state[{idx}]['exp_avg_sq']"),
                                    )?)
                                }
                                // torch >= 1.12 keeps the step as a 0-d float tensor,
                                // older versions as an int.
                                Some("step") => {
                                    step = Some(match as_float(&fv) {
                                        Some(s) => s,
                                        None => ar
                                            .tensor(fv, &format!("optimizer state[{idx}]['step']"))?
                                            .to_dtype(DType::F64)?
                                            .flatten_all()?
                                            .to_vec1::<f64>()?
                                            .first()
                                            .copied()
                                            .context("empty step tensor")?,
                                    })
                                }
                                _ => {}
                            }
                        }
                        let (Some(m), Some(v2), Some(step)) = (m, v2, step) else {
                            bail!(
                                "optimizer state[{idx}] lacks exp_avg, exp_avg_sq or step \
                                 (is it AdamW's?)"
                            );
                        };
                        ensure!(
                            step >= 1.0 && step.fract() == 0.0,
                            "optimizer state[{idx}]['step'] is {step}"
                        );
                        state.insert(
                            idx,
                            ParamState {
                                exp_avg: m.to_dtype(DType::F32)?,
                                exp_avg_sq: v2.to_dtype(DType::F32)?,
                                step: step as u64,
                            },
                        );
                    }
                }
                _ => {}
            }
        }
        ensure!(
            !groups.is_empty(),
            "checkpoint['optimizer'] has no param_groups"
        );
        Ok((groups, state))
    }

    /// Copy `model` into `varmap` (every tensor must match, as main.py's strict load).
    pub fn load_model(&self, varmap: &VarMap, spec: &ModelSpec) -> Result<()> {
        load_state_dict_into(
            varmap,
            spec,
            &self.model,
            &LoadOptions::default(),
            &format!("{} ['model']", self.path.display()),
        )?;
        Ok(())
    }

    /// The optimizer state keyed by parameter name (`NAME.exp_avg`, `NAME.exp_avg_sq`,
    /// `NAME.step`), as [`AdamW::load_state_tensors`] takes it. `betas`, `eps` and
    /// `weight_decay` must equal the checkpoint's groups (main.py restores them from it;
    /// here they are part of the run's recipe, so a difference is an error naming the
    /// flag to set).
    pub fn optimizer_tensors(
        &self,
        spec: &ModelSpec,
        param_shapes: &BTreeMap<String, Vec<usize>>,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Result<HashMap<String, Tensor>> {
        let (groups, state) = self
            .optimizer
            .as_ref()
            .context("the checkpoint has no 'optimizer' entry")?;
        let order = timm_deit_param_order(spec)?;
        let mut ours: Vec<&String> = param_shapes.keys().collect();
        ours.sort();
        let mut theirs: Vec<&String> = order.iter().collect();
        theirs.sort();
        ensure!(
            ours == theirs,
            "the model's parameters differ from timm's DeiT layout; cannot map the optimizer \
             state by index"
        );
        let rank = |n: &str| param_shapes[n].len();
        let no_decay: Vec<&String> = order
            .iter()
            .filter(|n| no_weight_decay(n, rank(n)))
            .collect();
        let decay: Vec<&String> = order
            .iter()
            .filter(|n| !no_weight_decay(n, rank(n)))
            .collect();
        ensure!(
            groups.len() == 2
                && groups[0].params.len() == no_decay.len()
                && groups[1].params.len() == decay.len(),
            "the optimizer has groups of {:?} parameters; timm's create_optimizer_v2 for this \
             model makes two of [{}, {}] (no weight decay, weight decay)",
            groups.iter().map(|g| g.params.len()).collect::<Vec<_>>(),
            no_decay.len(),
            decay.len()
        );
        for (i, g) in groups.iter().enumerate() {
            let want_wd = if i == 0 { 0.0 } else { weight_decay };
            if (g.betas.0 - betas.0).abs() > 1e-12 || (g.betas.1 - betas.1).abs() > 1e-12 {
                bail!(
                    "the checkpoint's AdamW betas are ({}, {}), this run's ({}, {}); pass \
                     --opt-betas {} {}",
                    g.betas.0,
                    g.betas.1,
                    betas.0,
                    betas.1,
                    g.betas.0,
                    g.betas.1
                );
            }
            if (g.eps - eps).abs() > 1e-20 {
                bail!(
                    "the checkpoint's AdamW eps is {}, this run's {eps}; pass --opt-eps {}",
                    g.eps,
                    g.eps
                );
            }
            if (g.weight_decay - want_wd).abs() > 1e-12 {
                bail!(
                    "the checkpoint's param group {i} has weight decay {}, this run's {want_wd}; \
                     pass --weight-decay {}",
                    g.weight_decay,
                    groups[1].weight_decay
                );
            }
        }
        let names: Vec<&String> = no_decay.into_iter().chain(decay).collect();
        let by_index: HashMap<usize, &String> = groups
            .iter()
            .flat_map(|g| g.params.iter().copied())
            .zip(names.iter().copied())
            .collect();
        let mut out = HashMap::new();
        for (idx, st) in state {
            let name = by_index.get(idx).with_context(|| {
                format!("optimizer state for parameter index {idx}, which no group lists")
            })?;
            let want = &param_shapes[name.as_str()];
            for (what, t) in [("exp_avg", &st.exp_avg), ("exp_avg_sq", &st.exp_avg_sq)] {
                ensure!(
                    t.dims() == want.as_slice(),
                    "optimizer state[{idx}] ({name}) {what} has shape {:?}, the parameter {want:?}",
                    t.dims()
                );
            }
            out.insert(format!("{name}.exp_avg"), st.exp_avg.clone());
            out.insert(format!("{name}.exp_avg_sq"), st.exp_avg_sq.clone());
            out.insert(
                format!("{name}.step"),
                Tensor::new(st.step as i64, &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restore the optimizer (moments and step counts) and EMA into a run just built,
    /// returning (next epoch, optimizer steps taken); (0, 0) for a weights-only file.
    pub fn restore(
        &self,
        spec: &ModelSpec,
        varmap: &VarMap,
        opt: &mut AdamW,
        ema: Option<&mut crate::ema::ModelEma>,
        device: &Device,
    ) -> Result<(usize, u64)> {
        // main.py restores the training state only when the checkpoint has it
        // ('optimizer', 'lr_scheduler', 'epoch'); a weights-only file (the released
        // DeiT checkpoints) starts at epoch 0 from its weights.
        let Some(epoch) = self.epoch.filter(|_| self.optimizer.is_some()) else {
            tracing::warn!(
                "{}: no 'optimizer' and 'epoch' entries; starting at epoch 0 from its weights",
                self.path.display()
            );
            return Ok((0, 0));
        };
        let shapes: BTreeMap<String, Vec<usize>> = crate::models::trainable_vars(varmap)
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().dims().to_vec()))
            .collect();
        let cfg = *opt.config();
        let tensors =
            self.optimizer_tensors(spec, &shapes, cfg.betas, cfg.eps, cfg.weight_decay)?;
        let steps = tensors
            .iter()
            .filter(|(k, _)| k.ends_with(".step"))
            .filter_map(|(_, t)| t.to_scalar::<i64>().ok())
            .max()
            .unwrap_or(0) as u64;
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<Result<_>>()?;
        let (_, meta) = opt.state_tensors()?;
        opt.load_state_tensors(&tensors, &meta)
            .with_context(|| format!("{} ['optimizer']", self.path.display()))?;
        if let Some(e) = ema {
            let src = self.model_ema.as_ref().with_context(|| {
                format!(
                    "{}: EMA is on (--model-ema) but the checkpoint has no 'model_ema'; \
                     pass --no-model-ema",
                    self.path.display()
                )
            })?;
            let mut new = Vec::new();
            for (name, t) in e.tensors() {
                let s = src.get(name).with_context(|| {
                    format!("{} ['model_ema'] has no {name}", self.path.display())
                })?;
                ensure!(
                    s.dims() == t.dims(),
                    "{} ['model_ema'][{name}] has shape {:?}, the model {:?}",
                    self.path.display(),
                    s.dims(),
                    t.dims()
                );
                new.push((name.clone(), s.to_device(device)?));
            }
            *e = crate::ema::ModelEma::new(e.decay(), new.iter().map(|(n, t)| (n.as_str(), t)))?;
        }
        Ok((epoch + 1, steps))
    }
}

/// timm's `named_parameters()` order for a DeiT (`VisionTransformer` /
/// `VisionTransformerDistilled`): the module's own parameters (cls_token, pos_embed,
/// dist_token; reassigning pos_embed keeps its place), then patch_embed, the blocks, the
/// final norm and the heads.
pub fn timm_deit_param_order(spec: &ModelSpec) -> Result<Vec<String>> {
    let Arch::Deit(c) = &spec.arch else {
        bail!(
            "{}: main.py checkpoints are read for DeiT models only (the optimizer state names \
             parameters by their index in timm's DeiT layout)",
            spec.name
        );
    };
    let mut v: Vec<String> = vec!["cls_token".into(), "pos_embed".into()];
    if c.distilled {
        v.push("dist_token".into());
    }
    v.extend([
        "patch_embed.proj.weight".into(),
        "patch_embed.proj.bias".into(),
    ]);
    for b in 0..c.depth {
        for p in [
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        ] {
            v.push(format!("blocks.{b}.{p}"));
        }
    }
    v.extend([
        "norm.weight".into(),
        "norm.bias".into(),
        "head.weight".into(),
        "head.bias".into(),
    ]);
    if c.distilled {
        v.extend(["head_dist.weight".into(), "head_dist.bias".into()]);
    }
    Ok(v)
}
