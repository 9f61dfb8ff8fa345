//! The documentation a cache file carries in its own footer, for users of other tools
//! (pyarrow, pandas, DuckDB): a description of every column (Arrow field metadata key
//! [`DESCRIPTION_KEY`]), how to rebuild the teacher's probabilities ([`DOC_KEY`]), what
//! each hash of the binding is ([`HASHES_KEY`]) and the class names ([`CLASS_NAMES_KEY`]).

use super::col;

/// Arrow field metadata key holding a column's description.
pub const DESCRIPTION_KEY: &str = "description";
/// Footer key: how to read the file and rebuild the probabilities (plain text).
pub const DOC_KEY: &str = "deit_pipe.doc";
/// Footer key: what each hash / fingerprint of the binding is (JSON object).
pub const HASHES_KEY: &str = "deit_pipe.hashes";
/// Footer key: the class names, index = class id (JSON array of strings).
pub const CLASS_NAMES_KEY: &str = "deit_pipe.class_names";

/// The description stored with column `name` (empty for an unknown name).
pub fn column_description(name: &str) -> &'static str {
    match name {
        col::EPOCH => "Training epoch of the view (constant within a file).",
        col::SLOT => {
            "Position of the view in the epoch's plan (0-based, strictly increasing within a \
             file; slots 2p and 2p+1 are the two views mixed together in pair p)."
        }
        col::SAMPLE => "Data set index of the image shown in this view (0-based, < dataset_len).",
        col::PARTNER => {
            "Data set index of the Mixup/CutMix partner image (= sample when the view is not \
             mixed; < dataset_len)."
        }
        col::LAM => "Mixup/CutMix weight of `sample`, in [0, 1] (1.0 when not mixed).",
        col::VIEW_HASH => {
            "64-bit hash of the exact float32 pixels the teacher saw (the trainer rebuilds the \
             view and compares)."
        }
        col::TOPK_IDS => {
            "The K class ids of the teacher's highest logits, highest first (ties to the lower \
             id); element 0 is the argmax over all classes = the hard label. Names: footer key \
             deit_pipe.class_names."
        }
        col::TOP1_LOGIT => {
            "The teacher's highest logit l_0 (float16). Only differences matter for \
             probabilities."
        }
        col::LOGIT_GAPS => {
            "K-1 values l_0 - l_i for i = 1..K-1 (float16, >= 0, non-decreasing): logit i is \
             top1_logit - logit_gaps[i-1]."
        }
        col::LSE_GAP => {
            "lse - l_0 (float16, >= 0), where lse = log(sum over all C classes of exp(logit)) \
             of the teacher's full logit vector."
        }
        _ => "",
    }
}

/// The footer's [`DOC_KEY`] text.
pub fn doc_text() -> String {
    format!(
        "deit-pipe teacher cache: one row per augmented training view (epoch, slot) with the \
teacher's top-K answer. Footer key deit_pipe.teacher_cache (JSON) holds the binding (top_k = \
K, num_classes = C, hashes: see deit_pipe.hashes) and epoch/part/epoch_slots/dataset_len; every \
column has a description in its Arrow field metadata (key \"{DESCRIPTION_KEY}\").\n\
Probabilities (temperature 1), computed in float32 from the float16 columns: \
logit_0 = top1_logit; logit_i = top1_logit - logit_gaps[i-1] (i = 1..K-1); \
lse = top1_logit + lse_gap; p(class topk_ids[i]) = exp(logit_i - lse). \
The other C-K classes share the remaining mass 1 - sum_i p_i (deit-pipe spreads it uniformly; \
at temperature tau it gives every tail class the logit lse + ln((1 - sum_i p_i) / (C-K)) and \
takes softmax(logit / tau) over all C classes). Stored values are one float16 rounding of the \
exact differences, so each log-probability is within 2^-11 * (l_0 - l_i + ln C) of the teacher's.\n\
Checksums: footer key {key} holds BLAKE3 digests of every byte of the file (data, footer, slot \
column); deit-pipe refuses a file whose digests differ.",
        key = super::integrity::INTEGRITY_KEY
    )
}

/// The footer's [`HASHES_KEY`] JSON.
pub fn hashes_json() -> String {
    serde_json::json!({
        "dataset_fingerprint": "Fingerprint of the training shards: the `fingerprint` of the \
            split's manifest.json written by `deit-pipe shard` (BLAKE3, hex, over the class names \
            and the BLAKE3 digest of every shard).",
        "augment_config_hash": "XXH3-64 (16 hex digits) of augment_config_json, the canonical JSON of the \
            training augmentation config.",
        "teacher_weights_hash": "BLAKE3 (hex) of the bytes of the teacher weights file.",
        "teacher_arch": "timm-style model name of the teacher.",
        "pipeline_version": "Version of deit-pipe's plan/view algorithms and seed scheme: \
            another value means other views from the same seeds.",
        "view_hash": "Column: 64-bit hash of the exact float32 pixels of a view.",
        "deit_pipe.integrity": "BLAKE3 (hex) of the file's bytes: `data` = bytes before the \
            footer, `footer` = the footer with this value's 212 bytes replaced by ASCII '0', \
            `slots` = the slot column chunks in row-group order."
    })
    .to_string()
}
