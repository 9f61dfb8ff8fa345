//! CPU compute kernels for deit-pipe's models: our f32 GEMM ([`sgemm`]), the
//! convolution as im2col + GEMM ([`conv_gemm`]), the linear layer as one product
//! ([`linear_op`]), DeiT's attention ([`attention`]), and fused element-wise, norm and
//! softmax ops ([`fused`], [`fused_bn`]), each a candle `CustomOp` with a hand-written
//! backward. [`isa`] picks each kernel's instruction set at run time (AVX512-BF16, AVX-512,
//! AVX2 or none; `DEIT_PIPE_ISA` caps it). CPU and f32 tensors only, the products optionally on
//! bf16-rounded operands ([`precision`]); [`fused::enabled`] tells a caller when to use them,
//! [`fused::set_enabled`] switches them off so tests and benchmarks can compare them
//! with candle's composite ops.
//!
//! It must not hold model structure (layers, parameters, `VarBuilder`s: that is
//! `trainer::models`), read or write weights or any file, or hold training logic, and it
//! depends on none of deit-pipe's other crates.

pub mod attention;
pub mod conv_gemm;
pub mod fused;
pub mod fused_bn;
pub mod isa;
pub mod linear_op;
pub mod precision;
pub mod sgemm;

/// The kernels this process runs, for reports: `gemm avx512 12x32, element-wise avx512`
/// (`gemm crate` where [`sgemm`] has no kernel).
pub fn chosen() -> String {
    let gemm = match sgemm::kernel() {
        Some(k) => k.describe().to_string(),
        None => "gemm crate".to_string(),
    };
    // The element-wise kernels have no bf16 instructions: AVX-512 at both AVX-512 levels.
    let elementwise = isa::active().min(isa::Isa::Avx512);
    format!("gemm {gemm}, element-wise {elementwise}")
}
