//! Progress bars for long jobs (indicatif), silenced by `--quiet`, and a log writer that
//! prints above the bars instead of tearing them. Bars are drawn only on a terminal
//! (indicatif's stderr target); rates are whole numbers (`322 img/s`), times `h:mm:ss`,
//! and a bar line fits 80 columns. Log lines carry ANSI colours only when stderr is a
//! terminal and `NO_COLOR` is unset ([`colour_enabled`]).

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

/// Whether log output may carry ANSI colour codes: stderr is a terminal and `NO_COLOR`
/// is unset or empty (<https://no-color.org>).
pub fn colour_enabled(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// [`colour_enabled`] for this process.
pub fn stderr_colour() -> bool {
    use std::io::IsTerminal;
    colour_enabled(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// A rate rounded to a whole number with its unit: `322 img/s`.
pub fn rate(per_sec: f64, unit: &str) -> String {
    let r = if per_sec.is_finite() {
        per_sec.max(0.0)
    } else {
        0.0
    };
    format!("{r:.0} {unit}/s")
}

/// A duration as `m:ss` or `h:mm:ss`.
pub fn hms(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// Columns of a bar line besides its prefix and message: " [", the bar, "] ".
#[cfg(test)]
const BAR_FRAME: usize = 4;
/// Width of the bar of [`train_bar`].
pub const TRAIN_BAR_WIDTH: usize = 8;

/// A bar for `total` items, showing items/s and ETA. `unit` names the items ("img", "rec").
pub fn bar(total: u64, label: &str, unit: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(total));
    let template = "{prefix:>10} [{bar:16}] {pos}/{len} {rate} ETA {left} {msg}";
    let unit = unit.to_string();
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate(s.per_sec(), &unit));
                },
            )
            .with_key(
                "left",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&hms(s.eta()));
                },
            )
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// The bar of a training epoch: `PREFIX [bar] MESSAGE`, the message made by
/// [`train_message`] (position, rate, loss, lr and the whole run's ETA).
pub fn train_bar(total: u64, label: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(total));
    let template = format!("{{prefix}} [{{bar:{TRAIN_BAR_WIDTH}}}] {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// The message of [`train_bar`]: `1234/5005 322 img/s loss 2.346 lr 1.0e-3 ETA 1:02:03`,
/// the ETA of the whole run.
pub fn train_message(
    pos: u64,
    len: u64,
    img_per_s: f64,
    loss: f64,
    lr: f64,
    run_eta: Option<std::time::Duration>,
) -> String {
    let loss = if loss.abs() < 10.0 {
        format!("{loss:.3}")
    } else if loss.abs() < 100.0 {
        format!("{loss:.2}")
    } else {
        format!("{loss:.1e}")
    };
    format!(
        "{pos}/{len} {} loss {loss} lr {lr:.1e} ETA {}",
        rate(img_per_s, "img"),
        run_eta.map_or("-".into(), hms)
    )
}

/// Columns a [`train_bar`] line takes for `prefix` and `message`.
#[cfg(test)]
pub fn train_line_width(prefix: &str, message: &str) -> usize {
    prefix.chars().count() + BAR_FRAME + TRAIN_BAR_WIDTH + message.chars().count()
}

/// Whole-run ETA of training: the mean time per batch so far (evaluation included)
/// times the batches left in this epoch and the later ones.
pub fn run_eta(
    elapsed: std::time::Duration,
    batches_done: u64,
    batches_left: u64,
) -> Option<std::time::Duration> {
    (batches_done > 0).then(|| elapsed.mul_f64(batches_left as f64 / batches_done as f64))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_enabled(true, None));
        assert!(!colour_enabled(false, None));
        assert!(!colour_enabled(true, Some(std::ffi::OsStr::new("1"))));
        assert!(colour_enabled(true, Some(std::ffi::OsStr::new(""))));
    }

    #[test]
    fn rates_are_whole_and_the_train_line_fits_80_columns() {
        assert_eq!(rate(322.1994, "img"), "322 img/s");
        assert_eq!(hms(Duration::from_secs(3723)), "1:02:03");
        assert_eq!(hms(Duration::from_secs(59)), "0:59");
        // The widest line a real run shows: epoch 300/300, ImageNet at batch 64
        // (20019 batches), a 5-digit rate, a large loss, 99+ hours left.
        let msg = train_message(
            20018,
            20019,
            12345.678,
            -12.3456,
            1.2345e-3,
            Some(Duration::from_secs(99 * 3600 + 59 * 60 + 59)),
        );
        assert_eq!(
            msg,
            "20018/20019 12346 img/s loss -12.35 lr 1.2e-3 ETA 99:59:59"
        );
        let width = train_line_width("ep 300/300", &msg);
        assert!(width <= 80, "{width}: {msg}");
        assert_eq!(
            run_eta(Duration::from_secs(10), 5, 20),
            Some(Duration::from_secs(40))
        );
        assert_eq!(run_eta(Duration::from_secs(10), 0, 20), None);
    }
}
