//! `deit-pipe report RUN_DIR`: loss, accuracy and learning-rate curves from a run's
//! `metrics.jsonl` drawn to a PNG (plotters), and a plain-text summary table.
//!
//! Text in the PNG needs a TrueType font (plotters' `ab_glyph` backend draws only fonts
//! registered from bytes). The first of `$DEIT_PIPE_FONT` and a few common system paths
//! (DejaVu, Liberation, Noto) that exists is used; without one, the curves are drawn
//! without captions or axis labels and the table carries the numbers.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::train::metrics::{read_metrics, EpochRecord, MetricRecord, StepRecord, METRICS_FILE};

/// Candidate font files, tried in order after `$DEIT_PIPE_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];
const FONT_NAME: &str = "sans-serif";

/// Register a font for plot text once; `true` when one was found.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var_os("DEIT_PIPE_FONT").map(PathBuf::from);
        let candidates = env.into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT_NAME, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// What `report` produced.
#[derive(Debug)]
pub struct Report {
    /// The PNG written.
    pub png: PathBuf,
    /// The summary table (also printed by the CLI).
    pub table: String,
    /// Whether the PNG carries text (a font was found).
    pub with_text: bool,
}

/// Read `run_dir/metrics.jsonl`, draw `png` (default `run_dir/report.png`) and build the table.
pub fn report(run_dir: &Path, png: Option<&Path>) -> Result<Report> {
    let path = run_dir.join(METRICS_FILE);
    let records = read_metrics(&path)?;
    let steps: Vec<&StepRecord> = records
        .iter()
        .filter_map(|r| match r {
            MetricRecord::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    let epochs: Vec<&EpochRecord> = records
        .iter()
        .filter_map(|r| match r {
            MetricRecord::Epoch(e) => Some(e),
            _ => None,
        })
        .collect();
    if steps.is_empty() && epochs.is_empty() {
        bail!("{}: no metrics records yet", path.display());
    }
    let png = png
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run_dir.join("report.png"));
    let with_text = font_available();
    draw(&png, &steps, &epochs, with_text).with_context(|| format!("drawing {}", png.display()))?;
    Ok(Report {
        png,
        table: summary_table(&epochs),
        with_text,
    })
}

/// The per-epoch summary table: lr, train loss, val loss and accuracies, throughput.
pub fn summary_table(epochs: &[&EpochRecord]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>5} {:>10} {:>10} {:>9} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8}",
        "epoch",
        "lr",
        "train_loss",
        "val_loss",
        "top1",
        "top5",
        "top1_cls",
        "top1_dist",
        "ema_top1",
        "img/s"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for e in epochs {
        let v = e.val.as_ref();
        let _ = writeln!(
            t,
            "{:>5} {:>10.3e} {:>10.4} {:>9} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8.1}",
            e.epoch,
            e.lr,
            e.train_loss,
            v.map_or("-".to_string(), |v| format!("{:.4}", v.loss)),
            opt(v.map(|v| v.top1)),
            opt(v.map(|v| v.top5)),
            opt(v.map(|v| v.top1_cls)),
            opt(v.and_then(|v| v.top1_dist)),
            opt(e.val_ema.as_ref().map(|v| v.top1)),
            e.img_per_s,
        );
    }
    let best = epochs
        .iter()
        .filter_map(|e| e.val.as_ref().map(|v| (e.epoch, v.top1, v.top5)))
        .fold(None::<(usize, f64, f64)>, |b, x| match b {
            Some(b) if b.1 >= x.1 => Some(b),
            _ => Some(x),
        });
    if let Some((epoch, top1, top5)) = best {
        let _ = writeln!(t, "best: epoch {epoch}, top-1 {top1:.2}%, top-5 {top5:.2}%");
    }
    t
}

type Series = (String, RGBColor, Vec<(f64, f64)>);

fn bounds(series: &[Series], log_y: bool) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if !x.is_finite() || !y.is_finite() || (log_y && y <= 0.0) {
            continue;
        }
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, if log_y { 1e-6..1.0 } else { 0.0..1.0 });
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 * 1.1 + 1e-9;
        y0 = if log_y { y0 * 0.9 } else { y0 - 1e-9 };
    }
    let pad = if log_y { 0.0 } else { 0.05 * (y1 - y0) };
    (x0..x1, (y0 - pad)..(y1 + pad))
}

fn draw(png: &Path, steps: &[&StepRecord], epochs: &[&EpochRecord], text: bool) -> Result<()> {
    let root = BitMapBackend::new(png, (1500, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let x = |s: u64| s as f64;

    let loss: Vec<Series> = vec![
        (
            "train loss (step)".into(),
            RGBColor(150, 150, 220),
            steps.iter().map(|s| (x(s.step), s.loss)).collect(),
        ),
        (
            "train loss (epoch)".into(),
            BLUE,
            epochs.iter().map(|e| (x(e.step), e.train_loss)).collect(),
        ),
        (
            "val loss".into(),
            RED,
            epochs
                .iter()
                .filter_map(|e| e.val.as_ref().map(|v| (x(e.step), v.loss)))
                .collect(),
        ),
    ];
    let val = |f: fn(&crate::train::eval::EvalSummary) -> Option<f64>| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .filter_map(|e| e.val.as_ref().and_then(f).map(|v| (x(e.step), v)))
            .collect()
    };
    let acc: Vec<Series> = vec![
        ("val top-1".into(), RED, val(|v| Some(v.top1))),
        (
            "val top-5".into(),
            RGBColor(230, 140, 0),
            val(|v| Some(v.top5)),
        ),
        ("top-1 cls head".into(), BLUE, val(|v| Some(v.top1_cls))),
        ("top-1 dist head".into(), GREEN, val(|v| v.top1_dist)),
        (
            "EMA top-1".into(),
            MAGENTA,
            epochs
                .iter()
                .filter_map(|e| e.val_ema.as_ref().map(|v| (x(e.step), v.top1)))
                .collect(),
        ),
    ];
    let lr: Vec<Series> = vec![(
        "lr".into(),
        BLACK,
        steps.iter().map(|s| (x(s.step), s.lr)).collect(),
    )];
    panel(&panels[0], "loss", &loss, text)?;
    panel(&panels[1], "val accuracy (%)", &acc, text)?;
    panel(&panels[2], "learning rate", &lr, text)?;
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
    text: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (xr, yr) = bounds(series, false);
    let mut builder = ChartBuilder::on(area);
    builder.margin(12);
    if text {
        builder
            .caption(title, (FONT_NAME, 20))
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(xr, yr)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("step")
            .label_style((FONT_NAME, 13))
            .axis_desc_style((FONT_NAME, 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, color, pts) in series.iter().filter(|s| !s.2.is_empty()) {
        let color = *color;
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        let line = chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if text {
            line.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        if pts.len() <= 400 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT_NAME, 13))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
