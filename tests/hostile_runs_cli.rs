//! Issue 25, runs and outputs through the real binary: two processes on one output (the
//! second is refused naming the first's pid; a killed holder blocks nothing), forged run
//! markers, and checkpoints changed after they were written (a flipped bit, an impossible
//! position, a pointer out of the run). Every refusal is exit 1 with the file named.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::hostile::{bin, p, run_err, run_ok, run_ok_output};

/// Synth (2 classes, 3 train + 1 val each) and raw 40 px shards; (folder, shards).
fn data(tmp: &Path) -> (PathBuf, PathBuf) {
    let folder = tmp.join("folder");
    run_ok(&[
        "synth",
        "--out",
        p(&folder),
        "--classes",
        "2",
        "--train-per-class",
        "3",
        "--val-per-class",
        "1",
        "--seed",
        "3",
    ]);
    let shards = tmp.join("shards");
    run_ok(&[
        "shard",
        "--input",
        p(&folder),
        "--out",
        p(&shards),
        "--format",
        "raw",
        "--max-side",
        "40",
    ]);
    (folder, shards)
}

fn train_args<'a>(data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/configs/small_image.toml"),
        "--data",
        p(data),
        "--out",
        p(out),
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--batch-size",
        "4",
        "--set",
        "model.depth=1",
        "--set",
        "model.embed_dim=48",
    ]
}

fn lock_holder(dir: &Path) -> Option<u32> {
    formats::lock::recorded_holder(dir, formats::lock::LOCK_FILE)
}

/// Two `train` on one `--out`: the second is refused naming the first's pid and writes
/// nothing; after the first is killed with SIGKILL, its lock blocks nobody.
#[test]
fn a_second_train_on_one_out_is_refused_and_a_killed_holder_frees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, shards) = data(tmp.path());
    let out = tmp.path().join("run");
    let mut first = bin()
        .args(train_args(&shards, &out))
        .env("DEIT_PIPE_STALL_AT_STEP", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    // Wait (bounded) until the first run holds the folder and has trained a step.
    let start = Instant::now();
    while !(lock_holder(&out) == Some(pid) && out.join("metrics.jsonl").exists()) {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first train ended early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the first train never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for resume in [false, true] {
        let mut args = train_args(&shards, &out);
        if resume {
            args.push("--resume");
        }
        let e = run_err(&args);
        assert!(
            e.contains(&format!("already in use by pid {pid}"))
                && e.contains(&out.join(formats::lock::LOCK_FILE).display().to_string()),
            "{e}"
        );
    }
    // SIGKILL: the kernel drops the lock with the process; the file stays.
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(lock_holder(&out), Some(pid));
    let mut args = train_args(&shards, &out);
    args.push("--resume");
    run_ok(&args);
    assert_ne!(lock_holder(&out), Some(pid));
}

/// `teacher-cache` (per part) and `shard` (per split) refuse a folder another process
/// holds, naming its pid; another part of the same cache is not blocked by the lock.
#[test]
fn teacher_cache_and_shard_refuse_a_held_output() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let me = std::process::id();
    let held = formats::lock::OutputLock::acquire(&cache, formats::lock::LOCK_FILE).unwrap();
    let cache_args = |part: &'static str| {
        vec![
            "teacher-cache".to_string(),
            "--data".into(),
            p(&tmp.path().join("no-data")).into(),
            "--teacher".into(),
            p(&tmp.path().join("no-teacher")).into(),
            "--config".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/small_image.toml").into(),
            "--epochs".into(),
            "0".into(),
            "--part".into(),
            part.into(),
            "--out".into(),
            p(&cache).into(),
        ]
    };
    let args = cache_args("1/1");
    let e = run_err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains(&format!("already in use by pid {me}")), "{e}");
    // Part 2 of 3 has its own lock: it gets past it (and stops at the missing teacher).
    let args = cache_args("2/3");
    let e = run_err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !e.contains("already in use") && e.contains("no-teacher"),
        "{e}"
    );
    drop(held);

    let (folder, _) = data(tmp.path());
    let shards = tmp.path().join("shards2");
    let held =
        formats::lock::OutputLock::acquire(&shards.join("val"), formats::lock::LOCK_FILE).unwrap();
    let args = [
        "shard",
        "--input",
        p(&folder),
        "--out",
        p(&shards),
        "--format",
        "raw",
    ];
    let e = run_err(&args);
    assert!(
        e.contains(&format!("already in use by pid {me}")) && e.contains("val"),
        "{e}"
    );
    // Every split is locked before any is written.
    assert!(!shards.join("train/manifest.json").exists());
    drop(held);
    run_ok(&args);
}

/// A `.deit-pipe-run` marker of any content no longer lets `train` write into a folder.
#[test]
fn a_forged_run_marker_does_not_open_a_users_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let user = tmp.path().join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join(".deit-pipe-run"), "anything").unwrap();
    std::fs::write(user.join("metrics.jsonl"), "{\"mine\": 1}\n").unwrap();
    let e = run_err(&train_args(tmp.path(), &user));
    assert!(
        e.contains(&user.join(".deit-pipe-run").display().to_string())
            && e.contains("not written by deit-pipe"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(user.join("metrics.jsonl")).unwrap(),
        "{\"mine\": 1}\n"
    );
    assert_eq!(std::fs::read_dir(&user).unwrap().count(), 2);
}

/// The checkpoint folder `last.json` names.
fn last_checkpoint(run: &Path) -> PathBuf {
    let ptr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("last.json")).unwrap()).unwrap();
    run.join(ptr["dir"].as_str().unwrap())
}

/// Checkpoints changed after they were written: a flipped bit in the weights (resume and
/// eval refuse it naming the file), an epoch of 2^63 in `state.json` (refused, not
/// "resumed" doing nothing), a `last.json` that points out of the run (refused). A
/// checkpoint without digests (written before them) is used with a warning.
#[test]
fn changed_checkpoints_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, shards) = data(tmp.path());
    let out = tmp.path().join("run");
    run_ok(&train_args(&shards, &out));
    let ck = last_checkpoint(&out);
    let model = ck.join("model.safetensors");
    let original = std::fs::read(&model).unwrap();
    let mut resume = train_args(&shards, &out);
    resume.push("--resume");
    let resume_ro: Vec<&str> = resume.clone();
    let eval = ["eval", "--weights", p(&out), "--data", p(&shards)];

    // One bit of the weights flipped (deep inside the tensor data).
    let mut flipped = original.clone();
    let at = flipped.len() - 7;
    flipped[at] ^= 0x10;
    std::fs::write(&model, &flipped).unwrap();
    for args in [&resume_ro[..], &eval[..]] {
        let e = run_err(args);
        assert!(
            e.contains(&model.display().to_string()) && e.contains("differs"),
            "{args:?}: {e}"
        );
    }
    std::fs::write(&model, &original).unwrap();
    run_ok(&eval);

    // An impossible position, whatever the digests say.
    let state_path = ck.join("state.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&state).unwrap();
    v["epoch"] = serde_json::json!(1u64 << 63);
    std::fs::write(&state_path, v.to_string()).unwrap();
    let e = run_err(&resume_ro);
    assert!(
        e.contains(&state_path.display().to_string()) && e.contains("past the schedule"),
        "{e}"
    );
    std::fs::write(&state_path, &state).unwrap();

    // A pointer out of the run.
    let last = out.join("last.json");
    let ptr = std::fs::read_to_string(&last).unwrap();
    let other = tmp.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    for dir in [p(&other).to_string(), "../elsewhere".to_string()] {
        std::fs::write(
            &last,
            serde_json::json!({"dir": dir, "epoch": 1, "global_step": 1}).to_string(),
        )
        .unwrap();
        let e = run_err(&resume_ro);
        assert!(
            e.contains("last.json") && e.contains("not a checkpoint folder"),
            "{dir}: {e}"
        );
    }
    std::fs::write(&last, &ptr).unwrap();

    // Written before digests: used, with a warning that says so.
    std::fs::remove_file(ck.join("digests.json")).unwrap();
    let o = run_ok_output(&resume_ro);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("without an integrity check"), "{stderr}");
}
