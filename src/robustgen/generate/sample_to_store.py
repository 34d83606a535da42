"""Resumable, sharded generation into a store (paper Sec. 3.3 step 2, at 1M-100M images).

Any registered generator works whose adapter offers, besides ``fit``:

    ``range_sampler(fitted, *, seed)`` -> object with ``sample(start, stop)`` -> (uint8 NHWC, int64
        conditioning classes) for samples start..stop-1 of one global sequence; sample i must be a
        pure function of (fitted, seed, i) (per-sample seeds, EDM)
    ``save_fit(fitted, path)`` / ``load_fit(path)``: the fitted parameters as a file

``range_sampler(...).sample`` may return None for the classes (an unconditional generator):
the shard then has placeholder labels 0 and no ``conditions`` until it is pseudo-labelled.

Shard k holds samples [k*S, min((k+1)*S, N)). A run writes the fit to ``generator_fit.npz``
(or the adapter's ``fit_file``) in the store first (a resumed run loads it and never refits; a run killed during the fit
refits, which is deterministic on the same machine), then every shard not already complete
in the manifest (listed, right size, sha256 of its files matching). A job killed at any point
resumes at the first incomplete shard and produces byte-identical shards. Asking for more
samples later extends the store; the last short shard is rewritten whole. Labels start as the
conditioning class (``conditions``); ``robustgen.label.label_store`` replaces them.

Under torchrun (``ctx``): rank 0 holds the store's writer, fits (or loads) the generator and
lists the shards to do; the other ranks load the saved fit. Shards to do are dealt in rounds of
one per rank (``runtime.jobs``); each rank samples and writes its shard's files, and
after every round rank 0 records the round's shards in the manifest. Shard k's bytes depend only
on (fit, seed, k), so the store is byte-identical to one process's whatever the number of ranks,
and a job killed mid-round loses at most that round, which the next launch (any number of ranks)
redoes.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np

from robustgen.data.store import DEFAULT_SHARD_SIZE, is_store, read_manifest
from robustgen.data.store.writer import ShardFiles, StoreWriter
from robustgen.generate import get_generator, runtime_kwargs
from robustgen.runtime.distributed import DistContext, on_main
from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.fingerprint import array_fingerprint, file_sha256
from robustgen.runtime.jobs import JobPlan, run_dealt_job

__all__ = ["FIT_FILE", "generate_store"]

FIT_FILE = "generator_fit.npz"
_SHARD_FIELDS = ("images", "labels", "conditions")


def generate_store(store_dir, *, generator: str, train_images: np.ndarray, train_labels: np.ndarray,
                   num_classes: int, num_samples: int, seed: int, fit_config: dict | None = None,
                   class_names=None, shard_size: int = DEFAULT_SHARD_SIZE, data_name: str = "",
                   progress: bool = True, verify_existing: bool = True, fitted=None,
                   on_shard: Callable[[int], None] | None = None, fit_options: dict | None = None,
                   ctx: DistContext = DistContext()) -> dict:
    """Fit ``generator`` on the train split (once) and write ``num_samples`` images to ``store_dir``.

    ``fit_config``: keyword arguments of the generator's ``fit`` (e.g. ``num_components``).
    ``fit_options``: runtime keyword arguments of ``fit`` / ``load_fit`` (device, work_dir, progress),
    not fingerprinted; each adapter receives only those in its ``runtime_options``.
    Resuming needs the same generator, seed, fit config, shard size and training data (checked
    against the manifest). ``verify_existing``: re-hash finished shards before trusting them.
    ``fitted``: an already fitted generator (of these data and config) to save instead of fitting.
    ``on_shard(k)``: called after shard k is written (hooks, tests). ``ctx``: this rank under
    torchrun (module doc). Returns a summary with wall times (the same on every rank)."""
    store_dir = Path(store_dir)
    adapter = _sharding_adapter(generator)
    num_samples, fit_config = _count(num_samples), dict(fit_config or {})
    runtime = runtime_kwargs(adapter, fit_options)
    t0 = time.perf_counter()
    image_shape = tuple(int(v) for v in train_images.shape[1:])
    spec = {"name": generator, "seed": int(seed), "fit_config": fit_config,
            "train_data": {"name": data_name, "n": int(len(train_labels)),
                           "sha256": array_fingerprint(train_images, train_labels)}}
    writer = None

    def prepare() -> JobPlan:
        """Rank 0: open or create the store, fit or load, and list the shards to write."""
        nonlocal writer, fitted
        writer = stack.enter_context(_open_writer(store_dir, spec, image_shape, num_classes, class_names,
                                                  shard_size, num_samples))
        fitted, fit_s, refit = _fit_or_load(writer, adapter, spec, train_images, train_labels, num_classes,
                                            fit_config, fitted, runtime)
        todo, done = _shards_to_write(writer, num_samples, verify_existing)
        w = ctx.world_size  # one shard per rank and round
        return JobPlan(rounds=[todo[lo:lo + w] for lo in range(0, len(todo), w)], total=num_samples, done=done,
                       info={"fit_s": fit_s, "refit": refit, "fit_file": getattr(adapter, "fit_file", FIT_FILE)})

    def share(shards: list):
        return shards[ctx.rank] if ctx.rank < len(shards) else None

    def work(shard) -> dict:
        k, start, stop = shard
        images, conditions = sampler.sample(start, stop)
        labels = np.zeros(len(images), np.int64) if conditions is None else conditions
        return files.write_files(k, images=images, labels=labels, conditions=conditions)

    def record(shards: list, entries: list) -> int:
        nonlocal written, last_shard
        entries = sorted((e for e in entries if e is not None), key=lambda e: e["index"])  # every round has one
        for e in entries if ctx.is_main else ():
            writer.record_shard(e)
        count = sum(int(e["count"]) for e in entries)
        written, last_shard = written + count, entries[-1]["index"]
        mine = share(shards)
        if on_shard is not None and mine is not None:  # this rank's shard is recorded
            on_shard(mine[0])
        return count

    with ExitStack() as stack:  # rank 0's writer, closed (or its lock released on an error) at the end
        plan = on_main(ctx, prepare)
        if not ctx.is_main:  # the fit rank 0 saved (or found) in the store
            fitted = adapter.load_fit(store_dir / plan.info["fit_file"], **runtime)
        files = writer if ctx.is_main else ShardFiles(store_dir, read_manifest(store_dir))
        sampler = adapter.range_sampler(fitted, seed=int(seed))
        t1 = time.perf_counter()
        written, last_shard = 0, None
        run_dealt_job(ctx, plan, share=share, work=work, record=record, desc="generate", progress=progress,
                      smoothing=0.1, where=lambda r, shards: f"while generating {store_dir}, after shard {last_shard} "
                                                             f"({plan.done + written} of {num_samples} images)")
        sample_s = time.perf_counter() - t1

        speed = round(written / sample_s, 1) if written and sample_s > 0 else None
        return on_main(ctx, lambda: {  # leaving the stack closes rank 0's writer
            "store": str(store_dir), "generator": generator, "num_samples": num_samples, "shards": len(writer.shards),
            "written": written, "skipped": plan.done, "refit": plan.info["refit"],
            "fit_time_s": round(plan.info["fit_s"], 2), "sample_time_s": round(sample_s, 2), "images_per_s": speed,
            "wall_time_s": round(time.perf_counter() - t0, 2), "counts_per_class": writer.manifest["counts_per_class"]})


def _sharding_adapter(generator: str):
    adapter = get_generator(generator)
    for needed in ("range_sampler", "save_fit", "load_fit"):
        if not hasattr(adapter, needed):
            raise RobustgenError(f"generator {generator!r} does not support sharded generation (no {needed})")
    return adapter


def _count(num_samples) -> int:
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise RobustgenError(f"number of samples must be a positive integer, got {num_samples!r}")
    return int(num_samples)


def _open_writer(store_dir: Path, spec: dict, image_shape, num_classes, class_names, shard_size,
                 num_samples) -> StoreWriter:
    """The store's writer: an existing store checked against this job (``_check_resume``), or a new one."""
    if is_store(store_dir):
        writer = StoreWriter.open(store_dir)
        _check_resume(writer, spec, image_shape, num_classes, shard_size, num_samples)
    else:
        writer = StoreWriter.create(store_dir, image_shape=image_shape, num_classes=num_classes,
                                    class_names=class_names, shard_size=shard_size,
                                    info={"generator": {**spec, "fit_file": None}})
    writer.update(target_num_images=num_samples)
    return writer


def _shards_to_write(writer: StoreWriter, num_samples: int, verify_existing: bool) -> tuple[list, int]:
    """([(shard, first row, end row)] not complete in the store, images already complete)."""
    size = int(writer.manifest["shard_size"])
    todo, done = [], 0
    for k, start in enumerate(range(0, num_samples, size)):
        stop = min(num_samples, start + size)
        fields = _SHARD_FIELDS if k >= len(writer.shards) or "conditions" in writer.shards[k]["files"] \
            else _SHARD_FIELDS[:2]
        if writer.shard_ok(k, count=stop - start, fields=fields, check_sha=verify_existing):
            done += stop - start
        else:
            todo.append((k, start, stop))
    return todo, done


def _check_resume(writer: StoreWriter, spec: dict, image_shape, num_classes, shard_size, num_samples) -> None:
    m = writer.manifest
    where = writer.path / "manifest.json"
    old = m.get("generator") or {}

    def refuse(msg):
        writer.close()
        raise RobustgenError(f"{where}: {msg}; use another folder to generate something else")

    if not old:
        refuse("this store was not written by 'robustgen store generate'")
    for key in ("name", "seed", "fit_config"):
        if old.get(key) != spec[key]:
            refuse(f"the store was generated with {key} {old.get(key)!r}, not {spec[key]!r}")
    if (old.get("train_data") or {}).get("sha256") != spec["train_data"]["sha256"]:
        refuse("the store's generator was fitted on different training data")
    if tuple(m["image_shape"]) != image_shape or int(m["num_classes"]) != num_classes:
        refuse(f"the store holds {m['image_shape']} images of {m['num_classes']} classes, not "
               f"{list(image_shape)} of {num_classes}")
    if int(m["shard_size"]) != int(shard_size):
        refuse(f"the store has shard size {m['shard_size']}, not {shard_size}")
    if m["num_images"] > num_samples:
        refuse(f"the store already holds {m['num_images']} images, more than the {num_samples} asked for")


def _fit_or_load(writer: StoreWriter, adapter, spec: dict, images, labels, num_classes, fit_config, fitted=None,
                 runtime: dict | None = None):
    """The fitted generator: from the store's fit file when intact, else fitted now and saved."""
    info = writer.manifest.get("generator") or {}
    runtime = runtime or {}
    fit_file = getattr(adapter, "fit_file", FIT_FILE)
    path = writer.path / fit_file
    if info.get("fit_file") == fit_file and path.is_file() and file_sha256(path) == info.get("fit_sha256"):
        return adapter.load_fit(path, **runtime), 0.0, False
    if writer.shards:
        # shards of a fit that is gone: a refit elsewhere could differ, so they are redone
        writer.truncate(0)
    t = time.perf_counter()
    if fitted is None:
        fitted = adapter.fit(images, labels, num_classes=num_classes, **fit_config, **runtime)
    fit_s = time.perf_counter() - t
    adapter.save_fit(fitted, path)
    writer.update(generator={**spec, "fit_file": fit_file, "fit_sha256": file_sha256(path),
                             "fit_time_s": round(fit_s, 2)})
    return fitted, fit_s, True
