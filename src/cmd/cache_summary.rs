//! `teacher-cache` over several ranks: every rank's report is gathered to rank 0, which
//! prints one summary of the job (views, time, which rank on which machine wrote which
//! parts where) and checks that every part of every epoch is in its own `--out`.
//!
//! On node-local disks rank 0 cannot see the parts the other machines wrote: the summary
//! then names them and where they are, since `train --teacher-targets` needs every part
//! in one folder.

use anyhow::{bail, Context, Result};
use formats::cache_schema::{file_name, PartSpec};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What one rank did, as gathered to rank 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankReport {
    /// The rank.
    pub rank: usize,
    /// The machine it ran on (host name).
    pub host: String,
    /// Its `--out`, made absolute on its machine.
    pub out: PathBuf,
    /// The part of every epoch it wrote.
    pub part: PartSpec,
    /// Epochs it wrote.
    pub written: Vec<u32>,
    /// Epochs whose part was already finished there.
    pub skipped: Vec<u32>,
    /// Views (rows) it wrote.
    pub rows: u64,
    /// Its wall-clock seconds.
    pub seconds: f64,
    /// Seconds in the teacher's forward passes.
    pub forward_seconds: f64,
}

impl RankReport {
    /// This process's host name (`?` when the system does not say).
    pub fn this_host() -> String {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "?".into();
        }
        let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// The outcome of [`summarize`]: the text rank 0 prints, and whether every part is in
/// rank 0's `--out`.
#[derive(Debug)]
pub struct Summary {
    /// The summary, several lines.
    pub text: String,
    /// Every part of every epoch is present in rank 0's `--out`.
    pub complete: bool,
}

fn epochs_text(e: &[u32]) -> String {
    match e {
        [] => "none".into(),
        [a] => a.to_string(),
        _ if e.windows(2).all(|w| w[1] == w[0] + 1) => {
            format!("{}..={}", e[0], e[e.len() - 1])
        }
        _ => format!("{e:?}"),
    }
}

/// Rank 0's summary of the job from every rank's report (in rank order), and the check
/// that each of the `epochs x ranks` parts is a file in rank 0's `--out` (`present`
/// says whether a path exists there). Errors when a part a rank wrote into the very
/// folder rank 0 writes to (same machine, same path) is missing: something removed it.
pub fn summarize(
    reports: &[RankReport],
    epochs: Range<u32>,
    present: impl Fn(&Path) -> bool,
) -> Result<Summary> {
    let Some(first) = reports.first() else {
        bail!("no rank reported");
    };
    let world = reports.len();
    let rows: u64 = reports.iter().map(|r| r.rows).sum();
    let slowest = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let mut hosts: Vec<&str> = reports.iter().map(|r| r.host.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "teacher-cache {}: {world} ranks on {} machine(s) ({}), epochs {}: {rows} views in \
         {slowest:.2} s (the slowest rank), {:.1} views/s together",
        first.out.display(),
        hosts.len(),
        hosts.join(", "),
        epochs_text(&epochs.clone().collect::<Vec<_>>()),
        rows as f64 / slowest.max(1e-9),
    );
    for r in reports {
        let _ = writeln!(
            text,
            "  rank {} on {}: part {} of epochs {} into {}: wrote {}, already finished {}; \
             {} views in {:.2} s (teacher forward {:.2} s)",
            r.rank,
            r.host,
            r.part,
            epochs_text(&epochs.clone().collect::<Vec<_>>()),
            r.out.display(),
            epochs_text(&r.written),
            epochs_text(&r.skipped),
            r.rows,
            r.seconds,
            r.forward_seconds
        );
    }
    let total = epochs.len() * world;
    let mut missing: Vec<(&RankReport, Vec<String>)> = Vec::new();
    for r in reports {
        let names: Vec<String> = epochs
            .clone()
            .map(|e| file_name(e, r.part))
            .filter(|n| !present(&first.out.join(n)))
            .collect();
        if names.is_empty() {
            continue;
        }
        if r.host == first.host && r.out == first.out {
            bail!(
                "rank {} wrote {} into {} on {}, but rank 0 does not find it there (removed \
                 while the job ran?); run teacher-cache again with the same --out to redo \
                 the missing parts",
                r.rank,
                names.join(", "),
                r.out.display(),
                r.host
            );
        }
        missing.push((r, names));
    }
    if missing.is_empty() {
        let _ = write!(
            text,
            "all {total} parts ({} epochs x {world} ranks) are present in {}",
            epochs.len(),
            first.out.display()
        );
        return Ok(Summary {
            text,
            complete: true,
        });
    }
    let absent: usize = missing.iter().map(|(_, n)| n.len()).sum();
    let _ = writeln!(
        text,
        "rank 0 sees {} of the {total} parts in {}; the others are where their ranks wrote them:",
        total - absent,
        first.out.display()
    );
    for (r, names) in &missing {
        let why = if r.host == first.host {
            "another folder on rank 0's machine"
        } else {
            "another machine: rank 0 cannot see its disk"
        };
        let _ = writeln!(
            text,
            "  rank {} on {} ({why}): {} in {}",
            r.rank,
            r.host,
            names.join(", "),
            r.out.display()
        );
    }
    let _ = write!(
        text,
        "`train --teacher-targets` needs every part in one folder on every machine: copy the \
         parts above into {} (and that folder to every machine), or give teacher-cache an \
         --out on a shared filesystem",
        first.out.display()
    );
    Ok(Summary {
        text,
        complete: false,
    })
}

/// `--out` made absolute against the working directory (for the summary: where the
/// parts of this rank went).
pub fn absolute(out: &Path) -> Result<PathBuf> {
    std::path::absolute(out).with_context(|| format!("--out {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rank: usize, host: &str, out: &str) -> RankReport {
        RankReport {
            rank,
            host: host.into(),
            out: out.into(),
            part: PartSpec::new(rank as u32 + 1, 2).unwrap(),
            written: vec![0, 1],
            skipped: vec![],
            rows: 100,
            seconds: 2.0 + rank as f64,
            forward_seconds: 1.0,
        }
    }

    #[test]
    fn a_shared_out_holds_every_part() {
        let reports = [report(0, "a", "/c"), report(1, "a", "/c")];
        let s = summarize(&reports, 0..2, |_| true).unwrap();
        assert!(s.complete);
        assert!(s.text.contains("2 ranks on 1 machine(s) (a)"), "{}", s.text);
        assert!(s.text.contains("200 views in 3.00 s"), "{}", s.text);
        assert!(s.text.contains("rank 1 on a: part 2/2"), "{}", s.text);
        assert!(
            s.text
                .ends_with("all 4 parts (2 epochs x 2 ranks) are present in /c"),
            "{}",
            s.text
        );
    }

    #[test]
    fn parts_on_another_machine_are_named_with_their_place() {
        let reports = [report(0, "a", "/c"), report(1, "b", "/c")];
        let seen = |p: &Path| p.to_string_lossy().contains("part-001");
        let s = summarize(&reports, 0..2, seen).unwrap();
        assert!(!s.complete);
        assert!(
            s.text.contains("rank 0 sees 2 of the 4 parts in /c"),
            "{}",
            s.text
        );
        assert!(
            s.text.contains(
                "rank 1 on b (another machine: rank 0 cannot see its disk): \
                 epoch-00000.part-002-of-002.parquet, epoch-00001.part-002-of-002.parquet in /c"
            ),
            "{}",
            s.text
        );
    }

    #[test]
    fn a_part_missing_from_the_shared_folder_is_an_error() {
        let reports = [report(0, "a", "/c"), report(1, "a", "/c")];
        let seen = |p: &Path| !p.to_string_lossy().contains("epoch-00001.part-002");
        let e = summarize(&reports, 0..2, seen).unwrap_err().to_string();
        assert!(
            e.contains("rank 1 wrote epoch-00001.part-002-of-002.parquet into /c on a"),
            "{e}"
        );
    }
}
