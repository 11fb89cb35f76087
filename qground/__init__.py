"""qground: image-quality grounding with a large multimodal model (Q-Ground) and multi-image quality comparison."""

import logging


def _drop_optional_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes (≥ 0.50, on CPUs with AVX512-BF16) logs a warning at import when the optional Hub package
    ``kernels`` is missing. Its own CPU kernels run instead and nothing is wrong, so the notice is not printed."""
    return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_notice)

# The public API, imported on first use so that ``import qground`` stays cheap (no torch, no transformers).
_EXPORTS = {
    "DEFAULT_MODEL": "qground.models",
    "GenerationSettings": "qground.inference",
    "GroundingResult": "qground.inference",
    "QGroundEngine": "qground.inference",
    "QUESTIONS": "qground.questions",
    "REGISTRY": "qground.builder",
    "load_engine": "qground.service",
    "load_model": "qground.checkpoint",
    "resolve_model": "qground.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """``qground.<name>`` for the public API: ``load_model`` (weights and tokenizer), ``QGroundEngine`` with its
    ``GenerationSettings`` and ``GroundingResult``, ``REGISTRY`` (the built-in models), ``load_engine`` (an engine for
    a model name), ``resolve_model`` and ``DEFAULT_MODEL`` (which model), ``QUESTIONS`` (the default questions)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
