"""A PixelLM-format checkpoint writer for tests: every key of a PixelLM HF folder (and of the openai CLIP source it
loads its vision tower from), with random weights, at any size.

PixelLM (github.com/MaverickRen/PixelLM, Apache-2.0) is not copied here: the key names and shapes below were written
from its module definitions (``model/PixelLM.py``, ``model/llava/model/llava_arch.py``,
``model/segment_anything/modeling/{prompt_encoder,mask_decoder_multi_scale,transformer}.py``) and cross-checked against
pip ``segment_anything``'s identical modules in ``tests/test_pixellm_reference.py``.

Layout (``model.``-prefixed as in PixelLM's ``pytorch_model.bin.index.json``; D = llm_hidden, Dv = vision_hidden,
C = dec_dim, H2 = proj_hidden = 2·D):

- LLaMA: ``model.embed_tokens.weight (V, D)``, ``model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
  input_layernorm, post_attention_layernorm}.weight``, ``model.layers.N.self_attn.rotary_emb.inv_freq (D/heads/2,)``
  (a transformers-4.31 buffer), ``model.norm.weight``, ``lm_head.weight (V, D)``.
- ``model.mm_projector.{0,2}`` and ``model.out_mm_projector.{0,2}``: Linear(Dv→H2)–GELU–Linear(H2→D) each.
- ``model.prompt_encoder.*``: SAM's PromptEncoder(C, mask_in_chans=16); only ``pe_layer`` and ``no_mask_embed`` are
  used by PixelLM's inference.
- ``model.mask_decoder.*``: ``transformer.{0,1}`` (TwoWayTransformer depth 2), ``iou_token (1,C)``,
  ``mask_tokens (4,C)``, ``output_upscaling`` (ConvT C→C/8), ``upsample_2x`` (ConvT C→C), ``pe1``,
  ``output_hypernetworks_mlps.{0..3}``, ``iou_prediction_head``, ``level_embed (2,C)``.
- ``model.image_feature_neck.{0..3}`` (1×1 conv D→C, LN2d, 3×3 conv, LN2d) and ``model.text_hidden_fcs.0.{0,2}``
  (Linear D→D, ReLU, Linear D→C).
- No ``vision_tower`` keys: PixelLM's merge script drops them; the tower comes from the CLIP source (``clip_shapes``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for the image in input_ids
SEG_TOKENS = tuple(f"[SEG{i}]" for i in range(6))  # [SEG0..2] → decoder level 0, [SEG3..5] → level 1
IM_START, IM_END = "<im_start>", "<im_end>"
CLIP_REPO = "openai/clip-vit-large-patch14-336"
MASK_IN_CHANS = 16  # PixelLM's PromptEncoder(mask_in_chans=16), hard-coded
NUM_MASK_TOKENS = 4  # SAM's num_multimask_outputs 3 + 1
LEVELS = 2  # image_feature_scale_num
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


PIXEL_HEAD_PREFIXES = (
    "model.text_hidden_fcs.",
    "model.image_feature_neck.",
    "model.prompt_encoder.",
    "model.mask_decoder.",
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Hyper-parameters of a PixelLM-format model (the PixelLM-7B values are ``SEVEN_B``).

    ``proj_layer``: the vision ``hidden_states`` index feeding φv (``mm_vision_select_layer -2`` = 23 of 0..24);
    ``dec_layers``: the indices feeding decoder level 0 and level 1 (PixelLM hard-codes ``[-2, -11]`` = (23, 14));
    ``clip_image_size``: CLIP's native size (its position table has ``1 + (clip_image_size/patch)²`` rows);
    ``image_size``: the size the tower runs at (PixelLM: 448, 32×32 patches). ``iou_hidden`` and the ``clip_*`` text
    sizes only shape unused keys.
    """

    llm_hidden: int
    llm_intermediate: int
    llm_layers: int
    llm_heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    patch: int
    clip_image_size: int
    image_size: int
    dec_dim: int = 256
    dec_heads: int = 8
    dec_mlp: int = 2048
    proj_layer: int = 23
    dec_layers: tuple[int, int] = (23, 14)
    rms_eps: float = 1e-6
    max_positions: int = 2048
    iou_hidden: int = 256
    clip_text_hidden: int = 768
    clip_text_vocab: int = 49408
    clip_text_positions: int = 77
    clip_projection: int = 768

    @property
    def proj_hidden(self) -> int:
        """φv / out_mm_projector hidden width (``mm_projector_hidden_dim 2`` → 2·llm_hidden)."""
        return 2 * self.llm_hidden

    @property
    def grid(self) -> int:
        """Patches per side at the run size (PixelLM-7B: 32)."""
        return self.image_size // self.patch

    @property
    def clip_grid(self) -> int:
        """Patches per side at CLIP's native size (CLIP-L/336: 24)."""
        return self.clip_image_size // self.patch

    @property
    def tokens(self) -> int:
        """LLM image tokens after the 2× pooling (PixelLM-7B: 256)."""
        return (self.grid // 2) ** 2

    @property
    def head_dim(self) -> int:
        return self.llm_hidden // self.llm_heads


def tiny_tokenizer():
    """The TINY test tokenizer: our offline byte-level BPE (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3), then
    ``[SEG0..5]`` added as ordinary (non-special) tokens and ``<im_start>``/``<im_end>`` as special tokens, in PixelLM's
    order (its seg ids come first, then the image wrappers)."""
    from qground.tokenizer import basic_corpus, train_bpe_tokenizer

    tok = train_bpe_tokenizer(basic_corpus(), vocab_size=300)
    tok.add_tokens(list(SEG_TOKENS))
    tok.add_tokens([IM_START, IM_END], special_tokens=True)
    return tok


SEVEN_B = Sizes(
    llm_hidden=4096,
    llm_intermediate=11008,
    llm_layers=32,
    llm_heads=32,
    vocab=32008,
    vision_hidden=1024,
    vision_intermediate=4096,
    vision_layers=24,
    vision_heads=16,
    patch=14,
    clip_image_size=336,
    image_size=448,
)

TINY = Sizes(
    llm_hidden=64,
    llm_intermediate=128,
    llm_layers=2,
    llm_heads=4,
    vocab=len(tiny_tokenizer()),
    vision_hidden=32,
    vision_intermediate=64,
    vision_layers=4,
    vision_heads=4,
    patch=8,
    clip_image_size=48,
    image_size=64,
    dec_dim=32,
    dec_heads=2,
    dec_mlp=64,
    proj_layer=3,
    dec_layers=(3, 2),
    iou_hidden=32,
    clip_text_hidden=24,
    clip_text_vocab=64,
    clip_text_positions=16,
    clip_projection=24,
)


def is_llm_key(key: str) -> bool:
    """True for the LLaMA keys (embed_tokens, layers, norm, lm_head) of a PixelLM checkpoint."""
    return key.startswith(LLM_PREFIXES)


def _linear(out: dict, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    out[f"{name}.weight"] = (n_out, n_in)
    if bias:
        out[f"{name}.bias"] = (n_out,)


def _norm(out: dict, name: str, n: int) -> None:
    out[f"{name}.weight"] = (n,)
    out[f"{name}.bias"] = (n,)


def _mlp(out: dict, name: str, n_in: int, hidden: int, n_out: int, layers: int) -> None:
    """SAM's ``MLP``: ``layers.{i}`` Linear layers n_in → hidden … → n_out."""
    dims = [n_in] + [hidden] * (layers - 1) + [n_out]
    for i in range(layers):
        _linear(out, f"{name}.layers.{i}", dims[i], dims[i + 1])


def _attention(out: dict, name: str, dim: int, downsample: int) -> None:
    """SAM's ``Attention(dim, heads, downsample_rate)``: q/k/v project dim → dim/downsample, out_proj back."""
    inner = dim // downsample
    for p in ("q_proj", "k_proj", "v_proj"):
        _linear(out, f"{name}.{p}", dim, inner)
    _linear(out, f"{name}.out_proj", inner, dim)


def two_way_transformer_shapes(dim: int, mlp: int, depth: int = 2) -> dict[str, tuple[int, ...]]:
    """Keys of SAM's ``TwoWayTransformer(depth, dim, heads, mlp_dim, attention_downsample_rate=2)`` (82 for depth 2)."""
    out: dict[str, tuple[int, ...]] = {}
    for i in range(depth):
        p = f"layers.{i}"
        _attention(out, f"{p}.self_attn", dim, 1)
        _norm(out, f"{p}.norm1", dim)
        _attention(out, f"{p}.cross_attn_token_to_image", dim, 2)
        _norm(out, f"{p}.norm2", dim)
        _linear(out, f"{p}.mlp.lin1", dim, mlp)
        _linear(out, f"{p}.mlp.lin2", mlp, dim)
        _norm(out, f"{p}.norm3", dim)
        _norm(out, f"{p}.norm4", dim)
        _attention(out, f"{p}.cross_attn_image_to_token", dim, 2)
    _attention(out, "final_attn_token_to_image", dim, 2)
    _norm(out, "norm_final_attn", dim)
    return out


def _prefixed(prefix: str, shapes: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in shapes.items()}


def prompt_encoder_shapes(c: int) -> dict[str, tuple[int, ...]]:
    """Keys of SAM's ``PromptEncoder(embed_dim=c, mask_in_chans=16)`` (17 keys)."""
    out: dict[str, tuple[int, ...]] = {"pe_layer.positional_encoding_gaussian_matrix": (2, c // 2)}
    for i in range(4):
        out[f"point_embeddings.{i}.weight"] = (1, c)
    out["not_a_point_embed.weight"] = (1, c)
    m = MASK_IN_CHANS
    out["mask_downscaling.0.weight"] = (m // 4, 1, 2, 2)
    out["mask_downscaling.0.bias"] = (m // 4,)
    _norm(out, "mask_downscaling.1", m // 4)
    out["mask_downscaling.3.weight"] = (m, m // 4, 2, 2)
    out["mask_downscaling.3.bias"] = (m,)
    _norm(out, "mask_downscaling.4", m)
    out["mask_downscaling.6.weight"] = (c, m, 1, 1)
    out["mask_downscaling.6.bias"] = (c,)
    out["no_mask_embed.weight"] = (1, c)
    return out


def mask_decoder_shapes(s: Sizes) -> dict[str, tuple[int, ...]]:
    """Keys of PixelLM's ``MaskDecoderMultiScale`` (206 keys), in registration order."""
    c = s.dec_dim
    out: dict[str, tuple[int, ...]] = {}
    for level in range(LEVELS):
        out.update(_prefixed(f"transformer.{level}.", two_way_transformer_shapes(c, s.dec_mlp)))
    out["iou_token.weight"] = (1, c)
    out["mask_tokens.weight"] = (NUM_MASK_TOKENS, c)
    out["output_upscaling.0.weight"] = (c, c // 8, 2, 2)  # ConvTranspose2d: (in, out, k, k)
    out["output_upscaling.0.bias"] = (c // 8,)
    _norm(out, "output_upscaling.1", c // 8)
    out["upsample_2x.0.weight"] = (c, c, 2, 2)
    out["upsample_2x.0.bias"] = (c,)
    _norm(out, "upsample_2x.1", c)
    out["pe1.positional_encoding_gaussian_matrix"] = (2, c // 2)
    for i in range(NUM_MASK_TOKENS):
        _mlp(out, f"output_hypernetworks_mlps.{i}", c, c, c // 8, 3)
    _mlp(out, "iou_prediction_head", c, s.iou_hidden, NUM_MASK_TOKENS, 3)
    out["level_embed.weight"] = (LEVELS, c)
    return out


def pixellm_shapes(s: Sizes) -> dict[str, tuple[int, ...]]:
    """Every key of a PixelLM HF checkpoint → its shape, in PixelLM's module order (LLaMA, φv, out_mm_projector,
    prompt encoder, mask decoder, neck, seg MLP, lm_head). For ``SEVEN_B``: 323 LLM keys + 241 others."""
    d, f, v, c, h2 = s.llm_hidden, s.llm_intermediate, s.vision_hidden, s.dec_dim, s.proj_hidden
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab, d)}
    for i in range(s.llm_layers):
        p = f"model.layers.{i}"
        for n in ("q", "k", "v", "o"):
            _linear(out, f"{p}.self_attn.{n}_proj", d, d, bias=False)
        out[f"{p}.self_attn.rotary_emb.inv_freq"] = (s.head_dim // 2,)
        _linear(out, f"{p}.mlp.gate_proj", d, f, bias=False)
        _linear(out, f"{p}.mlp.up_proj", d, f, bias=False)
        _linear(out, f"{p}.mlp.down_proj", f, d, bias=False)
        out[f"{p}.input_layernorm.weight"] = (d,)
        out[f"{p}.post_attention_layernorm.weight"] = (d,)
    out["model.norm.weight"] = (d,)
    for name in ("model.mm_projector", "model.out_mm_projector"):
        _linear(out, f"{name}.0", v, h2)
        _linear(out, f"{name}.2", h2, d)
    out.update(_prefixed("model.prompt_encoder.", prompt_encoder_shapes(c)))
    out.update(_prefixed("model.mask_decoder.", mask_decoder_shapes(s)))
    out["model.image_feature_neck.0.weight"] = (c, d, 1, 1)
    _norm(out, "model.image_feature_neck.1", c)
    out["model.image_feature_neck.2.weight"] = (c, c, 3, 3)
    _norm(out, "model.image_feature_neck.3", c)
    _linear(out, "model.text_hidden_fcs.0.0", d, d)
    _linear(out, "model.text_hidden_fcs.0.2", d, c)
    out["lm_head.weight"] = (s.vocab, d)
    return out


def clip_shapes(s: Sizes) -> dict[str, tuple[int, ...]]:
    """Keys of the CLIP source in the layout of ``openai/clip-vit-large-patch14-336`` (a full ``CLIPModel``): the
    whole vision model (position table at the native size: ``(1 + clip_grid², vision_hidden)``), a few text keys (the
    text encoder layers are omitted), both projections and ``logit_scale``."""
    v, vi, th = s.vision_hidden, s.vision_intermediate, s.clip_text_hidden
    out: dict[str, tuple[int, ...]] = {
        "text_model.embeddings.token_embedding.weight": (s.clip_text_vocab, th),
        "text_model.embeddings.position_embedding.weight": (s.clip_text_positions, th),
    }
    _norm(out, "text_model.final_layer_norm", th)
    out["vision_model.embeddings.class_embedding"] = (v,)
    out["vision_model.embeddings.patch_embedding.weight"] = (v, 3, s.patch, s.patch)
    out["vision_model.embeddings.position_embedding.weight"] = (1 + s.clip_grid**2, v)
    _norm(out, "vision_model.pre_layrnorm", v)
    for i in range(s.vision_layers):
        p = f"vision_model.encoder.layers.{i}"
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _linear(out, f"{p}.self_attn.{n}", v, v)
        _norm(out, f"{p}.layer_norm1", v)
        _linear(out, f"{p}.mlp.fc1", v, vi)
        _linear(out, f"{p}.mlp.fc2", vi, v)
        _norm(out, f"{p}.layer_norm2", v)
    _norm(out, "vision_model.post_layernorm", v)
    out["visual_projection.weight"] = (s.clip_projection, v)
    out["text_projection.weight"] = (s.clip_projection, th)
    out["logit_scale"] = ()
    return out


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``{key: torch.empty(shape, device="meta")}``: the full-size layout without memory."""
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def release_dtype(key: str) -> torch.dtype:
    """The dtype a key has in PixelLM's released ``.bin`` shards, as implied by its merge script and ``total_size``:
    the pixel heads (text_hidden_fcs, neck, prompt encoder, mask decoder) are re-created in fp32 after the bf16
    ``from_pretrained`` (``merge_lora_weights_and_save_hf_model.py:114-125``) and ``inv_freq`` is always fp32; all else
    (LLaMA, both projectors) is bf16."""
    if key.startswith(PIXEL_HEAD_PREFIXES) or key.endswith("rotary_emb.inv_freq"):
        return torch.float32
    return torch.bfloat16


_EMBEDDINGS = (
    "embed_tokens.weight",
    "iou_token.weight",
    "mask_tokens.weight",
    "level_embed.weight",
    "no_mask_embed.weight",
    "not_a_point_embed.weight",
    "position_embedding.weight",
    "token_embedding.weight",
    "class_embedding",
)
_TRANSPOSED_CONVS = ("output_upscaling.0.weight", "upsample_2x.0.weight")


def _init(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A float32 random tensor for ``key``: Linear/Conv weights N(0, 1/fan_in), norm weights 1 + 0.1·N, biases
    0.02·N, embeddings and Gaussian PE matrices N(0, 1), ``inv_freq`` the LLaMA rotary formula (base 10000)."""
    if key.endswith("rotary_emb.inv_freq"):
        dim = 2 * shape[0]
        return 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if key == "logit_scale":
        return torch.tensor(math.log(1 / 0.07))
    noise = torch.randn(shape, generator=gen)
    if key.endswith("positional_encoding_gaussian_matrix") or key.endswith(_EMBEDDINGS) or ".point_embeddings." in key:
        return noise
    if len(shape) == 1:
        return 1.0 + 0.1 * noise if key.endswith(".weight") else 0.02 * noise
    fan_in = shape[0] if key.endswith(_TRANSPOSED_CONVS) else math.prod(shape[1:])
    return noise / math.sqrt(fan_in)


def random_state(
    shapes: dict[str, tuple[int, ...]], *, seed: int = 0, dtype: torch.dtype | str = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights for every key (see ``_init``), drawn in key order from one generator, cast to ``dtype``
    (``"release"``: per ``release_dtype``)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        t = _init(key, shape, gen)
        out[key] = t.to(release_dtype(key) if dtype == "release" else dtype).contiguous()
    return out


def _dtype_name(dtype: torch.dtype | str) -> str:
    return "bfloat16" if dtype == "release" else str(dtype).removeprefix("torch.")


def shard_names(fmt: str, n: int) -> tuple[list[str], str | None]:
    """HF's shard file names and index name for ``n`` shards (a single file has no index)."""
    if fmt == "safetensors":
        stem, ext, index = "model", "safetensors", "model.safetensors.index.json"
    elif fmt == "bin":
        stem, ext, index = "pytorch_model", "bin", "pytorch_model.bin.index.json"
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")
    if n == 1:
        return [f"{stem}.{ext}"], None
    return [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)], index


def write_shards(folder: Path, state: dict[str, torch.Tensor], fmt: str, shards: int) -> None:
    """Split ``state`` (in order, by bytes) over ``shards`` files named as HF does, plus the index JSON
    ``{"metadata": {"total_size"}, "weight_map"}`` when there is more than one file."""
    sizes = {k: t.numel() * t.element_size() for k, t in state.items()}
    total = sum(sizes.values())
    groups: list[list[str]] = [[] for _ in range(max(1, shards))]
    done = 0
    for key, size in sizes.items():
        groups[min(len(groups) - 1, done * len(groups) // max(1, total))].append(key)
        done += size
    groups = [g for g in groups if g]
    names, index = shard_names(fmt, len(groups))
    weight_map = {}
    for name, keys in zip(names, groups):
        part = {k: state[k] for k in keys}
        if fmt == "safetensors":
            save_file(part, str(folder / name), metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    if index is not None:
        body = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / index).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


def pixellm_config(s: Sizes, seg_ids: list[int], dtype: torch.dtype | str) -> dict:
    """A PixelLM-style ``config.json`` (the released PixelLM-7B fields; ``out_dim`` = dec_dim)."""
    return {
        "_name_or_path": "./ckpt/Llava-7B-V1-1/",
        "architectures": ["PixelLMForCausalLM"],
        "model_type": "llava",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": s.llm_hidden,
        "intermediate_size": s.llm_intermediate,
        "initializer_range": 0.02,
        "max_position_embeddings": s.max_positions,
        "num_attention_heads": s.llm_heads,
        "num_hidden_layers": s.llm_layers,
        "num_key_value_heads": s.llm_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": s.rms_eps,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "use_cache": False,
        "vocab_size": s.vocab,
        "freeze_mm_mlp_adapter": True,
        "image_aspect_ratio": "square",
        "image_feature_scale_num": LEVELS,
        "image_grid_pinpoints": None,
        "mm_hidden_size": s.vision_hidden,
        "mm_projector_hidden_dim": 2,
        "mm_projector_out_dim": 1,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": True,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": s.proj_layer - (s.vision_layers + 1),
        "mm_vision_tower": CLIP_REPO,
        "vision_tower": CLIP_REPO,
        "out_dim": s.dec_dim,
        "pad_train_clip_images": True,
        "pretrain_mm_mlp_adapter": None,
        "resize_vision_tower": True,
        "resize_vision_tower_size": s.image_size,
        "separate_mm_projector": True,
        "seg_token_idx": list(seg_ids),
        "train_mask_decoder": True,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "vision_tower_for_mask": True,
        "torch_dtype": _dtype_name(dtype),
        "transformers_version": "4.31.0",
    }


def write_pixellm(
    folder: str | Path,
    s: Sizes,
    *,
    fmt: str = "safetensors",
    shards: int = 2,
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
    tokenizer=None,
) -> dict[str, torch.Tensor]:
    """Write a PixelLM HF folder with random weights: the shards (+ index), ``config.json``,
    ``generation_config.json`` and the tokenizer (default ``tiny_tokenizer()``; ``len(tokenizer)`` must equal
    ``s.vocab``) with an ``added_tokens.json``. ``dtype="release"`` mixes fp32/bf16 as the released shards do.

    Returns the state dict written (``pixellm_shapes(s)`` keys, in ``dtype``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer() if tokenizer is None else tokenizer
    if len(tok) != s.vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but Sizes.vocab is {s.vocab}")
    seg_ids = tok.convert_tokens_to_ids(list(SEG_TOKENS))
    state = random_state(pixellm_shapes(s), seed=seed, dtype=dtype)
    write_shards(folder, state, fmt, shards)
    (folder / "config.json").write_text(json.dumps(pixellm_config(s, seg_ids, dtype), indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    (folder / "generation_config.json").write_text(json.dumps({**gen, "transformers_version": "4.31.0"}, indent=2))
    tok.save_pretrained(folder)
    added = dict(zip([*SEG_TOKENS, IM_START, IM_END], tok.convert_tokens_to_ids([*SEG_TOKENS, IM_START, IM_END])))
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    return state


def clip_config(s: Sizes, dtype: torch.dtype) -> dict:
    """A ``CLIPConfig``-like ``config.json`` for the CLIP source (text encoder: 0 layers, as written)."""
    th = s.clip_text_hidden
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": s.clip_projection,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "torch_dtype": _dtype_name(dtype),
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": th,
            "intermediate_size": 4 * th,
            "num_hidden_layers": 0,
            "num_attention_heads": max(1, th // 64),
            "max_position_embeddings": s.clip_text_positions,
            "vocab_size": s.clip_text_vocab,
            "projection_dim": s.clip_projection,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": s.clip_text_vocab - 2,
            "eos_token_id": s.clip_text_vocab - 1,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": s.vision_hidden,
            "intermediate_size": s.vision_intermediate,
            "num_hidden_layers": s.vision_layers,
            "num_attention_heads": s.vision_heads,
            "num_channels": 3,
            "patch_size": s.patch,
            "image_size": s.clip_image_size,
            "projection_dim": s.clip_projection,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "dropout": 0.0,
        },
    }


def write_clip(folder: str | Path, s: Sizes, *, dtype: torch.dtype = torch.float32, seed: int = 1) -> dict:
    """Write the CLIP source folder (``model.safetensors`` + ``config.json``) with random weights; returns the state
    dict written (``clip_shapes(s)`` keys)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = random_state(clip_shapes(s), seed=seed, dtype=dtype)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(clip_config(s, dtype), indent=2) + "\n")
    return state
