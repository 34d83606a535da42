"""Training images from several sources, and the thread that prefetches the next steps' rows.

* **A source** is anything with ``__len__``, ``labels`` (int64 [N], in RAM), ``num_classes``,
  ``image_shape`` and ``gather(indices, out=None) -> uint8 [B, H, W, C]``: ``ArraySource``
  (arrays in RAM), ``ClassSubset`` (some classes of another source) and
  ``robustgen.data.store.Store`` (memory-mapped shards). ``open_source(path)`` opens a store
  folder or reads an .npz; ``check_sources_agree`` refuses sources of different image sizes or
  class counts.
* **Rows**: ``robustgen.train.mixing.indices.WeightedIndices`` says which rows of each source step t
  takes; ``gather_rows`` copies them into (pinned) ``host_buffer``s.
* **Prefetching**: ``Prefetcher(fetch, start_step=, stop_step=)`` computes ``fetch(step)`` a few
  steps ahead in a background thread, so the device never waits on disk. The training loop
  (``robustgen.train.mixing.batches.TrainingBatches``) keeps the real split on the device and prefetches,
  per step, only this rank's indices and generated rows.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from robustgen.runtime.errors import RobustgenError

__all__ = [
    "ArraySource",
    "BatchSource",
    "ClassSubset",
    "FirstRows",
    "RowSubset",
    "check_sources_agree",
    "Prefetcher",
    "gather_rows",
    "host_buffer",
    "open_source",
]


class BatchSource(Protocol):
    labels: np.ndarray
    num_classes: int
    image_shape: tuple

    def __len__(self) -> int: ...

    def gather(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


class ArraySource:
    """Images uint8 [N, H, W, C] and labels int64 [N] held in memory, as a batch source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int, name: str = "arrays"):
        from robustgen.data.npz import validate_dataset

        validate_dataset(images, labels, num_classes=num_classes, source=name, allow_empty=True)
        self.images, self.labels = images, np.asarray(labels).astype(np.int64, copy=False)
        self.num_classes, self.name = int(num_classes), name
        self.image_shape = tuple(int(v) for v in images.shape[1:])

    @classmethod
    def from_dataset(cls, ds) -> "ArraySource":
        """From an ``ImageDataset``."""
        return cls(ds.images, ds.labels, num_classes=ds.num_classes, name=ds.name)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def gather(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        return np.take(self.images, np.asarray(indices, dtype=np.int64), axis=0, out=out)


class RowSubset:
    """Some rows of ``source`` as a source of their own (an int64 index map, 8 bytes per row)."""

    def __init__(self, source, rows: np.ndarray, name: str):
        self.source, self.rows, self.name = source, np.asarray(rows, dtype=np.int64), name
        self.labels = np.asarray(source.labels)[self.rows]
        self.num_classes, self.image_shape = int(source.num_classes), tuple(source.image_shape)

    def __len__(self) -> int:
        return int(self.rows.size)

    def gather(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        return self.source.gather(self.rows[np.asarray(indices, dtype=np.int64)], out=out)


class ClassSubset(RowSubset):
    """The images of ``source`` labelled with one of ``classes`` (the paper's Fig. 4 experiments:
    generated data for some classes only)."""

    def __init__(self, source, classes: Sequence[int]):
        wanted = sorted({int(c) for c in classes})
        name = str(getattr(source, "name", "source"))
        bad = [c for c in wanted if not 0 <= c < int(source.num_classes)]
        if not wanted or bad:
            raise RobustgenError(f"{name}: classes {bad or wanted} are not in 0..{int(source.num_classes) - 1}")
        rows = np.flatnonzero(np.isin(source.labels, wanted))
        if rows.size == 0:
            raise RobustgenError(f"{name}: no images labelled with classes {wanted}")
        super().__init__(source, rows, f"{name}[classes {','.join(map(str, wanted))}]")
        self.classes = tuple(wanted)


class FirstRows(RowSubset):
    """The first ``n`` rows of ``source`` (``train.generated_rows``: the paper's Fig. 6 sample counts)."""

    def __init__(self, source, n: int):
        name = str(getattr(source, "name", "source"))
        if not 0 < int(n) <= len(source):
            raise RobustgenError(f"{name}: train.generated_rows = {n}, but the set holds {len(source)} images")
        super().__init__(source, np.arange(int(n)), f"{name}[:{int(n)}]")


def check_sources_agree(sources: Sequence) -> None:
    """Sources mixed into one batch must have one image size and one class count."""
    names = [str(getattr(s, "name", f"source {i}")) for i, s in enumerate(sources)]
    shapes = [tuple(s.image_shape) for s in sources]
    if len(set(shapes)) > 1:
        detail = ", ".join(f"{n}: {_fmt(sh)}" for n, sh in zip(names, shapes))
        raise RobustgenError(f"data sources have different image sizes ({detail})")
    classes = [int(s.num_classes) for s in sources]
    if len(set(classes)) > 1:
        detail = ", ".join(f"{n}: {k}" for n, k in zip(names, classes))
        raise RobustgenError(f"data sources have different class counts ({detail})")


def open_source(path, *, num_classes: int | None = None, image_shape=None, verify_images: bool = False):
    """A store folder as a ``Store`` (``verify_images``: its images shards are hashed in the
    background and each is checked before it is first read); an .npz in the released layout as
    an ``ArraySource`` (in RAM)."""
    from robustgen.data.npz import read_npz
    from robustgen.data.store import Store, is_store

    path = Path(path)
    if is_store(path):
        return Store(path, num_classes=num_classes, image_shape=image_shape, verify_images=verify_images)
    if path.is_dir():
        raise RobustgenError(f"{path}: not a robustgen store (no manifest.json)")
    arrays = read_npz(path, num_classes=num_classes, keys=("image", "label"))
    k = num_classes if num_classes is not None else int(arrays["label"].max()) + 1
    src = ArraySource(arrays["image"], arrays["label"], num_classes=k, name=str(path))
    if image_shape is not None and src.image_shape != tuple(image_shape):
        raise RobustgenError(f"{path}: images are {_fmt(src.image_shape)} but {_fmt(image_shape)} are expected")
    return src


def _fmt(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


# --------------------------------------------------------------------------- batches
def gather_rows(sources: Sequence[BatchSource], indices: Sequence[np.ndarray], images: np.ndarray,
                labels: np.ndarray) -> None:
    """Fill ``images`` / ``labels`` with rows ``indices[0]`` of source 0, then ``indices[1]`` of
    source 1, ... (the buffers hold exactly their total)."""
    start = 0
    for source, idx in zip(sources, indices):
        stop = start + len(idx)
        if len(idx):
            source.gather(idx, out=images[start:stop])
            labels[start:stop] = source.labels[idx]
        start = stop


def host_buffer(shape, dtype, *, pin_memory: bool):
    """An empty CPU torch tensor (pinned when ``pin_memory``); fill its ``.numpy()`` view, e.g.
    with ``store.gather(idx, out=buf.numpy())``, then ``buf.to(device, non_blocking=True)``."""
    import torch

    dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int64): torch.int64,
             np.dtype(np.float32): torch.float32}[np.dtype(dtype)]
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=pin_memory)


class Prefetcher:
    """Results of ``fetch(step)`` for steps [start_step, stop_step), computed ahead in a thread.

    ``fetch`` is any callable step -> object (e.g. this rank's generated rows of step t,
    gathered with ``store.gather(idx, out=host_buffer(...).numpy())``). Items come in step order,
    each with its own buffers, so an item stays valid after the next is fetched; ``next_step``
    is the step of the next item. An error in the thread is raised by the iterator.
    ``stop_step=None`` runs until ``close()``.
    """

    _DONE = object()

    def __init__(self, fetch, *, start_step: int = 0, stop_step: int | None = None,
                 depth: int = 4):
        self.next_step = int(start_step)
        self.stop_step = None if stop_step is None else int(stop_step)
        self._fetch = fetch
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="robustgen-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        step = self.next_step
        try:
            while not self._stop.is_set() and (self.stop_step is None or step < self.stop_step):
                self._put((step, self._fetch(step)))
                step += 1
            self._put(self._DONE)
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item) -> None:
        """Enqueue, waking up every 0.1 s to give up once the consumer has stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise StopIteration from None
        if item is self._DONE:
            self._stop.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self._stop.set()
            raise item
        step, value = item
        self.next_step = step + 1
        return value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
