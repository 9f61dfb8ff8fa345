//! The harness of the hostile-input tests (`hostile_*.rs`): the binary with backtraces asked
//! for, run under a deadline, so that a case that panics, prints a backtrace or hangs fails
//! its test instead of passing or blocking it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `deit-pipe --quiet` with backtraces asked for (`RUST_BACKTRACE=1`,
/// `RUST_LIB_BACKTRACE=1`: every case must stay backtrace-free even so) and none of the
/// failure-test switches (abort after N records, abort or stall at a step) inherited from
/// the environment.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deit-pipe"));
    c.arg("--quiet");
    c.env_remove(pipeline::ingest::job::ABORT_AFTER_ENV);
    c.env_remove("DEIT_PIPE_STALL_AT_STEP");
    c.env_remove("DEIT_PIPE_ABORT_AT_STEP");
    c.env("RUST_BACKTRACE", "1").env("RUST_LIB_BACKTRACE", "1");
    c
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Run with a deadline: a hang fails the test instead of blocking it. Whatever the exit
/// status, the run must not print a backtrace or a panic.
pub fn run(args: &[&str]) -> Output {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let o = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                !stderr.contains("stack backtrace")
                    && !stderr.contains("panicked at")
                    && !stderr.to_lowercase().contains("backtrace"),
                "{args:?} printed a backtrace or a panic: {stderr}"
            );
            return o;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("deit-pipe {args:?} hung (killed after 120 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`run`], which must succeed; its output.
pub fn run_ok_output(args: &[&str]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "deit-pipe {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// [`run`], which must succeed; its stdout.
pub fn run_ok(args: &[&str]) -> String {
    String::from_utf8_lossy(&run_ok_output(args).stdout).into_owned()
}

/// [`run`], which must end in exit 1 with an `error:` line and no backtrace or panic;
/// its stdout and stderr.
pub fn run_err_with_stdout(args: &[&str]) -> (String, String) {
    let o = run(args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {stdout}\n{stderr}");
    assert!(stderr.contains("error: "), "{args:?}: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("backtrace") && !stderr.contains("panicked"),
        "{args:?} printed a backtrace or panic: {stderr}"
    );
    (stdout, stderr)
}

/// [`run_err_with_stdout`]'s stderr.
pub fn run_err(args: &[&str]) -> String {
    run_err_with_stdout(args).1
}

/// `synth` of a small two-class ImageFolder into `dir`: `train_per_class` train images
/// and one val image per class, from `seed`.
pub fn synth_two_classes(dir: &Path, train_per_class: u32, seed: u64) {
    let (train, seed) = (train_per_class.to_string(), seed.to_string());
    run_ok(&[
        "synth",
        "--out",
        p(dir),
        "--classes",
        "2",
        "--train-per-class",
        &train,
        "--val-per-class",
        "1",
        "--seed",
        &seed,
    ]);
}
