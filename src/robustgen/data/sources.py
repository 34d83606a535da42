"""Training batches from several image sources mixed with exact per-batch weights, prefetched.

The generalisation of alpha-mixing (paper Sec. 3.3, Eq. 3) to any number of sources, each an
in-memory array set or a store on disk, read with constant memory. Three layers:

* **A source** is anything with ``__len__``, ``labels`` (int64 [N], in RAM), ``num_classes``,
  ``image_shape`` and ``gather(indices, out=None) -> uint8 [B, H, W, C]``: ``ArraySource``
  (real data in RAM) and ``robustgen.data.store.Store`` (memory-mapped shards).
  ``open_source(path)`` opens a store folder or reads an .npz.
* **Indices** (pure): ``source_counts(B, weights)`` gives the rows per batch of each source,
  floor(w_i * B + 1/2) corrected so the counts sum to B (``largest remainder``; ties to the
  earlier source when adding, the later one when removing); for two sources with weights
  (alpha, 1 - alpha) this is exactly ``batch_composition``. ``WeightedIndices(sizes, weights,
  batch_size=, seed=, sampling=)(step)`` returns one int64 index array per source, a pure
  function of (seed, step): source i walks seeded per-epoch permutations (stream i) or draws
  with replacement from ``default_rng([seed, i, step])``. With sources (real: "permutation",
  generated: "with_replacement" or "permutation") it reproduces ``MixedBatchIndices`` exactly.
* **Batches**: ``MixedSource(sources, weights, batch_size=, seed=, sampling=)`` checks the
  sources agree (image shape, class count) and ``batch(step)`` returns a ``MixedBatch``:
  images uint8 [B, H, W, C] and labels int64 [B], source 0's rows first, then source 1's, ...
  (``counts`` says how many). ``Prefetcher(mixed, start_step=, stop_step=)`` gathers the next
  ``depth`` batches in a background thread, into pinned host memory when CUDA is present, so
  the device never waits on disk. ``Prefetcher(fetch)`` takes any step -> object callable too.

Two ways to use it (both resume from ``step`` with no sampler state): a ``MixedSource`` gives
whole batches on the host, e.g. through ``Prefetcher(mixed, start_step=step)``; the training
loop (``robustgen.train.loop.TrainingBatches``) keeps the real split on the device and
prefetches, per step, only this rank's indices and generated rows into pinned buffers
(``WeightedIndices``, ``gather_rows`` into ``host_buffer``s, in a ``Prefetcher(fetch)``).
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from robustgen.data.mixing import GENERATED_SAMPLING, _PermutationWalk
from robustgen.errors import RobustgenError

__all__ = [
    "ArraySource",
    "BatchSource",
    "ClassSubset",
    "MixedBatch",
    "MixedSource",
    "Prefetcher",
    "WeightedIndices",
    "gather_rows",
    "host_buffer",
    "open_source",
    "source_counts",
]

SAMPLING = GENERATED_SAMPLING  # ("with_replacement", "permutation")


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


class ClassSubset:
    """The images of ``source`` labelled with one of ``classes``, as a source of their own (the
    paper's Fig. 4 experiments: generated data for some classes only). Holds an int64 index map
    of the selected rows (8 bytes per selected image)."""

    def __init__(self, source, classes: Sequence[int]):
        wanted = sorted({int(c) for c in classes})
        name = str(getattr(source, "name", "source"))
        bad = [c for c in wanted if not 0 <= c < int(source.num_classes)]
        if not wanted or bad:
            raise RobustgenError(f"{name}: classes {bad or wanted} are not in 0..{int(source.num_classes) - 1}")
        self.rows = np.flatnonzero(np.isin(source.labels, wanted)).astype(np.int64)
        if self.rows.size == 0:
            raise RobustgenError(f"{name}: no images labelled with classes {wanted}")
        self.source, self.classes = source, tuple(wanted)
        self.labels = np.asarray(source.labels)[self.rows]
        self.num_classes, self.image_shape = int(source.num_classes), tuple(source.image_shape)
        self.name = f"{name}[classes {','.join(map(str, wanted))}]"

    def __len__(self) -> int:
        return int(self.rows.size)

    def gather(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        return self.source.gather(self.rows[np.asarray(indices, dtype=np.int64)], out=out)


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


# --------------------------------------------------------------------------- pure index math
def source_counts(batch_size: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Rows per batch of each source: floor(w_i * B + 1/2), then +-1 by largest remainder to sum to B.

    Weights are normalised to sum to 1. When the rounded counts exceed B, the sources rounded
    up the most lose one row each (ties: the later source first); when they fall short, the
    sources rounded down the most gain one (ties: the earlier source first).
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise RobustgenError(f"batch size must be a positive integer, got {batch_size!r}")
    try:
        w = np.asarray([float(x) for x in weights], dtype=np.float64)
    except (TypeError, ValueError):
        raise RobustgenError(f"source weights must be numbers, got {list(weights)!r}") from None
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise RobustgenError(f"source weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    total = float(w.sum())
    B = int(batch_size)
    exact = [float(x) / total * B if total != 1.0 else float(x) * B for x in w]
    counts = [int(math.floor(e + 0.5)) for e in exact]
    # remainders compared to 1e-9, so float noise (0.725 * 100 = 72.49999999999999) cannot break ties
    while sum(counts) > B:
        i = max((i for i in range(len(counts)) if counts[i] > 0),
                key=lambda i: (round(counts[i] - exact[i], 9), i))
        counts[i] -= 1
    while sum(counts) < B:
        i = max(range(len(counts)), key=lambda i: (round(exact[i] - counts[i], 9), -i))
        counts[i] += 1
    return tuple(counts)


class WeightedIndices:
    """Per-source indices of batch ``step``: a pure function of (seed, step); see the module doc."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], *, batch_size: int, seed: int,
                 sampling: str | Sequence[str] = "with_replacement"):
        self.counts = source_counts(batch_size, weights)
        self.sizes = tuple(int(n) for n in sizes)
        if len(self.sizes) != len(self.counts):
            raise RobustgenError(f"{len(self.sizes)} sources but {len(self.counts)} weights")
        self.sampling = (sampling,) * len(self.sizes) if isinstance(sampling, str) else tuple(sampling)
        if len(self.sampling) != len(self.sizes) or any(s not in SAMPLING for s in self.sampling):
            raise RobustgenError(f"sampling must be one of {list(SAMPLING)} per source, got {sampling!r}")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise RobustgenError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        for i, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c and n <= 0:
                raise RobustgenError(f"source {i} is empty but its weight gives it {c} rows per batch")
        self._walks = [_PermutationWalk(n, self.seed, i) if s == "permutation" and n > 0 else None
                       for i, (n, s) in enumerate(zip(self.sizes, self.sampling))]

    @property
    def batch_size(self) -> int:
        return sum(self.counts)

    def __call__(self, step: int) -> tuple[np.ndarray, ...]:
        if isinstance(step, bool) or int(step) != step or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        out = []
        for i, (n, c) in enumerate(zip(self.sizes, self.counts)):
            if c == 0:
                out.append(np.empty(0, np.int64))
            elif self._walks[i] is not None:
                out.append(self._walks[i].take(step * c, c))
            else:
                out.append(np.random.default_rng([self.seed, i, step]).integers(0, n, size=c, dtype=np.int64))
        return tuple(out)


# --------------------------------------------------------------------------- batches
@dataclass
class MixedBatch:
    """One training batch: rows of source 0, then source 1, ... (``counts`` rows each)."""

    step: int
    images: object  # uint8 [B, H, W, C]: numpy, or a torch tensor (pinned under CUDA) from Prefetcher
    labels: object  # int64 [B]
    counts: tuple[int, ...]

    def source_ids(self) -> np.ndarray:
        """int64 [B]: which source each row came from."""
        return np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)


class MixedSource:
    """Batches mixing ``sources`` with ``weights``; exact counts per batch, deterministic per step."""

    def __init__(self, sources: Sequence[BatchSource], weights: Sequence[float], *, batch_size: int, seed: int,
                 sampling: str | Sequence[str] = "with_replacement"):
        if not sources:
            raise RobustgenError("MixedSource needs at least one source")
        self.sources = list(sources)
        names = [str(getattr(s, "name", f"source {i}")) for i, s in enumerate(self.sources)]
        shapes = [tuple(s.image_shape) for s in self.sources]
        if len(set(shapes)) > 1:
            detail = ", ".join(f"{n}: {_fmt(sh)}" for n, sh in zip(names, shapes))
            raise RobustgenError(f"data sources have different image sizes ({detail})")
        classes = [int(s.num_classes) for s in self.sources]
        if len(set(classes)) > 1:
            detail = ", ".join(f"{n}: {k}" for n, k in zip(names, classes))
            raise RobustgenError(f"data sources have different class counts ({detail})")
        self.image_shape, self.num_classes = shapes[0], classes[0]
        self.indices = WeightedIndices([len(s) for s in self.sources], weights, batch_size=batch_size,
                                       seed=seed, sampling=sampling)
        self.counts = self.indices.counts
        self.batch_size = self.indices.batch_size

    def batch(self, step: int, *, images_out: np.ndarray | None = None,
              labels_out: np.ndarray | None = None) -> MixedBatch:
        """Batch ``step`` as numpy arrays (filled into ``images_out`` / ``labels_out`` when given)."""
        B = self.batch_size
        images = np.empty((B, *self.image_shape), np.uint8) if images_out is None else images_out
        labels = np.empty(B, np.int64) if labels_out is None else labels_out
        gather_rows(self.sources, self.indices(step), images, labels)
        return MixedBatch(step=int(step), images=images, labels=labels, counts=self.counts)


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

    ``fetch`` is a ``MixedSource`` (each item is a ``MixedBatch`` whose ``images`` / ``labels``
    are CPU torch tensors, pinned when ``pin_memory``, default: CUDA is available) or any
    callable step -> object (e.g. this rank's generated rows of step t, gathered with
    ``store.gather(idx, out=host_buffer(...).numpy())``). Items come in step order, each with
    its own buffers, so an item stays valid after the next is fetched; ``next_step`` is the step
    of the next item. An error in the thread is raised by the iterator. ``stop_step=None`` runs
    until ``close()``.
    """

    _DONE = object()

    def __init__(self, fetch, *, start_step: int = 0, stop_step: int | None = None,
                 depth: int = 4, pin_memory: bool | None = None):
        import torch

        self.next_step = int(start_step)
        self.stop_step = None if stop_step is None else int(stop_step)
        self.pin = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._fetch = self._mixed_fetch(fetch) if isinstance(fetch, MixedSource) else fetch
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="robustgen-prefetch", daemon=True)
        self._thread.start()

    def _mixed_fetch(self, mixed: MixedSource):
        def fetch(step: int) -> MixedBatch:
            images = host_buffer((mixed.batch_size, *mixed.image_shape), np.uint8, pin_memory=self.pin)
            labels = host_buffer((mixed.batch_size,), np.int64, pin_memory=self.pin)
            mixed.batch(step, images_out=images.numpy(), labels_out=labels.numpy())
            return MixedBatch(step=step, images=images, labels=labels, counts=mixed.counts)

        return fetch

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
