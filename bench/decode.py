"""Decode speed: our KV-cached generation vs the PixelLM-style ``use_cache=False`` loop, same model, same prompt.

Both generate 128 new tokens greedily (end-of-sequence suppressed so the count is fixed) for one image + the grounding
question, then produce masks for two seg groups: ours from the predicting states recorded while decoding, the baseline
from a second full teacher-forced pass over prompt + answer (as PixelLM's chat does). Model: the 7B layout's token
geometry (448 px, 256 image tokens) with a mid-size random LLM so it runs on a CPU. Prints medians of 3 runs.

``--quick``: the same comparison on the ``qground-tiny`` sizes, 16 new tokens, one run each (a few seconds).

Run: ``python -m bench.decode [--quick]``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from PIL import Image

from qground.builder import build_model, build_tokenizer, config_tiny
from qground.config import DecoderConfig, LLMConfig, VisionConfig
from qground.inference import GROUNDING_QUESTION, GenerationSettings, decode
from qground.processor import QGroundProcessor
from qground.prompts import Turn


def bench_config(quick: bool):
    if quick:
        return dataclasses.replace(config_tiny(), name="bench-decode-quick")
    return dataclasses.replace(
        config_tiny(),
        name="bench-decode",
        vision=VisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_layers=4,
            num_heads=4,
            patch_size=14,
            native_image_size=448,
            hub_id=None,
        ),
        llm=LLMConfig(
            hidden_size=1024,
            intermediate_size=2816,
            num_layers=8,
            num_heads=16,
            num_kv_heads=16,
            vocab_size=32064,
            max_position_embeddings=2048,
        ),
        decoder=DecoderConfig(dim=64, depth=1, num_heads=4, mlp_dim=256, layers=(4, 2)),
        image_size=448,
    )


def run(model, ids, pixel_values, cached: bool, new_tokens: int) -> float:
    """Seconds for generate + seg states + masks for two groups."""
    settings = GenerationSettings(max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=cached)
    n = model.config.seg_count
    t0 = time.perf_counter()
    with torch.inference_mode():
        feats = model.encode_images(pixel_values)
        steps = list(decode(model, ids, feats, settings))
        if cached:
            states = torch.stack([state for _, state, _ in steps[: 2 * n]]).view(2, n, -1)
        else:  # PixelLM: re-run the whole sequence once more to read the seg hidden states
            full = torch.cat([ids, torch.tensor([[token for token, _, _ in steps]])], dim=1)
            hidden = model.language_model(inputs_embeds=model.embed(full, feats.tokens), use_cache=False)
            states = hidden.last_hidden_state[0, ids.shape[1] - 1 : ids.shape[1] - 1 + 2 * n].view(2, n, -1)
        model.decode_masks(states, feats, torch.zeros(2, dtype=torch.long))
    assert len(steps) == new_tokens
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 new tokens, one run each")
    args = parser.parse_args(argv)
    new_tokens, runs = (16, 1) if args.quick else (128, 3)
    torch.manual_seed(0)
    tokenizer, config = build_tokenizer(bench_config(args.quick))
    model = build_model(config)
    processor = QGroundProcessor(tokenizer, config)
    sample = processor([Image.new("RGB", (640, 480), "gray")], [Turn(GROUNDING_QUESTION)])
    ids, pixels = sample["input_ids"][None], sample["pixel_values"]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model {params:.1f} M params, prompt {ids.shape[1]} tokens ({config.num_image_tokens} image), "
        f"{new_tokens} new tokens, torch threads {torch.get_num_threads()}"
    )
    run(model, ids, pixels, True, new_tokens)  # warm-up
    times = {"cached (ours)": [], "use_cache=False (PixelLM-style)": []}
    for _ in range(runs):
        for name, cached in (("cached (ours)", True), ("use_cache=False (PixelLM-style)", False)):
            times[name].append(run(model, ids, pixels, cached, new_tokens))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<34} {new_tokens / v:8.1f} tokens/s   (median {v:.2f} s incl. seg states + masks)")
    ratio = med["use_cache=False (PixelLM-style)"] / med["cached (ours)"]
    print(f"speed-up cached / uncached = {ratio:.1f}x   (target >= 8x)")


if __name__ == "__main__":
    main()
