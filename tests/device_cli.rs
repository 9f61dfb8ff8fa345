//! `--device` of `deit-pipe bench model` and `deit-pipe predict` through the binary: the
//! CPU path runs; a build without the `cuda` feature refuses `--device cuda` with the
//! same clear error as `deit-pipe train`; an unknown device name is refused.

use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
}

fn run(args: &[&str]) -> Output {
    bin().arg("--quiet").args(args).output().expect("runs")
}

const BENCH_SMALL: &[&str] = &[
    "bench",
    "model",
    "--model",
    "deit_custom",
    "--img",
    "16",
    "--patch",
    "8",
    "--dim",
    "32",
    "--depth",
    "1",
    "--heads",
    "2",
    "--num-classes",
    "4",
    "--batch",
    "2",
    "--iters",
    "1",
];

const PREDICT: &[&str] = &[
    "predict",
    "--model",
    "deit_tiny_distilled_patch16_224",
    "--weights",
    "no-such-weights.safetensors",
    "no-such-image.png",
];

#[test]
fn bench_model_runs_on_the_cpu() {
    let out = run(&[BENCH_SMALL, &["--device", "cpu"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("forward (eval):"), "{text}");
    assert!(text.contains("train step (fwd+bwd+AdamW):"), "{text}");
    assert!(text.contains("peak resident memory:"), "{text}");
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    for args in [BENCH_SMALL, PREDICT] {
        let out = run(&[args, &["--device", "cuda"]].concat());
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features cuda"), "{args:?}: {err}");
    }
}

#[test]
fn unknown_device_is_refused() {
    for args in [BENCH_SMALL, PREDICT] {
        let out = run(&[args, &["--device", "tpu"]].concat());
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("expected cpu, cuda or cuda:N"),
            "{args:?}: {err}"
        );
    }
}
