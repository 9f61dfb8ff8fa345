//! The sharding job: inputs are shuffled with the seed, decoded/resized/encoded in parallel
//! (rayon workers fed through bounded crossbeam channels), and written in input order by one
//! writer, so the output never depends on thread count or timing. At most `window` images
//! are in flight, so memory stays bounded whatever the data set size.
//!
//! Resume: each finished shard is fsynced, renamed into place and then recorded in the
//! split's journal. A rerun of the same job skips every journaled shard and continues from
//! the input position where the last one ended; records are a pure function of their input
//! and shard boundaries a pure function of the record sequence, so the result (and the
//! fingerprint) equals that of an uninterrupted run.

use super::inputs::SplitInput;
use super::process::{process_image, IngestOptions, Processed};
use super::IngestError;
use crossbeam_channel::bounded;
use formats::atomic::write_atomic;
use formats::shard::journal::{Journal, JournalEntry};
use formats::shard::layout::DATA_HEADER_LEN;
use formats::shard::{
    fingerprint, Manifest, RecordMeta, ShardInfo, ShardOptions, ShardWriter, SkippedFile,
    FORMAT_VERSION, MANIFEST_FILE,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// Environment variable read by the job: abort the process (like `kill -9`) after this many
/// records were written in this run. For crash-and-resume tests only.
pub const ABORT_AFTER_ENV: &str = "DEIT_PIPE_ABORT_AFTER_RECORDS";

/// Configuration of a sharding job.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Per-image options.
    pub ingest: IngestOptions,
    /// Target bytes per shard data file (a shard closes before it would exceed this).
    pub shard_bytes: u64,
    /// Seed of the write-time shuffle.
    pub seed: u64,
    /// Worker threads for decode/resize/encode.
    pub threads: usize,
    /// Where inputs came from (`imagefolder` or `list`), recorded in the manifest.
    pub input_kind: String,
    /// Abort the process after this many records written in this run (tests).
    pub abort_after: Option<u64>,
}

/// What a finished split looks like.
#[derive(Debug)]
pub struct JobOutcome {
    /// The manifest written.
    pub manifest: Manifest,
    /// Shards reused from an earlier, interrupted run.
    pub resumed_shards: usize,
    /// True when the split was already complete and nothing was done.
    pub already_complete: bool,
}

fn shard_options(cfg: &JobConfig) -> ShardOptions {
    ShardOptions {
        format: cfg.ingest.format,
        max_side: cfg.ingest.max_side,
        quality: cfg.ingest.quality,
        shard_bytes: cfg.shard_bytes,
        seed: cfg.seed,
        max_pixels: cfg.ingest.max_pixels,
        input: cfg.input_kind.clone(),
        restart_mcus: cfg.ingest.restart_mcus,
    }
}

/// The key that identifies a job: options, split, classes and the labelled input list.
fn job_key(input: &SplitInput, opts: &ShardOptions) -> String {
    let mut h = blake3::Hasher::new();
    h.update(serde_json::to_string(opts).unwrap_or_default().as_bytes());
    h.update(input.name.as_bytes());
    for c in &input.classes {
        h.update(c.as_bytes());
        h.update(b"\0");
    }
    for it in &input.items {
        h.update(it.display.as_bytes());
        h.update(b"\0");
        h.update(&it.label.to_le_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The write order: a seeded permutation of the inputs (the split name is mixed into the
/// seed so train and val are shuffled independently).
pub fn shuffled_order(n: usize, seed: u64, split: &str) -> Vec<usize> {
    let mut key = blake3::Hasher::new();
    key.update(&seed.to_le_bytes());
    key.update(split.as_bytes());
    let mut seed_bytes = [0u8; 32];
    seed_bytes.copy_from_slice(key.finalize().as_bytes());
    let mut rng = ChaCha8Rng::from_seed(seed_bytes);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// State of the ordered writer.
struct Sink<'a> {
    dir: &'a Path,
    cfg: &'a JobConfig,
    journal: Journal,
    classes: usize,
    shards: Vec<ShardInfo>,
    counts: Vec<u64>,
    skipped: Vec<SkippedFile>,
    open: Option<(ShardWriter, Vec<u64>)>,
    pending_skips: Vec<SkippedFile>,
    written_this_run: u64,
}

impl Sink<'_> {
    fn close_shard(&mut self, input_end: u64) -> Result<(), IngestError> {
        if let Some((w, counts)) = self.open.take() {
            let info = w.finish()?;
            let entry = JournalEntry {
                shard: info.clone(),
                input_end,
                counts: counts.clone(),
                skipped: std::mem::take(&mut self.pending_skips),
            };
            self.journal.append(&entry)?;
            self.adopt(entry);
        }
        Ok(())
    }

    fn adopt(&mut self, e: JournalEntry) {
        for (c, n) in self.counts.iter_mut().zip(&e.counts) {
            *c += n;
        }
        self.skipped.extend(e.skipped);
        self.shards.push(e.shard);
    }

    fn put(&mut self, pos: u64, p: Processed, label: u32) -> Result<(), IngestError> {
        if let Some((w, _)) = &self.open {
            if w.records() > 0 && w.data_len() + p.bytes.len() as u64 > self.cfg.shard_bytes {
                self.close_shard(pos)?;
            }
        }
        if self.open.is_none() {
            let w = ShardWriter::create(self.dir, self.shards.len())?;
            self.open = Some((w, vec![0; self.classes]));
        }
        if let Some((w, counts)) = &mut self.open {
            let meta = RecordMeta {
                label,
                orig_width: p.orig_width,
                orig_height: p.orig_height,
                width: p.width,
                height: p.height,
                encoding: p.encoding,
            };
            w.push(meta, &p.bytes)?;
            counts[label as usize] += 1;
        }
        self.written_this_run += 1;
        if self.cfg.abort_after == Some(self.written_this_run) {
            // Simulate `kill -9`: no cleanup, no flush.
            std::process::abort();
        }
        Ok(())
    }
}

/// Remove `shard-*.tmp` files a killed run left behind.
fn remove_temp_files(dir: &Path) -> Result<(), IngestError> {
    let rd = std::fs::read_dir(dir).map_err(|e| IngestError::io(dir, e))?;
    for e in rd {
        let e = e.map_err(|e| IngestError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("shard-") && name.ends_with(".tmp") {
            std::fs::remove_file(e.path()).map_err(|err| IngestError::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Shard one split into `dir`. `progress(done, total)` is called from the writer thread
/// after every input (resumed inputs count as done).
pub fn shard_split(
    input: &SplitInput,
    dir: &Path,
    cfg: &JobConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<JobOutcome, IngestError> {
    std::fs::create_dir_all(dir).map_err(|e| IngestError::io(dir, e))?;
    let opts = shard_options(cfg);
    let total = input.items.len() as u64;
    if dir.join(MANIFEST_FILE).exists() {
        let m = Manifest::read(dir)?;
        if m.options == opts && m.classes == input.classes {
            progress(total, total);
            return Ok(JobOutcome {
                manifest: m,
                resumed_shards: 0,
                already_complete: true,
            });
        }
        let old = &m.options;
        let mut differs = Vec::new();
        if old.restart_mcus != opts.restart_mcus {
            differs.push(format!(
                "restart_mcus {} (pass --restart-mcus {} to reuse it)",
                old.restart_mcus, old.restart_mcus
            ));
        }
        if (old.format, old.max_side, old.quality) != (opts.format, opts.max_side, opts.quality) {
            differs.push(format!(
                "format/max_side/quality {:?}/{}/{}",
                old.format, old.max_side, old.quality
            ));
        }
        if m.classes != input.classes {
            differs.push("other classes".into());
        }
        let what = if differs.is_empty() {
            String::new()
        } else {
            format!(" ({})", differs.join(", "))
        };
        return Err(IngestError::Layout(format!(
            "{} already holds a finished shard set made with other options or classes{what}; \
             choose another --out or delete it",
            dir.display()
        )));
    }
    for it in &input.items {
        if it.label as usize >= input.classes.len() {
            return Err(IngestError::Layout(format!(
                "{}: label {} but there are {} classes",
                it.display,
                it.label,
                input.classes.len()
            )));
        }
    }
    let (journal, done) = Journal::open(dir, &job_key(input, &opts))?;
    remove_temp_files(dir)?;
    let resumed_shards = done.len();
    let start = done.last().map_or(0, |e| e.input_end);
    let mut sink = Sink {
        dir,
        cfg,
        journal,
        classes: input.classes.len(),
        shards: Vec::new(),
        counts: vec![0; input.classes.len()],
        skipped: Vec::new(),
        open: None,
        pending_skips: Vec::new(),
        written_this_run: 0,
    };
    for e in done {
        sink.adopt(e);
    }
    progress(start, total);

    let order = shuffled_order(input.items.len(), cfg.seed, &input.name);
    let threads = cfg.threads.max(1);
    let window = 4 * threads + 8;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("shard-worker-{i}"))
        .build()
        .map_err(|e| IngestError::Layout(format!("cannot start worker threads: {e}")))?;
    let (job_tx, job_rx) = bounded::<u64>(window);
    let (res_tx, res_rx) = bounded::<(u64, Result<Processed, String>)>(window);

    let result = pool.in_place_scope(|scope| -> Result<(), IngestError> {
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            let order = &order;
            let ingest = &cfg.ingest;
            scope.spawn(move |_| {
                let mut resizer = fast_image_resize::Resizer::new();
                for pos in job_rx.iter() {
                    let item = &input.items[order[pos as usize]];
                    let r = match super::inputs::read_regular_file(&item.path) {
                        // A decoder bug on hostile input must not take the job down.
                        Ok(bytes) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            process_image(&bytes, ingest, &mut resizer)
                        }))
                        .unwrap_or_else(|_| Err("the decoder crashed on this file".into())),
                        Err(reason) => Err(reason),
                    };
                    if res_tx.send((pos, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);
        let job_tx = job_tx; // dropped when this closure returns: workers then stop
        let mut next_feed = start;
        let mut next_write = start;
        let mut buffer: BTreeMap<u64, Result<Processed, String>> = BTreeMap::new();
        while next_write < total {
            while next_feed < total && next_feed < next_write + window as u64 {
                if job_tx.send(next_feed).is_err() {
                    break;
                }
                next_feed += 1;
            }
            let (pos, r) = res_rx
                .recv()
                .map_err(|_| IngestError::Layout("a worker thread stopped unexpectedly".into()))?;
            buffer.insert(pos, r);
            while let Some(r) = buffer.remove(&next_write) {
                let item = &input.items[order[next_write as usize]];
                match r {
                    Ok(p) => sink.put(next_write, p, item.label)?,
                    Err(reason) => sink.pending_skips.push(SkippedFile {
                        path: item.display.clone(),
                        reason,
                    }),
                }
                next_write += 1;
                progress(next_write, total);
            }
        }
        Ok(())
    });
    result?;
    sink.close_shard(total)?;

    let mut skipped = std::mem::take(&mut sink.skipped);
    skipped.append(&mut sink.pending_skips);
    skipped.extend(input.skipped.iter().cloned());
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let digests: Vec<String> = sink.shards.iter().map(|s| s.digest.clone()).collect();
    let manifest = Manifest {
        format: formats::shard::manifest::FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        split: input.name.clone(),
        classes: input.classes.clone(),
        num_records: sink.counts.iter().sum(),
        counts_per_class: sink.counts.clone(),
        total_bytes: sink
            .shards
            .iter()
            .map(|s| s.data_bytes - DATA_HEADER_LEN as u64)
            .sum(),
        options: opts,
        fingerprint: fingerprint(&input.classes, &digests),
        shards: std::mem::take(&mut sink.shards),
        skipped,
        writer: format!("deit-pipe {}", env!("CARGO_PKG_VERSION")),
    };
    write_atomic(&dir.join(MANIFEST_FILE), &manifest.to_json())?;
    sink.journal.remove()?;
    Ok(JobOutcome {
        manifest,
        resumed_shards,
        already_complete: false,
    })
}
