//! Helpers shared by the end-to-end tests that drive the `deit-pipe` binary: starting
//! it, running a command that must succeed or fail, generating a small sharded data set,
//! and reading a run's weights back.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod hostile;

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
}

/// Runs `cmd --quiet`, which must succeed; its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.arg("--quiet").output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd --quiet`, which must fail; its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.arg("--quiet").output().expect("runs");
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A shipped recipe, `configs/NAME`.
pub fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name)
}

/// `synth` (extra arguments `synth_args`, e.g. class and image counts) into
/// `root/folder`, then raw 40 px shards in `root/shards`, which it returns.
pub fn synth_shards(root: &Path, synth_args: &[&str]) -> PathBuf {
    let folder = root.join("folder");
    let data = root.join("shards");
    run_ok(
        bin()
            .arg("synth")
            .args(synth_args)
            .arg("--out")
            .arg(&folder),
    );
    run_ok(
        bin()
            .args(["shard", "--max-side", "40", "--format", "raw"])
            .arg("--input")
            .arg(&folder)
            .arg("--out")
            .arg(&data),
    );
    data
}

/// The model weights of a run's last checkpoint.
pub fn last_model(run: &Path) -> PathBuf {
    let ptr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("last.json")).unwrap()).unwrap();
    run.join(ptr["dir"].as_str().unwrap())
        .join("model.safetensors")
}

/// A safetensors file's tensors.
pub fn load(path: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

/// Largest |a - b| of two tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest |a - b| over every tensor of two weight files (the same names required).
pub fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (load(a), load(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, x)| max_abs_diff(x, b.get(name).unwrap_or_else(|| panic!("{name} missing"))))
        .fold(0f32, f32::max)
}
