//! ResNet (timm `ResNet`, same key names as torchvision): `conv1`, `bn1`,
//! `layer{1..4}.{j}.{conv,bn}{1,2,3}`, `layer{i}.0.downsample.{0,1}`, `fc`.
//! Bottleneck strides on its 3x3 conv (v1.5). `resnet_small` swaps the stem for a
//! 3x3 stride-1 conv without max pool (CIFAR-style) for 32-64 px images.

use super::layers::{
    drop_path, global_avg_pool, max_pool_3x3_s2, BatchNorm2d, Conv2d, DropPathRng, Linear,
};
use super::{ForwardCtx, ModelOutput, ModelSpec, ResNetBlock, ResNetConfig};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

struct Block {
    convs: Vec<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
    drop_path: f64,
}

impl Block {
    fn new(
        kind: ResNetBlock,
        inplanes: usize,
        planes: usize,
        stride: usize,
        drop_path: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (convs, out) = match kind {
            ResNetBlock::Basic => (
                vec![
                    (
                        Conv2d::new(inplanes, planes, 3, stride, 1, 1, false, vb.pp("conv1"))?,
                        BatchNorm2d::new(planes, vb.pp("bn1"))?,
                    ),
                    (
                        Conv2d::new(planes, planes, 3, 1, 1, 1, false, vb.pp("conv2"))?,
                        BatchNorm2d::new(planes, vb.pp("bn2"))?,
                    ),
                ],
                planes,
            ),
            ResNetBlock::Bottleneck => (
                vec![
                    (
                        Conv2d::new(inplanes, planes, 1, 1, 0, 1, false, vb.pp("conv1"))?,
                        BatchNorm2d::new(planes, vb.pp("bn1"))?,
                    ),
                    (
                        Conv2d::new(planes, planes, 3, stride, 1, 1, false, vb.pp("conv2"))?,
                        BatchNorm2d::new(planes, vb.pp("bn2"))?,
                    ),
                    (
                        Conv2d::new(planes, planes * 4, 1, 1, 0, 1, false, vb.pp("conv3"))?,
                        BatchNorm2d::new(planes * 4, vb.pp("bn3"))?,
                    ),
                ],
                planes * 4,
            ),
        };
        let downsample = if stride != 1 || inplanes != out {
            let vb = vb.pp("downsample");
            Some((
                Conv2d::new(inplanes, out, 1, stride, 0, 1, false, vb.pp("0"))?,
                BatchNorm2d::new(out, vb.pp("1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            convs,
            downsample,
            drop_path,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, rng: &mut DropPathRng) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            y = bn.forward_t(&conv.forward(&y)?, train)?;
            if i < last {
                y = y.relu()?;
            }
        }
        if train {
            y = drop_path(&y, self.drop_path, rng)?;
        }
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// A ResNet with timm / torchvision parameter names.
pub struct ResNet {
    name: String,
    num_classes: usize,
    small_stem: bool,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    /// Builds the model from `vb`.
    pub fn new(spec: &ModelSpec, cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let conv1 = if cfg.small_stem {
            Conv2d::new(3, cfg.stem_width, 3, 1, 1, 1, false, vb.pp("conv1"))?
        } else {
            Conv2d::new(3, cfg.stem_width, 7, 2, 3, 1, false, vb.pp("conv1"))?
        };
        let bn1 = BatchNorm2d::new(cfg.stem_width, vb.pp("bn1"))?;
        let expansion = match cfg.block {
            ResNetBlock::Basic => 1,
            ResNetBlock::Bottleneck => 4,
        };
        let total: usize = cfg.layers.iter().sum();
        let mut inplanes = cfg.stem_width;
        let mut blocks = Vec::with_capacity(total);
        let mut idx = 0;
        for (stage, (&n, &planes)) in cfg.layers.iter().zip(&cfg.channels).enumerate() {
            for j in 0..n {
                let stride = if stage > 0 && j == 0 { 2 } else { 1 };
                // timm: block_dpr = drop_path_rate * net_block_idx / (net_num_blocks - 1)
                let dp = if total > 1 {
                    spec.drop_path * idx as f64 / (total - 1) as f64
                } else {
                    0.0
                };
                let vb = vb.pp(format!("layer{}.{j}", stage + 1));
                blocks.push(Block::new(cfg.block, inplanes, planes, stride, dp, vb)?);
                inplanes = planes * expansion;
                idx += 1;
            }
        }
        let fc = Linear::new(inplanes, spec.num_classes, true, vb.pp("fc"))?;
        Ok(Self {
            name: spec.name.clone(),
            num_classes: spec.num_classes,
            small_stem: cfg.small_stem,
            conv1,
            bn1,
            blocks,
            fc,
        })
    }
}

impl super::Classifier for ResNet {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<ModelOutput> {
        super::require_f32(ctx, &self.name)?;
        let mut y = self
            .bn1
            .forward_t(&self.conv1.forward(x)?, ctx.train)?
            .relu()?;
        if !self.small_stem {
            y = max_pool_3x3_s2(&y)?;
        }
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
