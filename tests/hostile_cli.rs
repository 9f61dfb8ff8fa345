//! Hostile and damaged inputs through the real binary (issue 19): each case ends in exit 1
//! with an error naming the file, line, record or field (or in a documented skip), never
//! in exit 101/134, a signal, a hang, a write outside `--out` or a backtrace.

use formats::shard::layout::{ENTRY_LEN, INDEX_HEADER_LEN};
use formats::shard::{Manifest, ShardSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::hostile::{p, run, run_err, run_err_with_stdout, run_ok, synth_two_classes};

/// Synth + shard (raw records, max side 40); returns the shard root.
fn shards(tmp: &Path) -> PathBuf {
    let folder = tmp.join("folder");
    synth_two_classes(&folder, 3, 3);
    let out = tmp.join("shards");
    run_ok(&[
        "shard",
        "--input",
        p(&folder),
        "--out",
        p(&out),
        "--format",
        "raw",
        "--max-side",
        "40",
    ]);
    out
}

/// Image files of a synth folder, sorted.
fn images(folder: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for class in std::fs::read_dir(folder.join("train")).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v.sort();
    v
}

fn write_list(path: &Path, rows: &[(&Path, &str)]) {
    let text: String = rows
        .iter()
        .map(|(f, l)| format!("{}\t{l}\n", f.display()))
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn split_names_never_leave_out() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    synth_two_classes(&folder, 3, 3);
    let imgs = images(&folder);
    let list = tmp.path().join("list.tsv");
    write_list(&list, &[(&imgs[0], "0"), (&imgs[1], "1")]);
    let out = tmp.path().join("out");
    let abs = tmp.path().join("elsewhere");
    for split in ["../x", "a/b", "..", "", abs.to_str().unwrap()] {
        let stderr = run_err(&[
            "shard",
            "--list",
            p(&list),
            "--split",
            split,
            "--out",
            p(&out),
        ]);
        assert!(
            stderr.contains(&format!(
                "--split {split:?} cannot be used as a file or folder name"
            )),
            "{stderr}"
        );
    }
    assert!(!tmp.path().join("x").exists() && !abs.exists() && !out.exists());
    run_ok(&[
        "shard",
        "--list",
        p(&list),
        "--split",
        "mine",
        "--out",
        p(&out),
    ]);
    assert!(out.join("mine/manifest.json").is_file());
}

#[test]
fn list_files_with_huge_mixed_or_repeated_labels_are_refused_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    synth_two_classes(&folder, 3, 3);
    let imgs = images(&folder);
    let list = tmp.path().join("list.tsv");
    let out = tmp.path().join("out");
    let cases: Vec<(Vec<(&Path, &str)>, String)> = vec![
        (
            vec![(&imgs[0], "0"), (&imgs[1], "4294967295")],
            ":2: label 4294967295 is too large".into(),
        ),
        (
            vec![(&imgs[0], "0"), (&imgs[1], "1"), (&imgs[2], "cat")],
            ":3: label \"cat\" is a class name but line 1 starts integer labels".into(),
        ),
        (
            vec![(&imgs[0], "0"), (&imgs[1], "1"), (&imgs[0], "1")],
            format!(
                ":3: {:?} is listed twice (lines 1 and 3)",
                imgs[0].display().to_string()
            ),
        ),
    ];
    for (rows, want) in cases {
        write_list(&list, &rows);
        let start = Instant::now();
        let stderr = run_err(&["shard", "--list", p(&list), "--out", p(&out)]);
        assert!(stderr.contains(&want), "{want}: {stderr}");
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert!(!out.join("train").exists());
}

#[cfg(unix)]
#[test]
fn fifos_device_links_and_link_cycles_are_skipped_and_listed() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    synth_two_classes(&folder, 3, 3);
    let class = images(&folder)[0].parent().unwrap().to_path_buf();
    let fifo = class.join("x.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    symlink("/dev/zero", class.join("zero.jpg")).unwrap();
    symlink("../..", class.join("loop")).unwrap();
    let out = tmp.path().join("out");
    let text = run_ok(&["shard", "--input", p(&folder), "--out", p(&out)]);
    assert!(
        text.contains("train: 6 records") && text.contains("3 skipped"),
        "{text}"
    );
    let m = Manifest::read(&out.join("train")).unwrap();
    let reasons: Vec<String> = m
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.path, s.reason))
        .collect();
    let has = |name: &str, why: &str| reasons.iter().any(|r| r.contains(name) && r.contains(why));
    assert!(has("x.jpg", "not a regular file (FIFO)"), "{reasons:?}");
    assert!(
        has("zero.jpg", "not a regular file (character device)"),
        "{reasons:?}"
    );
    assert!(has("/loop", "folder already read"), "{reasons:?}");
}

#[test]
fn verify_fails_when_a_split_has_no_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = shards(tmp.path());
    run_ok(&["inspect", p(&root), "--verify"]);
    std::fs::remove_file(root.join("val/manifest.json")).unwrap();
    let (stdout, stderr) = run_err_with_stdout(&["inspect", p(&root), "--verify"]);
    assert!(
        stdout.contains("BAD") && stdout.contains("no manifest.json"),
        "{stdout}"
    );
    assert!(stderr.contains("verification failed"), "{stderr}");
    // Without --verify the summary still prints, with a warning.
    let text = run_ok(&["inspect", p(&root)]);
    assert!(
        text.contains("WARNING") && text.contains("no manifest.json"),
        "{text}"
    );
}

#[test]
fn manifests_that_disagree_with_the_index_or_the_folder_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = shards(tmp.path());
    let train = root.join("train");
    let mpath = train.join("manifest.json");
    let original = std::fs::read(&mpath).unwrap();
    // Counts moved between classes (the sum still matches): refused on open.
    let mut m = Manifest::read(&train).unwrap();
    m.counts_per_class[0] += 1;
    m.counts_per_class[1] -= 1;
    std::fs::write(&mpath, m.to_json()).unwrap();
    let stderr = run_err(&["inspect", p(&train)]);
    assert!(
        stderr.contains("counts_per_class[0]") && stderr.contains("the index holds 3"),
        "{stderr}"
    );
    std::fs::write(&mpath, &original).unwrap();
    // A split folder renamed (or a manifest copied into another split's folder).
    let renamed = root.join("renamed");
    std::fs::rename(&train, &renamed).unwrap();
    let stderr = run_err(&["inspect", p(&renamed)]);
    assert!(
        stderr.contains("`split` is \"train\" but the folder is named \"renamed\""),
        "{stderr}"
    );
}

#[test]
fn inspect_escapes_names_and_dump_stays_under_out() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    synth_two_classes(&folder, 3, 3);
    let imgs = images(&folder);
    let list = tmp.path().join("list.tsv");
    write_list(
        &list,
        &[
            (&imgs[0], "\x1b[2Jwipe"),
            (&imgs[1], "bell\x07"),
            (&imgs[2], "../../evil"),
        ],
    );
    let data = tmp.path().join("data");
    run_ok(&["shard", "--list", p(&list), "--out", p(&data)]);
    let o = run(&["inspect", p(&data)]);
    assert!(o.status.success());
    assert!(!o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("\\u{1b}[2Jwipe:1") && text.contains("bell\\u{7}:1"),
        "{text}"
    );
    // --dump would name a file after "../../evil": refused, nothing written outside --out.
    let dump = tmp.path().join("a/b/dump");
    let stderr = run_err(&["inspect", p(&data), "--dump", "3", "--out", p(&dump)]);
    assert!(
        stderr.contains("class name \"../../evil\" cannot be used as a file or folder name"),
        "{stderr}"
    );
    let stray: Vec<_> = std::fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(stray, vec![std::ffi::OsString::from("b")]);
}

#[test]
fn train_refuses_an_out_folder_that_is_not_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let user = tmp.path().join("user");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("config.toml"), "mine = true\n").unwrap();
    std::fs::write(user.join("metrics.jsonl"), "{\"mine\": 1}\n").unwrap();
    let stderr = run_err(&["train", "--data", p(tmp.path()), "--out", p(&user)]);
    assert!(
        stderr.contains("is not empty and is not a deit-pipe run")
            && stderr.contains("config.toml, metrics.jsonl"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(user.join("config.toml")).unwrap(),
        "mine = true\n"
    );
    assert_eq!(
        std::fs::read_to_string(user.join("metrics.jsonl")).unwrap(),
        "{\"mine\": 1}\n"
    );
    assert_eq!(std::fs::read_dir(&user).unwrap().count(), 2);
}

/// Rewrite every train index entry with `f` and re-hash, as a hostile writer would.
fn patch_entries(train: &Path, f: impl Fn(&mut [u8])) {
    let m = Manifest::read(train).unwrap();
    for s in &m.shards {
        let idx = train.join(&s.index);
        let mut b = std::fs::read(&idx).unwrap();
        for e in b[INDEX_HEADER_LEN..].chunks_exact_mut(ENTRY_LEN) {
            f(e);
        }
        let h = blake3::hash(&b[INDEX_HEADER_LEN..]);
        b[32..64].copy_from_slice(h.as_bytes());
        std::fs::write(&idx, b).unwrap();
    }
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

#[test]
fn train_stops_on_damaged_records_with_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = shards(tmp.path());
    let train = root.join("train");
    // A flipped byte inside every payload: the first read of any record fails its CRC.
    let set = ShardSet::open(&train).unwrap();
    let mut flips = Vec::new();
    for i in 0..set.len() {
        let e = set.entry(i).unwrap();
        flips.push(e.offset + e.length / 2);
    }
    drop(set);
    let data = train.join("shard-00000.bin");
    let original = std::fs::read(&data).unwrap();
    let mut b = original.clone();
    for at in flips {
        b[at as usize] ^= 0x08;
    }
    std::fs::write(&data, b).unwrap();
    let stderr = run_err(&train_args(&root, &tmp.path().join("run1")));
    assert!(
        stderr.contains("checksum mismatch") && stderr.contains("shard-00000.bin"),
        "{stderr}"
    );
    std::fs::write(&data, original).unwrap();
    // Every record declaring 65536 x 65536: refused before any allocation.
    patch_entries(&train, |e| {
        e[28..32].copy_from_slice(&65536u32.to_le_bytes());
        e[32..36].copy_from_slice(&65536u32.to_le_bytes());
    });
    let stderr = run_err(&train_args(&root, &tmp.path().join("run2")));
    assert!(
        stderr.contains("65536x65536") && stderr.contains("exceeds the set's limit"),
        "{stderr}"
    );
}

#[test]
fn clean_errors_never_print_a_backtrace() {
    // run_err asserts exit 1, an `error:` line and no backtrace with RUST_BACKTRACE=1.
    run_err(&["inspect", "/nonexistent/deit-pipe-shards"]);
    run_err(&["shard", "--input", "/nonexistent/in", "--out", "/tmp/x"]);
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("l.tsv");
    std::fs::write(&list, "a.jpg\t1\nb.jpg\tcat\n").unwrap();
    let stderr = run_err(&["shard", "--list", p(&list), "--out", p(tmp.path())]);
    assert!(stderr.lines().count() <= 4, "{stderr}");
}

#[test]
fn max_pixels_above_the_readers_cap_is_refused() {
    // Readers refuse records over 2^30 pixels whatever a manifest says, so `shard` may not
    // promise more: a usage error (exit 2) naming the flag.
    let o = run(&[
        "shard",
        "--input",
        "in",
        "--out",
        "out",
        "--max-pixels",
        "1073741825",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--max-pixels"), "{stderr}");
}

// ---- issue 25: special files, model sizes, silent acceptances ----

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// Replaces `path` by a FIFO or a link to /dev/zero for the length of `f`, then restores it.
#[cfg(unix)]
fn with_special(path: &Path, fifo: bool, f: impl FnOnce()) {
    let saved = std::fs::read(path).ok();
    let _ = std::fs::remove_file(path);
    if fifo {
        mkfifo(path);
    } else {
        std::os::unix::fs::symlink("/dev/zero", path).unwrap();
    }
    f();
    std::fs::remove_file(path).unwrap();
    if let Some(b) = saved {
        std::fs::write(path, b).unwrap();
    }
}

/// `run_err` that also requires the message to name `name` and call it a special file.
#[cfg(unix)]
fn refused_special(args: &[&str], name: &str) {
    let stderr = run_err(args);
    assert!(
        stderr.contains(name) && stderr.contains("not a regular file"),
        "{args:?}: {stderr}"
    );
}

/// A tiny trained run (depth 1, width 48, one epoch) and its shard root.
fn tiny_run(tmp: &Path) -> (PathBuf, PathBuf) {
    let root = shards(tmp);
    let run_dir = tmp.join("run");
    run_ok(&train_args(&root, &run_dir));
    (root, run_dir)
}

#[cfg(unix)]
#[test]
fn fifos_and_device_links_are_refused_wherever_a_file_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, run_dir) = tiny_run(tmp.path());
    let train = root.join("train");
    let png = tmp.path().join("x.png");
    image::RgbImage::from_pixel(40, 40, image::Rgb([200, 10, 10]))
        .save(&png)
        .unwrap();
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    // Shard files: manifest.json -> /dev/zero used to read until memory ran out.
    for (file, is_fifo) in [
        ("manifest.json", false),
        ("manifest.json", true),
        ("shard-00000.bin", true),
        ("shard-00000.idx", false),
    ] {
        with_special(&train.join(file), is_fifo, || {
            refused_special(&["inspect", p(&train), "--verify"], file);
        });
    }
    // Flags naming a file.
    refused_special(
        &[
            "train",
            "--config",
            p(&fifo),
            "--data",
            p(&root),
            "--out",
            p(&tmp.path().join("r2")),
        ],
        "fifo",
    );
    refused_special(
        &[
            "shard",
            "--list",
            p(&fifo),
            "--out",
            p(&tmp.path().join("s2")),
        ],
        "fifo",
    );
    refused_special(
        &[
            "inspect",
            p(&root),
            "--augment",
            "2",
            "--augment-config",
            p(&fifo),
            "--out",
            p(&tmp.path().join("grid")),
        ],
        "fifo",
    );
    refused_special(&["predict", "--weights", p(&run_dir), p(&fifo)], "fifo");
    refused_special(
        &[
            "predict",
            "--weights",
            p(&run_dir),
            "--classes",
            p(&fifo),
            p(&png),
        ],
        "fifo",
    );
    // A run's records.
    for (file, is_fifo) in [("best.json", true), ("best.json", false)] {
        with_special(&run_dir.join(file), is_fifo, || {
            refused_special(&["predict", "--weights", p(&run_dir), p(&png)], file);
        });
    }
    let mut resume = train_args(&root, &run_dir);
    let at = resume.iter().position(|a| *a == "--epochs").unwrap();
    resume[at + 1] = "2";
    resume.push("--resume");
    with_special(&run_dir.join("last.json"), true, || {
        refused_special(&resume, "last.json");
    });
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("last.json")).unwrap()).unwrap();
    let ck = run_dir.join(last["dir"].as_str().unwrap());
    with_special(&ck.join("state.json"), false, || {
        refused_special(&resume, "state.json");
    });
    // Everything restored: the run still predicts.
    run_ok(&["predict", "--weights", p(&run_dir), p(&png)]);
}

#[test]
fn model_sizes_and_non_finite_values_are_refused_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    let root = shards(tmp.path());
    let out = tmp.path().join("run");
    let with = |set: &str| {
        let mut a = train_args(&root, &out);
        for one in set.split(' ') {
            a.extend(["--set", one]);
        }
        let stderr = run_err(&a);
        assert!(!out.join("metrics.jsonl").exists());
        stderr
    };
    let e = with("model.depth=1000000000");
    assert!(
        e.contains("model.depth = 1000000000 is outside 1..=1024"),
        "{e}"
    );
    let e = with("model.embed_dim=1000000000");
    assert!(
        e.contains("model.embed_dim = 1000000000 is outside 1..=16384"),
        "{e}"
    );
    let e = with("model.mlp_ratio=0");
    assert!(e.contains("model.mlp_ratio = 0 is outside 1..=64"), "{e}");
    let e = with("model.embed_dim=9600 model.depth=12");
    assert!(
        e.contains("parameters, over the limit of 4000000000"),
        "{e}"
    );
    for key in ["optim.clip_grad=nan", "optim.lr=inf", "model.drop_path=nan"] {
        let e = with(key);
        assert!(e.contains("is not a finite number"), "{key}: {e}");
    }
    let cfg = tmp.path().join("nan.toml");
    std::fs::write(&cfg, "[optim]\nclip_grad = nan\n").unwrap();
    let e = run_err(&[
        "train",
        "--config",
        p(&cfg),
        "--data",
        p(&root),
        "--out",
        p(&out),
    ]);
    assert!(
        e.contains("not a finite number") && e.contains("nan.toml"),
        "{e}"
    );
    let png = tmp.path().join("x.png");
    image::RgbImage::new(8, 8).save(&png).unwrap();
    let o = run(&[
        "predict",
        "--model",
        "deit_tiny_patch16_224",
        "--img-size",
        "100000",
        "--weights",
        p(&png),
        p(&png),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("image size 100000 is outside 1..=4096"), "{e}");
}

#[test]
fn zero_counts_are_usage_errors_not_clamped() {
    for args in [
        &["predict", "--weights", "w", "--top", "0", "x.png"][..],
        &["predict", "--weights", "w", "--batch", "0", "x.png"][..],
        &["shard", "--input", "in", "--out", "out", "--threads", "0"][..],
        &["synth", "--out", "out", "--threads", "0"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("must be at least 1"), "{args:?}: {stderr}");
    }
}

#[test]
fn predict_escapes_class_names_from_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run_dir) = tiny_run(tmp.path());
    let png = tmp.path().join("x.png");
    image::RgbImage::from_pixel(40, 40, image::Rgb([20, 200, 10]))
        .save(&png)
        .unwrap();
    let classes = tmp.path().join("classes.txt");
    // With a UTF-8 byte-order mark, which is dropped.
    std::fs::write(&classes, "\u{feff}\x1b[2Jwipe\nbell\x07\n").unwrap();
    let o = run(&[
        "predict",
        "--weights",
        p(&run_dir),
        "--classes",
        p(&classes),
        p(&png),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("\\u{1b}[2Jwipe")
            && text.contains("bell\\u{7}")
            && !text.contains('\u{feff}'),
        "{text}"
    );
}
