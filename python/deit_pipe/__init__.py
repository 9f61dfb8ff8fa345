"""deit-pipe's data pipeline and offline teacher cache for PyTorch training loops.

``Loader`` yields, for the same shards, config, seed, epoch, rank and world, exactly the
batches ``deit-pipe train`` consumes (the same Rust code builds them): images, mixed and
smoothed targets, labels, sample ids, view hashes and, with a teacher cache, the cached
teacher targets of the same views. ``TeacherCacheWriter`` hands the exact views ``train``
will see to any teacher (e.g. a timm model on a GPU) and writes a cache that
``deit-pipe train --teacher-targets``, ``deit-pipe cache inspect`` and ``Loader`` read.

Arrays are numpy arrays that own the Rust buffers (no copy); ``torch.from_numpy`` makes
tensors of them without a copy. The GIL is released while Rust decodes and augments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import DeitPipeError, view_hash

__all__ = ["Loader", "TeacherCacheWriter", "Views", "DeitPipeError", "view_hash", "dist_env"]
__version__ = _native.__version__

PathLike = Union[str, "os.PathLike[str]"]


def dist_env(rank: Optional[int] = None, world: Optional[int] = None) -> Tuple[int, int]:
    """(rank, world): the given values, else torchrun's ``RANK`` / ``WORLD_SIZE`` (0 and 1
    without them). ``LOCAL_RANK`` only picks the GPU, never the data, so it is not read."""

    def env_int(name: str, default: int) -> int:
        v = os.environ.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise DeitPipeError(f"environment variable {name}={v!r} is not an integer") from None

    r = env_int("RANK", 0) if rank is None else int(rank)
    w = env_int("WORLD_SIZE", 1) if world is None else int(world)
    if w < 1 or not 0 <= r < w:
        raise DeitPipeError(f"rank {r} of world {w}: need 0 <= rank < world")
    return r, w


class Loader:
    """Batches of ``deit-pipe`` shards, as ``deit-pipe train`` builds them.

    Args:
        data: shard root holding ``train/`` and ``val/`` (``deit-pipe shard --out``).
        split: ``"train"`` (DeiT's train views: crop, flip, RandAugment, erasing,
            Mixup/CutMix; repeated augmentation) or ``"val"`` (eval transform, in order).
        config: the training config TOML (``deit-pipe train --config``).
        batch_size: images per batch on this rank (None: the config's ``data.batch_size``;
            even for train: Mixup pairs stay together).
        seed: run seed (None: the config's ``run.seed``).
        teacher_cache: a teacher cache directory bound to these shards/config/seed; adds
            ``teacher_labels``, ``teacher_ids``, ``teacher_logits``, ``teacher_lse``.
        rank, world: this process's rank and the number of ranks (None: torchrun's
            ``RANK`` / ``WORLD_SIZE``); each rank gets the pairs ``train`` gives it.
        threads: decode/augment threads (None: all cores, as ``train``).
        prefetch: batches built ahead.
        drop_last: drop the last partial batch (None: True for train, False for val).
        allow_replay_drift: count cached views whose hash differs instead of raising.

    Use it as a ``DistributedSampler``-backed ``DataLoader``: call ``set_epoch(epoch)``
    before iterating each epoch; ``len(loader)`` is the number of batches per epoch on
    this rank. Each batch is a dict of numpy arrays:

    - ``images`` (B, 3, H, W) float32, normalized (and erased, mixed for train)
    - ``targets`` (B, C) float32, mixed smoothed targets (timm ``mixup_target``)
    - ``labels`` (B,) int64, ``partner_labels`` (B,) int64, ``lam`` (B,) float32
    - ``sample_ids`` (B,) int64 (record index in the split), ``slots`` (B,) int64
    - ``view_hashes`` (B,) uint64, the per-row view hash a teacher cache stores
    - with ``teacher_cache``: ``teacher_labels`` (B,) int64 (argmax, hard distillation),
      ``teacher_ids`` (B, K) int64, ``teacher_logits`` (B, K) float32, ``teacher_lse`` (B,)
    """

    def __init__(
        self,
        data: PathLike,
        split: str = "train",
        config: Optional[PathLike] = None,
        batch_size: Optional[int] = None,
        seed: Optional[int] = None,
        teacher_cache: Optional[PathLike] = None,
        rank: Optional[int] = None,
        world: Optional[int] = None,
        threads: Optional[int] = None,
        prefetch: int = 2,
        drop_last: Optional[bool] = None,
        allow_replay_drift: bool = False,
    ) -> None:
        if config is None:
            raise DeitPipeError("config= is required: the training config TOML (deit-pipe train --config)")
        self.rank, self.world = dist_env(rank, world)
        self._native = _native._Loader(
            os.fspath(data),
            split,
            os.fspath(config),
            batch_size,
            seed,
            None if teacher_cache is None else os.fspath(teacher_cache),
            self.rank,
            self.world,
            int(threads) if threads is not None else (os.cpu_count() or 2),
            int(prefetch),
            drop_last,
            bool(allow_replay_drift),
        )
        self.split = split
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration yields (as ``DistributedSampler.set_epoch``)."""
        if epoch < 0:
            raise DeitPipeError(f"epoch {epoch} must be >= 0")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._native.num_batches(self.epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self._native.epoch(self.epoch)

    @property
    def num_classes(self) -> int:
        """Classes of ``targets`` (the config's ``model.num_classes``, else the data set's)."""
        return self._native.num_classes

    @property
    def class_names(self) -> list:
        """Class names from the shards' manifest."""
        return self._native.class_names

    @property
    def dataset_len(self) -> int:
        """Records in the split."""
        return self._native.dataset_len

    @property
    def image_size(self) -> int:
        """Side of the images."""
        return self._native.image_size

    @property
    def batch_size(self) -> int:
        """Images per batch on this rank."""
        return self._native.batch_size


@dataclass
class Views:
    """Views handed to the teacher: ``images`` (N, 3, H, W) float32, normalized exactly as
    the student's input (after Mixup/CutMix and erasing); ``labels``, ``sample_ids``,
    ``slots`` (int64), ``view_hashes`` (uint64), ``lam`` (float32), all (N,)."""

    epoch: int
    first_slot: int
    images: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    slots: np.ndarray
    view_hashes: np.ndarray
    lam: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


class TeacherCacheWriter:
    """Fills a teacher cache with any teacher's logits.

    Args:
        out: the cache directory (created; files of another binding there are refused).
        shards: the shard root (or its ``train/`` split).
        config: the student's training config TOML (augmentation, plan, seed).
        seed: run seed (None: the config's ``run.seed``).
        epochs: the epochs to cache, e.g. ``range(0, 300)``.
        top_k: classes kept per view.
        teacher_id: the teacher's identity recorded in the cache: ``"ARCH [WEIGHTS-ID]"``,
            e.g. ``"regnety_160 sha256:<digest>"`` (first word: ``teacher_arch``, the rest:
            ``teacher_weights_hash``).
        part: ``(i, n)``: write part i (1-based) of n of every epoch (``teacher-cache
            --part i/n``), to split the work across processes.
        batch_size: views per batch.
        threads: threads building views (None: all cores).

    Iterate it for the views ``train`` will see, in order, and ``put`` each batch's
    logits (N, C) before taking the next; ``finish()`` at the end. An epoch's file is
    finished as soon as its last views are put; a new writer skips finished epochs.
    Like ``teacher-cache``, a writer holds its part's lock on ``out`` from its creation
    until a successful ``finish()`` (or until it is garbage-collected): a second writer of
    the same part is refused with "already in use by pid N"; other parts may be written
    at the same time.
    """

    def __init__(
        self,
        out: PathLike,
        shards: PathLike,
        config: PathLike,
        seed: Optional[int] = None,
        epochs: Iterable[int] = (0,),
        top_k: int = 10,
        teacher_id: str = "",
        part: Tuple[int, int] = (1, 1),
        batch_size: int = 64,
        threads: Optional[int] = None,
    ) -> None:
        part_t = tuple(int(x) for x in part)
        if len(part_t) != 2:
            raise DeitPipeError(f"part={part!r}: expected (i, n)")
        self._native = _native._CacheWriter(
            os.fspath(out),
            os.fspath(shards),
            os.fspath(config),
            seed,
            [int(e) for e in epochs],
            int(top_k),
            str(teacher_id),
            part_t,
            int(batch_size),
            int(threads) if threads is not None else (os.cpu_count() or 2),
        )

    def __iter__(self) -> Iterator[Views]:
        while True:
            d = self._native.next_views()
            if d is None:
                return
            yield Views(**d)

    def __len__(self) -> int:
        """Views still to write (all remaining epochs of this part)."""
        return self._native.remaining_views()

    def put(self, views: Views, logits: Any) -> None:
        """Stores the teacher's logits (N, C) for ``views``: a numpy array or a CPU torch
        tensor (converted to float32)."""
        if hasattr(logits, "detach"):  # a torch tensor
            logits = logits.detach().cpu().float().numpy()
        arr = np.ascontiguousarray(np.asarray(logits, dtype=np.float32))
        if arr.ndim != 2:
            raise DeitPipeError(f"put: logits must be 2-D (N, C), got shape {arr.shape}")
        self._native.put(int(views.epoch), int(views.first_slot), arr)

    def finish(self) -> list:
        """Checks that every view was put; returns the files this writer finished."""
        return [str(p) for p in self._native.finish()]

    @property
    def skipped_epochs(self) -> list:
        """Epochs whose finished file was already there (resume)."""
        return self._native.skipped

    @property
    def binding(self) -> Dict[str, Any]:
        """The binding written into every file (fingerprints, teacher, K, seed)."""
        import json

        return json.loads(self._native.binding_json)
