"""Weight bytes of the qground-7b layout in fp16 vs NF4 (double quant) with our skip list, on the meta device.

The 4-bit model is what ``transformers`` builds for our ``BitsAndBytesConfig`` (its own ``replace_with_bnb_linear`` on
the meta model), so the count follows the real skip list. NF4 bytes per quantized weight: 0.5 (4-bit codes) + 1/64
(8-bit block absmax, block 64) + 4/(64·256) (fp32 second-level absmax, block 256). Everything else stays 16-bit.

``--quick``: the same count for the shipped ``qground-nano`` layout, built on the CPU (a few seconds).

Run: ``python -m bench.memory [--quick]``
"""

from __future__ import annotations

import argparse

import torch
from bitsandbytes.nn import Linear4bit
from transformers.integrations.bitsandbytes import replace_with_bnb_linear

from qground.builder import build_from_registry
from qground.checkpoint import QUANT_SKIP_MODULES, quantization_config

NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)


def fp16_bytes(module: torch.nn.Module) -> int:
    return 2 * sum(p.numel() for p in module.parameters())


def nf4_bytes(module: torch.nn.Module) -> tuple[float, int]:
    """(bytes, number of quantized weights) after replacing the non-skipped Linear layers with ``Linear4bit``."""
    replace_with_bnb_linear(
        module,
        modules_to_not_convert=list(QUANT_SKIP_MODULES),
        quantization_config=quantization_config("4bit", torch.float16),
    )
    total, quantized = 0.0, 0
    for m in module.modules():
        own = list(m.parameters(recurse=False))
        if isinstance(m, Linear4bit):
            n = m.in_features * m.out_features
            quantized += n
            total += n * NF4_BYTES_PER_WEIGHT + (2 * m.out_features if m.bias is not None else 0)
        else:
            total += 2 * sum(p.numel() for p in own)
    return total, quantized


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the qground-nano layout instead of qground-7b")
    quick = parser.parse_args(argv).quick
    name = "qground-nano" if quick else "qground-7b"
    # on the meta device no tokenizer is built: only qground-7b's config knows its token ids without one
    model, _ = build_from_registry(name, device="cpu" if quick else "meta")
    heads = fp16_bytes(model.seg_head) + fp16_bytes(model.pixel_decoder)
    full = fp16_bytes(model.llava) + heads
    quant, n_quant = nf4_bytes(model.llava)
    quant += heads
    n_total = sum(p.numel() for p in model.parameters())
    kept = {
        "vision tower": fp16_bytes(model.vision_tower),
        "φv": fp16_bytes(model.projector),
        "embed_tokens": fp16_bytes(model.llava.get_input_embeddings()),
        "lm_head": fp16_bytes(model.llava.lm_head),
        "seg head + decoder": heads,
    }
    print(f"{name}: {n_total / 1e9:.3f} B parameters, {n_quant / 1e9:.3f} B in NF4 (skip list {QUANT_SKIP_MODULES})")
    print(f"fp16 bytes            {full / 2**30:8.2f} GiB")
    print(f"NF4 + skip list bytes {quant / 2**30:8.2f} GiB")
    for k, v in kept.items():
        print(f"  kept 16-bit: {k:<20}{v / 2**30:6.2f} GiB")
    print(f"ratio NF4 / fp16 = {quant / full:.3f}   (target <= 0.30)")


if __name__ == "__main__":
    main()
