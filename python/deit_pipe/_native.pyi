"""Type stubs of the Rust extension (deit_pipe._native); use the wrappers in deit_pipe."""

from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

__version__: str

class DeitPipeError(RuntimeError):
    """An error from deit-pipe (bad path, mismatched or corrupt cache, bad record)."""

def view_hash(image: np.ndarray) -> int:
    """XXH3-64 of a C-contiguous float32 array's bytes (the view hash of a view)."""

class _Epoch(Iterator[Dict[str, Any]]):
    def __iter__(self) -> "_Epoch": ...
    def __next__(self) -> Dict[str, Any]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...
    @property
    def drift_count(self) -> int: ...

class _Loader:
    def __init__(
        self,
        data: str,
        split: str,
        config: str,
        batch_size: Optional[int],
        seed: Optional[int],
        teacher_cache: Optional[str],
        rank: int,
        world: int,
        threads: int,
        prefetch: int,
        drop_last: Optional[bool],
        allow_replay_drift: bool,
    ) -> None: ...
    def num_batches(self, epoch: int) -> int: ...
    def epoch(self, epoch: int) -> _Epoch: ...
    @property
    def dataset_len(self) -> int: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def class_names(self) -> List[str]: ...
    @property
    def image_size(self) -> int: ...
    @property
    def batch_size(self) -> int: ...

class _CacheWriter:
    def __init__(
        self,
        out: str,
        shards: str,
        config: str,
        seed: Optional[int],
        epochs: List[int],
        top_k: int,
        teacher_id: str,
        part: Tuple[int, int],
        batch_size: int,
        threads: int,
    ) -> None: ...
    def next_views(self) -> Optional[Dict[str, Any]]: ...
    def put(self, epoch: int, first_slot: int, logits: np.ndarray) -> None: ...
    def finish(self) -> List[str]: ...
    def remaining_views(self) -> int: ...
    @property
    def skipped(self) -> List[int]: ...
    @property
    def binding_json(self) -> str: ...
