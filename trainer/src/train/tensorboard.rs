//! TensorBoard scalars (`train --tensorboard`): event files under `RUN_DIR/tb/` that
//! `tensorboard --logdir RUN_DIR/tb` and `tensorboard.backend.event_processing` read
//! (checked by `tools/check_tensorboard_events.py`).
//!
//! Written by hand rather than through a crate: the Rust crates that write the format
//! (`tensorboard-rs`, `tboard`) are single-author projects without a release in years,
//! and the part we need is small and fixed: a TFRecord stream of `Event` protocol
//! buffers. Each record is
//! ```text
//! u64 length (LE) | u32 masked CRC32C of the length bytes | data | u32 masked CRC32C of data
//! ```
//! with `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. The messages used
//! (tensorflow/core/util/event.proto, summary.proto):
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//! The first event of a file carries `file_version = "brain.Event:2"`.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Sub-directory of the run directory that holds the event files.
pub const TB_DIR: &str = "tb";

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32C_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | wire as u64, out);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// An `Event` with `wall_time`, `step` and either a file version or scalar values.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(&str, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    key(1, 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(2, 0, &mut e);
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            key(2, 5, &mut v);
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Writes scalar summaries to one event file, flushed after each event.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir` (created), named as TensorFlow names them:
    /// `events.out.tfevents.<unix seconds>.<host>.<pid>`.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            })
            .unwrap_or_else(|| "localhost".into());
        let t = now();
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            t as u64,
            std::process::id()
        ));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        w.write_event(&event(t, 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    fn write_event(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(&tfrecord(data))
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Scalars `(tag, value)` at `step` in one event; non-finite values are skipped.
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let v: Vec<(&str, f32)> = values
            .iter()
            .filter(|(_, x)| x.is_finite())
            .map(|(t, x)| (*t, *x as f32))
            .collect();
        if v.is_empty() {
            return Ok(());
        }
        self.write_event(&event(now(), step as i64, None, &v))
    }

    /// Path of the event file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What `train --tensorboard` logs: per logging step `step/loss`, `step/lr`,
/// `step/img_per_s` (and `step/distill_loss`, `step/grad_norm` when present) at the
/// global step; per epoch main.py's log.txt quantities at the epoch number
/// (`train/loss`, `train/lr`, `test/loss`, `test/acc1`, `test/acc5`, `test_ema/acc1`).
pub struct TrainBoard {
    writer: EventWriter,
}

impl TrainBoard {
    /// A new event file under `run_dir/tb`.
    pub fn create(run_dir: &Path) -> Result<Self> {
        Ok(TrainBoard {
            writer: EventWriter::create(&run_dir.join(TB_DIR))?,
        })
    }

    /// Log a step record.
    pub fn step(&mut self, r: &super::metrics::StepRecord) -> Result<()> {
        let mut v = vec![
            ("step/loss", r.loss),
            ("step/lr", r.lr),
            ("step/img_per_s", r.img_per_s),
        ];
        if let Some(d) = r.distill_loss {
            v.push(("step/distill_loss", d));
        }
        if let Some(g) = r.grad_norm {
            v.push(("step/grad_norm", g));
        }
        self.writer.scalars(r.step, &v)
    }

    /// Log an epoch record.
    pub fn epoch(&mut self, r: &super::metrics::EpochRecord) -> Result<()> {
        let mut v = vec![("train/loss", r.train_loss), ("train/lr", r.lr)];
        if let Some(e) = &r.val {
            v.extend([
                ("test/loss", e.loss),
                ("test/acc1", e.top1),
                ("test/acc5", e.top5),
            ]);
        }
        if let Some(e) = &r.val_ema {
            v.push(("test_ema/acc1", e.top1));
        }
        self.writer.scalars(r.epoch as u64, &v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_values() {
        // RFC 3720 B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn records_frame_their_data() {
        let r = tfrecord(b"abc");
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(
            u32::from_le_bytes(r[15..19].try_into().unwrap()),
            masked_crc(b"abc")
        );
    }
}
