"""A converted PixelLM checkpoint runs as PixelLM does: the generated tokens, the mask logits and the thresholded masks
of our engine's path (processor → ``encode`` → KV-cached ``decode`` → ``qground.masks``) equal an independent
reference of PixelLM's inference (``pixellm_reference``, written from PixelLM's equations with pip
``segment_anything`` parts and no qground code) on the same random source weights, in fp32 and bf16, on a non-square
photo whose padding both masks (vision tower keys, LLM image tokens) must hide."""

from __future__ import annotations

import pytest
import torch

import pixellm_layout as layout
from conftest import photo
from pixellm_layout import IMAGE_TOKEN_INDEX, SEG_TOKENS
from pixellm_reference import PixelLMReference
from qground.checkpoint import load_model
from qground.convert import Hardcoded, convert
from qground.inference import GROUNDING_QUESTION, GenerationSettings, decode
from qground.masks import ground_masks
from qground.policy import InferencePolicy
from qground.processor import QGroundProcessor
from qground.prompts import Turn

# bf16 is compared with what bf16 can promise: PixelLM's and our kernels round differently (eager vs sdpa attention,
# fused vs unfused ops), so logits agree to a few bf16 steps and a mask pixel may flip only where |logit| is that small.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.05}


class Forced:
    """A ``TokenConstraint`` allowing exactly one token per step: ``decode`` then follows ``tokens`` (a
    teacher-forced answer) through its own KV-cached loop, feeding what the constraint forces in one pass."""

    def __init__(self, tokens: list[int], vocab: int) -> None:
        self.tokens, self.vocab = tokens, vocab

    def start(self) -> int:
        return 0

    def mask(self, step: int) -> torch.Tensor:
        allowed = torch.zeros(self.vocab, dtype=torch.bool)
        allowed[self.tokens[step]] = True
        return allowed

    def advance(self, step: int, token: int) -> int:
        return step + 1

    def forced(self, step: int) -> int:
        return self.tokens[step]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    state = layout.write_pixellm(root / "src", layout.TINY)
    clip = layout.write_clip(root / "clip", layout.TINY)
    hardcoded = Hardcoded(decoder_heads=layout.TINY.dec_heads, decoder_layers=(-2, -3))
    result = convert("pixellm", root / "src", root / "clip", root / "out", hardcoded=hardcoded)
    return state, clip, result.folder


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def pair(request, converted):
    state, clip, folder = converted
    dtype = request.param
    model, tokenizer = load_model(folder, device="cpu", dtype=dtype)
    return PixelLMReference(state, clip, layout.TINY, dtype=dtype), model, QGroundProcessor(tokenizer, model.config)


def _inputs(processor, image):
    """Our sample for ``image`` with the grounding question, and the reference's ids: ours with the image's run of
    image tokens replaced by LLaVA's single placeholder (its <im_start>/<im_end> stay, as in PixelLM's prompt)."""
    sample = processor([image], [Turn(GROUNDING_QUESTION)])
    ids = sample["input_ids"].tolist()
    image_id = processor.config.token_ids.image
    first = ids.index(image_id)
    reference_ids = [*ids[:first], IMAGE_TOKEN_INDEX, *[i for i in ids[first:] if i != image_id]]
    return sample, reference_ids


def test_same_pixels_and_content_size(pair):
    reference, _, processor = pair
    image = photo(30, 50, seed=1)
    ours, meta = processor.preprocess_image(image)
    theirs, hw = reference.preprocess(image)
    assert meta.resized_size == hw == (38, 64)
    torch.testing.assert_close(ours, theirs[0], rtol=0, atol=1e-5)


def test_greedy_tokens_match(pair):
    reference, model, processor = pair
    dtype = next(model.projector.parameters()).dtype
    image = photo(30, 50, seed=2)
    sample, reference_ids = _inputs(processor, image)
    features = model.encode_images(sample["pixel_values"].to(dtype), image_sizes=[sample["metas"][0].resized_size])
    ours = [t for t, _, _ in decode(model, sample["input_ids"][None], features, GenerationSettings(max_new_tokens=8))]
    pixels, hw = reference.preprocess(image)
    theirs, _ = reference.generate(reference_ids, pixels, hw, max_new_tokens=8, eos=processor.tokenizer.eos_token_id)
    assert ours == theirs


@pytest.mark.parametrize("size", [(30, 50), (50, 20)])
def test_masks_match(pair, size):
    reference, model, processor = pair
    dtype = next(model.projector.parameters()).dtype
    tokenizer = processor.tokenizer
    image = photo(*size, seed=3)
    sample, reference_ids = _inputs(processor, image)
    meta = sample["metas"][0]
    seg_ids = tokenizer.convert_tokens_to_ids(list(SEG_TOKENS))
    answer = [*tokenizer("noise", add_special_tokens=False).input_ids, *seg_ids, tokenizer.eos_token_id]

    features = model.encode_images(sample["pixel_values"].to(dtype), image_sizes=[meta.resized_size])
    forced = Forced(answer, model.config.llm.vocab_size)
    steps = list(decode(model, sample["input_ids"][None], features, GenerationSettings(max_new_tokens=20), forced))
    assert [t for t, _, _ in steps] == answer
    states = torch.stack([state for token, state, _ in steps if token in seg_ids])[None]  # (1, 6, D)
    ours = model.decode_masks(states, features, torch.zeros(1, dtype=torch.long))
    drawn = ground_masks(model, InferencePolicy(), states, features, meta, ["noise"])

    pixels, hw = reference.preprocess(image)
    new, last = reference.generate(reference_ids, pixels, hw, max_new_tokens=20, forced=answer)
    their_states = reference.seg_states(reference_ids + new, last, seg_ids)
    theirs = reference.masks(their_states, reference.vision(pixels, hw), hw, meta.original_size)

    tol = TOLERANCE[dtype]
    torch.testing.assert_close(states.float(), their_states.float(), rtol=tol, atol=tol)
    seg, their_seg = model.seg_head(states).float(), reference.seg_embeddings(their_states).float()
    torch.testing.assert_close(seg, their_seg, rtol=0, atol=tol * float(their_seg.abs().max()))
    scale = theirs["logits_input"].abs().max()
    torch.testing.assert_close(ours.float(), theirs["logits_input"], rtol=0, atol=tol * float(scale))
    mask, reference_mask = torch.from_numpy(drawn.masks["noise"]), theirs["masks"][0]
    sure = theirs["logits"][0].abs() > tol * scale  # pixels whose sign the tolerance cannot flip
    assert torch.equal(mask[sure], reference_mask[sure])
    if dtype == torch.float32:
        assert torch.equal(mask, reference_mask)
    assert 0 < int(reference_mask.sum()) < reference_mask.numel()  # the comparison is not between empty masks
