"""Plumbing every stage shares, below all of them (EDM's ``torch_utils/``): errors, atomic I/O,
folder locks, preemption, progress bars, the registry, the version, the one fingerprint (hashing)
module, the torchrun rank helpers and the resumable rank-dealt job loop. Nothing here imports a
stage package; see docs/architecture.md."""
