//! `deit-pipe report RUN_DIR`: draw the loss, accuracy and learning-rate curves of a run
//! to a PNG and print the per-epoch summary table.

use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;

/// Arguments of `deit-pipe report`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Run directory (holds metrics.jsonl).
    pub run_dir: PathBuf,
    /// Where to write the PNG (default RUN_DIR/report.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Draw the PNG and print the table.
pub fn run(args: Args) -> Result<()> {
    let report = trainer::report::report(&args.run_dir, args.out.as_deref())?;
    print!("{}", report.table);
    println!(
        "wrote {}{}",
        report.png.display(),
        if report.with_text {
            ""
        } else {
            " (no font found: curves without labels; set DEIT_PIPE_FONT to a .ttf)"
        }
    );
    Ok(())
}
