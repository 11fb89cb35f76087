"""Decode speed: our KV-cached generation vs the PixelLM-style ``use_cache=False`` loop, same model, same prompt.

Both generate 128 new tokens greedily (end-of-sequence suppressed so the count is fixed) for one image + the grounding
question, then produce masks for two seg groups: ours from the predicting states recorded while decoding, the baseline
from a second full teacher-forced pass over prompt + answer (as PixelLM's chat does). Model: the 7B layout's token
geometry (448 px, 256 image tokens) with a mid-size random LLM so it runs on a CPU. Prints medians of 3 runs.

Run: ``python -m bench.decode``
"""

from __future__ import annotations

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

NEW_TOKENS = 128


def bench_config():
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


def run(model, ids, pixel_values, cached: bool) -> float:
    """Seconds for generate + seg states + masks for two groups."""
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=cached)
    n = model.config.seg_count
    t0 = time.perf_counter()
    with torch.inference_mode():
        feats = model.encode_images(pixel_values)
        steps = list(decode(model, ids, feats, settings))
        if cached:
            states = torch.stack([s for _, s in steps[: 2 * n]]).view(2, n, -1)
        else:  # PixelLM: re-run the whole sequence once more to read the seg hidden states
            full = torch.cat([ids, torch.tensor([[t for t, _ in steps]])], dim=1)
            hidden = model.language_model(inputs_embeds=model.embed(full, feats.tokens), use_cache=False)
            states = hidden.last_hidden_state[0, ids.shape[1] - 1 : ids.shape[1] - 1 + 2 * n].view(2, n, -1)
        model.decode_masks(states, feats, torch.zeros(2, dtype=torch.long))
    assert len(steps) == NEW_TOKENS
    return time.perf_counter() - t0


def main() -> None:
    torch.manual_seed(0)
    tokenizer, config = build_tokenizer(bench_config())
    model = build_model(config)
    processor = QGroundProcessor(tokenizer, config)
    sample = processor([Image.new("RGB", (640, 480), "gray")], [Turn(GROUNDING_QUESTION)])
    ids, pixels = sample["input_ids"][None], sample["pixel_values"]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model {params:.0f} M params, prompt {ids.shape[1]} tokens ({config.num_image_tokens} image), "
        f"{NEW_TOKENS} new tokens, torch threads {torch.get_num_threads()}"
    )
    run(model, ids, pixels, cached=True)  # warm-up
    times = {"cached (ours)": [], "use_cache=False (PixelLM-style)": []}
    for _ in range(3):
        for name, cached in (("cached (ours)", True), ("use_cache=False (PixelLM-style)", False)):
            times[name].append(run(model, ids, pixels, cached))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<34} {NEW_TOKENS / v:8.1f} tokens/s   (median {v:.2f} s incl. seg states + masks)")
    ratio = med["use_cache=False (PixelLM-style)"] / med["cached (ours)"]
    print(f"speed-up cached / uncached = {ratio:.1f}x   (target >= 8x)")


if __name__ == "__main__":
    main()
