//! `deit-pipe inspect`: summarize a shard data set, verify its checksums, dump records.
//!
//! Names read from a manifest (split, classes, skipped paths) are printed escaped
//! (`escape_debug`), so control characters in them cannot drive the terminal. A subfolder
//! of a data set without a manifest is reported (a missing or unfinished split), and
//! fails `--verify`. `--dump` refuses split and class names that are not plain file names,
//! so every file it writes lies directly in `--out`.

use crate::progress;
use anyhow::{bail, Context};
use formats::shard::{Encoding, ShardSet, MANIFEST_FILE};
use std::path::{Path, PathBuf};

/// Arguments of `deit-pipe inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A shard data set folder (holding train/, val/) or one split folder.
    pub dir: PathBuf,
    /// Re-check every record checksum and the fingerprint; name each bad record.
    #[arg(long)]
    pub verify: bool,
    /// Write this many records of each split back as image files (needs --out).
    #[arg(long, requires = "out")]
    pub dump: Option<usize>,
    /// Write a grid PNG of this many augmented training views (DeiT train transform with
    /// Mixup/CutMix, labels drawn under each view) to --out, for a person to look at.
    #[arg(long, requires = "out", conflicts_with = "dump")]
    pub augment: Option<usize>,
    /// Augmentation config for --augment: a training recipe (its `[augment]` table is
    /// used) or a TOML file of the bare `[augment]` fields; default: DeiT's.
    #[arg(long, requires = "augment")]
    pub augment_config: Option<PathBuf>,
    /// Folder for --dump; PNG file for --augment.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The split folders under `dir` (or `dir` itself when it holds a manifest).
fn split_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    Ok(scan(dir)?.0)
}

/// The split folders under `dir` (or `dir` itself when it holds a manifest), and the
/// subfolders that hold no manifest (a split that is missing its manifest or was never
/// finished).
fn scan(dir: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    if dir.join(MANIFEST_FILE).exists() {
        return Ok((vec![dir.to_path_buf()], Vec::new()));
    }
    let mut v = Vec::new();
    let mut without = Vec::new();
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let p = e
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if p.join(MANIFEST_FILE).exists() {
            v.push(p);
        } else if p.is_dir() {
            without.push(p);
        }
    }
    v.sort();
    without.sort();
    if v.is_empty() {
        bail!(
            "{}: no shard set here (no {MANIFEST_FILE} in it or in its subfolders)",
            dir.display()
        );
    }
    Ok((v, without))
}

/// `s` with control characters, quotes and backslashes escaped, for printing.
fn esc(s: &str) -> String {
    s.escape_debug().to_string()
}

fn quantiles(mut v: Vec<u32>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    format!(
        "min {} p10 {} median {} p90 {} max {}",
        q(0.0),
        q(0.1),
        q(0.5),
        q(0.9),
        q(1.0)
    )
}

fn summarize(set: &ShardSet) -> anyhow::Result<()> {
    let m = set.manifest();
    println!("== {} ({})", esc(&m.split), set.dir().display());
    println!(
        "records {}  shards {}  classes {}  bytes {} ({:.1} MiB, {:.1} KiB/record)",
        m.num_records,
        m.shards.len(),
        m.classes.len(),
        m.total_bytes,
        m.total_bytes as f64 / (1 << 20) as f64,
        m.total_bytes as f64 / 1024.0 / (m.num_records.max(1) as f64)
    );
    let shown: Vec<String> = m
        .classes
        .iter()
        .zip(&m.counts_per_class)
        .take(12)
        .map(|(c, n)| format!("{}:{n}", esc(c)))
        .collect();
    let more = if m.classes.len() > 12 {
        format!(" ... ({} more)", m.classes.len() - 12)
    } else {
        String::new()
    };
    println!("classes {}{more}", shown.join(" "));
    if let (Some(min), Some(max)) = (
        m.counts_per_class.iter().min(),
        m.counts_per_class.iter().max(),
    ) {
        println!("per class min {min} max {max}");
    }
    println!(
        "options format {:?} max_side {} quality {} shard_bytes {} seed {} max_pixels {} input {} restart_mcus {}",
        m.options.format,
        m.options.max_side,
        m.options.quality,
        m.options.shard_bytes,
        m.options.seed,
        m.options.max_pixels,
        esc(&m.options.input),
        m.options.restart_mcus
    );
    let (mut ws, mut hs, mut ows, mut ohs) = (vec![], vec![], vec![], vec![]);
    let mut short_hist = [0u64; 6];
    let mut resized = 0u64;
    for i in 0..set.len() {
        let e = set.entry(i)?;
        ws.push(e.width);
        hs.push(e.height);
        ows.push(e.orig_width);
        ohs.push(e.orig_height);
        let short = e.width.min(e.height);
        let b = match short {
            0..=64 => 0,
            65..=128 => 1,
            129..=256 => 2,
            257..=384 => 3,
            385..=512 => 4,
            _ => 5,
        };
        short_hist[b] += 1;
        if (e.width, e.height) != (e.orig_width, e.orig_height) {
            resized += 1;
        }
    }
    println!("stored width  {}", quantiles(ws));
    println!("stored height {}", quantiles(hs));
    println!("source width  {}", quantiles(ows));
    println!("source height {}", quantiles(ohs));
    println!(
        "shorter side  <=64: {}  65-128: {}  129-256: {}  257-384: {}  385-512: {}  >512: {}  (resized: {resized})",
        short_hist[0], short_hist[1], short_hist[2], short_hist[3], short_hist[4], short_hist[5]
    );
    println!("skipped {}", m.skipped.len());
    for s in m.skipped.iter().take(10) {
        println!("  {}: {}", esc(&s.path), esc(&s.reason));
    }
    if m.skipped.len() > 10 {
        println!("  ... ({} more in the manifest)", m.skipped.len() - 10);
    }
    println!("fingerprint {}", m.fingerprint);
    Ok(())
}

fn dump(set: &ShardSet, n: usize, out: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let split = &set.manifest().split;
    formats::shard::check_path_part("split name", split)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--dump of {}", set.dir().display()))?;
    let n = n.min(set.len());
    for i in 0..n {
        let r = set.record(i)?;
        let class = set
            .manifest()
            .classes
            .get(r.label as usize)
            .map_or("?", |s| s.as_str());
        formats::shard::check_path_part("class name", class)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--dump of record {i} of {}", set.dir().display()))?;
        let stem = format!("{split}_{i:06}_{class}");
        let path = match r.encoding {
            Encoding::Jpeg => {
                let p = out.join(format!("{stem}.jpg"));
                std::fs::write(&p, r.bytes).with_context(|| format!("writing {}", p.display()))?;
                p
            }
            Encoding::RawRgbZstd => {
                let img = pipeline::ingest::decode_record(&r)
                    .with_context(|| format!("record {i} of {}", set.dir().display()))?;
                let p = out.join(format!("{stem}.png"));
                img.save(&p)
                    .with_context(|| format!("writing {}", p.display()))?;
                p
            }
        };
        tracing::debug!("dumped {}", path.display());
    }
    Ok(n)
}

/// Run `deit-pipe inspect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let (Some(count), Some(out)) = (args.augment, &args.out) {
        return write_augment_grid(&args.dir, count, args.augment_config.as_deref(), out);
    }
    let mut failures = Vec::new();
    let (dirs, without) = scan(&args.dir)?;
    for d in &without {
        println!(
            "{} {}: no {MANIFEST_FILE} (a split whose manifest is missing, or a job that \
             did not finish)",
            if args.verify { "BAD" } else { "WARNING" },
            d.display()
        );
        failures.push(format!("{}: no {MANIFEST_FILE}", d.display()));
    }
    if !args.verify {
        failures.clear();
    }
    for dir in dirs {
        let set =
            ShardSet::open_split(&dir).with_context(|| format!("opening {}", dir.display()))?;
        summarize(&set)?;
        if args.verify {
            let bar = progress::bar(set.len() as u64, "verify", "rec");
            let report = set.verify_all(|done| bar.set_position(done as u64));
            bar.finish();
            for e in &report.bad_records {
                println!("BAD {e}");
            }
            for s in &report.bad_shards {
                println!("BAD {s}");
            }
            if report.recomputed_fingerprint != set.fingerprint() {
                println!(
                    "BAD fingerprint recomputed from the data is {}",
                    report.recomputed_fingerprint
                );
            }
            if report.is_ok() && report.recomputed_fingerprint == set.fingerprint() {
                println!(
                    "verify OK: {} records, all checksums and the fingerprint match",
                    set.len()
                );
            } else {
                failures.push(format!(
                    "{}: {} bad records, {} bad shards",
                    dir.display(),
                    report.bad_records.len(),
                    report.bad_shards.len()
                ));
            }
        }
        if let (Some(n), Some(out)) = (args.dump, &args.out) {
            let k = dump(&set, n, out)?;
            println!("dumped {k} records to {}", out.display());
        }
    }
    if !failures.is_empty() {
        bail!("verification failed: {}", failures.join("; "));
    }
    Ok(())
}

/// `--augment N --out grid.png`: augmented views of the train split (or the one split given).
fn write_augment_grid(
    dir: &Path,
    count: usize,
    config: Option<&Path>,
    out: &Path,
) -> anyhow::Result<()> {
    if count == 0 {
        bail!("--augment needs at least one view");
    }
    let splits = split_dirs(dir)?;
    let split = splits
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "train"))
        .unwrap_or(&splits[0]);
    let aug = match config {
        Some(path) => pipeline::config::AugmentConfig::from_toml_file(path)
            .with_context(|| format!("reading the augmentation config {}", path.display()))?,
        None => pipeline::config::AugmentConfig::default(),
    };
    pipeline::preview::write_augment_grid(split, &aug, count, out)
        .with_context(|| format!("writing {} from {}", out.display(), split.display()))?;
    println!(
        "wrote {count} augmented views of {} to {}",
        split.display(),
        out.display()
    );
    Ok(())
}
