"""Self-tests of the PixelLM checkpoint fixture (``pixellm_layout``) and the PixelLM inference reference
(``pixellm_reference``): full-size key inventory, both file formats, the position-table quirk, both padding masks and
an end-to-end run on a non-square image."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from pixellm_layout import (
    IM_END,
    IM_START,
    IMAGE_TOKEN_INDEX,
    SEG_TOKENS,
    SEVEN_B,
    TINY,
    clip_shapes,
    is_llm_key,
    meta_state,
    pixellm_shapes,
    prompt_encoder_shapes,
    random_state,
    release_dtype,
    tiny_tokenizer,
    two_way_transformer_shapes,
    write_clip,
    write_pixellm,
)
from pixellm_reference import (
    PixelLMReference,
    dense_pe,
    llm_valid,
    quirk_position_table,
    resize_longest_side,
    vit_valid,
)

SYSTEM = "A chat between a curious human and an artificial intelligence assistant."


def _numel(shapes: dict) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def _state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---- layout ------------------------------------------------------------------------------------------------------


def test_seven_b_inventory():
    shapes = pixellm_shapes(SEVEN_B)
    meta = meta_state(shapes)
    assert all(t.device.type == "meta" and tuple(t.shape) == shapes[k] for k, t in meta.items())
    heads = {k: v for k, v in shapes.items() if not is_llm_key(k)}
    assert len(heads) == 241  # PixelLM-7B: 241 non-LLM keys
    assert sum(t.numel() for k, t in meta.items() if k in heads) == 110_958_896  # and their parameters

    def part(prefix: str) -> int:
        return _numel({k: v for k, v in heads.items() if k.startswith(prefix)})

    assert part("model.mm_projector.") == part("model.out_mm_projector.") == 41_955_328
    assert part("model.text_hidden_fcs.") == 17_830_144
    assert part("model.image_feature_neck.") == 1_639_424
    assert part("model.prompt_encoder.") + part("model.mask_decoder.") == 7_578_672
    assert len([k for k in heads if k.startswith("model.mask_decoder.transformer.0.")]) == 82
    assert not any("vision_tower" in k for k in shapes)

    llm = {k: v for k, v in shapes.items() if is_llm_key(k)}
    assert len(llm) == 3 + 32 * 10
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (32008, 4096)
    assert shapes["model.layers.31.self_attn.rotary_emb.inv_freq"] == (64,)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (4096, 11008)
    assert _numel({k: v for k, v in llm.items() if not k.endswith("inv_freq")}) == 6_738_415_616 + 2 * 8 * 4096

    # The released index's total_size (on its Hub page) is matched exactly by 32009 vocab rows with the pixel heads and
    # inv_freq stored in fp32 and everything else in bf16 (see release_dtype).
    released = pixellm_shapes(dataclasses.replace(SEVEN_B, vocab=32009))
    size = sum(math.prod(v) * (4 if release_dtype(k) == torch.float32 else 2) for k, v in released.items())
    assert size == 13_753_001_152


def test_shapes_match_module_definitions():
    """The decoder-side shapes equal pip segment_anything's modules (identical to PixelLM's copies), the LLaMA shapes
    equal transformers' LlamaForCausalLM and the CLIP vision shapes equal CLIPVisionModel, at full size on meta."""
    from segment_anything.modeling import PromptEncoder, TwoWayTransformer
    from segment_anything.modeling.mask_decoder import MLP
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    for s in (SEVEN_B, TINY):
        shapes = pixellm_shapes(s)
        c = s.dec_dim
        with torch.device("meta"):
            twt = TwoWayTransformer(depth=2, embedding_dim=c, num_heads=s.dec_heads, mlp_dim=s.dec_mlp)
            pe = PromptEncoder(
                embed_dim=c,
                image_embedding_size=(s.grid, s.grid),
                input_image_size=(s.image_size,) * 2,
                mask_in_chans=16,
            )
            hyper = MLP(c, c, c // 8, 3)
            vision = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=s.vision_hidden,
                    intermediate_size=s.vision_intermediate,
                    num_hidden_layers=s.vision_layers,
                    num_attention_heads=s.vision_heads,
                    patch_size=s.patch,
                    image_size=s.clip_image_size,
                )
            )
        assert _state_shapes(twt) == two_way_transformer_shapes(c, s.dec_mlp)
        for level in (0, 1):
            prefix = f"model.mask_decoder.transformer.{level}."
            assert {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)} == _state_shapes(twt)
        assert _state_shapes(pe) == prompt_encoder_shapes(c)
        for i in range(4):
            prefix = f"model.mask_decoder.output_hypernetworks_mlps.{i}."
            assert {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)} == _state_shapes(hyper)
        # transformers 5 names CLIPVisionModel's keys without the "vision_model." of the CLIP checkpoint
        vision_shapes = {_vision_key(k): v for k, v in _state_shapes(vision).items() if not k.endswith("position_ids")}
        assert vision_shapes == {k: v for k, v in clip_shapes(s).items() if k.startswith("vision_model.")}

    config = LlamaConfig(
        vocab_size=TINY.vocab,
        hidden_size=TINY.llm_hidden,
        intermediate_size=TINY.llm_intermediate,
        num_hidden_layers=TINY.llm_layers,
        num_attention_heads=TINY.llm_heads,
        num_key_value_heads=TINY.llm_heads,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        llm = LlamaForCausalLM(config)
    tiny = pixellm_shapes(TINY)
    assert _state_shapes(llm) == {k: v for k, v in tiny.items() if is_llm_key(k) and not k.endswith("inv_freq")}


def _vision_key(key: str) -> str:
    return key if key.startswith("vision_model.") else f"vision_model.{key}"


def _read_folder(folder) -> tuple[dict[str, torch.Tensor], dict]:
    index_name = next(p.name for p in folder.iterdir() if p.name.endswith(".index.json"))
    index = json.loads((folder / index_name).read_text())
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(index["weight_map"].values())):
        path = folder / name
        part = load_file(path) if name.endswith(".safetensors") else torch.load(path, weights_only=True)
        assert all(index["weight_map"][k] == name for k in part)
        state.update(part)
    return state, index


@pytest.mark.parametrize(
    ("fmt", "dtype", "files"),
    [
        ("safetensors", torch.float32, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]),
        ("bin", "release", ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]),
    ],
)
def test_tiny_checkpoint_roundtrip(tmp_path, fmt, dtype, files):
    written = write_pixellm(tmp_path, TINY, fmt=fmt, shards=2, dtype=dtype, seed=3)
    shapes = pixellm_shapes(TINY)
    state, index = _read_folder(tmp_path)
    assert sorted(set(index["weight_map"].values())) == files
    assert set(state) == set(shapes) == set(written) == set(index["weight_map"])
    assert all(tuple(state[k].shape) == shapes[k] for k in shapes)
    assert all(torch.equal(state[k], written[k]) for k in shapes)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    if dtype == "release":
        assert state["model.mask_decoder.iou_token.weight"].dtype == torch.float32
        assert state["model.mm_projector.0.weight"].dtype == torch.bfloat16
        assert state["model.layers.0.self_attn.rotary_emb.inv_freq"].dtype == torch.float32
    inv_freq = state["model.layers.1.self_attn.rotary_emb.inv_freq"].float()
    head_dim = TINY.head_dim
    assert torch.allclose(inv_freq, 1 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))

    config = json.loads((tmp_path / "config.json").read_text())
    tok = tiny_tokenizer()
    assert config["architectures"] == ["PixelLMForCausalLM"] and config["model_type"] == "llava"
    assert config["vocab_size"] == TINY.vocab == len(tok)
    assert config["seg_token_idx"] == tok.convert_tokens_to_ids(list(SEG_TOKENS))
    assert config["mm_vision_select_layer"] == -2 and config["mm_use_im_start_end"] is True
    assert json.loads((tmp_path / "generation_config.json").read_text())["_from_model_config"] is True

    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == TINY.vocab
    assert loaded.convert_tokens_to_ids([*SEG_TOKENS, IM_START, IM_END]) == list(range(TINY.vocab - 8, TINY.vocab))
    added = json.loads((tmp_path / "added_tokens.json").read_text())
    assert added["[SEG0]"] == config["seg_token_idx"][0] and added[IM_END] == TINY.vocab - 1


def test_clip_source_loads_in_transformers(tmp_path):
    from transformers import CLIPVisionModel

    written = write_clip(tmp_path, TINY)
    assert {k: tuple(v.shape) for k, v in written.items()} == clip_shapes(TINY)
    assert written["vision_model.embeddings.position_embedding.weight"].shape == (1 + 6 * 6, TINY.vision_hidden)
    model = CLIPVisionModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        if not key.endswith("position_ids"):
            assert torch.equal(value, written[_vision_key(key)]), key


# ---- reference: pieces -------------------------------------------------------------------------------------------


def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of a 1-D bilinear resize with align_corners=False (half-pixel centres, edge clamp)."""
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(math.floor(x)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        a[i, lo] += 1 - (x - lo)
        a[i, hi] += x - lo
    return a


def test_quirk_position_table():
    torch.manual_seed(0)
    w = torch.randn(1 + 3 * 3, 5)  # CLS + a 3×3 native grid, distinct rows
    table = quirk_position_table(w, 4)
    assert table.shape == (1 + 4 * 4, 5) and table.dtype == torch.float32
    a = _bilinear_matrix(3, 4)
    cells = w[:-1].double().T.reshape(5, 3, 3)  # cell 0 is the CLS row, cell k is patch k − 1
    g = torch.einsum("ij,cjk,lk->cil", a, cells, a).reshape(5, 16).T.float()
    assert torch.allclose(table[0], g[0], atol=1e-6)  # CLS ← G[0]
    for p in range(15):
        assert torch.allclose(table[1 + p], g[p + 1], atol=1e-6)  # patch p ← G[p+1]
    assert torch.equal(table[16], w[-1])  # the last patch keeps the native last-patch row
    bicubic = F.interpolate(w[:-1].T.reshape(1, 5, 3, 3), size=(4, 4), mode="bicubic", align_corners=False)
    assert not torch.allclose(table[:16], bicubic[0].flatten(1).T, atol=1e-3)


def test_preprocess_rounding_and_normalization(ref):
    assert resize_longest_side(73, 128, 64) == (37, 64)  # 36.5 rounds half up (round() would give 36)
    assert resize_longest_side(30, 50, 64) == (38, 64) and resize_longest_side(50, 20, 64) == (64, 26)
    pixels, hw = ref.preprocess(Image.new("RGB", (128, 73), (255, 0, 128)))
    assert hw == (37, 64)
    expected = torch.tensor([(255 - 123.675) / 58.395, -116.28 / 57.12, (128 - 103.53) / 57.375])
    assert torch.allclose(pixels[0, :, :37, :].mean(dim=(1, 2)), expected, atol=1e-5)
    assert not pixels[0, :, 37:, :].any()


def test_dense_pe_matches_sam_definition():
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    sam = PositionEmbeddingRandom(8)
    gaussian = sam.positional_encoding_gaussian_matrix
    assert torch.allclose(dense_pe(gaussian, 6, 6), sam((6, 6)), atol=1e-6)
    assert dense_pe(gaussian.bfloat16(), 12, 12).dtype == torch.bfloat16  # grid built in the matrix dtype


# ---- reference: end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights():
    return random_state(pixellm_shapes(TINY), seed=0), random_state(clip_shapes(TINY), seed=1)


@pytest.fixture(scope="module")
def ref(weights):
    return PixelLMReference(*weights, TINY)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _prompt(tok) -> list[int]:
    start, end = tok.convert_tokens_to_ids([IM_START, IM_END])
    user = tok(f"{SYSTEM} USER:").input_ids
    question = tok("Please segment out distorted regions in the image. ASSISTANT:").input_ids
    return [tok.bos_token_id, *user, start, IMAGE_TOKEN_INDEX, end, *question]


@pytest.mark.parametrize("size", [(50, 30), (20, 50)])
def test_vit_key_padding_mask(ref, size):
    pixels, (h, w) = ref.preprocess(_image(*size))
    p = TINY.patch
    valid = vit_valid(TINY, (h, w))
    assert int(valid.sum()) == math.ceil(h / p) * math.ceil(w / p)
    # perturb the padding covered only by masked patches (a partly padded patch is valid and reads its zeros)
    rows, cols = math.ceil(h / p) * p, math.ceil(w / p) * p
    perturbed = pixels.clone()
    perturbed[..., rows:, :] += torch.randn_like(perturbed[..., rows:, :])
    perturbed[..., :, cols:] += torch.randn_like(perturbed[..., :, cols:])
    keep = torch.cat([torch.ones(1, dtype=torch.bool), valid.flatten()])
    for a, b in zip(ref.vision(pixels, (h, w)), ref.vision(perturbed, (h, w))):
        assert torch.equal(a[:, keep], b[:, keep])
        assert not torch.equal(a[:, ~keep], b[:, ~keep])
    unmasked = ref.vision(pixels, (h, w), key_padding=False)[-1], ref.vision(perturbed, (h, w), key_padding=False)[-1]
    assert not torch.equal(unmasked[0][:, keep], unmasked[1][:, keep])


def test_llm_image_mask(ref):
    pixels, hw = ref.preprocess(_image(50, 30))
    valid = llm_valid(TINY, hw).flatten()
    assert int(valid.sum()) == math.ceil(hw[0] / (2 * TINY.patch)) * math.ceil(hw[1] / (2 * TINY.patch)) == 12
    ids = _prompt(tiny_tokenizer())
    tokens = ref.image_tokens(ref.vision(pixels, hw))
    assert tokens.shape == (1, TINY.tokens, TINY.llm_hidden)
    perturbed = tokens.clone()
    perturbed[:, ~valid] += torch.randn_like(perturbed[:, ~valid])
    embeds, mask = ref.embed(ids, tokens, hw)
    embeds2, mask2 = ref.embed(ids, perturbed, hw)
    at = ids.index(IMAGE_TOKEN_INDEX)
    image = torch.zeros(embeds.shape[1], dtype=torch.bool)
    image[at : at + TINY.tokens] = True
    assert torch.equal(mask[0, image].bool(), valid) and bool(mask[0, ~image].all())
    keep = ~image
    keep[at : at + TINY.tokens] = valid
    _, h1 = ref.llm_forward(embeds, mask)
    _, h2 = ref.llm_forward(embeds2, mask2)
    assert torch.equal(h1[0, keep], h2[0, keep])
    _, u1 = ref.llm_forward(embeds, torch.ones_like(mask))
    _, u2 = ref.llm_forward(embeds2, torch.ones_like(mask))
    assert not torch.equal(u1[0, ~image], u2[0, ~image])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_end_to_end_non_square(weights, ref, dtype):
    model = ref if dtype == torch.float32 else PixelLMReference(*weights, TINY, dtype=dtype)
    img = _image(50, 30, seed=1)
    pixels, hw = model.preprocess(img)
    assert pixels.shape == (1, 3, 64, 64) and hw == (38, 64)
    assert torch.equal(pixels[..., 38:, :], torch.zeros_like(pixels[..., 38:, :]))
    tok = tiny_tokenizer()
    ids = _prompt(tok)

    new, last = model.generate(ids, pixels, hw, max_new_tokens=5)
    assert 1 <= len(new) <= 5 and all(0 <= t < TINY.vocab for t in new)
    assert last.shape == (len(ids) + len(new) - 2 + TINY.tokens, TINY.llm_hidden) and last.dtype == dtype

    seg = tok.convert_tokens_to_ids(list(SEG_TOKENS))
    forced = [tok("noise").input_ids[0], *seg, tok.eos_token_id]
    new, last = model.generate(ids, pixels, hw, max_new_tokens=20, forced=forced)
    assert new == forced
    states = model.seg_states(ids + new, last, seg)
    assert states.shape == (1, 6, TINY.llm_hidden)
    first = len(ids) - 1 + TINY.tokens + 1  # expanded position of [SEG0]
    assert torch.equal(states[0], last[first - 1 : first + 5])  # the states *before* each seg token

    fused = model.seg_embeddings(states)  # PixelLM weighs each seg token 1/6 (1/len(seg_token_idx)), not 1/3
    per_token = model.text_hidden_fcs(states.to(dtype)).float().view(1, 2, 3, TINY.dec_dim)
    assert fused.shape == (1, 2, TINY.dec_dim) and fused.dtype == dtype
    assert torch.allclose(fused.float(), per_token.sum(dim=2) / 6, atol=1e-5 if dtype == torch.float32 else 2e-2)

    out = model.masks(states, model.vision(pixels, hw), hw, (img.height, img.width))
    assert out["logits_input"].shape == (1, 64, 64) and out["logits_input"].dtype == torch.float32
    assert out["logits"].shape == (1, 30, 50) and out["logits"].dtype == torch.float32
    assert out["masks"].shape == (1, 30, 50) and out["masks"].dtype == torch.bool
    assert bool(torch.isfinite(out["logits"]).all())
    assert torch.equal(out["masks"], out["logits"] > 0)

    incomplete = model.seg_states(ids + new[:-2] + [tok.eos_token_id], last[:-1], seg)
    assert incomplete.shape == (0, 6, TINY.llm_hidden)  # 5 seg tokens: PixelLM drops them all
    empty = model.masks(incomplete, model.vision(pixels, hw), hw, (30, 50))
    assert empty["masks"].shape == (0, 30, 50)
