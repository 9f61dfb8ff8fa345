//! Data-parallel jobs over MPI, end to end through `mpirun -np 2` on this machine's
//! loopback (a build with `--features mpi`; `.ci/run` installs Open MPI and runs these).
//!
//! - 2 ranks x batch 8 train the same DeiT student as 1 rank x batch 16 (same seed, same
//!   global batch; Mixup/CutMix, repeated augmentation, drop path, hard distillation
//!   from the cache), up to the order of float sums;
//! - a 2-rank `teacher-cache` holds the same rows as the 1-process cache;
//! - a rank killed with SIGKILL mid-epoch stops the job (no hang), and `--resume` with 2
//!   ranks ends with the weights of an uninterrupted 2-rank run;
//! - a hung rank makes the others stop with a clear error after the collective timeout;
//! - a stopped rank is gone when the job ends, and when its launcher is killed;
//! - a 2-rank `teacher-cache` prints one summary on rank 0 and checks the parts; `train`
//!   refuses a rank whose cache holds another teacher than rank 0's;
//! - a binary without the feature under a launcher refuses to start.

#![cfg(feature = "mpi")]

mod common;

use common::{bin, config, last_model, max_weight_diff, run_ok, synth_shards};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_deit-pipe");

/// `mpirun -np N deit-pipe ...` over loopback, allowed as root (CI runs as root) and
/// with more ranks than cores.
fn mpirun(np: usize) -> Command {
    mpirun_program(np, Path::new(BIN))
}

/// `mpirun -np N PROGRAM ...`, as [`mpirun`].
fn mpirun_program(np: usize, program: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "-np",
        &np.to_string(),
    ])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    // Shared-memory transport without cross-memory attach (refused in containers).
    .env("OMPI_MCA_btl", "self,vader")
    .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    // One compute thread per rank: 2 ranks share this machine's 2 cores.
    .env("RAYON_NUM_THREADS", "1")
    .arg(program);
    c
}

/// A launcher wrapper, as a multi-node job script would be: every rank runs deit-pipe
/// with `--out DIR` replaced by `DIR/rankN` (node-local disks: no rank sees another's
/// files) and rank 1 with `RANK1_ARGS` added (e.g. another seed); with `PER_RANK_CWD`,
/// rank r runs in `$PER_RANK_CWD/rR` (relative paths name each machine's own copy).
fn per_rank_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("per-rank.sh");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
r="$OMPI_COMM_WORLD_RANK"
if [ -n "$PER_RANK_CWD" ]; then cd "$PER_RANK_CWD/r$r" || exit 1; fi
prev=""
for a in "$@"; do
  shift
  if [ "$prev" = "--out" ] && [ -n "$PER_RANK_OUT" ]; then
    set -- "$@" "$a/rank$r"
  else
    set -- "$@" "$a"
  fi
  prev="$a"
done
if [ "$r" = 1 ] && [ -n "$RANK1_ARGS" ]; then
  set -- "$@" $RANK1_ARGS
fi
exec "{BIN}" "$@"
"#
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// 4 classes x 16 train / 4 val images, raw 40 px shards.
fn shards(root: &Path) -> PathBuf {
    synth_shards(
        root,
        &[
            "--classes",
            "4",
            "--train-per-class",
            "16",
            "--val-per-class",
            "4",
            "--seed",
            "3",
        ],
    )
}

/// A DeiT student run's arguments (after `train`): the shipped small-image recipe
/// (Mixup/CutMix, RandAugment, erasing), 3 repeats, drop path 0.25, a small model.
fn student_args(cmd: &mut Command, data: &Path, out: &Path, batch: usize) {
    student_args_for(cmd, data, out, batch, 2);
}

/// [`student_args`] for `epochs` epochs.
fn student_args_for(cmd: &mut Command, data: &Path, out: &Path, batch: usize, epochs: usize) {
    cmd.arg("train")
        .arg("--config")
        .arg(config("small_image.toml"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--epochs", &epochs.to_string(), "--warmup-epochs", "1"])
        .args(["--batch-size", &batch.to_string(), "--drop-path", "0.25"])
        .args(["--set", "model.depth=2", "--set", "model.embed_dim=48"])
        .args(["--set", "plan.repeats=3", "--set", "data.workers=1"]);
}

fn cache_rows(dir: &Path, epochs: u32) -> Vec<formats::cache_schema::CachedTarget> {
    let cache = formats::cache_schema::TeacherCache::open_for_inspect(dir).unwrap();
    let mut rows = Vec::new();
    for e in 0..epochs {
        for r in cache.epoch_reader(e).unwrap() {
            rows.push(r.unwrap());
        }
    }
    rows
}

fn val_top1(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["val"]["top1"].as_f64())
        .collect()
}

#[test]
fn two_ranks_equal_one_rank_for_cache_and_student() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());

    // A teacher (briefly trained ResNet) to fill the caches.
    let teacher = tmp.path().join("teacher");
    run_ok(
        bin()
            .arg("train")
            .arg("--config")
            .arg(config("teacher_resnet_tiny.toml"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&teacher)
            .args(["--epochs", "1", "--batch-size", "16"])
            .args(["--set", "run.max_batches_per_epoch=2"]),
    );
    let cache_cmd = |c: &mut Command, out: &Path| {
        c.arg("teacher-cache")
            .arg("--data")
            .arg(&data)
            .arg("--teacher")
            .arg(&teacher)
            .arg("--config")
            .arg(config("small_image.toml"))
            .args([
                "--set",
                "plan.repeats=3",
                "--epochs",
                "0..2",
                "--top-k",
                "4",
            ])
            .arg("--out")
            .arg(out);
    };
    let (cache1, cache2) = (tmp.path().join("cache1"), tmp.path().join("cache2"));
    let mut c = bin();
    cache_cmd(&mut c, &cache1);
    run_ok(&mut c);
    let mut c = mpirun(2);
    cache_cmd(&mut c, &cache2);
    run_ok(&mut c);
    let parts: Vec<String> = std::fs::read_dir(&cache2)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    assert_eq!(parts.len(), 4, "2 epochs x 2 parts: {parts:?}");
    assert!(parts.iter().all(|n| n.contains(".part-")), "{parts:?}");
    let (rows1, rows2) = (cache_rows(&cache1, 2), cache_rows(&cache2, 2));
    assert!(!rows1.is_empty());
    assert_eq!(
        rows1, rows2,
        "the 2-rank cache differs from the 1-process cache"
    );

    // The student: 1 rank x batch 16 against 2 ranks x batch 8, hard distillation.
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let mut c = bin();
    student_args(&mut c, &data, &one, 16);
    c.args(["--distillation", "hard", "--teacher-targets"])
        .arg(&cache1)
        .env("RAYON_NUM_THREADS", "1");
    run_ok(&mut c);
    let mut c = mpirun(2);
    student_args(&mut c, &data, &two, 8);
    c.args(["--distillation", "hard", "--teacher-targets"])
        .arg(&cache2);
    run_ok(&mut c);
    let diff = max_weight_diff(&last_model(&one), &last_model(&two));
    eprintln!("max weight difference, 2 ranks x 8 against 1 rank x 16: {diff:e}");
    // Measured 2026-12-05: 8e-9 (float sums in another order); weights are O(0.01-1).
    // The bound holds for this short run only: the difference grows with the number of
    // AdamW steps (6-9e-5 on a realistic run, README "Several processes").
    // Drawing the drop-path masks per rank instead of per global batch gave 1e-5 (drop
    // path 0.1).
    assert!(diff < 1e-6, "2 ranks drifted from 1 rank by {diff}");
    // The same steps and the same evaluation (split over the ranks, counts added).
    let (m1, m2) = (val_top1(&one), val_top1(&two));
    assert_eq!(m1.len(), 2);
    assert_eq!(m1, m2, "val top-1 per epoch differs");
    // Only rank 0 wrote the run's files: one metrics line per step/epoch, not two.
    let lines = |r: &Path| {
        std::fs::read_to_string(r.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(&one), lines(&two));
}

/// A briefly trained teacher (ResNet) of the data in `root`.
fn teacher(root: &Path, data: &Path) -> PathBuf {
    let teacher = root.join("teacher");
    run_ok(
        bin()
            .arg("train")
            .arg("--config")
            .arg(config("teacher_resnet_tiny.toml"))
            .arg("--data")
            .arg(data)
            .arg("--out")
            .arg(&teacher)
            .args(["--epochs", "1", "--batch-size", "16"])
            .args(["--set", "run.max_batches_per_epoch=2"]),
    );
    teacher
}

/// `teacher-cache` of epochs 0..2 with K classes per view.
fn cache_args(c: &mut Command, data: &Path, teacher: &Path, out: &Path, top_k: usize) {
    c.arg("teacher-cache")
        .arg("--data")
        .arg(data)
        .arg("--teacher")
        .arg(teacher)
        .arg("--config")
        .arg(config("small_image.toml"))
        .args(["--set", "plan.repeats=3", "--epochs", "0..2"])
        .args(["--top-k", &top_k.to_string()])
        .arg("--out")
        .arg(out);
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    assert_eq!(unsafe { gethostname(buf.as_mut_ptr(), buf.len()) }, 0);
    let n = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Issue 24, item 2: a teacher cache over 2 ranks ends with one summary by rank 0 (every
/// rank's views, machine, part and folder) and the check that all parts are in rank 0's
/// `--out`; with a folder per rank (node-local disks) the summary says which parts rank 0
/// cannot see and where they are. In `train`, a rank whose own copy of the cache holds
/// another teacher (here another K) than rank 0's is refused before the first step.
#[test]
fn teacher_cache_ranks_report_to_rank_zero_and_train_checks_every_ranks_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let teacher = teacher(tmp.path(), &data);
    let host = host_name();
    let wrapper = per_rank_wrapper(tmp.path());

    // A shared --out: one summary, all 4 parts present.
    let shared = tmp.path().join("cache");
    let mut c = mpirun(2);
    cache_args(&mut c, &data, &teacher, &shared, 4);
    let err = String::from_utf8_lossy(&run_ok(&mut c).stderr).into_owned();
    let summaries = err
        .lines()
        .filter(|l| l.starts_with("teacher-cache "))
        .count();
    assert_eq!(summaries, 1, "one summary, not one line per rank:\n{err}");
    let views = cache_rows(&shared, 2).len();
    let first = format!(
        "teacher-cache {}: 2 ranks on 1 machine(s) ({host}), epochs 0..=1: {views} views in",
        shared.display()
    );
    assert!(err.contains(&first), "{first}\nnot in:\n{err}");
    for r in 0..2 {
        let line = format!(
            "  rank {r} on {host}: part {}/2 of epochs 0..=1 into {}: wrote 0..=1",
            r + 1,
            shared.display()
        );
        assert!(err.contains(&line), "{line}\nnot in:\n{err}");
    }
    assert!(
        err.contains(&format!(
            "all 4 parts (2 epochs x 2 ranks) are present in {}",
            shared.display()
        )),
        "{err}"
    );

    // A folder per rank: rank 0 sees its 2 parts and names rank 1's.
    let local = tmp.path().join("local");
    let mut c = mpirun_program(2, &wrapper);
    cache_args(&mut c, &data, &teacher, &local, 4);
    c.env("PER_RANK_OUT", "1");
    let err = String::from_utf8_lossy(&run_ok(&mut c).stderr).into_owned();
    let (r0, r1) = (local.join("rank0"), local.join("rank1"));
    for want in [
        format!("rank 0 sees 2 of the 4 parts in {}", r0.display()),
        format!(
            "  rank 1 on {host} (another folder on rank 0's machine): \
             epoch-00000.part-002-of-002.parquet, epoch-00001.part-002-of-002.parquet in {}",
            r1.display()
        ),
    ] {
        assert!(err.contains(&want), "{want}\nnot in:\n{err}");
    }

    // train: each rank reads `tt` in its own folder; rank 1's is a cache of top-3.
    let top3 = tmp.path().join("cache-top3");
    let mut c = bin();
    cache_args(&mut c, &data, &teacher, &top3, 3);
    run_ok(&mut c);
    let places = tmp.path().join("places");
    for (r, target) in [(0, &shared), (1, &top3)] {
        let dir = places.join(format!("r{r}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(target, dir.join("tt")).unwrap();
    }
    let mut c = mpirun_program(2, &wrapper);
    student_args(&mut c, &data, &tmp.path().join("student"), 8);
    c.args(["--distillation", "hard", "--teacher-targets", "tt"])
        .args(["--set", "run.max_batches_per_epoch=1"])
        .env("PER_RANK_CWD", &places);
    let err = common::run_err(&mut c);
    assert!(
        err.contains("rank 1: the teacher cache here holds targets of the teacher")
            && err.contains("top-3")
            && err.contains("rank 0's holds the teacher")
            && err.contains("top-4"),
        "rank 1's other teacher was not refused:\n{err}"
    );
}

fn rank_pid(mpirun_pid: u32, rank: usize) -> Option<u32> {
    // The ranks are children of mpirun; OMPI_COMM_WORLD_RANK names each.
    for e in std::fs::read_dir("/proc").ok()? {
        let Ok(e) = e else { continue };
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: Option<u32> = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if ppid != Some(mpirun_pid) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        if env.split(|&b| b == 0).any(|kv| kv == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A 2-rank run of 2 epochs of 3 steps with a checkpoint every 2 steps (steps 2 and 4
/// mid-epoch); with `stall`, every rank stalls after step 4 (epoch 2's first step, its
/// checkpoint written).
fn stalling_run(data: &Path, out: &Path, stall: bool) -> Command {
    stalling_run_of(mpirun(2), data, out, stall)
}

fn stalling_run_of(mut c: Command, data: &Path, out: &Path, stall: bool) -> Command {
    student_args(&mut c, data, out, 8);
    c.args(["--set", "run.max_batches_per_epoch=3"])
        .args(["--set", "run.ckpt_every_steps=2"]);
    if stall {
        c.env("DEIT_PIPE_STALL_AT_STEP", "4");
    }
    c
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn killed_rank_stops_the_job_and_resume_matches_a_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());

    let straight = tmp.path().join("straight");
    run_ok(&mut stalling_run(&data, &straight, false));

    // Both ranks stall after step 4 (epoch 1's first step; rank 0 wrote the step-4
    // checkpoint); then rank 1 is killed with SIGKILL.
    let killed = tmp.path().join("killed");
    let mut child = stalling_run(&data, &killed, true)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpt = killed.join("checkpoints").join("e0001-s000000004");
    assert!(
        wait_for(&ckpt, Duration::from_secs(120)),
        "no step-4 checkpoint appeared"
    );
    let pid = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rank_pid(child.id(), 1)
        })
        .expect("rank 1's process");
    let t0 = Instant::now();
    unsafe { libc_kill(pid as i32, 9) };
    let status = wait_with_timeout(&mut child, Duration::from_secs(60))
        .expect("the job hung after a rank was killed");
    let stopped_after = t0.elapsed();
    assert!(!status.success());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err).unwrap();
    }
    assert!(
        err.contains("rank 1") && err.contains("signal 9"),
        "mpirun's report does not name the killed rank:\n{err}"
    );
    eprintln!("the job stopped {stopped_after:?} after SIGKILL of rank 1");

    // Resume with 2 ranks: the weights of the uninterrupted run.
    run_ok(stalling_run(&data, &killed, false).arg("--resume"));
    let diff = max_weight_diff(&last_model(&straight), &last_model(&killed));
    assert_eq!(
        diff, 0.0,
        "resumed 2-rank run differs from the straight one"
    );
}

#[test]
fn hung_rank_makes_the_others_stop_after_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    // Only rank 1 stalls (MPMD: the second app context runs through `env`); rank 0
    // waits in the next all-reduce until the 3 s collective timeout ends it.
    let out = tmp.path().join("hung");
    let mut c = mpirun(1);
    student_args(&mut c, &data, &out, 8);
    c.args(["--set", "run.max_batches_per_epoch=3", "--quiet"])
        .env("DEIT_PIPE_DIST_TIMEOUT", "3");
    let mut args: Vec<std::ffi::OsString> = c.get_args().map(|a| a.to_owned()).collect();
    // args = [..mpirun opts.., "-np", "1", BIN, train args...]
    let bin_at = args.iter().position(|a| a == BIN).unwrap();
    let train_args: Vec<_> = args.split_off(bin_at + 1);
    let mut cmd = Command::new("mpirun");
    cmd.args(&args)
        .args(&train_args)
        .args([":", "-np", "1", "env", "DEIT_PIPE_STALL_AT_STEP=2", BIN])
        .args(&train_args);
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(120))
        .expect("the job hung with a stalled rank");
    assert!(!status.success());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err).unwrap();
    }
    assert!(
        err.contains("rank 0 of 2: the other ranks did not answer for 3 s"),
        "no timeout error from rank 0:\n{err}"
    );
    eprintln!("the job stopped {:?} after start", t0.elapsed());
}

/// Issue 24 (a) and (b): ranks >= 1 start from rank 0's state. With `--out` mapped to a
/// folder per rank (node-local disks), a 2-rank job killed mid-run resumes from rank 0's
/// checkpoint and ends with the weights of an uninterrupted run; a rank started with
/// another seed (other initial weights, other data order) ends with the same weights too,
/// since rank 0's settings and state are broadcast at start.
#[test]
fn ranks_start_from_rank_zeros_state_without_a_shared_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let wrapper = per_rank_wrapper(tmp.path());

    let straight = tmp.path().join("straight");
    run_ok(&mut stalling_run(&data, &straight, false));

    // (b) rank 1 with another seed.
    let seeded = tmp.path().join("seeded");
    let mut c = stalling_run_of(mpirun_program(2, &wrapper), &data, &seeded, false);
    c.env("RANK1_ARGS", "--seed 7");
    run_ok(&mut c);
    let diff = max_weight_diff(&last_model(&straight), &last_model(&seeded));
    assert_eq!(diff, 0.0, "a rank with another seed changed the run");

    // (a) node-local --out: both ranks stall after step 4 (rank 0 wrote the step-4
    // checkpoint into its own folder), rank 1 is killed, the job resumes.
    let killed = tmp.path().join("killed");
    let mut child = stalling_run_of(mpirun_program(2, &wrapper), &data, &killed, true)
        .env("PER_RANK_OUT", "1")
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed
        .join("rank0")
        .join("checkpoints")
        .join("e0001-s000000004");
    assert!(
        wait_for(&ckpt, Duration::from_secs(120)),
        "no step-4 checkpoint appeared in rank 0's folder"
    );
    let pid = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rank_pid(child.id(), 1)
        })
        .expect("rank 1's process");
    unsafe { libc_kill(pid as i32, 9) };
    wait_with_timeout(&mut child, Duration::from_secs(60))
        .expect("the job hung after a rank was killed");
    let mut c = stalling_run_of(mpirun_program(2, &wrapper), &data, &killed, false);
    c.env("PER_RANK_OUT", "1").arg("--resume");
    run_ok(&mut c);
    let diff = max_weight_diff(&last_model(&straight), &last_model(&killed.join("rank0")));
    assert_eq!(diff, 0.0, "the resumed run with per-rank folders differs");
    // Rank 1 neither read nor wrote a checkpoint of its own.
    assert!(!killed.join("rank1").join("checkpoints").exists());
    assert!(!killed.join("rank1").join("last.json").exists());
}

/// Issue 24 (d): rank 0's checkpoint writes are waited for under their own limit, not the
/// collective timeout: writes slowed to 4 s each, past a 2 s collective timeout, leave
/// the job running to the end, with the weights of a normal run.
#[test]
fn a_slow_checkpoint_write_does_not_trip_the_collective_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let straight = tmp.path().join("straight");
    run_ok(&mut stalling_run(&data, &straight, false));
    let slow = tmp.path().join("slow");
    let mut c = stalling_run(&data, &slow, false);
    c.env("DEIT_PIPE_DIST_TIMEOUT", "2")
        .env("DEIT_PIPE_SLOW_CHECKPOINT_S", "4");
    run_ok(&mut c);
    let diff = max_weight_diff(&last_model(&straight), &last_model(&slow));
    assert_eq!(diff, 0.0);
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // a zombie is gone, only not yet reaped
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
    }
}

/// Issue 24 (e): a SIGSTOPped rank cannot run its watchdog. (1) When the other rank's
/// watchdog has stopped the job, mpirun ends, and the stopped rank is gone too (Open
/// MPI's launcher sends SIGCONT, SIGTERM, then SIGKILL). (2) When the launcher itself is
/// killed (SIGKILL, as a batch system or an out-of-memory killer may), nobody is left to
/// send those: a stopped rank and a rank stuck outside any collective (no watchdog
/// running) are gone within seconds all the same, because every rank asked the kernel
/// for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`). Without it the stuck rank of (2)
/// lives on, re-parented to init (checked by hand with `mpirun -np 2 sleep 1000`: after
/// `kill -9` of mpirun the running `sleep` survives; a stopped one gets SIGHUP from its
/// orphaned process group, which a rank ignoring SIGHUP would not heed).
#[test]
fn a_stopped_rank_is_gone_after_the_job_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let data = shards(tmp.path());
    let out = tmp.path().join("stopped");
    // Long enough (50 epochs) that the job is still training when rank 1 is stopped.
    let mut c = mpirun(2);
    student_args_for(&mut c, &data, &out, 8, 50);
    c.args(["--set", "run.ckpt_every_steps=2", "--quiet"])
        .env("DEIT_PIPE_DIST_TIMEOUT", "3")
        .env("DEIT_PIPE_DIST_IO_TIMEOUT", "3");
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(&out.join("last.json"), Duration::from_secs(120)),
        "no checkpoint appeared"
    );
    let pid = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rank_pid(child.id(), 1)
        })
        .expect("rank 1's process");
    unsafe { libc_kill(pid as i32, 19) }; // SIGSTOP
    let t0 = Instant::now();
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let ended_after = t0.elapsed();
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !alive(pid)
    });
    if !gone {
        unsafe { libc_kill(pid as i32, 9) };
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err).unwrap();
    }
    let status = status.expect("the job hung with a stopped rank");
    eprintln!("the job ended {ended_after:?} after SIGSTOP of rank 1:\n{err}");
    assert!(!status.success());
    assert!(
        err.contains("rank 0 of 2: the other ranks did not answer for 3 s"),
        "rank 0's watchdog did not stop it:\n{err}"
    );
    assert!(gone, "the stopped rank {pid} outlived the job");

    // (2) Both ranks stall after step 4 (outside any collective: no watchdog fires, and
    // the timeouts are long); rank 1 is stopped, then mpirun is killed.
    let out = tmp.path().join("orphaned");
    let mut child = stalling_run(&data, &out, true)
        .env("DEIT_PIPE_DIST_TIMEOUT", "120")
        .env("DEIT_PIPE_DIST_IO_TIMEOUT", "120")
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = out.join("checkpoints").join("e0001-s000000004");
    assert!(
        wait_for(&ckpt, Duration::from_secs(120)),
        "no step-4 checkpoint appeared"
    );
    let ranks: Vec<u32> = (0..2)
        .map(|r| {
            (0..50)
                .find_map(|_| {
                    std::thread::sleep(Duration::from_millis(100));
                    rank_pid(child.id(), r)
                })
                .expect("a rank's process")
        })
        .collect();
    unsafe { libc_kill(ranks[1] as i32, 19) }; // SIGSTOP
    child.kill().unwrap(); // SIGKILL to mpirun
    child.wait().unwrap();
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ranks.iter().all(|&p| !alive(p))
    });
    let left: Vec<u32> = ranks.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        unsafe { libc_kill(p as i32, 9) };
    }
    assert!(gone, "ranks {left:?} outlived their killed launcher");
}

/// Issue 24, item 5: Slurm's variables in a process MPI started alone (a job step without
/// an MPI launch) get a message that says so.
#[test]
fn slurm_variables_without_an_mpi_launch_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["train", "--data"])
        .arg(tmp.path().join("none"))
        .arg("--out")
        .arg(tmp.path().join("run"))
        .env("SLURM_PROCID", "1")
        .env("SLURM_STEP_NUM_TASKS", "2")
        .env("SLURM_LOCALID", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Slurm job step without an MPI launch") && err.contains("srun --mpi=pmix"),
        "{err}"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
    fn gethostname(name: *mut u8, len: usize) -> i32;
}
