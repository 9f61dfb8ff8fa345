//! `train --resume FILE.pth`: start a run from a checkpoint that DeiT's `main.py` wrote
//! (`output_dir/checkpoint.pth`, a `torch.save` zip of a dict with `model`,
//! `optimizer`, `lr_scheduler`, `epoch`, `model_ema`, `scaler`, `args`), as main.py's own
//! `--resume` does: the weights, the AdamW moments and step counts, the EMA weights, and
//! the next epoch (`epoch + 1`). The learning rate comes from this run's schedule at that
//! epoch (main.py's scheduler state holds the same cosine); `scaler` (AMP loss scale)
//! and `args` are not used.
//!
//! The file is read through the project's own checkpoint reader
//! (`formats::weights::pth::Checkpoint`: the bounded unpickler that never runs code, every size
//! checked against the file before allocating, zip or legacy format); this module walks
//! what the state-dict reader does not: `optimizer`'s nested, integer-keyed state,
//! `model_ema` and `epoch`.
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
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use formats::weights::pickle::{Obj, Value};
use formats::weights::pth::{Checkpoint, RawTensor};
use std::collections::{BTreeMap, HashMap};
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

/// A value of the checkpoint's pickle, with the checkpoint to read it through.
#[derive(Clone, Copy)]
struct Node<'a> {
    ck: &'a Checkpoint,
    v: Value,
}

impl<'a> Node<'a> {
    fn pickle(&self) -> &'a formats::weights::pickle::Pickle {
        &self.ck.pickle
    }
    /// The (key, value) items of a dict.
    fn items(&self) -> Option<impl Iterator<Item = (Node<'a>, Node<'a>)> + 'a> {
        let ck = self.ck;
        match self.pickle().obj(self.v)? {
            Obj::Dict(items) => Some(
                items
                    .iter()
                    .map(move |&(k, v)| (Node { ck, v: k }, Node { ck, v })),
            ),
            _ => None,
        }
    }
    /// The value under the string key `key` of a dict.
    fn get(&self, key: &str) -> Option<Node<'a>> {
        self.items()?
            .find(|(k, _)| k.str() == Some(key))
            .map(|(_, v)| v)
    }
    fn str(&self) -> Option<&'a str> {
        self.pickle().str(self.v)
    }
    fn int(&self) -> Option<i64> {
        match self.v {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
    fn float(&self) -> Option<f64> {
        match self.v {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }
    fn seq(&self) -> Option<Vec<Node<'a>>> {
        let ck = self.ck;
        Some(
            self.pickle()
                .seq(self.v)?
                .iter()
                .map(|&v| Node { ck, v })
                .collect(),
        )
    }
    fn is_none(&self) -> bool {
        self.v == Value::None
    }
    /// The tensor this value rebuilds, as f32 on the CPU (finite values only).
    fn tensor(&self, what: &str) -> Result<Tensor> {
        raw_tensor(self.ck.tensor(self.v, what)?, what)
    }
    /// The state dict this value is (`module.` prefixes and BatchNorm counters dropped).
    fn state_dict(&self, what: &str) -> Result<BTreeMap<String, Tensor>> {
        let e = self
            .ck
            .state_dict_at(self.v)
            .with_context(|| what.to_string())?;
        let mut out = BTreeMap::new();
        for t in e.tensors {
            let Some(name) = formats::weights::state_dict_key(&t.name) else {
                continue;
            };
            let name = name.to_string();
            let w = format!("{what}[{name:?}]");
            out.insert(name, raw_tensor(t, &w)?);
        }
        Ok(out)
    }
}

fn raw_tensor(t: RawTensor, what: &str) -> Result<Tensor> {
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        bail!("{what} holds a non-finite value at element {i}: refused");
    }
    Ok(Tensor::from_vec(t.data, t.shape.as_slice(), &Device::Cpu)?)
}

fn parse_group(g: Node<'_>, i: usize) -> Result<ParamGroup> {
    ensure!(
        g.items().is_some(),
        "optimizer param_groups[{i}] is not a dict"
    );
    let field = |k: &str| {
        g.get(k)
            .with_context(|| format!("optimizer param_groups[{i}] has no '{k}'"))
    };
    let params = field("params")?
        .seq()
        .with_context(|| format!("optimizer param_groups[{i}]['params'] is not a list"))?
        .iter()
        .map(|o| o.int().and_then(|x| usize::try_from(x).ok()))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("optimizer param_groups[{i}]['params'] is not a list of ints"))?;
    let num = |k: &str| -> Result<f64> {
        field(k)?
            .float()
            .with_context(|| format!("optimizer param_groups[{i}]['{k}'] is not a number"))
    };
    let betas = match field("betas")?.seq().as_deref() {
        Some([b1, b2]) => (
            b1.float().context("beta1 is not a number")?,
            b2.float().context("beta2 is not a number")?,
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
    /// Read a main.py checkpoint (a `torch.save` file, zip or legacy format) through the
    /// project's bounded, non-executing checkpoint reader ([`Checkpoint`]).
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_inner(path).with_context(|| {
            format!(
                "reading {} as a DeiT main.py checkpoint (a torch.save file of a dict with \
                 'model', 'optimizer', 'epoch', ...)",
                path.display()
            )
        })
    }

    fn read_inner(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).context("reading the file's metadata")?;
        ensure!(meta.is_file(), "not a regular file");
        let bytes = formats::open::read_bounded(path, formats::open::WEIGHTS)
            .context("reading the file")?;
        let ck = Checkpoint::read(&bytes, &path.display().to_string())?;
        let root = Node {
            ck: &ck,
            v: ck.pickle.root.context("the pickle holds no object")?,
        };
        ensure!(root.items().is_some(), "the pickled object is not a dict");
        let model = root
            .get("model")
            .context("the checkpoint has no 'model' entry")?
            .state_dict("checkpoint['model']")?;
        let model_ema = match root.get("model_ema") {
            Some(n) if !n.is_none() => Some(n.state_dict("checkpoint['model_ema']")?),
            _ => None,
        };
        let epoch = match root.get("epoch") {
            Some(n) => {
                let e = n.int().context("checkpoint['epoch'] is not an int")?;
                ensure!(e >= 0, "checkpoint['epoch'] is {e}");
                Some(e as usize)
            }
            None => None,
        };
        let optimizer = root.get("optimizer").map(Self::optimizer).transpose()?;
        Ok(MainPyCheckpoint {
            path: path.to_path_buf(),
            model,
            model_ema,
            optimizer,
            epoch,
        })
    }

    fn optimizer(v: Node<'_>) -> Result<(Vec<ParamGroup>, BTreeMap<usize, ParamState>)> {
        ensure!(v.items().is_some(), "checkpoint['optimizer'] is not a dict");
        let mut groups = Vec::new();
        if let Some(gs) = v.get("param_groups").and_then(|g| g.seq()) {
            for (i, g) in gs.into_iter().enumerate() {
                groups.push(parse_group(g, i)?);
            }
        }
        let mut state = BTreeMap::new();
        if let Some(entries) = v.get("state").and_then(|s| s.items()) {
            for (idx, st) in entries {
                let idx = idx
                    .int()
                    .and_then(|i| usize::try_from(i).ok())
                    .context("optimizer state key is not a parameter index")?;
                ensure!(st.items().is_some(), "optimizer state[{idx}] is not a dict");
                let tensor = |k: &str| -> Result<Option<Tensor>> {
                    st.get(k)
                        .map(|n| n.tensor(&format!("optimizer state[{idx}]['{k}']")))
                        .transpose()
                };
                // torch >= 1.12 keeps the step as a 0-d float tensor, older versions as
                // an int.
                let step = match st.get("step") {
                    Some(n) => Some(match n.float() {
                        Some(s) => s,
                        None => n
                            .tensor(&format!("optimizer state[{idx}]['step']"))?
                            .to_dtype(DType::F64)?
                            .flatten_all()?
                            .to_vec1::<f64>()?
                            .first()
                            .copied()
                            .context("empty step tensor")?,
                    }),
                    None => None,
                };
                let (Some(m), Some(v2), Some(step)) =
                    (tensor("exp_avg")?, tensor("exp_avg_sq")?, step)
                else {
                    bail!(
                        "optimizer state[{idx}] lacks exp_avg, exp_avg_sq or step (is it \
                         AdamW's?)"
                    );
                };
                ensure!(
                    step >= 1.0 && step.fract() == 0.0,
                    "optimizer state[{idx}]['step'] is {step}"
                );
                state.insert(
                    idx,
                    ParamState {
                        exp_avg: m,
                        exp_avg_sq: v2,
                        step: step as u64,
                    },
                );
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
