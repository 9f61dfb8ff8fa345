//! DeiT / ViT (timm `VisionTransformer`, `VisionTransformerDistilled`): pre-norm
//! blocks, qkv bias, LayerNorm eps 1e-6, exact GELU, tokens cat(cls, dist, patches)
//! + pos_embed; train mode returns both heads, eval the mean of their logits.
//!
//! Mixed precision ([`ForwardCtx::precision`] = [`super::Precision::Bf16`], torch-autocast
//! style): the image is cast to bf16 at the entry, and every matrix product (patch
//! embedding, qkv, proj, fc1, fc2, heads, `q k^T`, `attn v`) takes bf16 operands, the
//! f32 weights cast on the fly. Everything else computes in f32: the residual stream
//! (tokens, position embedding, residual adds), LayerNorm, the softmax of the attention
//! logits, GELU, the biases and the logits: every product's output is cast back to f32
//! (but `attn v`, which goes straight on as proj's bf16 operand), so bf16 tensors live only
//! as operands of products. With f32 every cast is a no-op and the graph is the plain f32
//! model, op for op. On the CPU's fused kernels no bf16 tensor exists at all: the
//! kernels round each product's operands to bf16 themselves and sum in f32
//! ([`kernels::precision`]), so the products' outputs are f32 (autocast rounds them).

use super::layers::{
    fused_products, matmul_bias_in, residual_drop_path, softmax_last_dim, DropPathRng, LayerNorm,
    Linear,
};
use super::{DeitConfig, ForwardCtx, ModelOutput, ModelSpec};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use kernels::attention;

const LN_EPS: f64 = 1e-6;

/// Patch embedding: a `patch x patch` stride-`patch` convolution, run as one GEMM
/// over flattened patches (exact, and cheaper than a general convolution).
struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: usize,
    dim: usize,
}

impl PatchEmbed {
    fn new(cfg: &DeitConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let vb = vb.pp("proj");
        Ok(Self {
            weight: vb.get((cfg.embed_dim, 3, p, p), "weight")?,
            bias: vb.get(cfg.embed_dim, "bias")?,
            patch: p,
            dim: cfg.embed_dim,
        })
    }

    /// `(B, 3, H, W)` -> `(B, N, D)` f32, patches in row-major order; the product in
    /// `compute` (the image is cast before the patches are gathered).
    fn forward(&self, x: &Tensor, compute: DType) -> Result<Tensor> {
        // The fused kernels round the patches themselves (the same values: rounding is
        // per element).
        let x = match fused_products(x, &self.weight, compute) {
            Some(_) => x.clone(),
            None => x.to_dtype(compute)?,
        };
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch;
        let (gh, gw) = (h / p, w / p);
        if gh * p != h || gw * p != w {
            candle_core::bail!("image {h}x{w} is not a multiple of the patch size {p}");
        }
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let wmat = self.weight.reshape((self.dim, c * p * p))?;
        matmul_bias_in(&patches, &wmat, Some(&self.bias), compute)?.reshape((b, gh * gw, self.dim))
    }
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: Linear::new(dim, 3 * dim, true, vb.pp("qkv"))?,
            proj: Linear::new(dim, dim, true, vb.pp("proj"))?,
            heads,
            scale: ((dim / heads) as f64).powf(-0.5),
        })
    }

    /// `x` f32 `(B, N, D)` -> f32; products in `compute`, softmax in f32. `train`: a
    /// backward follows (the fused op keeps its attention matrices for it).
    fn forward(&self, x: &Tensor, compute: DType, train: bool) -> Result<Tensor> {
        if let Some(p) = fused_products(x, self.proj.weight(), compute) {
            // One op from the qkv projection's output to the proj input (CPU, f32
            // tensors; bf16 products round their operands inside).
            let qkv = self.qkv.forward_in(x, compute)?;
            let o = attention::attention_in(&qkv, self.heads, self.scale, train, p)?;
            return self.proj.forward_in(&o, compute);
        }
        let (b, n, c) = x.dims3()?;
        let hd = c / self.heads;
        // rows of qkv.weight: [0, D) = q, [D, 2D) = k, [2D, 3D) = v; heads contiguous in each.
        let qkv = self
            .qkv
            .forward_in(x, compute)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?; // (3, B, H, N, hd)

        // The scale is applied in f32 (1/sqrt(hd) is not a power of two for every hd).
        let q = (qkv.get(0)?.contiguous()? * self.scale)?.to_dtype(compute)?;
        let k = qkv.get(1)?.contiguous()?.to_dtype(compute)?;
        let v = qkv.get(2)?.contiguous()?.to_dtype(compute)?;
        let attn = q.matmul(&k.t()?)?.to_dtype(DType::F32)?; // (B, H, N, N)
        let attn = softmax_last_dim(&attn)?.to_dtype(compute)?;
        let o = attn.matmul(&v)?; // (B, H, N, hd)
        let o = o.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward_in(&o, compute)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, hidden, true, vb.pp("fc1"))?,
            fc2: Linear::new(hidden, dim, true, vb.pp("fc2"))?,
        })
    }

    /// f32 -> f32; products in `compute`, GELU in f32. `train`: a backward follows.
    fn forward(&self, x: &Tensor, compute: DType, train: bool) -> Result<Tensor> {
        let h = self.fc1.forward_gelu_in(x, compute, train)?;
        self.fc2.forward_in(&h, compute)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    drop_path: f64,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        train: bool,
        compute: DType,
        rng: &mut DropPathRng,
    ) -> Result<Tensor> {
        let dp = if train { self.drop_path } else { 0.0 };
        let a = self.attn.forward(&self.norm1.forward(x)?, compute, train)?;
        let x = residual_drop_path(x, &a, dp, rng)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?, compute, train)?;
        residual_drop_path(&x, &m, dp, rng)
    }
}

/// A DeiT (distilled or not) with timm's parameter names.
pub struct Deit {
    name: String,
    cfg: DeitConfig,
    num_classes: usize,
    patch_embed: PatchEmbed,
    cls_token: Tensor,
    dist_token: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    head_dist: Option<Linear>,
}

impl Deit {
    /// Builds the model from `vb` (keys: `cls_token`, `dist_token`, `pos_embed`,
    /// `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`, `head.*`, `head_dist.*`).
    pub fn new(spec: &ModelSpec, cfg: &DeitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        if cfg.num_heads == 0 || !d.is_multiple_of(cfg.num_heads) {
            candle_core::bail!("embed dim {d} is not divisible by {} heads", cfg.num_heads);
        }
        if cfg.patch_size == 0 || !cfg.img_size.is_multiple_of(cfg.patch_size) {
            candle_core::bail!(
                "image size {} is not a multiple of the patch size {}",
                cfg.img_size,
                cfg.patch_size
            );
        }
        let n = cfg.grid() * cfg.grid() + cfg.num_prefix_tokens();
        let dpr: Vec<f64> = (0..cfg.depth)
            .map(|i| {
                if cfg.depth > 1 {
                    spec.drop_path * i as f64 / (cfg.depth - 1) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let blocks = (0..cfg.depth)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(Block {
                    norm1: LayerNorm::new(d, LN_EPS, vb.pp("norm1"))?,
                    attn: Attention::new(d, cfg.num_heads, vb.pp("attn"))?,
                    norm2: LayerNorm::new(d, LN_EPS, vb.pp("norm2"))?,
                    mlp: Mlp::new(d, cfg.mlp_ratio * d, vb.pp("mlp"))?,
                    drop_path: dpr[i],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: spec.name.clone(),
            cfg: cfg.clone(),
            num_classes: spec.num_classes,
            patch_embed: PatchEmbed::new(cfg, vb.pp("patch_embed"))?,
            cls_token: vb.get((1, 1, d), "cls_token")?,
            dist_token: if cfg.distilled {
                Some(vb.get((1, 1, d), "dist_token")?)
            } else {
                None
            },
            pos_embed: vb.get((1, n, d), "pos_embed")?,
            blocks,
            norm: LayerNorm::new(d, LN_EPS, vb.pp("norm"))?,
            head: Linear::new(d, spec.num_classes, true, vb.pp("head"))?,
            head_dist: if cfg.distilled {
                Some(Linear::new(d, spec.num_classes, true, vb.pp("head_dist"))?)
            } else {
                None
            },
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &DeitConfig {
        &self.cfg
    }

    /// Normalized prefix tokens `(B, P, D)` f32 (cls, then dist) after all blocks.
    fn features(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let compute = ctx.precision.dtype();
        let (b, _, h, w) = x.dims4()?;
        if h != self.cfg.img_size || w != self.cfg.img_size {
            candle_core::bail!(
                "input is {h}x{w} but the model expects {0}x{0}",
                self.cfg.img_size
            );
        }
        let d = self.cfg.embed_dim;
        let patches = self.patch_embed.forward(x, compute)?;
        let mut tokens = vec![self.cls_token.broadcast_as((b, 1, d))?];
        if let Some(t) = &self.dist_token {
            tokens.push(t.broadcast_as((b, 1, d))?);
        }
        tokens.push(patches);
        let mut x = Tensor::cat(&tokens, 1)?.broadcast_add(&self.pos_embed)?;
        let mut rng = DropPathRng::new(ctx.seed, ctx.shard);
        for block in &self.blocks {
            x = block.forward(&x, ctx.train, compute, &mut rng)?;
        }
        // Only the prefix tokens feed the heads; LayerNorm is per token.
        let prefix = x.narrow(1, 0, self.cfg.num_prefix_tokens())?;
        self.norm.forward(&prefix)
    }
}

impl super::Classifier for Deit {
    /// Logits in f32 whatever [`ForwardCtx::precision`] is.
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<ModelOutput> {
        let compute = ctx.precision.dtype();
        let feats = self.features(x, ctx)?;
        let cls = self.head.forward_in(&feats.get_on_dim(1, 0)?, compute)?;
        match &self.head_dist {
            None => Ok(ModelOutput { cls, dist: None }),
            Some(hd) => {
                let dist = hd.forward_in(&feats.get_on_dim(1, 1)?, compute)?;
                if ctx.train {
                    Ok(ModelOutput {
                        cls,
                        dist: Some(dist),
                    })
                } else {
                    Ok(ModelOutput {
                        cls: ((cls + dist)? * 0.5)?,
                        dist: None,
                    })
                }
            }
        }
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn arch(&self) -> &str {
        &self.name
    }
}
