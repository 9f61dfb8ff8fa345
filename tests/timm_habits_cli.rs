//! `deit-pipe train` for a timm / DeiT main.py user (issue 18, items 3, 4, 6): main.py's
//! flags (`--finetune`, `--resume FILE.pth`, `--opt`, `--sched`, `--opt-betas`,
//! `--cooldown-epochs`, the augmentation flags), refusals of silent no-ops, main.py's
//! `log.txt`, TensorBoard event files, and stderr without colour codes off a terminal.

mod common;

use common::{bin, load, max_abs_diff, run_err, run_ok, synth_shards};
use std::path::{Path, PathBuf};
use std::process::Command;

/// 4 classes x 8 train / 2 val images.
fn shards(root: &Path) -> PathBuf {
    synth_shards(
        root,
        &[
            "--classes",
            "4",
            "--train-per-class",
            "8",
            "--val-per-class",
            "2",
        ],
    )
}

/// A tiny DeiT (patch 8, width 24, depth 1, 2 heads: the main.py fixture's shape).
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
        .args(["--batch-size", "8", "--warmup-epochs", "0"])
        .args(["--set", "model.depth=1", "--set", "model.embed_dim=24"])
        .args([
            "--set",
            "run.max_batches_per_epoch=2",
            "--set",
            "data.workers=2",
        ]);
    c
}

fn best_model(run: &Path) -> PathBuf {
    trainer::train::checkpoint::resolve_weights(run, false).unwrap()
}

#[test]
fn help_shows_main_py_names_and_refuses_what_is_not_implemented() {
    let out = bin().args(["train", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--distillation-type",
        "--teacher-path",
        "--teacher-model",
        "--finetune",
        "--resume [<PATH>]",
        "--opt <NAME>",
        "--opt-betas",
        "--sched",
        "--cooldown-epochs",
        "--eval-crop-ratio",
        "--remode",
        "--recount",
        "--train-interpolation",
        "--color-jitter",
        "--tensorboard",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let base = |extra: &[&str]| {
        let mut c = bin();
        c.arg("train")
            .arg("--data")
            .arg(tmp.path())
            .arg("--out")
            .arg(&out);
        c.args(extra);
        c
    };
    for (args, want) in [
        (&["--opt", "sgd"][..], "AdamW only"),
        (&["--sched", "step"][..], "cosine"),
        (&["--opt-betas", "0.9", "1.5"][..], "opt_betas"),
        (
            &["--aa", "none", "--color-jitter", "0.4"][..],
            "ColorJitter",
        ),
        (&["--train-interpolation", "random"][..], "random"),
        (&["--remode", "weird"][..], "weird"),
        (
            &[
                "--finetune",
                "x.pth",
                "--resume",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/trainer/tests/fixtures/mainpy/checkpoint.pth"
                ),
            ][..],
            "give one",
        ),
    ] {
        let e = run_err(&mut base(args));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

#[test]
fn a_teacher_that_would_do_nothing_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut c = bin();
    c.arg("train")
        .arg("--data")
        .arg(tmp.path())
        .arg("--out")
        .arg(&out);
    let e = run_err(
        c.arg("--teacher")
            .arg(tmp.path())
            .args(["--distillation", "none"]),
    );
    assert!(
        e.contains("--distillation none") && e.contains("never be used"),
        "{e}"
    );
    let mut c = bin();
    c.arg("train")
        .arg("--data")
        .arg(tmp.path())
        .arg("--out")
        .arg(&out);
    let e = run_err(
        c.arg("--teacher-path")
            .arg(tmp.path().join("missing.pth"))
            .args(["--distillation-type", "hard"]),
    );
    assert!(
        e.contains("missing.pth") && e.contains("no such file"),
        "{e}"
    );
    assert!(!out.exists());
}

/// Reads the TFRecord stream of an event file (checking both CRCs) and returns the
/// records' payloads.
fn tfrecords(bytes: &[u8]) -> Vec<Vec<u8>> {
    use trainer::train::tensorboard::masked_crc;
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap());
        assert_eq!(crc, masked_crc(len_bytes));
        let data = &bytes[i + 12..i + 12 + len];
        let dcrc = u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap());
        assert_eq!(dcrc, masked_crc(data));
        out.push(data.to_vec());
        i += 16 + len;
    }
    out
}

#[test]
fn main_py_flags_log_txt_and_tensorboard() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let run = tmp.path().join("run");
    let out = train_cmd(&data, &run)
        .args([
            "--epochs",
            "1",
            "--cooldown-epochs",
            "2",
            "--min-lr",
            "1e-5",
        ])
        .args([
            "--opt",
            "adamw",
            "--sched",
            "cosine",
            "--opt-betas",
            "0.8",
            "0.99",
        ])
        .args(["--remode", "const", "--recount", "2"])
        .args([
            "--train-interpolation",
            "bilinear",
            "--eval-crop-ratio",
            "0.9",
        ])
        .args(["--color-jitter", "0.4", "--tensorboard"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // stderr is a pipe here: log lines without ANSI colour codes.
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes on a pipe:\n{stderr}"
    );
    assert!(
        stderr.contains("img/s") && !stderr.contains(".0 img/s"),
        "{stderr}"
    );

    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for want in [
        "opt_betas = [\n    0.8,\n    0.99,\n]",
        "cooldown_epochs = 2",
        "mode = \"const\"",
        "count = 2",
        "interpolation = \"bilinear\"",
        "eval_crop_pct = 0.9",
    ] {
        assert!(cfg.contains(want), "config.toml lacks {want}:\n{cfg}");
    }

    // log.txt: main.py's keys, in its order, one line per epoch (1 + 2 cooldown).
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    for (i, l) in lines.iter().enumerate() {
        let keys: Vec<&str> = l.split("\"").skip(1).step_by(2).collect();
        assert_eq!(
            keys,
            [
                "train_lr",
                "train_loss",
                "test_loss",
                "test_acc1",
                "test_acc5",
                "epoch",
                "n_parameters"
            ],
            "{l}"
        );
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["epoch"], i as u64);
        assert!(v["n_parameters"].as_u64().unwrap() > 1000);
        assert!((0.0..=100.0).contains(&v["test_acc1"].as_f64().unwrap()));
    }
    // The cooldown's last epoch runs at the schedule's floor.
    let last: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(last["train_lr"].as_f64().unwrap(), 1e-5);

    // TensorBoard: one event file, valid records, the epoch scalars by tag.
    let tb: Vec<PathBuf> = std::fs::read_dir(run.join("tb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tb.len(), 1);
    assert!(tb[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("events.out.tfevents."));
    let records = tfrecords(&std::fs::read(&tb[0]).unwrap());
    assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
    let with_tag = |tag: &[u8]| {
        records
            .iter()
            .filter(|r| r.windows(tag.len()).any(|w| w == tag))
            .count()
    };
    assert_eq!(with_tag(b"test/acc1"), 3);
    assert_eq!(with_tag(b"train/lr"), 3);
    assert!(with_tag(b"step/loss") >= 3);
}

#[test]
fn finetune_drops_the_head_and_resamples_pos_embed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let pre = tmp.path().join("pretrained");
    run_ok(train_cmd(&data, &pre).args(["--epochs", "1", "--nb-classes", "6"]));
    // Fine-tune at 48 px (grid 6x6 instead of 4x4) on the 4 classes, with an lr so
    // small that the weights stay the loaded ones.
    let ft = tmp.path().join("finetuned");
    let out = train_cmd(&data, &ft)
        .args(["--epochs", "1", "--input-size", "48", "--lr", "1e-12"])
        .args(["--min-lr", "0", "--warmup-lr", "0", "--weight-decay", "0"])
        .arg("--finetune")
        .arg(&pre)
        .arg("--quiet")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("removing head.weight"), "{stderr}");
    assert!(stderr.contains("from a 4x4 to a 6x6 grid"), "{stderr}");
    let a = load(&best_model(&pre));
    let b = load(&best_model(&ft));
    assert_eq!(a["head.weight"].dims(), &[6, 24]);
    assert_eq!(b["head.weight"].dims(), &[4, 24]);
    let qkv = "blocks.0.attn.qkv.weight";
    assert!(max_abs_diff(&a[qkv], &b[qkv]) < 1e-6);
    let want =
        trainer::train::mainpy::finetune::resample_pos_embed_mainpy(&a["pos_embed"], 2, 6).unwrap();
    assert!(max_abs_diff(&b["pos_embed"], &want) < 1e-6);
    // The recipe records where the weights came from.
    let cfg = std::fs::read_to_string(ft.join("config.toml")).unwrap();
    assert!(cfg.contains("finetune = "), "{cfg}");
}

#[test]
fn resume_from_a_main_py_checkpoint_continues_at_its_next_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let run = tmp.path().join("run");
    let ckpt = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/trainer/tests/fixtures/mainpy/checkpoint.pth"
    );
    let out = run_ok(
        train_cmd(&data, &run)
            .args(["--epochs", "3", "--model-ema", "--model-ema-decay", "0.9"])
            .args(["--resume", ckpt]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 3 optimizer steps in the checkpoint, 2 here (epoch 2 of 2 batches).
    assert!(stdout.contains("trained 3 epochs (5 steps)"), "{stdout}");
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    let epochs: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, vec![2], "{log}");
    // Another architecture than the checkpoint's is refused, naming the tensor.
    let e = run_err(train_cmd(&data, &tmp.path().join("other")).args([
        "--set",
        "model.embed_dim=32",
        "--resume",
        ckpt,
    ]));
    assert!(e.contains("pos_embed") || e.contains("cls_token"), "{e}");
}
