//! A linear layer `y = x·Wᵀ + b` as one CPU op (f32) with a hand-written backward, over
//! any number of leading dimensions of `x`.
//!
//! Why: composed from candle ops, a linear layer on a `(B, N, in)` activation is a reshape
//! to 2-D, a transposed view of `W`, a matmul, a bias add and a reshape back: five graph
//! nodes, and candle's backward allocates a zeroed gradient and adds into it for every
//! input of every node, so the two reshapes and the bias add each cost two more passes over
//! an activation-sized tensor (a DeiT block has four linear layers). Here there is one node;
//! its backward is two products on the operands as they lie (`dx = dy·W`,
//! `dW = dyᵀ·x`, through `gemm` with strides, no copies) and a column sum for `db`.
//!
//! Every product can take bf16 operands ([`ProductPrecision::Bf16`], autocast's contract,
//! see [`super::precision`]): forward `x` and `W` rounded, backward `dy` with `W` and
//! `dy` with `x` rounded, all summed in f32.

use super::conv_gemm::gemm_raw;
use super::fused::{
    add_to_rows, gelu_values, gelu_values_in_place, slice_f32, ColumnSum, GeluBwd, Stash,
};
use super::precision::ProductPrecision;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// `x·Wᵀ + b` for `x` `(..., in)`, `w` `(out, in)` and an optional `b` `(out)`; the
/// output is `(..., out)`. Differentiable in all three. CPU, f32 only (the caller checks,
/// see [`super::fused::enabled`]).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_in(x, w, b, ProductPrecision::F32)
}

/// [`linear`] with its products (forward and backward) in `precision`.
pub fn linear_in(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    precision: ProductPrecision,
) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if x.dims().last() != Some(&inp) {
        candle_core::bail!("linear: input {:?} does not end in {inp}", x.dims());
    }
    if let Some(b) = b {
        if b.dims() != [out] {
            candle_core::bail!("linear: bias {:?} for {out} outputs", b.dims());
        }
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let op = LinearOp { precision };
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

struct LinearOp {
    precision: ProductPrecision,
}

/// `(rows, in, out)` of a call and the output shape.
fn sizes(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize, Shape)> {
    let (out, inp) = lw.shape().dims2()?;
    let rows = lx.shape().elem_count() / inp.max(1);
    let mut dims = lx.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    Ok((rows, inp, out, Shape::from(dims)))
}

/// `lhs x rhs` (`m x k` by `k x n`, operands as [`gemm_raw`] takes them) into a new
/// row-major `m x n` buffer, split over rayon's threads, the operands read in `precision`.
fn product(
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], usize, bool),
    rhs: (&[f32], usize, bool),
    precision: ProductPrecision,
) -> Vec<f32> {
    let len = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: the product writes all `m x n` elements of the spare capacity (row stride
    // `n`), which nothing else holds; then they are initialized.
    unsafe {
        gemm_raw(
            (out.spare_capacity_mut().as_mut_ptr().cast(), n),
            (m, n, k),
            lhs,
            rhs,
            1.0,
            true,
            precision,
        );
        out.set_len(len);
    }
    out
}

/// `x·Wᵀ (+ b)` into a new buffer, from the ops' storages (both trait impls).
fn forward(
    (sx, lx): (&CpuStorage, &Layout),
    (sw, lw): (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
    precision: ProductPrecision,
) -> Result<(CpuStorage, Shape)> {
    let (rows, inp, out, shape) = sizes(lx, lw)?;
    let (x, w) = (
        slice_f32(sx, lx, "linear x")?,
        slice_f32(sw, lw, "linear w")?,
    );
    let mut y = product((rows, out, inp), (x, inp, false), (w, inp, true), precision);
    if let Some((sb, lb)) = b {
        add_to_rows(&mut y, slice_f32(sb, lb, "linear bias")?);
    }
    Ok((CpuStorage::F32(y), shape))
}

/// `(dx, dW)` from the output gradient (both trait impls), products in `precision`.
fn input_and_weight_grads(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    precision: ProductPrecision,
) -> Result<(Tensor, Tensor)> {
    Ok((
        g.apply_op2_no_bwd(w, &InputGrad { precision })?
            .reshape(x.shape())?,
        g.apply_op2_no_bwd(
            x,
            &WeightGrad {
                inp: w.dim(1)?,
                precision,
            },
        )?,
    ))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward((sx, lx), (sw, lw), None, self.precision)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = input_and_weight_grads(x, w, &grad.contiguous()?, self.precision)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward((sx, lx), (sw, lw), Some((sb, lb)), self.precision)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let (dx, dw) = input_and_weight_grads(x, w, &g, self.precision)?;
        let db = g.apply_op1_no_bwd(&ColumnSum { d: w.dim(0)? })?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `gelu(x·Wᵀ + b)` (exact GELU) as one op: the MLP's first layer. `train`: a backward
/// follows, so the op keeps the pre-activation `x·Wᵀ + b` for it (when an input tracks a
/// gradient); otherwise GELU runs in place on the product and nothing is kept. A backward
/// that finds nothing kept recomputes the product. CPU, f32 only.
///
/// Why: as a linear op and a GELU op, the MLP's widest activation (`4·D` per token) took
/// one more graph node: another output buffer forward, and backward a zeroed gradient
/// buffer and an add for the product's output.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor, train: bool) -> Result<Tensor> {
    linear_gelu_in(x, w, b, train, ProductPrecision::F32)
}

/// [`linear_gelu`] with its products (forward and backward) in `precision`.
pub fn linear_gelu_in(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    train: bool,
    precision: ProductPrecision,
) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if x.dims().last() != Some(&inp) || b.dims() != [out] {
        candle_core::bail!(
            "linear_gelu: input {:?}, weight {:?}, bias {:?}",
            x.dims(),
            w.dims(),
            b.dims()
        );
    }
    let keep = train && (x.track_op() || w.track_op() || b.track_op());
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    x.apply_op3(
        &w,
        &b,
        LinearGeluOp {
            keep,
            kept: Stash::default(),
            precision,
        },
    )
}

struct LinearGeluOp {
    /// Keep the pre-activation for the backward.
    keep: bool,
    /// The forward's pre-activation, taken by the backward.
    kept: Stash,
    /// The products' precision.
    precision: ProductPrecision,
}

impl CustomOp3 for LinearGeluOp {
    fn name(&self) -> &'static str {
        "fused-linear-gelu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (pre, shape) = forward((sx, lx), (sw, lw), Some((sb, lb)), self.precision)?;
        let CpuStorage::F32(mut y) = pre else {
            candle_core::bail!("linear_gelu: f32 only");
        };
        if self.keep {
            let out = gelu_values(&y);
            self.kept.put(y);
            Ok((CpuStorage::F32(out), shape))
        } else {
            gelu_values_in_place(&mut y);
            Ok((CpuStorage::F32(y), shape))
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pre = match self.kept.take() {
            Some(pre) => Tensor::from_vec(pre, res.shape(), res.device())?,
            None => linear_in(&x.detach(), &w.detach(), Some(&b.detach()), self.precision)?,
        };
        let dpre = pre.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?;
        let (dx, dw) = input_and_weight_grads(x, w, &dpre, self.precision)?;
        let db = dpre.apply_op1_no_bwd(&ColumnSum { d: w.dim(0)? })?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `dx = dy·W`: `(rows, out) x (out, in)`, returned as `(rows, in)` (the caller reshapes).
struct InputGrad {
    precision: ProductPrecision,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "fused-linear-dx"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, inp) = lw.shape().dims2()?;
        let (g, w) = (
            slice_f32(sg, lg, "linear dy")?,
            slice_f32(sw, lw, "linear w")?,
        );
        let rows = g.len() / out.max(1);
        let dx = product(
            (rows, inp, out),
            (g, out, false),
            (w, inp, false),
            self.precision,
        );
        Ok((CpuStorage::F32(dx), Shape::from((rows, inp))))
    }
}

/// `dW = dyᵀ·x`: `(out, rows) x (rows, in)`.
struct WeightGrad {
    inp: usize,
    precision: ProductPrecision,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "fused-linear-dw"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sx: &CpuStorage,
        lx: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let inp = self.inp;
        let (g, x) = (
            slice_f32(sg, lg, "linear dy")?,
            slice_f32(sx, lx, "linear x")?,
        );
        let rows = x.len() / inp.max(1);
        let out = g.len() / rows.max(1);
        let dw = product(
            (out, inp, rows),
            (g, out, true),
            (x, inp, false),
            self.precision,
        );
        Ok((CpuStorage::F32(dw), Shape::from((out, inp))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::max_abs_diff;
    use crate::precision::rounded_tensor as rounded;
    use candle_core::{Device, Var};

    #[test]
    fn equals_candle_matmul_forward_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (lead, inp, out, bias) in [
            (vec![2usize, 5], 7usize, 3usize, true),
            (vec![9], 16, 33, false),
            (vec![1, 1, 4], 1, 5, true),
            (vec![3, 2], 64, 40, true),
        ] {
            let mut xdims = lead.clone();
            xdims.push(inp);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, xdims.as_slice(), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (out, inp), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, out, &dev)?)?;
            let bias_t = bias.then(|| b.as_tensor());
            let fused = linear(x.as_tensor(), w.as_tensor(), bias_t)?;
            let rows = x.elem_count() / inp;
            let mut reference = x.reshape((rows, inp))?.matmul(&w.t()?)?;
            if bias {
                reference = reference.broadcast_add(b.as_tensor())?;
            }
            let mut ydims = lead.clone();
            ydims.push(out);
            let reference = reference.reshape(ydims.as_slice())?;
            assert_eq!(fused.dims(), reference.dims());
            assert!(max_abs_diff(&fused, &reference) < 1e-5);
            let probe = Tensor::randn(0f32, 1.0, ydims.as_slice(), &dev)?;
            let gf = (fused * &probe)?.sum_all()?.backward()?;
            let gr = (reference * &probe)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                if name == "b" && !bias {
                    assert!(gf.get(v).is_none());
                    continue;
                }
                let (a, r) = (gf.get(v).expect("fused grad"), gr.get(v).expect("ref grad"));
                assert_eq!(a.dims(), r.dims(), "{name}");
                let diff = max_abs_diff(a, r);
                assert!(diff < 1e-4, "{name} gradient differs by {diff}");
            }
        }
        Ok(())
    }

    /// A layer's variables `x (lead, inp)`, `w (out, inp)`, `b (out)` and a probe
    /// `(lead, out)` to take gradients through.
    fn layer(lead: (usize, usize), inp: usize, out: usize) -> Result<(Var, Var, Var, Tensor)> {
        let dev = Device::Cpu;
        Ok((
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (lead.0, lead.1, inp), &dev)?)?,
            Var::from_tensor(&Tensor::randn(0f32, 0.3, (out, inp), &dev)?)?,
            Var::from_tensor(&Tensor::randn(0f32, 0.3, out, &dev)?)?,
            Tensor::randn(0f32, 1.0, (lead.0, lead.1, out), &dev)?,
        ))
    }

    #[test]
    fn linear_gelu_equals_linear_then_gelu() -> Result<()> {
        let (x, w, b, probe) = layer((3, 5), 24, 40)?;
        let reference =
            super::super::fused::gelu(&linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?)?;
        let gr = (&reference * &probe)?.sum_all()?.backward()?;
        for train in [true, false] {
            let fused = linear_gelu(x.as_tensor(), w.as_tensor(), b.as_tensor(), train)?;
            assert_eq!(max_abs_diff(&fused, &reference), 0.0, "train={train}");
            let loss = (fused * &probe)?.sum_all()?;
            // The first backward uses the kept pre-activation (train) or recomputes it; the
            // second always recomputes.
            for pass in 0..2 {
                let gf = loss.backward()?;
                for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                    let diff = max_abs_diff(gf.get(v).expect("fused"), gr.get(v).expect("ref"));
                    assert_eq!(diff, 0.0, "{name}: train={train}, backward {pass}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bf16_products_are_f32_products_of_rounded_operands() -> Result<()> {
        let (x, w, b, probe) = layer((2, 7), 48, 40)?;
        let (x2, xr, wr) = (
            x.reshape((14, 48))?,
            rounded(&x.reshape((14, 48))?)?,
            rounded(w.as_tensor())?,
        );
        let want = xr.matmul(&wr.t()?)?.broadcast_add(b.as_tensor())?;
        // Gradients: dy rounded, times the rounded other operand; db the f32 column sum.
        let dy = probe.reshape((14, 40))?;
        let dyr = rounded(&dy)?;
        let want_dx = dyr.matmul(&wr)?;
        let want_dw = dyr.t()?.matmul(&xr)?;
        let want_db = dy.sum(0)?;
        let y = linear_in(
            x.as_tensor(),
            w.as_tensor(),
            Some(b.as_tensor()),
            ProductPrecision::Bf16,
        )?;
        assert!(max_abs_diff(&y.reshape((14, 40))?, &want) < 1e-5);
        // Not the f32 layer: the rounding shows.
        let f32_y = linear(&x2, w.as_tensor(), Some(b.as_tensor()))?;
        assert!(max_abs_diff(&f32_y, &want) > 1e-4);
        let g = (y * &probe)?.sum_all()?.backward()?;
        let dx = g.get(&x).expect("dx").reshape((14, 48))?;
        assert!(max_abs_diff(&dx, &want_dx) < 1e-5);
        assert!(max_abs_diff(g.get(&w).expect("dw"), &want_dw) < 1e-4);
        assert!(max_abs_diff(g.get(&b).expect("db"), &want_db) < 1e-5);
        // The fused GELU layer: the same products, then GELU.
        let h = linear_gelu_in(
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            true,
            ProductPrecision::Bf16,
        )?;
        let want_h = crate::fused::gelu(&want)?;
        assert!(max_abs_diff(&h.reshape((14, 40))?, &want_h) < 1e-5);
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let z = |d: &[usize]| Tensor::zeros(d, candle_core::DType::F32, &dev).expect("zeros");
        assert!(linear(&z(&[2, 3]), &z(&[4, 5]), None).is_err());
        assert!(linear(&z(&[2, 5]), &z(&[4, 5]), Some(&z(&[3]))).is_err());
    }
}
