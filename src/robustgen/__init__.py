"""robustgen: adversarial robustness from generated data (Gowal et al., NeurIPS 2021).

Public entry points: ``robustgen.load_model(path)`` (a trained model as an ``nn.Module`` in
eval mode, [0,1] NCHW in, logits out), ``robustgen.load_config`` and the ``robustgen`` CLI.
"""

__version__ = "0.1.0"


def load_model(path, *, device="cpu"):
    """Load a robustgen checkpoint (``.safetensors``) as an ``nn.Module`` in eval mode."""
    from robustgen.checkpoint import load_model as _load

    return _load(path, device=device)


def load_config(config=None, overrides=()):
    """The resolved, validated run config (preset name or YAML path, plus ``key=value`` overrides)."""
    from robustgen.config import load_config as _load

    return _load(config, overrides)


__all__ = ["__version__", "load_config", "load_model"]
