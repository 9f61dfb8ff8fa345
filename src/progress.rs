//! Progress bars for long jobs (indicatif), silenced by `--quiet`, and a log writer that
//! prints above the bars instead of tearing them.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::sync::OnceLock;

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Set up the shared progress target once; `quiet` hides every bar.
pub fn init(quiet: bool) {
    let multi = MultiProgress::new();
    if quiet {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let _ = MULTI.set(multi);
}

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(MultiProgress::new)
}

/// A bar for `total` items, showing items/s and ETA. `unit` names the items ("img", "rec").
pub fn bar(total: u64, label: &str, unit: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(total));
    let template = format!(
        "{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// Log output routed through the progress bars so lines are not torn.
#[derive(Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let text = text.trim_end_matches('\n');
        if multi().is_hidden() {
            std::io::stderr().write_all(buf)?;
        } else {
            multi().suspend(|| eprintln!("{text}"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
