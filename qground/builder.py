"""One builder and the model registry.

``build_model(config)`` assembles a ``QGroundModel`` with random weights from a config (on any device, ``"meta"``
included); ``assemble(config, llava)`` attaches our parts to an existing LLaVA (e.g. one loaded from the Hub).
Loading trained weights lives in ``qground.checkpoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from qground.config import (
    CLIP_MEAN,
    CLIP_STD,
    NUM_CHROMA_CHANNELS,
    NUM_DETAIL_CHANNELS,
    READOUT_SUB,
    DecoderConfig,
    LLMConfig,
    QGroundConfig,
    TokenIds,
    VisionConfig,
)
from qground.modeling import (
    ChoiceHead,
    DistortionReadout,
    MultiLayerProjector,
    PixelDecoder,
    PixelLMDecoder,
    QGroundModel,
    SegHead,
)
from qground.taxonomy import CLASS_NAMES
from qground.tokenizer import basic_corpus, bind_tokenizer, train_bpe_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def config_7b() -> QGroundConfig:
    """``llava-hf/llava-1.5-7b-hf`` (CLIP ViT-L/14-336 run at 448, Vicuna-7B) + our heads. Token ids are those that
    adding our tokens to the llava-hf tokenizer yields (``<image>`` 32000, ``<pad>`` 32001, then ``[SEG0…5]``);
    ``bind_tokenizer`` re-derives them from the real tokenizer when it is loaded. Prompts are tokenized as LLaVA-1.5
    tokenizes them (``prompt_tokenization="llava"``)."""
    return QGroundConfig(
        name="qground-7b",
        token_ids=TokenIds(image=32000, seg=tuple(range(32002, 32008)), pad=32001, bos=1, eos=2),
        prompt_tokenization="llava",
    )


def config_tiny() -> QGroundConfig:
    """Random tiny sizes for unit tests: 64-px input, 8-px patches, 16 image tokens, a 2-layer Llama of width 64."""
    return QGroundConfig(
        name="qground-tiny",
        vision=VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_layers=4,
            num_heads=4,
            patch_size=8,
            native_image_size=64,
            hub_id=None,
        ),
        llm=LLMConfig(
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            vocab_size=512,
            max_position_embeddings=1024,
        ),
        decoder=DecoderConfig(dim=32, depth=1, num_heads=2, mlp_dim=64, layers=(4, 2)),
        image_size=64,
        feature_layers=(1, 2, 4),
        base_model_id=None,
        tokenizer_id=None,
    )


def config_nano() -> QGroundConfig:
    """Our small offline model: a 4-layer ViT on 128-px RGB + native-resolution detail channels (pretrained by us on
    synthetic distortions, then frozen like CLIP), a 4-layer Llama of width 256 with its own BPE tokenizer (trained by
    ``training.nano``), 16 pooled image tokens + 1 whole-image token, masks predicted at 64×64."""
    return QGroundConfig(
        name="qground-nano",
        vision=VisionConfig(
            hidden_size=128,
            intermediate_size=512,
            num_layers=4,
            num_heads=4,
            patch_size=8,
            native_image_size=128,
            num_channels=3 + NUM_DETAIL_CHANNELS + NUM_CHROMA_CHANNELS,
            hub_id=None,
        ),
        llm=LLMConfig(
            hidden_size=256,
            intermediate_size=688,
            num_layers=4,
            num_heads=4,
            num_kv_heads=4,
            vocab_size=1024,
            max_position_embeddings=1024,
        ),
        decoder=DecoderConfig(dim=64, depth=1, num_heads=4, mlp_dim=256, layers=(4, 3)),
        image_size=128,
        detail_channels=True,
        detail_max_side=4096,  # a 12 MP photo's own pixels: shrinking averages its noise and fine blur away
        evidence_max_side=1280,  # training.data.synth's MAX_SIDE: refinement radii are in its pixels
        chroma_noise_channel=True,
        image_mean=(*CLIP_MEAN, *[0.0] * (NUM_DETAIL_CHANNELS + NUM_CHROMA_CHANNELS)),
        image_std=(*CLIP_STD, *[1.0] * (NUM_DETAIL_CHANNELS + NUM_CHROMA_CHANNELS)),
        feature_layers=(2, 3, 4),
        projector_pool=4,
        global_token=True,
        multi_image_global_only=True,
        readout=True,
        image_ordinals=8,
        choice_head=True,
        choice_keys="readout",
        base_model_id=None,
        tokenizer_id=None,
    )


@dataclass(frozen=True)
class RegistryEntry:
    """``config`` builds the architecture; ``checkpoint`` is a shipped trained folder (or None: random / Hub)."""

    config: Callable[[], QGroundConfig]
    checkpoint: Path | None = None
    description: str = ""


REGISTRY: dict[str, RegistryEntry] = {
    "qground-7b": RegistryEntry(config_7b, None, "LLaVA-1.5-7B + CLIP-L/336@448 + Q-Ground heads (GPU hosts)"),
    "qground-tiny": RegistryEntry(config_tiny, None, "random tiny model for tests"),
    "qground-nano": RegistryEntry(config_nano, ASSETS / "qground-nano", "small model trained offline by training.nano"),
}


def llava_config(config: QGroundConfig) -> LlavaConfig:
    """The ``transformers`` LlavaConfig for our architecture (φv's weights are shape-compatible with LLaVA's
    multi-layer projector: Linear(Dv·L → D), GELU, Linear(D → D))."""
    v, t, ids = config.vision, config.llm, config.token_ids
    vision = CLIPVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        patch_size=v.patch_size,
        image_size=v.native_image_size,
        num_channels=v.num_channels,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        vocab_size=t.vocab_size,
        max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids.image,
        vision_feature_layer=list(config.feature_layers),
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=config.num_image_tokens,
        tie_word_embeddings=False,
    )


def assemble(config: QGroundConfig, llava: LlavaForConditionalGeneration) -> QGroundModel:
    """Swap LLaVA's projector for φv (keeping its weights when shapes match) and attach fresh seg head + decoder,
    created on the LLaVA's device and in fp32 (heads always stay in full precision)."""
    device = llava.lm_head.weight.device
    old = llava.model.multi_modal_projector
    with torch.device(device):
        readout = None
        if config.readout:
            readout = DistortionReadout(config.vision.hidden_size, len(CLASS_NAMES), READOUT_SUB)
        projector = MultiLayerProjector(
            readout.width if readout else config.vision.hidden_size * len(config.feature_layers),
            config.llm.hidden_size,
            config.grid,
            config.projector_pool,
            config.global_token,
            config.image_ordinals,
            slots=config.readout,
            hidden_dim=config.projector_hidden or None,
        )
        if device.type != "meta" and _same_shapes(old, projector):
            projector.load_state_dict(old.state_dict())
        seg_head = SegHead(config.llm.hidden_size, config.decoder.dim, config.seg_levels, config.seg_tokens_per_level)
        decoder = pixel_decoder(config)
        choice_head = None
        if config.choice_head:
            key_dim = readout.whole.out_features if config.choice_keys == "readout" else config.llm.hidden_size
            choice_head = ChoiceHead(config.llm.hidden_size, key_dim)
    llava.model.multi_modal_projector = projector
    return QGroundModel(config, llava, seg_head, decoder, readout, choice_head)


def pixel_decoder(config: QGroundConfig) -> PixelDecoder | PixelLMDecoder:
    """The pixel decoder of ``config.decoder.style``, randomly initialized."""
    d, vision_dim = config.decoder, config.vision.hidden_size
    if d.style == "pixellm":
        return PixelLMDecoder(
            vision_dim, d.input_hidden, d.input_dim, d.dim, d.depth, d.num_heads, d.mlp_dim, d.level_weights
        )
    return PixelDecoder(vision_dim, d.dim, d.depth, d.num_heads, d.mlp_dim, d.level_weights)


def _same_shapes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def build_tokenizer(config: QGroundConfig):
    """The tokenizer named by ``config.tokenizer_id`` (Hub id or folder), or a small BPE trained offline when None.
    Returns ``(tokenizer, config bound to its token ids)``."""
    if config.tokenizer_id is None:
        tokenizer = train_bpe_tokenizer(basic_corpus(), vocab_size=config.llm.vocab_size - 16)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_id)
    config = bind_tokenizer(config, tokenizer)
    if len(tokenizer) > config.llm.vocab_size:
        rows = -(-len(tokenizer) // 64) * 64
        config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, vocab_size=rows))
    return tokenizer, config


def build_model(config: QGroundConfig, device: str | torch.device = "cpu", seed: int | None = 0) -> QGroundModel:
    """A randomly initialized model for a config whose token ids are bound (see ``build_tokenizer``)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        llava = LlavaForConditionalGeneration(llava_config(config))
    model = assemble(config, llava)
    return model.eval()


def build_from_registry(name: str, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` with random weights for a registry name. On the meta device a tokenizer that would be
    downloaded (``config.tokenizer_id``: qground-7b's, whose token ids the config already holds) is not, and is None;
    the offline BPE of qground-tiny and qground-nano fixes their token ids, so it is always built."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    config = REGISTRY[name].config()
    tokenizer = None
    if str(device) != "meta" or config.tokenizer_id is None:
        tokenizer, config = build_tokenizer(config)
    return build_model(config, device=device), tokenizer
