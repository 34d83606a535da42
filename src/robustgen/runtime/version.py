"""The package version: recorded in manifests, checkpoints and provenance, and hashed into every
stage fingerprint (``runtime.fingerprint.hash_parts``). Kept here, below everything, so that no
module reaches up through the package root for it."""

__version__ = "0.1.0"
