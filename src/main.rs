//! The `deit-pipe` command line: shard datasets, cache teacher targets, train and
//! evaluate DeiT students. Each subcommand lives in its own module under `cmd/`.

mod alloc;
mod cmd;
mod progress;

use clap::{Parser, Subcommand};

/// Train data-efficient image transformers (DeiT) by distillation from an offline teacher cache.
#[derive(Parser, Debug)]
#[command(name = "deit-pipe", version, about, long_about = None)]
struct Cli {
    /// Turn off progress bars (logs still go to stderr; see RUST_LOG).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    // Each variant names its module in `cmd/`; add new ones one line at a time.
}

fn main() {
    alloc::tune_allocator();
    let cli = Cli::parse();
    progress::init(cli.quiet);
    init_logging();
    let result: anyhow::Result<()> = match cli.command {};
    if let Err(err) = result {
        // One-line cause first, then the chain for context.
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter::default)
        .with_target(false)
        .compact()
        .init();
}
