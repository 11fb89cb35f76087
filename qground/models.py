"""Which model to use: the one place that turns "a name, or nothing" into a model name.

``resolve_model(name)`` is the argument when given, else ``$QGROUND_MODEL``, else ``DEFAULT_MODEL``; the app
(``qground.service.load_engine_from_env``), the command line (``python -m qground``) and the benches that take
``--model`` all ask it. A model name is a registry name (``qground.builder.REGISTRY``), a checkpoint folder or a Hub
repo id. Nothing is imported or loaded here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["DEFAULT_MODEL", "MODEL_ENV", "resolve_model"]

DEFAULT_MODEL = "qground-nano"  # the model trained here and shipped in assets/ (works offline)
MODEL_ENV = "QGROUND_MODEL"


def resolve_model(name: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The model to load: ``name`` when given (not None or empty), else ``env["QGROUND_MODEL"]`` when set and not
    empty, else ``DEFAULT_MODEL``. ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    return name or env.get(MODEL_ENV) or DEFAULT_MODEL
