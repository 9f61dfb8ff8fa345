//! `deit-pipe shard`: turn an ImageFolder tree or a list file into record shards
//! (see `pipeline::ingest::job`).

use crate::progress;
use anyhow::{bail, Context};
use formats::shard::Encoding;
use pipeline::ingest::inputs::{empty_classes, read_list, refuse_empty_classes, SplitInput};
use pipeline::ingest::job::{shard_split, JobConfig, ABORT_AFTER_ENV};
use pipeline::ingest::process::{IngestOptions, DEFAULT_MAX_PIXELS, DEFAULT_RESTART_MCUS};
use pipeline::ingest::val_labels::{onto_train_classes, scan_input};
use std::path::PathBuf;

/// Stored image format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JPEG: small inputs kept as they are, resized ones re-encoded at --quality.
    Jpeg,
    /// RGB u8 pixels, zstd-compressed.
    Raw,
}

/// Parse a byte size such as `1GiB`, `512MiB`, `64M`, `100000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "bad size unit in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if v < 4096 {
        return Err(format!("shard size {s:?} is below 4 KiB"));
    }
    Ok(v)
}

/// Arguments of `deit-pipe shard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ImageFolder root with train/ and/or val/ (class folders sorted give label ids).
    #[arg(long, conflicts_with = "list", required_unless_present = "list")]
    pub input: Option<PathBuf>,
    /// Labels of a flat `INPUT/val/` (ImageNet's val images without class folders), told
    /// by content: Kaggle's `LOC_val_solution.csv`, the devkit's
    /// `ILSVRC2012_validation_ground_truth.txt` with the devkit's `meta.mat` beside it
    /// (or the devkit's `data/` folder itself), or `file<TAB>class` lines (paths relative
    /// to val/). Classes are train/'s class folders, matched by name.
    #[arg(long, requires = "input")]
    pub val_labels: Option<PathBuf>,
    /// Keep class folders of train/ (or of the first split present) that hold no file, as
    /// classes without images. Without it such folders are refused, as torchvision's
    /// ImageFolder refuses them; they are never dropped, since dropping one would renumber
    /// every later class's label id (val/ and other tools read ids from the sorted folder
    /// names). A val/ class folder may always be empty.
    #[arg(long, requires = "input")]
    pub allow_empty_classes: bool,
    /// List file of `path<TAB>label` lines (relative paths from the list's folder). A
    /// split other than `train`, written where OUT/train exists, takes train's class list:
    /// labels map by class name, or else integer labels are ids into train's classes.
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Split name for --list input (the output goes to OUT/<split>; a plain folder name,
    /// no `/` or `..`).
    #[arg(long, default_value = "train", requires = "list")]
    pub split: String,
    /// Output dataset folder (one subfolder per split).
    #[arg(long)]
    pub out: PathBuf,
    /// The shorter side of the stored images: an image whose shorter side exceeds this is
    /// resized to it (Lanczos3); smaller ones are kept. For DeiT at 224 px choose 256 (the
    /// eval resize, int(224 / 0.875)) to 320: measured on ImageNet-like JPEGs the shards
    /// take about 0.31x the input's bytes at 256 and 0.70x at 512 (the default, which
    /// keeps room for 384 px fine-tuning). `--max-side` is the old name of this flag.
    #[arg(long = "shorter-side", visible_alias = "max-side", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(8..=65535))]
    pub max_side: u32,
    /// Stored format.
    #[arg(long, value_enum, default_value_t = Format::Jpeg)]
    pub format: Format,
    /// JPEG quality for re-encoded images.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// JPEG records get a restart marker every N MCUs at most (the largest divisor of the
    /// MCUs per row up to N), written losslessly: a training crop then decodes only the
    /// intervals it covers. 0 stores kept JPEGs byte for byte as they came.
    #[arg(long, default_value_t = DEFAULT_RESTART_MCUS, value_parser = clap::value_parser!(u32).range(0..=65535))]
    pub restart_mcus: u32,
    /// Target size of one shard file (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub shard_bytes: u64,
    /// Decode/resize/encode threads (default: all cores). The output does not depend on it.
    #[arg(long, value_parser = super::positive)]
    pub threads: Option<usize>,
    /// Seed of the write-time shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip images with more pixels than this (decompression-bomb guard; at most 2^30).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS,
          value_parser = clap::value_parser!(u64).range(1..=formats::shard::layout::MAX_PIXELS_CAP))]
    pub max_pixels: u64,
}

/// Run `deit-pipe shard`.
pub fn run(args: Args) -> anyhow::Result<()> {
    // The split name becomes a folder under --out: never a path that leaves it.
    formats::shard::check_path_part("--split", &args.split).map_err(anyhow::Error::msg)?;
    let (splits, kind): (Vec<SplitInput>, &str) = match (&args.input, &args.list) {
        (Some(root), None) => {
            let (splits, notes) = scan_input(root, args.val_labels.as_deref())
                .with_context(|| format!("reading input tree {}", root.display()))?;
            for n in notes {
                tracing::info!("{n}");
            }
            if let Some(first) = splits.first() {
                if args.allow_empty_classes {
                    let empty = empty_classes(first);
                    if !empty.is_empty() {
                        tracing::warn!(
                            "{} of {} classes of {:?} have no file; kept as classes without \
                             images (--allow-empty-classes)",
                            empty.len(),
                            first.classes.len(),
                            first.name
                        );
                    }
                } else {
                    refuse_empty_classes(root, first)
                        .with_context(|| format!("reading input tree {}", root.display()))?;
                }
            }
            (splits, "imagefolder")
        }
        (None, Some(list)) => (vec![list_split(list, &args.split, &args.out)?], "list"),
        _ => bail!("give exactly one of --input and --list"),
    };
    // A split without inputs would be a set of 0 records that trains or scores nothing.
    for split in &splits {
        if split.items.is_empty() {
            bail!(
                "split {:?} has no input files ({} classes): nothing to shard",
                split.name,
                split.classes.len()
            );
        }
    }
    let abort_after = match std::env::var(ABORT_AFTER_ENV) {
        Ok(v) => Some(
            v.parse::<u64>()
                .with_context(|| format!("{ABORT_AFTER_ENV}={v:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let cfg = JobConfig {
        ingest: IngestOptions {
            format: match args.format {
                Format::Jpeg => Encoding::Jpeg,
                Format::Raw => Encoding::RawRgbZstd,
            },
            max_side: args.max_side,
            quality: args.quality,
            max_pixels: args.max_pixels,
            restart_mcus: args.restart_mcus,
        },
        shard_bytes: args.shard_bytes,
        seed: args.seed,
        threads,
        input_kind: kind.to_string(),
        abort_after,
    };
    // One writer per split folder, every split locked before any is written.
    let mut _locks = Vec::with_capacity(splits.len());
    for split in &splits {
        let dir = args.out.join(&split.name);
        _locks.push(
            formats::lock::OutputLock::acquire(&dir, formats::lock::LOCK_FILE).with_context(
                || format!("--out {} (split {:?})", args.out.display(), split.name),
            )?,
        );
    }
    let mut empty = Vec::new();
    for split in &splits {
        let dir = args.out.join(&split.name);
        let bar = progress::bar(split.items.len() as u64, &split.name, "img");
        let outcome = shard_split(split, &dir, &cfg, &mut |done, _| bar.set_position(done))
            .with_context(|| format!("sharding split {:?} into {}", split.name, dir.display()))?;
        bar.finish();
        let m = &outcome.manifest;
        for s in m.skipped.iter().take(20) {
            tracing::warn!(
                "skipped {}: {}",
                s.path.escape_debug(),
                s.reason.escape_debug()
            );
        }
        if m.skipped.len() > 20 {
            tracing::warn!(
                "... and {} more skipped files (see {}/manifest.json)",
                m.skipped.len() - 20,
                dir.display()
            );
        }
        let state = if outcome.already_complete {
            " (already complete)".to_string()
        } else if outcome.resumed_shards > 0 {
            format!(" (resumed: {} shards reused)", outcome.resumed_shards)
        } else {
            String::new()
        };
        println!(
            "{}: {} records, {} classes, {} shards, {:.1} MiB, {} skipped, fingerprint {}{state}",
            split.name,
            m.num_records,
            m.classes.len(),
            m.shards.len(),
            m.total_bytes as f64 / (1 << 20) as f64,
            m.skipped.len(),
            m.fingerprint
        );
        if m.num_records == 0 {
            empty.push(format!(
                "{}: 0 of {} files could be read (their reasons: {}/manifest.json, `skipped`)",
                split.name,
                split.items.len(),
                dir.display()
            ));
        }
    }
    if !empty.is_empty() {
        bail!(
            "a split has no records; train and eval refuse it: {}",
            empty.join("; ")
        );
    }
    Ok(())
}

/// A list-file split; a split other than `train` takes the class list of `OUT/train` when
/// that split exists (shard it first).
fn list_split(
    list: &std::path::Path,
    split: &str,
    out: &std::path::Path,
) -> anyhow::Result<SplitInput> {
    let s =
        read_list(list, split).with_context(|| format!("reading list file {}", list.display()))?;
    let train_dir = out.join("train");
    if split == "train" || !train_dir.join("manifest.json").is_file() {
        return Ok(s);
    }
    let train = formats::shard::Manifest::read(&train_dir).with_context(|| {
        format!(
            "reading the training split's classes from {}",
            train_dir.display()
        )
    })?;
    let (s, how) = onto_train_classes(s, &train.classes, list).with_context(|| {
        format!(
            "putting {} on the classes of {}",
            list.display(),
            train_dir.display()
        )
    })?;
    tracing::info!(
        "{}: on the {} classes of {} ({how})",
        list.display(),
        train.classes.len(),
        train_dir.display()
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: super::Args,
    }

    /// `--shorter-side` says what the flag is; the old `--max-side` still works.
    #[test]
    fn shorter_side_and_its_old_name() {
        use clap::Parser;
        for flag in ["--shorter-side", "--max-side"] {
            let c =
                Cli::try_parse_from(["shard", "--input", "x", "--out", "y", flag, "256"]).unwrap();
            assert_eq!(c.args.max_side, 256, "{flag}");
        }
        let c = Cli::try_parse_from(["shard", "--input", "x", "--out", "y"]).unwrap();
        assert_eq!(c.args.max_side, 512);
        let c = Cli::try_parse_from(["shard", "--input", "x", "--out", "y", "--val-labels", "v"])
            .unwrap();
        assert_eq!(
            c.args.val_labels.as_deref(),
            Some(std::path::Path::new("v"))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64M"), Ok(64_000_000));
        assert_eq!(parse_size("100000"), Ok(100_000));
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("10").is_err());
    }
}
