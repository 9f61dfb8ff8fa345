//! `deit-pipe teacher-cache`: run the teacher once per view of the trainer's epoch plans
//! and write its top-K answers as Parquet (resumable, splittable with `--part i/N`).

use anyhow::{Context, Result};
use cache::run::{parse_epochs, run as run_job, CacheJob, JobProgress};
use clap::Args as ClapArgs;
use formats::cache_schema::PartSpec;
use indicatif::ProgressBar;
use std::path::PathBuf;
use trainer::train::checkpoint::{model_name_of_run, resolve_weights};
use trainer::train::config::{Overrides, TrainConfig};

use super::view_args::ViewArgs;

/// Arguments of `deit-pipe teacher-cache`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Dataset directory from `deit-pipe shard` (its `train/` split is used), or a split.
    #[arg(long)]
    pub data: PathBuf,
    /// Teacher weights: a .safetensors / .pth file, a checkpoint directory, or a
    /// `deit-pipe train` run directory (its best checkpoint, else its last).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Teacher architecture (timm name), e.g. regnety_160. Default: the model named in the
    /// config.toml of the run the weights come from.
    #[arg(long)]
    pub teacher_arch: Option<String>,
    /// The student's training config (TOML): seed, repeats, augmentation and plan must be
    /// the ones `train` will use.
    #[arg(long)]
    pub config: PathBuf,
    /// The same view flags `train` takes (seed, augmentation, `--set`), so the cache holds
    /// the views of the student's exact command line.
    #[command(flatten)]
    pub view: ViewArgs,
    /// Epochs: `A..B` (half-open), `A..=B` (inclusive) or `A`.
    #[arg(long)]
    pub epochs: String,
    /// Classes kept per view.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Cache directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Write part i of N of every epoch (a job array fills one directory). Under
    /// `mpirun -np N` (a build with `--features mpi`) rank r writes part r+1 of N by
    /// itself: leave this flag out there.
    #[arg(long, default_value = "1/1")]
    pub part: String,
    /// Views per teacher forward pass.
    #[arg(long, default_value_t = 128)]
    pub teacher_batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

struct Bar(Option<ProgressBar>);

impl JobProgress for Bar {
    fn start(&mut self, total: u64) {
        self.0 = Some(crate::progress::bar(total, "teacher-cache", "view"));
    }
    fn advance(&mut self, views: u64) {
        if let Some(b) = &self.0 {
            b.inc(views);
        }
    }
}

/// Run `deit-pipe teacher-cache`.
pub fn run(args: Args) -> Result<()> {
    let transport = if args.device.starts_with("cuda") {
        crate::dist::Transport::Gpu
    } else {
        crate::dist::Transport::Host
    };
    let comm = crate::dist::join(transport)?;
    let part = match comm.world() {
        1 => PartSpec::parse(&args.part).context("--part")?,
        world => {
            if args.part != "1/1" {
                anyhow::bail!(
                    "--part {} with {world} MPI ranks: the ranks already split every epoch \
                     (rank r writes part r+1 of {world}); use one or the other",
                    args.part
                );
            }
            PartSpec::new(comm.rank() as u32 + 1, world as u32)
                .context("splitting the epochs over the MPI ranks")?
        }
    };
    // One writer per part of the cache: parts of one cache may be written at the same
    // time (by MPI ranks or by separate `--part` jobs), the same part only once.
    let lock_name = formats::lock::cache_part_lock_name(part.index, part.count);
    let _lock = formats::lock::OutputLock::acquire(&args.out, &lock_name)
        .with_context(|| format!("--out {} (part {part})", args.out.display()))?;
    let device = crate::dist::device_for_rank(&args.device, comm.as_ref());
    let mut config = TrainConfig::from_file(&args.config)?;
    config.apply(&args.view.add_to(Overrides::default()))?;
    let teacher_weights = resolve_weights(&args.teacher, false)
        .with_context(|| format!("--teacher {}", args.teacher.display()))?;
    let teacher_arch = match args.teacher_arch {
        Some(arch) => arch,
        None => model_name_of_run(&teacher_weights)?,
    };
    let job = CacheJob {
        data: args.data,
        teacher_weights,
        teacher_arch,
        config,
        epochs: parse_epochs(&args.epochs)?,
        top_k: args.top_k,
        out: args.out,
        part,
        batch_size: args.teacher_batch_size,
        device,
    };
    let mut bar = Bar(None);
    let report = if comm.is_primary() {
        run_job(&job, &mut bar)?
    } else {
        run_job(&job, &mut cache::run::NoProgress)?
    };
    if let Some(b) = bar.0 {
        b.finish_and_clear();
    }
    if comm.world() > 1 {
        return sum_up_ranks(comm.as_ref(), &job, part, &report);
    }
    let rate = report.rows as f64 / report.total_seconds.max(1e-9);
    eprintln!(
        "teacher-cache {}: wrote epochs {:?}, skipped (already finished) {:?}; {} views in \
         {:.2} s ({rate:.1} views/s): views {:.2} s, teacher forward {:.2} s ({:.1} views/s), \
         top-K + Parquet {:.2} s; overhead over the bare teacher {:.1}%",
        job.out.display(),
        report.written,
        report.skipped,
        report.rows,
        report.total_seconds,
        report.views_seconds,
        report.forward_seconds,
        report.rows as f64 / report.forward_seconds.max(1e-9),
        report.rows_seconds,
        100.0 * report.overhead()
    );
    Ok(())
}

/// The end of a job of several ranks: every rank waits for the others (under the file-I/O
/// limit: a rank may still be writing its last part), sends its report to rank 0, and
/// rank 0 prints one summary and checks that every part is in its `--out`.
fn sum_up_ranks(
    comm: &dyn trainer::dist::Collective,
    job: &CacheJob,
    part: PartSpec,
    report: &cache::run::JobReport,
) -> Result<()> {
    use super::cache_summary::{absolute, summarize, RankReport};
    comm.io_barrier()
        .context("waiting for every rank to finish its parts")?;
    let mine = RankReport {
        rank: comm.rank(),
        host: RankReport::this_host(),
        out: absolute(&job.out)?,
        part,
        written: report.written.clone(),
        skipped: report.skipped.clone(),
        rows: report.rows,
        seconds: report.total_seconds,
        forward_seconds: report.forward_seconds,
    };
    let bytes = serde_json::to_vec(&mine).context("this rank's report")?;
    let all = comm
        .all_gather_bytes(&bytes)
        .context("gathering the ranks' reports")?;
    if !comm.is_primary() {
        return Ok(());
    }
    let reports = all
        .iter()
        .enumerate()
        .map(|(r, b)| {
            serde_json::from_slice::<RankReport>(b)
                .with_context(|| format!("rank {r}'s report is not a teacher-cache report"))
        })
        .collect::<Result<Vec<_>>>()?;
    let summary = summarize(&reports, job.epochs.clone(), |p| p.is_file())?;
    match summary.complete {
        true => eprintln!("{}", summary.text),
        false => eprintln!("warning: {}", summary.text),
    }
    Ok(())
}
