"""deit_pipe.Loader and TeacherCacheWriter against the deit-pipe binary (numpy only).

The comparison with `deit-pipe train` ("same views, bit for bit"):
- the writer's views are built by `cache::run::build_views`, the function `deit-pipe
  teacher-cache` uses; `deit-pipe train --teacher-targets` over the cache written from
  Python succeeds, and train refuses any row whose view hash (XXH3-64 of the f32 image
  bytes) differs from the view it rebuilds: every image train consumes equals, byte for
  byte up to a 64-bit hash, the view Python handed to the teacher;
- the Loader's rows have exactly the samples and view hashes of the same cache slots
  (compared here, and checked row by row by the Loader's own cache reader, the trainer's
  `TeacherSource`), and `view_hash(images[i]) == view_hashes[i]` ties the hash to the
  array Python receives;
- targets equal timm's mixup_target of (labels, partner_labels, lam) with the config's
  smoothing, lam and partner agree with the cache, which train reads too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import deit_pipe
from conftest import (
    BATCH, CLASSES, CONFIG, EPOCHS, TEACHER_ID, TOP_K, TRAIN_PER_CLASS, VAL_PER_CLASS, run,
)

N_TRAIN = CLASSES * TRAIN_PER_CLASS


def loader(data, **kw):
    args = dict(split="train", config=CONFIG, batch_size=BATCH, seed=0, rank=0, world=1, threads=2)
    args.update(kw)
    return deit_pipe.Loader(data, **args)


def expected_targets(b, smoothing=0.1):
    off = smoothing / CLASSES
    on = 1.0 - smoothing + off
    n = len(b["labels"])
    a = np.full((n, CLASSES), off, np.float64)
    a[np.arange(n), b["labels"]] = on
    p = np.full((n, CLASSES), off, np.float64)
    p[np.arange(n), b["partner_labels"]] = on
    lam = b["lam"].astype(np.float64)[:, None]
    return a * lam + p * (1.0 - lam)


def test_loader_rows_are_the_cached_views(data, py_cache):
    cache, seen = py_cache
    for epoch in range(EPOCHS):
        ld = loader(data, teacher_cache=cache)
        ld.set_epoch(epoch)
        batches = list(ld)
        assert len(batches) == len(ld) == N_TRAIN // BATCH
        for b in batches:
            assert b["epoch"] == epoch
            assert b["images"].shape == (BATCH, 3, 32, 32) and b["images"].dtype == np.float32
            assert b["targets"].shape == (BATCH, CLASSES)
            for i in range(BATCH):
                logits, h, sample = seen[(epoch, int(b["slots"][i]))]
                assert int(b["view_hashes"][i]) == h
                assert int(b["sample_ids"][i]) == sample
                assert deit_pipe.view_hash(b["images"][i]) == h
                assert int(b["teacher_labels"][i]) == int(np.argmax(logits))
                top = np.argsort(-logits, kind="stable")[:TOP_K]
                assert list(b["teacher_ids"][i]) == list(top)
                np.testing.assert_allclose(b["teacher_logits"][i], logits[top], atol=2e-3)
            np.testing.assert_allclose(b["targets"], expected_targets(b), atol=1e-6)
            # Mixup pairs: rows (2k, 2k+1) are partners with one lam.
            assert np.all(b["lam"][0::2] == b["lam"][1::2])
            assert np.all(b["labels"][0::2] == b["partner_labels"][1::2])


def test_same_seed_same_bytes_other_epoch_other_views(data):
    a = next(iter(loader(data)))
    b = next(iter(loader(data, threads=1, prefetch=1)))
    assert np.array_equal(a["images"], b["images"])
    assert np.array_equal(a["view_hashes"], b["view_hashes"])
    ld = loader(data)
    ld.set_epoch(1)
    c = next(iter(ld))
    assert not np.array_equal(a["view_hashes"], c["view_hashes"])


def test_cache_from_python_is_inspected_and_trained_from(data, py_cache, tmp_path):
    cache, _ = py_cache
    out = run("cache", "inspect", str(cache), "--data", str(data)).stdout
    assert "fake_teacher" in out, out
    student = tmp_path / "student"
    run(
        "train", "--config", str(CONFIG), "--data", str(data), "--out", str(student),
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH),
        "--distillation", "hard", "--teacher-targets", str(cache),
    )
    rec = json.loads((student / "teacher.json").read_text())
    assert rec["teacher_arch"] == "fake_teacher"
    assert rec["teacher_weights_hash"] == "sha256:0123abcd"
    assert rec["top_k"] == TOP_K
    # Another seed means other views: train refuses the cache, naming the field.
    p = run(
        "train", "--config", str(CONFIG), "--data", str(data), "--out", str(tmp_path / "s2"),
        "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--seed", "1",
        "--distillation", "hard", "--teacher-targets", str(cache), ok=False,
    )
    assert p.returncode != 0 and "run_seed" in p.stderr, p.stderr


def test_mismatched_cache_is_refused_by_the_loader(data, py_cache):
    cache, _ = py_cache
    with pytest.raises(deit_pipe.DeitPipeError, match="run_seed"):
        list(loader(data, seed=1, teacher_cache=cache))
    ld = loader(data, teacher_cache=cache)
    ld.set_epoch(EPOCHS)  # not cached
    with pytest.raises(deit_pipe.DeitPipeError, match=str(EPOCHS)):
        list(ld)


def test_binding_records_the_teacher(data, py_cache):
    cache, _ = py_cache
    # Re-opening over a finished cache skips every epoch (resume) with the same binding.
    w = deit_pipe.TeacherCacheWriter(
        cache, shards=data, config=CONFIG, seed=0, epochs=range(0, EPOCHS), top_k=TOP_K,
        teacher_id=TEACHER_ID,
    )
    assert w.skipped_epochs == list(range(EPOCHS))
    assert len(w) == 0 and list(w) == [] and w.finish() == []
    b = w.binding
    assert (b["teacher_arch"], b["teacher_weights_hash"], b["top_k"]) == (
        "fake_teacher", "sha256:0123abcd", TOP_K)
    # Another teacher into the same directory is refused.
    with pytest.raises(deit_pipe.DeitPipeError, match="teacher_arch"):
        deit_pipe.TeacherCacheWriter(
            cache, shards=data, config=CONFIG, seed=0, epochs=[0], top_k=TOP_K,
            teacher_id="other_teacher sha256:ff",
        )


def test_one_writer_per_cache_part(data, tmp_path):
    kw = dict(shards=data, config=CONFIG, seed=0, epochs=[0], top_k=2, teacher_id="t",
              batch_size=8)
    out = tmp_path / "c"
    w = deit_pipe.TeacherCacheWriter(out, **kw)
    with pytest.raises(deit_pipe.DeitPipeError, match=f"already in use by pid {os.getpid()}"):
        deit_pipe.TeacherCacheWriter(out, **kw)
    # Other parts of the same cache may be written at the same time.
    deit_pipe.TeacherCacheWriter(out, part=(1, 2), **kw)
    for v in w:
        w.put(v, np.zeros((len(v), CLASSES), np.float32))
    assert len(w.finish()) == 1
    # A finished writer lets go of the part: a new writer resumes (nothing left to do).
    assert deit_pipe.TeacherCacheWriter(out, **kw).skipped_epochs == [0]


def test_writer_protocol_errors(data, tmp_path):
    w = deit_pipe.TeacherCacheWriter(
        tmp_path / "c", shards=data, config=CONFIG, seed=0, epochs=[0], top_k=2,
        teacher_id="t", batch_size=8,
    )
    it = iter(w)
    v = next(it)
    with pytest.raises(deit_pipe.DeitPipeError, match="put"):
        next(it)  # the previous views have no logits
    with pytest.raises(deit_pipe.DeitPipeError, match="classes"):
        w.put(v, np.zeros((len(v), CLASSES + 1), np.float32))
    with pytest.raises(deit_pipe.DeitPipeError, match="rows"):
        w.put(v, np.zeros((len(v) - 1, CLASSES), np.float32))
    w.put(v, np.zeros((len(v), CLASSES), np.float32))
    with pytest.raises(deit_pipe.DeitPipeError, match="not written"):
        w.finish()


def test_ranks_split_the_pairs_like_train(data, monkeypatch):
    all_slots = set()
    for b in loader(data):
        all_slots.update(int(s) for s in b["slots"])
    per_rank = []
    for r in range(2):
        ld = loader(data, rank=r, world=2, batch_size=4)
        slots = [int(s) for b in ld for s in b["slots"]]
        assert len(slots) == 4 * len(ld)
        per_rank.append(slots)
        # Pair k goes to rank k % world.
        assert all((s // 2) % 2 == r for s in slots)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) <= all_slots | set(range(N_TRAIN))
    # torchrun's environment picks the rank when none is given.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ld = deit_pipe.Loader(data, split="train", config=CONFIG, batch_size=4, seed=0, threads=2)
    assert (ld.rank, ld.world) == (1, 2)
    assert [int(s) for b in ld for s in b["slots"]] == per_rank[1]


def test_val_split_is_the_eval_transform_in_order(data):
    ld = deit_pipe.Loader(data, split="val", config=CONFIG, batch_size=5, threads=2)
    n = CLASSES * VAL_PER_CLASS
    batches = list(ld)
    assert len(ld) == len(batches) == -(-n // 5)
    ids = np.concatenate([b["sample_ids"] for b in batches])
    assert list(ids) == list(range(n))
    for b in batches:
        assert np.all(b["lam"] == 1.0)
        assert np.all(b["labels"] == b["partner_labels"])
        for i in range(len(b["labels"])):
            assert deit_pipe.view_hash(b["images"][i]) == int(b["view_hashes"][i])


def test_errors_are_python_exceptions(data, tmp_path):
    with pytest.raises(deit_pipe.DeitPipeError, match="nowhere"):
        deit_pipe.Loader(tmp_path / "nowhere", config=CONFIG)
    with pytest.raises(deit_pipe.DeitPipeError, match="split"):
        deit_pipe.Loader(data, split="test", config=CONFIG)
    with pytest.raises(deit_pipe.DeitPipeError, match="batch_size"):
        list(loader(data, batch_size=7))
    with pytest.raises(deit_pipe.DeitPipeError, match="rank"):
        loader(data, rank=2, world=2)
    with pytest.raises(deit_pipe.DeitPipeError, match="nope.toml"):
        deit_pipe.Loader(data, config=tmp_path / "nope.toml")


def test_corrupt_cache_file_is_an_exception(data, py_cache, tmp_path):
    import shutil

    cache, _ = py_cache
    bad = tmp_path / "bad"
    shutil.copytree(cache, bad)
    f = sorted(bad.glob("epoch-00000*.parquet"))[0]
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(deit_pipe.DeitPipeError, match="epoch-00000"):
        list(loader(data, teacher_cache=bad))


def test_ctrl_c_stops_iteration_cleanly(data, tmp_path):
    script = f"""
import sys, deit_pipe
ld = deit_pipe.Loader({str(data)!r}, split="train", config={str(CONFIG)!r}, batch_size=2,
                      seed=0, rank=0, world=1, threads=1, prefetch=1)
try:
    for epoch in range(100000):
        ld.set_epoch(epoch)
        for b in ld:
            print("batch", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(0)
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "batch"
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the loader did not stop on SIGINT")
    assert p.returncode == 0, out
    assert "interrupted" in out


def test_arrays_own_rust_buffers_without_copy(data):
    b = next(iter(loader(data)))
    img = b["images"]
    # A view of the Rust buffer (no copy was made): numpy does not own the data, the
    # base object that does is the pooled image buffer.
    assert not img.flags.owndata and type(img.base).__name__ == "_ImageBuffer"
    assert img.flags.c_contiguous and img.flags.writeable
    t = b["targets"]
    assert not t.flags.owndata and np.shares_memory(t.base, t)


def test_image_buffers_return_to_the_pool_when_python_lets_go(data):
    import gc

    from deit_pipe import _native

    ld = loader(data)
    ld.set_epoch(0)
    batches = list(ld)
    gc.collect()
    before = _native._batch_pool_len()
    keep = 6  # pipeline::batch_pool::BATCH_POOL_KEEP
    n = len(batches)
    assert n > 0 and before < keep
    views = [b["images"][0] for b in batches]  # a view keeps its batch's buffer alive
    del batches
    gc.collect()
    # No buffer comes back while a view of its batch lives.
    assert _native._batch_pool_len() == before
    del views
    gc.collect()
    assert _native._batch_pool_len() == min(before + n, keep)
