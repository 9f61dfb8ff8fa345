//! RegNetY (timm `RegNet`): stem 3x3/2 conv, four stages `s{1..4}` of blocks
//! `b{j}` = conv1 1x1, conv2 3x3 grouped (stride here), SE on the bottleneck with
//! `round(in_chs * se_ratio)` channels, conv3 1x1 without activation, shortcut
//! `downsample` (1x1 conv + BN) when the shape changes, then ReLU; head `head.fc`.

use super::layers::{drop_path, global_avg_pool, BatchNorm2d, Conv2d, DropPathRng, Linear};
use super::{ForwardCtx, ModelOutput, ModelSpec, RegNetConfig};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// timm's `ConvNormAct`: `{prefix}.conv`, `{prefix}.bn`.
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(cin, cout, k, stride, k / 2, groups, false, vb.pp("conv"))?,
            bn: BatchNorm2d::new(cout, vb.pp("bn"))?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(x)?, train)
    }
}

struct Se {
    fc1: Conv2d,
    fc2: Conv2d,
}

impl Se {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.mean_keepdim((2, 3))?;
        let s = self.fc1.forward(&s)?.relu()?;
        let s = candle_nn::ops::sigmoid(&self.fc2.forward(&s)?)?;
        x.broadcast_mul(&s)
    }
}

struct Block {
    conv1: ConvBn,
    conv2: ConvBn,
    se: Option<Se>,
    conv3: ConvBn,
    downsample: Option<ConvBn>,
    drop_path: f64,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        group_width: usize,
        se_ratio: f64,
        drop_path: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bott = cout; // bottle_ratio 1
        let groups = bott / group_width;
        let se = if se_ratio > 0.0 {
            let rd = (cin as f64 * se_ratio).round_ties_even() as usize;
            let vb = vb.pp("se");
            Some(Se {
                fc1: Conv2d::new(bott, rd, 1, 1, 0, 1, true, vb.pp("fc1"))?,
                fc2: Conv2d::new(rd, bott, 1, 1, 0, 1, true, vb.pp("fc2"))?,
            })
        } else {
            None
        };
        let downsample = if cin != cout || stride != 1 {
            Some(ConvBn::new(cin, cout, 1, stride, 1, vb.pp("downsample"))?)
        } else {
            None
        };
        Ok(Self {
            conv1: ConvBn::new(cin, bott, 1, 1, 1, vb.pp("conv1"))?,
            conv2: ConvBn::new(bott, bott, 3, stride, groups, vb.pp("conv2"))?,
            se,
            conv3: ConvBn::new(bott, cout, 1, 1, 1, vb.pp("conv3"))?,
            downsample,
            drop_path,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, rng: &mut DropPathRng) -> Result<Tensor> {
        let mut y = self.conv1.forward(x, train)?.relu()?;
        y = self.conv2.forward(&y, train)?.relu()?;
        if let Some(se) = &self.se {
            y = se.forward(&y)?;
        }
        y = self.conv3.forward(&y, train)?;
        if train {
            y = drop_path(&y, self.drop_path, rng)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// A RegNetY with timm's parameter names.
pub struct RegNet {
    name: String,
    num_classes: usize,
    stem: ConvBn,
    blocks: Vec<Block>,
    fc: Linear,
}

impl RegNet {
    /// Builds the model from `vb`.
    pub fn new(spec: &ModelSpec, cfg: &RegNetConfig, vb: VarBuilder) -> Result<Self> {
        let stages = cfg.stages();
        if stages.len() != 4 {
            candle_core::bail!(
                "RegNet config gives {} stages, timm requires 4",
                stages.len()
            );
        }
        let stem = ConvBn::new(3, cfg.stem_width, 3, 2, 1, vb.pp("stem"))?;
        let total: usize = stages.iter().map(|s| s.depth).sum();
        let mut blocks = Vec::with_capacity(total);
        let mut cin = cfg.stem_width;
        let mut idx = 0;
        for (i, st) in stages.iter().enumerate() {
            for j in 0..st.depth {
                let stride = if j == 0 { 2 } else { 1 };
                let dp = if total > 1 {
                    spec.drop_path * idx as f64 / (total - 1) as f64
                } else {
                    0.0
                };
                let vb = vb.pp(format!("s{}.b{}", i + 1, j + 1));
                blocks.push(Block::new(
                    cin,
                    st.width,
                    stride,
                    st.group_width,
                    cfg.se_ratio,
                    dp,
                    vb,
                )?);
                cin = st.width;
                idx += 1;
            }
        }
        let fc = Linear::new(cin, spec.num_classes, true, vb.pp("head.fc"))?;
        Ok(Self {
            name: spec.name.clone(),
            num_classes: spec.num_classes,
            stem,
            blocks,
            fc,
        })
    }
}

impl super::Classifier for RegNet {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<ModelOutput> {
        super::require_f32(ctx, &self.name)?;
        let mut y = self.stem.forward(x, ctx.train)?.relu()?;
        let mut rng = DropPathRng::new(ctx.seed, ctx.shard);
        for b in &self.blocks {
            y = b.forward(&y, ctx.train, &mut rng)?;
        }
        let cls = self.fc.forward(&global_avg_pool(&y)?)?;
        Ok(ModelOutput { cls, dist: None })
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn arch(&self) -> &str {
        &self.name
    }
}
