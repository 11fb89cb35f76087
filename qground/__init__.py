"""qground: image-quality grounding with a large multimodal model (Q-Ground) and multi-image quality comparison."""

import logging


def _drop_optional_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes (≥ 0.50, on CPUs with AVX512-BF16) logs a warning at import when the optional Hub package
    ``kernels`` is missing. Its own CPU kernels run instead and nothing is wrong, so the notice is not printed."""
    return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_notice)
