//! Column names of a cache file, in file order.

/// Epoch (UInt32, dictionary/RLE: constant within a file).
pub const EPOCH: &str = "epoch";
/// Slot (UInt32, delta-encoded: increasing within a file).
pub const SLOT: &str = "slot";
/// Sample index (UInt32, plain: zstd finds the plan's repeats).
pub const SAMPLE: &str = "sample";
/// Partner sample index (UInt32, plain).
pub const PARTNER: &str = "partner";
/// Mixing weight (Float32, plain: zstd finds the pairs that share one lam).
pub const LAM: &str = "lam";
/// View hash (UInt64, plain).
pub const VIEW_HASH: &str = "view_hash";
/// Top-K class ids (FixedSizeList<K> of the narrowest unsigned type, dictionary).
pub const TOPK_IDS: &str = "topk_ids";
/// Top-1 logit (Float16, byte-stream-split).
pub const TOP1_LOGIT: &str = "top1_logit";
/// Gaps `l_0 - l_i`, i = 1..K (FixedSizeList<K-1> of Float16); absent when K = 1.
pub const LOGIT_GAPS: &str = "logit_gaps";
/// `lse - l_0` (Float16, byte-stream-split).
pub const LSE_GAP: &str = "lse_gap";
