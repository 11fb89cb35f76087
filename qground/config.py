"""The model configuration: one validated dataclass tree, saved as ``qground_config.json`` next to the weights.

Every architecture field lives here; nothing is inferred from a model's name. ``QGroundConfig.from_dict`` rejects
unknown keys and configs written by a newer format version with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qground.taxonomy import CLASS_NAMES

CONFIG_NAME = "qground_config.json"
FORMAT_VERSION = 1

NUM_DETAIL_CHANNELS = 8  # qground.detail: native-resolution channels appended to RGB when detail_channels is set
NUM_CHROMA_CHANNELS = 1  # qground.detail's chroma noise channel, after them when chroma_noise_channel is set
CHOICE_KEYS = ("llm", "readout")  # QGroundConfig.choice_keys: what the choice head compares the query with
PROMPT_TOKENIZATIONS = ("pieces", "llava")  # QGroundConfig.prompt_tokenization: qground.processor's rules
RESAMPLINGS = ("bicubic", "bilinear")  # QGroundConfig.resample: the PIL filter resizing a photo to the model input
SIZE_ROUNDINGS = ("round", "half_up")  # QGroundConfig.size_rounding: how the resized content size is rounded
DECODER_STYLES = ("qground", "pixellm")  # DecoderConfig.style: qground.modeling.pixel_decoder / pixellm_decoder
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # PixelLM's normalization (SAM's pixel mean/std on 0..1), not CLIP's
IMAGENET_STD = (0.229, 0.224, 0.225)
READOUT_SUB = 2  # qground.modeling.readout: sub-cells per patch side whose class coverage the readout predicts
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(ValueError):
    """A configuration that cannot describe a working model."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class VisionConfig:
    """A CLIP-style ViT (``transformers.CLIPVisionModel``), frozen. ``native_image_size`` is what its position
    embeddings were trained at; the model runs it at ``QGroundConfig.image_size`` (interpolated if they differ)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    native_image_size: int = 336
    num_channels: int = 3
    hub_id: str | None = "openai/clip-vit-large-patch14-336"

    def validate(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "vision.hidden_size must be divisible by vision.num_heads")
        _check(
            self.native_image_size % self.patch_size == 0, "vision.native_image_size must be a multiple of patch_size"
        )
        _check(self.num_channels >= 1, "vision.num_channels must be >= 1")


@dataclass
class LLMConfig:
    """A Llama decoder (``transformers.LlamaConfig`` fields). ``vocab_size`` is the embedding rows (our tokens
    included)."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    vocab_size: int = 32064
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # > 0: only ids below it are ever generated (rows from it up were added by a conversion: the source model's
    # lm_head had this many, and our <image> and padding rows must not win an argmax); 0: every row.
    sampled_vocab: int = 0

    def validate(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "llm.hidden_size must be divisible by llm.num_heads")
        _check(
            0 <= self.sampled_vocab <= self.vocab_size,
            f"llm.sampled_vocab must be between 0 and vocab_size {self.vocab_size}, got {self.sampled_vocab}",
        )
        _check(self.num_heads % self.num_kv_heads == 0, "llm.num_heads must be a multiple of llm.num_kv_heads")


@dataclass
class DecoderConfig:
    """The light two-level pixel decoder built from segment-anything parts; ``dim`` is also the width of the seg
    embeddings it receives.

    ``style`` "qground" is ours (``qground.modeling.pixel_decoder``); "pixellm" is PixelLM's layout
    (``qground.modeling.pixellm_decoder``: a shared input MLP Dv → ``input_hidden`` → ``input_dim`` and neck, one
    position encoding per level, a dense embedding, a learned 2× upsampler, SAM's iou + 4 mask tokens with a level
    embedding), for converted PixelLM / Q-Ground weights. ``level_weights`` scale level 0's (upsampled) and level 1's
    logits in their sum (PixelLM: 0.5, 0.5)."""

    dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    layers: tuple[int, int] = (23, 14)  # vision hidden_states index feeding level 0 and level 1
    style: str = "qground"
    input_hidden: int = 0  # "pixellm": the input MLP's hidden width (PixelLM-7B: 8192)
    input_dim: int = 0  # "pixellm": the input MLP's output width, the neck's input (PixelLM-7B: 4096)
    level_weights: tuple[float, float] = (1.0, 1.0)

    def validate(self) -> None:
        _check(self.dim % self.num_heads == 0, "decoder.dim must be divisible by decoder.num_heads")
        _check(self.dim % 8 == 0, "decoder.dim must be divisible by 8 (hypernetwork width dim // 8)")
        _check(len(self.layers) == 2, "decoder.layers needs exactly two vision layers (level 0, level 1)")
        _check(self.style in DECODER_STYLES, f"decoder.style must be one of {DECODER_STYLES}, got {self.style!r}")
        pixellm = self.style == "pixellm"
        _check(
            (self.input_hidden > 0 and self.input_dim > 0) == pixellm and min(self.input_hidden, self.input_dim) >= 0,
            "decoder.input_hidden and decoder.input_dim are set (> 0) exactly for decoder.style 'pixellm'",
        )
        _check(len(self.level_weights) == 2, "decoder.level_weights needs one weight per level")


@dataclass
class LossConfig:
    """``L = ce·CE + mask·(bce·BCE + dice·DICE)`` (Q-Ground supplementary, eq. 1–2), ``+ choice·CE_choice`` with a
    choice head."""

    ce: float = 1.0
    mask: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    dice_scale: float = 1000.0
    dice_eps: float = 1e-6
    choice: float = 1.0  # weight of the choice head's cross-entropy over the prompt's images (config.choice_head)


@dataclass
class LoraSettings:
    """LoRA on the LLM's attention projections (stages 2–3)."""

    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


@dataclass
class TokenIds:
    """Ids of our special tokens in the tokenizer saved next to the weights (filled when the tokenizer is built)."""

    image: int = -1
    seg: tuple[int, ...] = ()
    pad: int = -1
    bos: int = -1
    eos: int = -1
    choice: int = -1  # [CHOICE], bound only for models with a choice head
    image_start: int = -1  # <im_start> and <im_end>, bound only for models with image_wrap
    image_end: int = -1

    def validate(self, seg_count: int, choice: bool, image_wrap: bool = False) -> None:
        if self.image < 0:
            return  # not bound to a tokenizer yet
        wrap = (self.image_start, self.image_end)
        if image_wrap:
            _check(
                min(wrap) >= 0 and len({self.image, *self.seg, *wrap}) == seg_count + 3,
                f"image_wrap needs <im_start>/<im_end> ids distinct from the image and seg ids, got {list(wrap)}",
            )
        else:
            _check(wrap == (-1, -1), "token_ids.image_start/image_end are set but the config has no image_wrap")
        _check(len(self.seg) == seg_count, f"token_ids.seg needs {seg_count} ids, got {len(self.seg)}")
        _check(len(set(self.seg)) == seg_count, f"seg token ids must be distinct, got {list(self.seg)}")
        _check(self.image not in self.seg, "the image token id collides with a seg token id")
        if choice:
            _check(
                self.choice >= 0 and self.choice not in (self.image, *self.seg),
                f"choice_head needs a [CHOICE] token id distinct from the image and seg ids, got {self.choice}",
            )
        else:
            _check(self.choice == -1, "token_ids.choice is set but the config has no choice_head")


@dataclass
class QGroundConfig:
    """Everything that defines a Q-Ground model.

    Image frame: inputs are resized (longest side) and padded bottom-right to ``image_size``²; the vision tower yields a
    ``grid × grid`` patch map (``grid = image_size // patch_size``); φv pools it by ``projector_pool`` to
    ``token_grid²`` tokens per image, followed by one token from the tower's class (CLS) position when
    ``global_token`` is set (``num_image_tokens`` in all). φv's input is the ``feature_layers`` hidden states
    concatenated, or with ``readout`` the scores of ``qground.modeling.readout`` on the last one (which carry no
    position, so φv then adds a learned embedding per token slot).
    """

    name: str = "qground"
    format_version: int = FORMAT_VERSION
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    token_ids: TokenIds = field(default_factory=TokenIds)
    image_size: int = 448
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    detail_channels: bool = False  # append qground.detail's native-resolution channels to RGB
    # > 0: a photo whose longest side exceeds this is first shrunk to it (Lanczos) for the detail channels
    # (qground-nano: 4096, a 12 MP photo's own pixels, since shrinking averages noise and fine blur away); 0: no limit.
    detail_max_side: int = 0
    # > 0 (with detail_max_side): the noise channel alone is read on the photo shrunk to this longest side instead,
    # since shrinking averages pixel noise away; 0: as the other channels.
    noise_max_side: int = 0
    # > 0: the photo masks are refined on (qground.policy's mask_refine_radius) is the photo shrunk to this longest
    # side (the radius is in its pixels); 0: the detail channels' photo. (Its name is from when region gates read
    # evidence maps on it too; it stays, so saved configs load.)
    evidence_max_side: int = 0
    # with detail_channels: one more channel after them, the chroma noise energy (qground.detail), read on the noise
    # channel's photo; natural texture is mostly achromatic, so chroma noise stands out where luma noise is masked.
    chroma_noise_channel: bool = False
    feature_layers: tuple[int, ...] = (6, 14, 23)
    projector_pool: int = 2
    projector_hidden: int = 0  # φv's hidden width; 0: the LLM's width (PixelLM-7B: 8192)
    # PixelLM's padding masks (content_sizes (h, w) of each padded input): the tower's attention ignores patches
    # (r, c) with r·patch ≥ h or c·patch ≥ w as keys, and the LLM's attention ignores the image tokens whose pooled
    # cell (i, j) has i·patch·pool ≥ h or j·patch·pool ≥ w (positions stay 0, 1, 2, …).
    vision_padding_mask: bool = False
    llm_image_padding_mask: bool = False
    resample: str = "bicubic"  # RESAMPLINGS: the PIL filter resizing a photo (PixelLM: bilinear)
    size_rounding: str = "round"  # SIZE_ROUNDINGS: "round" (to even at .5), "half_up" (PixelLM: int(x + 0.5))
    image_wrap: bool = False  # each image's tokens sit between <im_start> and <im_end> (PixelLM-7B)
    global_token: bool = False  # φv also maps the CLS position (a whole-image summary) to one more image token
    # In a prompt with several images, each image contributes only its whole-image token (needs global_token), as
    # Co-Instruct shrinks each image's tokens for multi-image prompts: the LLM compares a few summary tokens.
    multi_image_global_only: bool = False
    readout: bool = False  # φv reads the frozen tower's distortion readout scores instead of its hidden states
    # Per class (CLASS_NAMES order): the readout's median whole-image presence logit on the training images that have
    # the class (set by training.pretrain_vision). Detection strictness s then asks class k for a presence logit of
    # s × confidence_k / mean(confidence), so classes the readout is less sure of are not silenced first. None: s alike.
    readout_confidence: tuple[float, ...] | None = None
    # Answers to "which image?" end in a pointer: the state predicting [CHOICE] scores each image of the prompt against
    # that image's key (qground.modeling.choice_head) instead of spelling its place.
    choice_head: bool = False
    # The choice head's key per image: "llm", the LLM's state at the image's last token; "readout" (models with a
    # readout), the image's own whole-image readout scores (presence, area, severity × area per class), so the LLM
    # only says what is asked and every image is scored on its own evidence, whatever its place in the prompt.
    choice_keys: str = "llm"
    image_ordinals: int = 0  # > 0: φv adds a learned embedding of each image's place in its sample (first, second, …)
    seg_levels: int = 2
    seg_tokens_per_level: int = 3
    base_model_id: str | None = "llava-hf/llava-1.5-7b-hf"
    tokenizer_id: str | None = "llava-hf/llava-1.5-7b-hf"
    # How QGroundProcessor.encode tokenizes the prompt: "pieces", one tokenizer call per template piece (the shipped
    # models); "llava", one call per run of prompt text between images and answers, and answers without the space after
    # "ASSISTANT:": with a LLaMA tokenizer (its "▁" prefix stands for that space) LLaVA-1.5's ids (qground.processor).
    prompt_tokenization: str = "pieces"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def grid(self) -> int:
        return self.image_size // self.vision.patch_size

    @property
    def token_grid(self) -> int:
        return self.grid // self.projector_pool

    @property
    def num_image_tokens(self) -> int:
        return self.token_grid**2 + self.global_token

    def tokens_per_image(self, num_images: int) -> int:
        """Image tokens each image contributes to a prompt that holds ``num_images`` images; with
        ``multi_image_global_only`` such a prompt holds at most ``num_image_tokens`` − 1 images (ValueError), so that
        ``images_in`` can tell its layout from one image's."""
        if not self.multi_image_global_only or num_images <= 1:
            return self.num_image_tokens
        if num_images >= self.num_image_tokens:
            raise ValueError(f"this model takes at most {self.num_image_tokens - 1} images per prompt")
        return 1

    def images_in(self, image_token_count: int) -> int:
        """Number of images of a prompt that holds ``image_token_count`` image tokens; raises when none fits. With
        ``multi_image_global_only`` a prompt of 2 … ``num_image_tokens`` − 1 images holds one token per image."""
        n = self.num_image_tokens
        if self.multi_image_global_only and 2 <= image_token_count < n:
            return image_token_count
        if image_token_count % n or (self.multi_image_global_only and image_token_count > n):
            layout = f"{n} per image"
            if self.multi_image_global_only:
                layout = f"{n} for one image, 1 per image for 2–{n - 1}"
            raise ValueError(f"{image_token_count} image tokens fit no number of images: this model takes {layout}")
        return image_token_count // n

    @property
    def seg_count(self) -> int:
        return self.seg_levels * self.seg_tokens_per_level

    def validate(self) -> None:
        for part in (self.vision, self.llm, self.decoder):
            part.validate()
        _check(
            self.format_version <= FORMAT_VERSION,
            f"this config was written by a newer qground (format {self.format_version} > {FORMAT_VERSION}); "
            "upgrade qground (pip install -U -r requirements.txt) to load it",
        )
        _check(
            self.image_size % self.vision.patch_size == 0,
            f"image_size {self.image_size} must be a multiple of vision.patch_size {self.vision.patch_size}",
        )
        _check(self.image_ordinals >= 0, "image_ordinals must be ≥ 0 (0 disables the ordinal embedding)")
        _check(
            not self.multi_image_global_only or (self.global_token and self.num_image_tokens > 2),
            "multi_image_global_only needs global_token (the whole-image token is what each image keeps) "
            "and more than 2 image tokens per image",
        )
        if self.readout_confidence is not None:
            _check(self.readout, "readout_confidence needs readout: true")
            _check(
                len(self.readout_confidence) == len(CLASS_NAMES) and min(self.readout_confidence) > 0,
                f"readout_confidence must hold {len(CLASS_NAMES)} positive logits (one per class), "
                f"got {list(self.readout_confidence)}",
            )
        _check(self.grid % self.projector_pool == 0, f"patch grid {self.grid} must be divisible by projector_pool")
        _check(self.detail_max_side >= 0, f"detail_max_side must be ≥ 0, got {self.detail_max_side}")
        _check(self.detail_channels or not self.detail_max_side, "detail_max_side needs detail_channels: true")
        _check(
            not self.noise_max_side or 0 < self.detail_max_side <= self.noise_max_side,
            f"noise_max_side ({self.noise_max_side}) needs a detail_max_side in 1 … noise_max_side, got "
            f"{self.detail_max_side}",
        )
        _check(
            self.detail_channels or not self.chroma_noise_channel, "chroma_noise_channel needs detail_channels: true"
        )
        _check(self.evidence_max_side >= 0, f"evidence_max_side must be ≥ 0, got {self.evidence_max_side}")
        channels = 3 + NUM_DETAIL_CHANNELS * self.detail_channels + NUM_CHROMA_CHANNELS * self.chroma_noise_channel
        _check(
            self.vision.num_channels == channels,
            f"vision.num_channels must be {channels} (RGB + detail channels + chroma noise channel)",
        )
        _check(
            len(self.image_mean) == len(self.image_std) == self.vision.num_channels,
            "image_mean and image_std need one value per vision channel",
        )
        n_hidden = self.vision.num_layers + 1  # hidden_states[0] is the embedding output
        for i in (*self.feature_layers, *self.decoder.layers):
            _check(
                -n_hidden <= i < n_hidden, f"vision layer index {i} out of range for {self.vision.num_layers} layers"
            )
        _check(len(self.feature_layers) >= 1, "feature_layers needs at least one layer")
        _check(self.seg_levels == 2, "the pixel decoder has exactly two levels (seg_levels = 2)")
        _check(self.seg_tokens_per_level >= 1, "seg_tokens_per_level must be >= 1")
        _check(self.choice_keys in CHOICE_KEYS, f"choice_keys must be one of {CHOICE_KEYS}, got {self.choice_keys!r}")
        _check(
            self.choice_keys == "llm" or (self.choice_head and self.readout),
            "choice_keys 'readout' needs choice_head: true and readout: true",
        )
        _check(self.projector_hidden >= 0, f"projector_hidden must be ≥ 0, got {self.projector_hidden}")
        _check(self.resample in RESAMPLINGS, f"resample must be one of {RESAMPLINGS}, got {self.resample!r}")
        _check(
            self.size_rounding in SIZE_ROUNDINGS,
            f"size_rounding must be one of {SIZE_ROUNDINGS}, got {self.size_rounding!r}",
        )
        _check(
            not (self.llm_image_padding_mask and (self.readout or self.multi_image_global_only)),
            "llm_image_padding_mask needs image tokens pooled from the patch grid (no readout, no "
            "multi_image_global_only)",
        )
        _check(
            self.prompt_tokenization in PROMPT_TOKENIZATIONS,
            f"prompt_tokenization must be one of {PROMPT_TOKENIZATIONS}, got {self.prompt_tokenization!r}",
        )
        self.token_ids.validate(self.seg_count, self.choice_head, self.image_wrap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QGroundConfig:
        return build_dataclass(cls, data, "config")

    def save(self, folder: str | Path) -> Path:
        return save_dataclass(self, Path(folder) / CONFIG_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> QGroundConfig:
        path = Path(folder) / CONFIG_NAME
        try:
            return load_dataclass(cls, path, "config")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: a qground checkpoint folder holds {CONFIG_NAME}") from None


def save_dataclass(obj: Any, path: Path) -> Path:
    """Write a dataclass as indented JSON to ``path``; returns ``path``."""
    path.write_text(json.dumps(asdict(obj), indent=2) + "\n")
    return path


def load_dataclass(cls: type, path: Path, where: str, upgrade: Callable[[Any], Any] | None = None) -> Any:
    """``cls`` from the JSON file at ``path`` (``build_dataclass``, ``where`` naming it in errors; ``upgrade`` maps an
    older format's data to the current one first). ``ConfigError`` naming the file when it is not valid JSON or does
    not fit ``cls``; FileNotFoundError when it is missing."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, download it again") from None
    try:
        return build_dataclass(cls, upgrade(data) if upgrade else data, where)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Instantiate a (nested) dataclass from plain JSON/YAML data, following its type hints: nested dataclasses,
    ``list[Dataclass]``, tuples from lists. Unknown keys raise ``ConfigError`` naming ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        version = data.get("format_version", FORMAT_VERSION)
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise ConfigError(
            f"unknown field(s) {unknown} in {where}" + (" (written by a newer qground? upgrade it)" if newer else "")
        )
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for option in typing.get_args(hint) if is_union else (hint,):  # X | None → try X
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return build_dataclass(option, value, where)
        if option in (int, float) and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return option(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        origin = typing.get_origin(option)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option) or (Any,)
            return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, list):
        return tuple(value)
    return value
