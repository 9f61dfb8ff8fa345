//! PyO3 bindings of [`crate::core`] (feature `python`, built by maturin). The Python
//! wrappers in `deit_pipe/__init__.py` give them the documented keyword interface.
//!
//! - Every error is a `deit_pipe.DeitPipeError` (a `RuntimeError`) carrying the whole
//!   context chain of the Rust error (`{:#}`): the file, record or field it names.
//! - Waiting for a batch releases the GIL (`Python::detach`) in slices of 50 ms, checking
//!   for signals between slices, so Ctrl-C raises `KeyboardInterrupt` promptly; the epoch's
//!   workers are then stopped and joined (the stream is dropped) before it propagates.
//! - Arrays reach Python without a copy: numpy arrays take ownership of the Rust buffers
//!   (`PyArray::from_vec`, then a reshape, which is a view of the same memory). The image
//!   array (38.5 MB a batch at 224 px, batch 64) is a view of an [`ImageBuffer`] that
//!   hands its memory back to the loader's `BATCH_POOL` when numpy (or a torch tensor
//!   made by `torch.from_numpy`) lets it go, so the next batch reuses pages already
//!   faulted in instead of asking the kernel for fresh ones (glibc serves blocks this
//!   size with mmap/munmap, so a freed batch would otherwise be zeroed anew each time).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use numpy::ndarray::ArrayView4;
use numpy::{PyArray1, PyArray4, PyArrayMethods, PyUntypedArrayMethods};
use pipeline::batch_pool::BATCH_POOL;
use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::{
    read_config, EpochStream, LoaderCore, LoaderSpec, OutBatch, Split, Step, Views, WriterCore,
    WriterSpec,
};

create_exception!(
    _native,
    DeitPipeError,
    PyRuntimeError,
    "An error from deit-pipe (bad path, mismatched or corrupt cache, bad record, bad setting)."
);

fn err(e: anyhow::Error) -> PyErr {
    DeitPipeError::new_err(format!("{e:#}"))
}

/// How long the GIL is released per wait before signals are checked.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A 1-D numpy array owning `v` (no copy).
fn arr<T: numpy::Element>(py: Python<'_>, v: Vec<T>) -> Bound<'_, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}

/// The memory behind a batch's `images` array: numpy holds this object as the array's
/// base, and dropping it returns the buffer to the loader's pool.
#[pyclass(name = "_ImageBuffer", module = "deit_pipe._native", frozen)]
pub struct ImageBuffer {
    data: Vec<f32>,
}

impl Drop for ImageBuffer {
    fn drop(&mut self) {
        BATCH_POOL.give(std::mem::take(&mut self.data));
    }
}

/// `images` (N x 3 x S x S) as a numpy array over a pooled [`ImageBuffer`] (no copy).
fn image_array(
    py: Python<'_>,
    images: Vec<f32>,
    shape: [usize; 4],
) -> PyResult<Bound<'_, PyArray4<f32>>> {
    if images.len() != shape.iter().product::<usize>() {
        return Err(DeitPipeError::new_err(format!(
            "a batch of {} image values does not have the shape {shape:?}",
            images.len()
        )));
    }
    let owner = Bound::new(py, ImageBuffer { data: images })?;
    let view = ArrayView4::from_shape(shape, &owner.get().data)
        .map_err(|e| DeitPipeError::new_err(format!("batch images: {e}")))?;
    // SAFETY: the array's base is `owner`, which keeps `data` alive as long as the array
    // (or any view of it) is; `data` is never touched again on the Rust side (the pyclass
    // is frozen and exposes nothing), so it is neither reallocated nor freed before then.
    Ok(unsafe { PyArray4::borrow_from_array(&view, owner.clone().into_any()) })
}

fn to_i64(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&x| i64::from(x)).collect()
}

/// The opened loader (one split, one config).
#[pyclass(name = "_Loader", module = "deit_pipe._native")]
pub struct PyLoader {
    core: LoaderCore,
}

#[pymethods]
impl PyLoader {
    #[new]
    #[pyo3(signature = (data, split, config, batch_size, seed, teacher_cache, rank, world, threads, prefetch, drop_last, allow_replay_drift))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data: PathBuf,
        split: &str,
        config: PathBuf,
        batch_size: Option<usize>,
        seed: Option<u64>,
        teacher_cache: Option<PathBuf>,
        rank: usize,
        world: usize,
        threads: usize,
        prefetch: usize,
        drop_last: Option<bool>,
        allow_replay_drift: bool,
    ) -> PyResult<Self> {
        let split = Split::parse(split).map_err(err)?;
        let core = py
            .detach(|| {
                let config = read_config(&config)?;
                LoaderCore::open(LoaderSpec {
                    data,
                    split,
                    config,
                    batch_size,
                    seed,
                    teacher_cache,
                    rank,
                    world,
                    threads,
                    prefetch,
                    drop_last,
                    allow_replay_drift,
                })
            })
            .map_err(err)?;
        Ok(PyLoader { core })
    }

    /// Batches of `epoch` for this rank.
    fn num_batches(&self, py: Python<'_>, epoch: u64) -> PyResult<usize> {
        py.detach(|| self.core.num_batches(epoch)).map_err(err)
    }

    /// Starts the batches of `epoch`.
    fn epoch(&self, py: Python<'_>, epoch: u64) -> PyResult<PyEpoch> {
        let stream = py.detach(|| self.core.epoch(epoch)).map_err(err)?;
        Ok(PyEpoch {
            stream: Mutex::new(Some(stream)),
        })
    }

    #[getter]
    fn dataset_len(&self) -> usize {
        self.core.dataset_len()
    }

    #[getter]
    fn num_classes(&self) -> usize {
        self.core.num_classes()
    }

    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.core.class_names().to_vec()
    }

    #[getter]
    fn image_size(&self) -> usize {
        self.core.image_size()
    }

    #[getter]
    fn batch_size(&self) -> usize {
        self.core.batch_size()
    }
}

/// The batches of one epoch (a Python iterator).
#[pyclass(name = "_Epoch", module = "deit_pipe._native")]
pub struct PyEpoch {
    stream: Mutex<Option<EpochStream>>,
}

fn batch_dict<'py>(py: Python<'py>, out: OutBatch) -> PyResult<Bound<'py, PyDict>> {
    let OutBatch {
        mut batch,
        targets,
        teacher,
    } = out;
    let n = batch.len();
    let s = batch.size as usize;
    let classes = if n > 0 { targets.len() / n } else { 0 };
    let d = PyDict::new(py);
    let images = batch.take_images();
    d.set_item("images", image_array(py, images, [n, 3, s, s])?)?;
    d.set_item("targets", arr(py, targets).reshape([n, classes])?)?;
    d.set_item("labels", arr(py, to_i64(&batch.label_a)))?;
    d.set_item("partner_labels", arr(py, to_i64(&batch.label_b)))?;
    d.set_item("lam", arr(py, std::mem::take(&mut batch.lam)))?;
    d.set_item("sample_ids", arr(py, to_i64(&batch.samples)))?;
    d.set_item("slots", arr(py, to_i64(&batch.slots)))?;
    d.set_item("view_hashes", arr(py, std::mem::take(&mut batch.view_hash)))?;
    d.set_item("epoch", batch.epoch)?;
    if let Some(rows) = teacher {
        let k = rows.first().map_or(0, |r| r.topk_ids.len());
        let mut ids = Vec::with_capacity(n * k);
        let mut logits = Vec::with_capacity(n * k);
        for r in &rows {
            if r.topk_ids.len() != k || r.topk_logits.len() != k {
                return Err(DeitPipeError::new_err(format!(
                    "teacher cache epoch {} slot {}: {} top-K entries, expected {k}",
                    r.epoch,
                    r.slot,
                    r.topk_ids.len()
                )));
            }
            ids.extend(r.topk_ids.iter().map(|&x| i64::from(x)));
            logits.extend_from_slice(&r.topk_logits);
        }
        let hard: Vec<i64> = rows.iter().map(|r| i64::from(r.hard_label)).collect();
        let lse: Vec<f32> = rows.iter().map(|r| r.lse).collect();
        d.set_item("teacher_labels", arr(py, hard))?;
        d.set_item("teacher_ids", arr(py, ids).reshape([n, k])?)?;
        d.set_item("teacher_logits", arr(py, logits).reshape([n, k])?)?;
        d.set_item("teacher_lse", arr(py, lse))?;
    }
    Ok(d)
}

#[pymethods]
impl PyEpoch {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut guard = self
            .stream
            .lock()
            .map_err(|_| DeitPipeError::new_err("the epoch's stream was poisoned by a panic"))?;
        loop {
            let Some(stream) = guard.as_mut() else {
                return Ok(None);
            };
            match py.detach(|| stream.next_timeout(WAIT_SLICE)) {
                Ok(Step::Batch(b)) => return batch_dict(py, *b).map(Some),
                Ok(Step::Done) => {
                    *guard = None;
                    return Ok(None);
                }
                Ok(Step::Waiting) => {
                    if let Err(e) = py.check_signals() {
                        // Stop and join the workers before KeyboardInterrupt propagates.
                        let s = guard.take();
                        py.detach(move || drop(s));
                        return Err(e);
                    }
                }
                Err(e) => {
                    let s = guard.take();
                    py.detach(move || drop(s));
                    return Err(err(e));
                }
            }
        }
    }

    /// Stops the workers now (also done when the iterator is garbage-collected).
    fn close(&self, py: Python<'_>) {
        let s = self.stream.lock().ok().and_then(|mut g| g.take());
        py.detach(move || drop(s));
    }

    /// Batches of this epoch.
    fn __len__(&self) -> usize {
        self.stream
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.num_batches()))
            .unwrap_or(0)
    }

    /// Cached views whose hash differed so far (with allow_replay_drift).
    #[getter]
    fn drift_count(&self) -> u64 {
        self.stream
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.drift_count()))
            .unwrap_or(0)
    }
}

/// The teacher-cache writer.
#[pyclass(name = "_CacheWriter", module = "deit_pipe._native")]
pub struct PyCacheWriter {
    core: Mutex<WriterCore>,
}

fn lock(w: &Mutex<WriterCore>) -> PyResult<std::sync::MutexGuard<'_, WriterCore>> {
    w.lock()
        .map_err(|_| DeitPipeError::new_err("the writer was poisoned by a panic"))
}

#[pymethods]
impl PyCacheWriter {
    #[new]
    #[pyo3(signature = (out, shards, config, seed, epochs, top_k, teacher_id, part, batch_size, threads))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        out: PathBuf,
        shards: PathBuf,
        config: PathBuf,
        seed: Option<u64>,
        epochs: Vec<u32>,
        top_k: usize,
        teacher_id: String,
        part: (u32, u32),
        batch_size: usize,
        threads: usize,
    ) -> PyResult<Self> {
        let core = py
            .detach(|| {
                let config = read_config(&config)?;
                WriterCore::open(WriterSpec {
                    out,
                    shards,
                    config,
                    seed,
                    epochs,
                    top_k,
                    teacher_id,
                    part,
                    batch_size,
                    threads,
                })
            })
            .map_err(err)?;
        Ok(PyCacheWriter {
            core: Mutex::new(core),
        })
    }

    /// The next views as a dict (None at the end).
    fn next_views<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut guard = lock(&self.core)?;
        let core: &mut WriterCore = &mut guard;
        let views: Option<Views> = py.detach(move || core.next_views()).map_err(err)?;
        let Some(v) = views else { return Ok(None) };
        let n = v.keys.len();
        let d = PyDict::new(py);
        d.set_item("epoch", v.epoch)?;
        d.set_item("first_slot", v.keys[0].slot)?;
        d.set_item("images", arr(py, v.images).reshape([n, 3, v.size, v.size])?)?;
        d.set_item("labels", arr(py, to_i64(&v.labels)))?;
        let slots: Vec<i64> = v.keys.iter().map(|k| i64::from(k.slot)).collect();
        let samples: Vec<i64> = v.keys.iter().map(|k| i64::from(k.sample)).collect();
        let hashes: Vec<u64> = v.keys.iter().map(|k| k.view_hash).collect();
        let lam: Vec<f32> = v.keys.iter().map(|k| k.lam).collect();
        d.set_item("slots", arr(py, slots))?;
        d.set_item("sample_ids", arr(py, samples))?;
        d.set_item("view_hashes", arr(py, hashes))?;
        d.set_item("lam", arr(py, lam))?;
        Ok(Some(d))
    }

    /// Stores the logits (a C-contiguous float32 2-D numpy array) of the pending views.
    fn put(
        &self,
        py: Python<'_>,
        epoch: u32,
        first_slot: u32,
        logits: numpy::PyReadonlyArray2<'_, f32>,
    ) -> PyResult<()> {
        let shape = logits.shape().to_vec();
        let data = logits
            .as_slice()
            .map_err(|_| DeitPipeError::new_err("put: logits must be C-contiguous"))?;
        let mut guard = lock(&self.core)?;
        let core: &mut WriterCore = &mut guard;
        py.detach(move || core.put(epoch, first_slot, data, shape[0], shape[1]))
            .map_err(err)
    }

    /// Checks every view was put; returns the files written.
    fn finish(&self, py: Python<'_>) -> PyResult<Vec<PathBuf>> {
        let mut guard = lock(&self.core)?;
        let core: &mut WriterCore = &mut guard;
        py.detach(move || core.finish()).map_err(err)
    }

    /// Views still to hand out.
    fn remaining_views(&self, py: Python<'_>) -> PyResult<usize> {
        let mut guard = lock(&self.core)?;
        let core: &mut WriterCore = &mut guard;
        py.detach(move || core.remaining_views()).map_err(err)
    }

    /// Epochs skipped because their finished file existed.
    #[getter]
    fn skipped(&self) -> PyResult<Vec<u32>> {
        Ok(lock(&self.core)?.skipped().to_vec())
    }

    /// The binding written into every file, as JSON.
    #[getter]
    fn binding_json(&self) -> PyResult<String> {
        let core = lock(&self.core)?;
        serde_json::to_string(core.binding())
            .map_err(|e| DeitPipeError::new_err(format!("binding: {e}")))
    }
}

/// XXH3-64 of an image's float32 bytes: the view hash the loader and the cache record.
#[pyfunction]
fn view_hash(image: numpy::PyReadonlyArrayDyn<'_, f32>) -> PyResult<u64> {
    let s = image
        .as_slice()
        .map_err(|_| DeitPipeError::new_err("view_hash: the array must be C-contiguous"))?;
    Ok(pipeline::view::view_hash(s))
}

/// Image buffers held by the loaders' pool now (for tests: a batch numpy let go of is
/// back in the pool).
#[pyfunction]
fn _batch_pool_len() -> usize {
    BATCH_POOL.len()
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLoader>()?;
    m.add_class::<PyEpoch>()?;
    m.add_class::<PyCacheWriter>()?;
    m.add_class::<ImageBuffer>()?;
    m.add_function(wrap_pyfunction!(view_hash, m)?)?;
    m.add_function(wrap_pyfunction!(_batch_pool_len, m)?)?;
    m.add("DeitPipeError", m.py().get_type::<DeitPipeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
