"""The generated-data store: memory-mappable uint8 ``.npy`` shards plus a JSON manifest (the released sets, paper Sec. 7).

Released generated sets are one ``.npz`` (``image`` uint8 [N, H, W, C], ``label`` [N]) that
cannot be memory-mapped: 50M CIFAR images are 154 GB of RAM. A store keeps the same data as a
folder that is read with constant memory and written shard by shard, so long jobs resume:

    STORE/
      manifest.json            format, image shape, classes, shard list with sha256, provenance
      images-00000.npy         uint8 [n_0, H, W, C]   (shard k holds global rows offsets[k]..)
      labels-00000.npy         int64 [n_0]            the training label of each image
      conditions-00000.npy     int64 [n_0]            optional: the generator's conditioning class
      confidences-00000.npy    float32 [n_0]          optional: the labeller's confidence in the label
      selection.npy            int64 [M], optional: sorted rows kept by filtering (top-k, ...)
      generator_fit.npz        optional: the fitted generator (``robustgen store generate``)
      .lock                    the one writer's host and pid (``robustgen.runtime.locks``; a second writer is refused)

Labels, conditions and confidences are per-shard files, so labelling rewrites one shard at a
time and resumes like generation. Every file is written to a temporary name in the folder,
fsynced and renamed; the manifest (written the same way) is updated after each shard and is
the only record of what is complete: a file it does not list, or whose sha256 differs, is
redone. A store opened for reading (``Store``) presents the selected rows when there is a
selection; ``Store(path, use_selection=False)`` shows all of them.

Reading: ``Store.gather(indices)`` reads only the requested rows, grouped by shard, with one
``preadv`` per run of consecutive rows straight into the output buffer: resident memory is the
batch, however large the store (the OS page cache, not the process, holds hot shards).
Memory-mapping (``np.load(mmap_mode="r")``) is what ``shard_images`` uses for sequential scans
(labelling, export), released after each shard: for random rows a map is a poor fit on current
Linux kernels, whose page cache uses large folios, so one fault maps up to a few MB and a
process's RSS climbs towards the size of the store.

Bad input raises a one-line ``RobustgenError`` naming the file and the problem;
``inspect.verify_store`` checks every byte and lists every problem.

The package: ``format`` (file names, checked .npy I/O, the manifest's structure), ``reader``
(``Store``), ``writer`` (``StoreWriter``, ``ShardFiles``), ``npz`` (import / export of the released
.npz layout), ``merge``, ``link`` (hard-linked copies) and ``inspect`` (describe, verify). This
face re-exports what most callers need.
"""

from robustgen.data.store.format import (DEFAULT_SHARD_SIZE, FIELDS, MANIFEST, SELECTION, is_store, read_manifest,
                                         shard_file, write_npy)
from robustgen.data.store.reader import Store
from robustgen.data.store.writer import ShardFiles, StoreWriter

__all__ = ["DEFAULT_SHARD_SIZE", "FIELDS", "MANIFEST", "SELECTION", "ShardFiles", "Store", "StoreWriter", "is_store",
           "read_manifest", "shard_file", "write_npy"]
