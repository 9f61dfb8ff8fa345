"""Shared fixtures: a small sharded data set made by the deit-pipe binary, and a teacher
cache written from Python with a deterministic fake teacher (numpy only, no torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import deit_pipe

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "small_image.toml"
CLASSES = 4
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 4
EPOCHS = 2
BATCH = 16
TOP_K = 3
TEACHER_ID = "fake_teacher sha256:0123abcd"


def deit_pipe_bin() -> str:
    """The deit-pipe binary: $DEIT_PIPE_BIN, else the workspace's release build."""
    b = os.environ.get("DEIT_PIPE_BIN") or str(REPO / "target" / "release" / "deit-pipe")
    if not Path(b).is_file():
        pytest.fail(f"deit-pipe binary {b} not found: cargo build --release, or set DEIT_PIPE_BIN")
    return b


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([deit_pipe_bin(), "--quiet", *args], capture_output=True, text=True)
    if ok and p.returncode != 0:
        pytest.fail(f"deit-pipe {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def fake_logits(labels: np.ndarray, epoch: int, first_slot: int) -> np.ndarray:
    """A deterministic 'teacher': the label's logit raised, plus seeded noise strong
    enough that some argmaxes differ from the label."""
    rng = np.random.default_rng(1000 * epoch + first_slot)
    x = rng.standard_normal((len(labels), CLASSES)).astype(np.float32)
    x[np.arange(len(labels)), labels] += 1.5
    return x


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    folder, shards = root / "folder", root / "shards"
    run(
        "synth", "--classes", str(CLASSES), "--train-per-class", str(TRAIN_PER_CLASS),
        "--val-per-class", str(VAL_PER_CLASS), "--seed", "3", "--out", str(folder),
    )
    run("shard", "--max-side", "40", "--format", "raw", "--input", str(folder), "--out", str(shards))
    return shards


@pytest.fixture(scope="session")
def py_cache(data, tmp_path_factory):
    """(cache dir, {(epoch, slot): (logits row, view hash, sample)}) written from Python."""
    out = tmp_path_factory.mktemp("cache") / "cache"
    w = deit_pipe.TeacherCacheWriter(
        out, shards=data, config=CONFIG, seed=0, epochs=range(0, EPOCHS), top_k=TOP_K,
        teacher_id=TEACHER_ID, part=(1, 1), batch_size=10, threads=2,
    )
    seen = {}
    for views in w:
        logits = fake_logits(views.labels, views.epoch, views.first_slot)
        for i in range(len(views)):
            seen[(views.epoch, int(views.slots[i]))] = (
                logits[i], int(views.view_hashes[i]), int(views.sample_ids[i]),
            )
        w.put(views, logits)
    files = w.finish()
    assert len(files) == EPOCHS
    return out, seen


@pytest.fixture()
def fresh_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
