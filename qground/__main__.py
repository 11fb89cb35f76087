"""Command line: ``python -m qground info NAME``."""

from __future__ import annotations

import argparse
import sys

from qground.builder import REGISTRY, build_from_registry


def summary(name: str) -> str:
    """Architecture summary and parameter counts of a registry model, built on the meta device (no download)."""
    model, _ = build_from_registry(name, device="meta")
    c = model.config
    parts = {
        "vision tower (frozen)": model.vision_tower,
        "φv projector": model.projector,
        "LLM": model.language_model,
        "lm_head": model.llava.lm_head,
        "seg head": model.seg_head,
        "pixel decoder": model.pixel_decoder,
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    total = sum(p.numel() for p in model.parameters())
    lines = [
        f"{name}: {REGISTRY[name].description}",
        f"  base model     {c.base_model_id}   vision {c.vision.hub_id}",
        f"  input          {c.image_size}×{c.image_size} px, patch {c.vision.patch_size} → {c.grid}×{c.grid} patches "
        f"(native {c.vision.native_image_size})",
        f"  φv             layers {list(c.feature_layers)} → pool {c.projector_pool} → "
        f"{c.num_image_tokens} tokens/image",
        f"  LLM            {c.llm.num_layers} layers × {c.llm.hidden_size}, vocab {c.llm.vocab_size}",
        f"  seg tokens     {c.seg_levels} levels × {c.seg_tokens_per_level} = {c.seg_count} per target",
        f"  pixel decoder  layers {list(c.decoder.layers)}, dim {c.decoder.dim}, depth {c.decoder.depth}, "
        f"masks at {4 * c.grid}×{4 * c.grid}",
        f"  loss           {c.loss.ce}·CE + {c.loss.mask}·({c.loss.bce}·BCE + {c.loss.dice}·DICE)",
        f"  LoRA           r {c.lora.r}, α {c.lora.alpha}",
        "  parameters:",
        *(f"    {k:<22}{v:>16,}" for k, v in counts.items()),
        f"    {'total':<22}{total:>16,}  ({total / 1e9:.3f} B)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qground", description="Q-Ground image-quality grounding")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="architecture summary and parameter counts (no download)")
    info.add_argument("name", choices=sorted(REGISTRY))
    args = parser.parse_args(argv)
    if args.command == "info":
        print(summary(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
