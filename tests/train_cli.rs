//! `deit-pipe train / eval / report` end to end through the binary: a kill (abort) in the
//! middle of epoch 2 and `--resume` end with the same weights as a straight run; the
//! report and eval commands read the run; refusals name what is wrong.

mod common;

use common::{bin, last_model, run_ok, synth_shards};
use std::path::{Path, PathBuf};
use std::process::Command;

/// 4 classes x 12 train / 4 val images.
fn shards(root: &Path) -> PathBuf {
    synth_shards(
        root,
        &[
            "--classes",
            "4",
            "--train-per-class",
            "12",
            "--val-per-class",
            "4",
        ],
    )
}

/// [`train_cmd`] for one epoch.
fn one_epoch(data: &Path, out: &Path) -> Command {
    let mut c = train_cmd(data, out);
    c.args(["--set", "schedule.epochs=1"]);
    c
}

/// `deit-pipe eval --weights RUN --data DATA --json EXTRA...`, run to success, its JSON.
fn eval_json(run: &Path, data: &Path, extra: &[&str]) -> serde_json::Value {
    let ev = run_ok(
        bin()
            .arg("eval")
            .arg("--weights")
            .arg(run)
            .arg("--data")
            .arg(data)
            .arg("--json")
            .args(extra),
    );
    serde_json::from_slice(&ev.stdout).unwrap()
}

fn train_cmd(data: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.arg("train")
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/small_image.toml"
        ))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--epochs",
            "2",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "8",
            "--model-ema",
        ])
        .args(["--set", "model.depth=2", "--set", "model.embed_dim=48"])
        .args([
            "--set",
            "run.max_batches_per_epoch=3",
            "--set",
            "data.workers=2",
        ]);
    c
}

#[test]
fn kill_and_resume_equals_straight_run_and_report_eval_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());

    let straight = tmp.path().join("straight");
    run_ok(&mut train_cmd(&data, &straight));

    // Abort right after step 4 (the first step of epoch 2): a crash, no clean-up.
    let killed = tmp.path().join("killed");
    let out = train_cmd(&data, &killed)
        .arg("--quiet")
        .env("DEIT_PIPE_ABORT_AT_STEP", "4")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the abort hook did not fire");
    run_ok(train_cmd(&data, &killed).arg("--resume"));

    let a =
        candle_core::safetensors::load(last_model(&straight), &candle_core::Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(last_model(&killed), &candle_core::Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let y = &b[name];
        let d = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(
            d.to_scalar::<f32>().unwrap(),
            0.0,
            "{name} differs after kill + resume"
        );
    }

    // A second run into the same directory without --resume is refused.
    let out = train_cmd(&data, &straight).arg("--quiet").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    let rep = run_ok(bin().arg("report").arg(&killed));
    let text = String::from_utf8_lossy(&rep.stdout);
    assert!(text.contains("top1_cls"), "{text}");
    assert!(killed.join("report.png").is_file());

    let v = eval_json(&killed, &data, &[]);
    assert_eq!(v["images"], 16);
    assert!(v["top1_dist"].is_number());
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["--quiet", "train", "--device", "cuda"])
        .arg("--data")
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features cuda"), "{err}");
}

#[test]
fn the_kernels_isa_is_recorded_and_a_bad_cap_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    // Capped at the scalar level (every host has it): config.toml names the host and
    // the cap, every metrics record the level the kernels ran at.
    let run = tmp.path().join("scalar");
    run_ok(one_epoch(&data, &run).env("DEIT_PIPE_ISA", "scalar"));
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let host = cfg
        .lines()
        .find(|l| l.starts_with("# written on host: "))
        .unwrap_or_else(|| panic!("no host line in config.toml:\n{cfg}"));
    assert!(host.contains("isa scalar"), "{host}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 2, "{metrics}");
    for r in &records {
        assert_eq!(r["isa"], "scalar", "{r}");
    }
    // The config still reads back (the host line is a comment).
    assert_eq!(eval_json(&run, &data, &[])["images"], 16);
    // A cap that names no level is refused before anything runs, naming the variable.
    let out = bin()
        .env("DEIT_PIPE_ISA", "avx1024")
        .args(["--quiet", "bench", "model", "--model", "deit_tiny"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DEIT_PIPE_ISA") && err.contains("avx1024") && err.contains("avx2"),
        "{err}"
    );
}

#[test]
fn precision_flag_is_recorded_and_refused_for_convnets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    // bf16 mixed precision for the DeiT student (on the CPU here), recorded in config.toml.
    let run = tmp.path().join("bf16");
    run_ok(one_epoch(&data, &run).args(["--precision", "bf16"]));
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("precision = \"bf16\""), "{cfg}");
    let v = eval_json(&run, &data, &["--precision", "f32"]);
    assert_eq!(v["images"], 16);
    assert!(v["loss"].as_f64().unwrap().is_finite());

    // ConvNets compute in f32 only: bf16 is refused before anything is written.
    let rn = tmp.path().join("resnet");
    let out = bin()
        .args([
            "--quiet",
            "train",
            "--model",
            "resnet_tiny",
            "--precision",
            "bf16",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&rn)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("f32 only") && err.contains("resnet_tiny"),
        "{err}"
    );
    assert!(!rn.join("config.toml").exists());
}
