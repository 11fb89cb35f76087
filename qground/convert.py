"""Convert released PixelLM and Q-Ground checkpoints into our layout (``python -m qground convert``).

A PixelLM-format release (PixelLM-7B under ``hf_model/``; Q-Ground's ``chaofengc/qg_model_multiscale*``) holds the
LLM, φv, the seg-token MLP and PixelLM's pixel decoder, but not the vision tower: PixelLM loads CLIP fresh and
resizes its position table (``docs/pixellm.md``). The converter reads both sources shard by shard, maps every key by
the rules below with a strict shape check against our model built on the meta device, and writes a checkpoint folder
``qground.checkpoint.load_model`` serves: ``config.json`` + ``model.safetensors`` (LLaVA), ``qground_config.json``,
``qground_heads.safetensors``, the tokenizer (the source's, with ``<image>`` added), a model card and
``convert_report.json`` (every source key consumed, or dropped with the reason; every target key derived without a
source, with how).

Frames and numbers are PixelLM's: CLIP run at ``resize_vision_tower_size`` with its position table bilinearly resized
the way PixelLM does it (``pixellm_position_table``), ImageNet mean/std, bilinear resizing with sizes rounded half up,
PixelLM's padding masks, decoder level weights 0.5/0.5. What PixelLM hard-codes and its files do not record (the
decoder's attention heads, the two decoder feature layers) are ``Hardcoded`` defaults, overridable for other sizes.
Pickled ``.bin`` shards are read only with ``allow_bin`` (``torch.load(weights_only=True)``, which rebuilds tensors and
nothing else): the one exception to the project's safetensors-only rule, because PixelLM-7B is released that way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from qground.builder import build_model, llava_config
from qground.checkpoint import HEADS_NAME, head_state, projector_in_llava
from qground.config import (
    CONFIG_NAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecoderConfig,
    LLMConfig,
    QGroundConfig,
    VisionConfig,
)
from qground.tokenizer import bind_tokenizer

CACHE_ENV = "QGROUND_CACHE"  # where converted releases are kept (default ~/.cache/qground)
REPORT_NAME = "convert_report.json"
DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"  # the tower PixelLM and Q-Ground load
CARD_NAME = "README.md"
LLAVA_WEIGHTS = "model.safetensors"
KINDS = ("pixellm", "qground")
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(RuntimeError):
    """A source that cannot be converted; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Hardcoded:
    """What PixelLM's code fixes and its files do not record: the decoder's attention heads and the vision
    hidden-state indices feeding decoder level 0 and level 1 (negative: from the end, as PixelLM's ``-2``, ``-11``)."""

    decoder_heads: int = 8
    decoder_layers: tuple[int, int] = (-2, -11)


@dataclass(frozen=True)
class Release:
    """A known release on the Hub: its format, where the weights sit in the repo, the CLIP repo its tower comes from,
    the licence as its pages state it, and whether pickled ``.bin`` weights may be read (PixelLM-7B's are, and so
    are those of ``openai/clip-vit-large-patch14-336``, the CLIP every release uses; read weights-only)."""

    kind: str
    subfolder: str = ""
    clip: str = DEFAULT_CLIP
    licence: str = ""
    allow_bin: bool = True


_QGROUND_LICENCE = (
    "Q-Ground code: S-Lab License 1.0 (non-commercial); weights: no licence stated, derived from Vicuna-1.5 "
    "(Llama 2 licence). Convert locally; do not re-host"
)
RELEASES: dict[str, Release] = {
    "maverickrzw/PixelLM-7B": Release(
        "pixellm",
        "hf_model",
        licence="apache-2.0 (repo tag); weights derive from LLaMA-1 / Vicuna v1.1",
    ),
    "maverickrzw/PixelLM-13B": Release(
        "pixellm",
        "hf_model",
        licence="apache-2.0 (repo tag); weights derive from LLaMA-1 / Vicuna v1.1",
    ),
    **{
        f"chaofengc/qg_model_multiscale{suffix}": Release("qground", licence=_QGROUND_LICENCE)
        for suffix in ("", "_stage1", "_stage2", "_stage3")
    },
}


# -- reading -----------------------------------------------------------------------------------------------------------
class SourceFiles:
    """The weight files of a folder: its index (``*.index.json``) or single file, shard by shard. Safetensors are
    memory-mapped; ``.bin`` shards are read with ``torch.load(weights_only=True, mmap=True)`` and only when
    ``allow_bin``."""

    def __init__(self, folder: Path, allow_bin: bool = False) -> None:
        self.folder = folder
        self.allow_bin = allow_bin
        self.files = self._files()

    def _files(self) -> dict[str, list[str]]:
        """Shard file name → the keys the index assigns it (empty lists: not read yet, for a single file)."""
        for name in INDEX_NAMES:
            index = self.folder / name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ConversionError(f"{index}: not a weight index ({type(e).__name__}: {e})") from None
                files: dict[str, list[str]] = {}
                for key, file in sorted(weight_map.items(), key=lambda item: (item[1], item[0])):
                    files.setdefault(file, []).append(key)
                for file, keys in files.items():
                    if not (self.folder / file).exists():
                        raise ConversionError(f"{index}: shard {file} (holding {keys[0]}) is missing")
                return files
        for name in SINGLE_NAMES:
            if (self.folder / name).exists():
                return {name: []}
        raise ConversionError(f"{self.folder}: no weights (none of {', '.join(INDEX_NAMES + SINGLE_NAMES)})")

    def read(self, file: str) -> dict[str, torch.Tensor]:
        """One shard's tensors (memory-mapped where the format allows). Raises ``ConversionError`` naming the file."""
        path = self.folder / file
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt") as f:
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
            except (SafetensorError, OSError) as e:
                raise ConversionError(f"{path}: damaged safetensors ({e})") from None
        elif not self.allow_bin:
            holding = f" (holding {self.files[file][0]}, …)" if self.files[file] else ""
            raise ConversionError(
                f"{path}{holding}: pickled PyTorch weights; pass --allow-bin to read them with "
                "torch.load(weights_only=True)"
            )
        else:
            try:
                tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # the weights-only unpickler refuses anything but tensors, or the file is damaged
                raise ConversionError(f"{path}: cannot be read as weights ({type(e).__name__}: {e})") from None
            if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
                raise ConversionError(f"{path}: not a state dict of tensors")
        expected = self.files[file]
        absent = [k for k in expected if k not in tensors]
        if absent:
            raise ConversionError(f"{path}: {absent[0]} listed in the index is not in the file")
        return tensors

    def shapes(self) -> dict[str, tuple[torch.Size, str]]:
        """Every key → (shape, file), from safetensors headers or memory-mapped ``.bin`` shards."""
        out = {}
        for file in self.files:
            path = self.folder / file
            if path.suffix == ".safetensors":
                try:
                    with safe_open(path, framework="pt") as f:
                        out |= {k: (torch.Size(f.get_slice(k).get_shape()), file) for k in f.keys()}
                except (SafetensorError, OSError) as e:
                    raise ConversionError(f"{path}: damaged safetensors ({e})") from None
            else:
                out |= {k: (v.shape, file) for k, v in self.read(file).items()}
        return out

    def shards(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for file in self.files:
            yield file, self.read(file)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


# -- the position-table quirk ------------------------------------------------------------------------------------------
def pixellm_position_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """CLIP's (1 + n², D) position table → PixelLM's (1 + grid², D) one, exactly as PixelLM builds it: the first n²
    rows (the CLS row, then patches 0 … n² − 2) are read as an n × n grid and resized bilinearly (float32, corners
    not aligned) to grid × grid, and the last row (the last patch's) is appended. So the CLS position gets the resized
    grid's cell 0, patch p cell p + 1, and the last patch keeps CLIP's last-patch row."""
    rows, dim = table.shape
    n = int(round((rows - 1) ** 0.5))
    if n * n != rows - 1:
        raise ValueError(f"a CLIP position table has 1 + n² rows, got {rows}")
    square = table[:-1].float().T.reshape(1, dim, n, n)
    resized = F.interpolate(square, size=(grid, grid), mode="bilinear", align_corners=False)[0]
    return torch.cat([resized.flatten(1).T, table[-1:].float()]).to(table.dtype)


# -- the plan ----------------------------------------------------------------------------------------------------------
@dataclass
class Target:
    """One target key: built by ``fn`` from the ``sources`` tensors (in order), or without any (``note`` says how)."""

    sources: tuple[str, ...]
    fn: Callable[..., torch.Tensor]
    note: str = ""


@dataclass
class Report:
    """What a conversion did with every key: ``consumed`` source → target(s); ``dropped`` source → reason;
    ``transformed`` target → how it differs from its source (other than a rename); ``derived`` target → how it is
    made without a source; ``unplaced`` source keys no rule knows; ``missing`` target keys no source provides;
    ``wrong_shapes`` one line per mismatch."""

    source: str
    clip: str
    consumed: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    transformed: dict[str, str] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wrong_shapes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.unplaced or self.missing or self.wrong_shapes)

    def summary(self) -> str:
        return (
            f"{sum(map(len, self.consumed.values()))} target keys from {len(self.consumed)} source keys, "
            f"{len(self.dropped)} source keys dropped, {len(self.derived)} derived; "
            f"{len(self.unplaced)} unplaced, {len(self.missing)} missing, {len(self.wrong_shapes)} wrong shapes"
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


LLAVA_RULES = [  # PixelLM / LLaMA key → our LLaVA key
    (r"model\.embed_tokens\.weight", "model.language_model.embed_tokens.weight"),
    (
        r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight",
        r"model.language_model.layers.\1.\2.weight",
    ),  # noqa: E501
    (
        r"model\.layers\.(\d+)\.(input|post_attention)_layernorm\.weight",
        r"model.language_model.layers.\1.\2_layernorm.weight",
    ),  # noqa: E501
    (r"model\.norm\.weight", "model.language_model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
]
HEAD_RULES = [  # PixelLM key → our heads-file key
    (r"model\.mm_projector\.0\.(weight|bias)", r"projector.linear_1.\1"),
    (r"model\.mm_projector\.2\.(weight|bias)", r"projector.linear_2.\1"),
    (r"model\.text_hidden_fcs\.0\.([02])\.(weight|bias)", r"seg_head.mlp.\1.\2"),
    (r"model\.out_mm_projector\.([02])\.(weight|bias)", r"pixel_decoder.in_proj.\1.\2"),
    (r"model\.image_feature_neck\.(\d)\.(weight|bias)", r"pixel_decoder.neck.\1.\2"),
    (r"model\.prompt_encoder\.pe_layer\.(positional_encoding_gaussian_matrix)", r"pixel_decoder.pes.0.\1"),
    (r"model\.mask_decoder\.pe1\.(positional_encoding_gaussian_matrix)", r"pixel_decoder.pes.1.\1"),
    (r"model\.prompt_encoder\.no_mask_embed\.weight", "pixel_decoder.dense_embed"),
    (r"model\.mask_decoder\.level_embed\.weight", "pixel_decoder.level_embed"),
    (r"model\.mask_decoder\.transformer\.([01])\.(.+)", r"pixel_decoder.transformers.\1.\2"),
    (r"model\.mask_decoder\.output_upscaling\.(.+)", r"pixel_decoder.upscale.\1"),
    (r"model\.mask_decoder\.upsample_2x\.(.+)", r"pixel_decoder.upsample.\1"),
    (r"model\.mask_decoder\.output_hypernetworks_mlps\.0\.(.+)", r"pixel_decoder.hyper.\1"),
]
PREFIX_SOURCES = ("model.mask_decoder.iou_token.weight", "model.mask_decoder.mask_tokens.weight")
DROP_RULES = [  # PixelLM key → why it is not needed
    (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "rotary frequencies: recomputed from rope_theta"),
    (
        r"model\.mask_decoder\.output_hypernetworks_mlps\.[123]\..+",
        "hypernetworks of mask tokens 1–3: PixelLM outputs only mask token 0's mask (multimask_output=False)",
    ),
    (r"model\.mask_decoder\.iou_prediction_head\..+", "SAM's mask-quality head: PixelLM's outputs do not use it"),
    (
        r"model\.prompt_encoder\.(point_embeddings\.\d|not_a_point_embed)\.weight",
        "point/box prompt embeddings: PixelLM never gives point or box prompts",
    ),
    (r"model\.prompt_encoder\.mask_downscaling\..+", "mask-prompt encoder: PixelLM never gives a mask prompt"),
    (r"model\.vision_tower\..+", "vision tower weights: read from the CLIP source, as PixelLM loads them"),
]
CLIP_RULE = r"(?:vision_model\.)?((?:embeddings|pre_layrnorm|encoder|post_layernorm)\..+)"
CLIP_DROP = (
    r"text_model\..+|visual_projection\.weight|text_projection\.weight|logit_scale",
    "CLIP's text tower and projections: LLaVA reads only the vision tower",
)
QGROUND_PROJECTOR = r"model\.mm_projector\..+"
SEG_SCALE_NOTE = (
    "× 1/levels: PixelLM weighs each seg token 1/len(seg_token_idx) (1/6), our fusion 1/tokens_per_level (1/3)"
)


def _rename(x: torch.Tensor) -> torch.Tensor:
    return x


def _match(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, replacement in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(replacement)
    return None


def plan(
    config: QGroundConfig, source_keys: list[str], clip_keys: list[str], projector_known: bool = True
) -> tuple[dict[str, Target], Report]:
    """Target key → ``Target`` for the model ``config`` describes, and the report of the keys (shapes not checked
    yet: ``check_shapes``). ``projector_known`` False (Q-Ground): φv's source keys are unplaced and its targets
    missing."""
    report = Report(source="", clip="")
    targets: dict[str, Target] = {}
    rows = config.llm.vocab_size

    def add(target: str, sources: tuple[str, ...], fn, note: str = "") -> None:
        targets[target] = Target(sources, fn, note)
        if note:
            report.transformed[target] = note
        for s in sources:
            report.consumed.setdefault(s, []).append(target)

    for key in source_keys:
        reason = next((why for pattern, why in DROP_RULES if re.fullmatch(pattern, key)), None)
        if reason is not None:
            report.dropped[key] = reason
            continue
        if not projector_known and re.fullmatch(QGROUND_PROJECTOR, key):
            report.unplaced.append(key)
            continue
        if key in PREFIX_SOURCES:
            continue
        llava = _match(LLAVA_RULES, key)
        head = _match(HEAD_RULES, key)
        if llava == "model.language_model.embed_tokens.weight":
            add(llava, (key,), lambda x: _pad_rows(x, rows, x.float().mean(0)), "rows added for our tokens: the mean")
        elif llava == "lm_head.weight":
            add(llava, (key,), lambda x: _pad_rows(x, rows, x.new_zeros(x.shape[1])), "rows added: zero, never sampled")
        elif llava is not None:
            add(llava, (key,), _rename)
        elif head is not None and head.startswith("seg_head.mlp.2."):
            add(head, (key,), lambda x: x * (1 / config.seg_levels), SEG_SCALE_NOTE)
        elif head is not None:
            add(head, (key,), _rename)
            if head.startswith("projector.") and projector_in_llava(config):
                add("model.multi_modal_projector." + head.removeprefix("projector."), (key,), _rename)
        else:
            report.unplaced.append(key)
    if all(k in source_keys for k in PREFIX_SOURCES):
        add(
            "pixel_decoder.prefix_tokens",
            PREFIX_SOURCES,
            lambda iou, masks: torch.cat([iou, masks]),
            "SAM's iou token, then its 4 mask tokens",
        )
    for key in clip_keys:
        m = re.fullmatch(CLIP_RULE, key)
        if m is None:
            if re.fullmatch(CLIP_DROP[0], key):
                report.dropped[key] = CLIP_DROP[1]
            else:
                report.unplaced.append(key)
            continue
        target = "model.vision_tower." + m.group(1)
        if m.group(1) == "embeddings.position_embedding.weight":
            add(target, (key,), lambda w: pixellm_position_table(w, config.grid), "PixelLM's resized position table")
        else:
            add(target, (key,), _rename)
    fusion = torch.zeros(config.seg_levels, config.seg_tokens_per_level)
    targets["seg_head.fusion"] = Target((), lambda: fusion, "zeros: softmax weighs a level's seg tokens alike")
    report.derived["seg_head.fusion"] = targets["seg_head.fusion"].note
    return targets, report


def _pad_rows(x: torch.Tensor, rows: int, fill: torch.Tensor) -> torch.Tensor:
    if x.shape[0] > rows:
        raise ValueError(f"{x.shape[0]} rows do not fit {rows}")
    extra = fill.to(x.dtype).expand(rows - x.shape[0], -1)
    return torch.cat([x, extra])


def target_shapes(config: QGroundConfig) -> dict[str, torch.Size]:
    """Every key our model for ``config`` holds (LLaVA weights and heads file), with its shape, built on the meta
    device (no memory)."""
    model = build_model(config, device="meta")
    llava = {k: v.shape for k, v in model.llava.state_dict().items()}
    if not projector_in_llava(config):
        llava = {k: v for k, v in llava.items() if ".multi_modal_projector." not in k}
    return llava | {k: v.shape for k, v in head_state(model).items()}


def check_shapes(
    targets: dict[str, Target],
    report: Report,
    expected: dict[str, torch.Size],
    shapes: dict[str, tuple[torch.Size, str]],
) -> None:
    """Fill ``report.missing`` and ``report.wrong_shapes``: each target built on meta tensors of its sources'
    shapes must have the shape our model expects (``shapes``: source key → (shape, file))."""
    for key in sorted(expected):
        if key not in targets:
            report.missing.append(key)
            continue
        t = targets[key]
        try:
            got = t.fn(*[torch.empty(shapes[s][0], device="meta") for s in t.sources]).shape
        except (ValueError, RuntimeError) as e:
            got = f"none ({e})"
        if got != expected[key]:
            origin = ", ".join(f"{shapes[s][1]}: {s} {tuple(shapes[s][0])}" for s in t.sources) or "derived"
            report.wrong_shapes.append(f"{origin} → {key} needs {tuple(expected[key])}, gets {tuple(got)}")
    for key in sorted(set(targets) - set(expected)):
        report.unplaced += [s for s in targets[key].sources if s not in report.unplaced]


# -- configs -----------------------------------------------------------------------------------------------------------
def source_config(
    kind: str,
    src: dict,
    clip: dict,
    shapes: dict[str, tuple[torch.Size, str]],
    tokenizer,
    hardcoded: Hardcoded,
    name: str,
) -> QGroundConfig:
    """Our ``QGroundConfig`` for a PixelLM-format source: its ``config.json`` (``src``), CLIP's (``clip``, the
    vision part of a CLIPConfig or a CLIPVisionConfig), the source's tensor shapes and its tokenizer (``<image>`` is
    bound to it, added if missing)."""
    v = clip.get("vision_config", clip)
    layers = v["num_hidden_layers"]

    def hidden_index(i: int) -> int:
        return i if i >= 0 else layers + 1 + i

    run_size = int(src.get("resize_vision_tower_size") or v["image_size"])
    select = src.get("mm_vision_select_layer", -2)
    feature_layers = tuple(hidden_index(i) for i in (select if isinstance(select, list) else [select]))
    rows = shapes["model.embed_tokens.weight"][0][0]
    projector = shapes.get("model.mm_projector.0.weight", (torch.Size([0, 0]), ""))[0]
    decoder_in = shapes["model.out_mm_projector.0.weight"][0][0], shapes["model.out_mm_projector.2.weight"][0][0]
    mlp = shapes["model.mask_decoder.transformer.0.layers.0.mlp.lin1.weight"][0][0]
    depth = len({k.split(".")[5] for k in shapes if k.startswith("model.mask_decoder.transformer.0.layers.")})
    seg_ids = src.get("seg_token_idx") or []
    levels = int(src.get("image_feature_scale_num", 2))
    config = QGroundConfig(
        name=name,
        vision=VisionConfig(
            hidden_size=v["hidden_size"],
            intermediate_size=v["intermediate_size"],
            num_layers=layers,
            num_heads=v["num_attention_heads"],
            patch_size=v["patch_size"],
            native_image_size=run_size,
            hub_id=None,
        ),
        llm=LLMConfig(
            hidden_size=src["hidden_size"],
            intermediate_size=src["intermediate_size"],
            num_layers=src["num_hidden_layers"],
            num_heads=src["num_attention_heads"],
            num_kv_heads=src.get("num_key_value_heads") or src["num_attention_heads"],
            vocab_size=rows,
            max_position_embeddings=src.get("max_position_embeddings", 2048),
            rms_norm_eps=src.get("rms_norm_eps", 1e-6),
            rope_theta=float(src.get("rope_theta") or 10000.0),
            sampled_vocab=rows,
        ),
        decoder=DecoderConfig(
            dim=int(src.get("out_dim", 256)),
            depth=depth,
            num_heads=hardcoded.decoder_heads,
            mlp_dim=mlp,
            layers=tuple(hidden_index(i) for i in hardcoded.decoder_layers),
            style="pixellm",
            input_hidden=decoder_in[0],
            input_dim=decoder_in[1],
            level_weights=(1 / levels,) * levels,
        ),
        image_size=run_size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        feature_layers=feature_layers,
        projector_pool=2,
        projector_hidden=projector[0] if kind == "pixellm" else 0,
        vision_padding_mask=bool(src.get("pad_train_clip_images", True)),
        llm_image_padding_mask=bool(src.get("pad_train_clip_images", True)),
        resample="bilinear",
        size_rounding="half_up",
        image_wrap=bool(src.get("mm_use_im_start_end", False)),
        seg_levels=levels,
        seg_tokens_per_level=max(1, len(seg_ids) // levels) if seg_ids else 3,
        base_model_id=None,
        tokenizer_id=None,
        prompt_tokenization="llava",
    )
    bound = bind_tokenizer(config, tokenizer)
    if seg_ids and list(bound.token_ids.seg) != list(seg_ids):
        raise ConversionError(
            f"config.json: seg_token_idx {seg_ids} ≠ the tokenizer's [SEG0…] ids {list(bound.token_ids.seg)}"
        )
    padded = -(-max(rows, len(tokenizer)) // 64) * 64
    return dataclasses.replace(bound, llm=dataclasses.replace(bound.llm, vocab_size=padded))


# -- converting --------------------------------------------------------------------------------------------------------
@dataclass
class Conversion:
    """What ``convert`` produced: the output folder (None when it refused) and the report."""

    folder: Path | None
    report: Report


def convert(
    kind: str,
    source: Path,
    clip: Path,
    out: Path,
    *,
    allow_bin: bool = False,
    hardcoded: Hardcoded = Hardcoded(),
    origin: str | None = None,
    revision: str | None = None,
    licence: str = "",
    log: Callable[[str], None] = print,
) -> Conversion:
    """Convert the PixelLM-format checkpoint folder ``source`` (``kind`` "pixellm" or "qground") with the CLIP
    folder ``clip`` into our layout at ``out`` (written atomically). ``origin`` / ``revision`` / ``licence`` go into
    the model card. Writes ``out/convert_report.json`` in every case; raises ``ConversionError`` (one line, naming
    the file and key) when a key cannot be placed, is missing or has the wrong shape: no model is written then."""
    from transformers import AutoTokenizer

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if out.exists() and any(out.iterdir()) and not (out / REPORT_NAME).exists():
        raise ConversionError(f"{out}: not empty and not an earlier conversion; choose a new output folder")
    src_files, clip_files = SourceFiles(source, allow_bin), SourceFiles(clip, allow_bin)
    src_config, clip_config = read_json(source / "config.json"), read_json(clip / "config.json")
    shapes = src_files.shapes()
    clip_shapes = clip_files.shapes()
    try:
        with warnings.catch_warnings():  # it reads the source's 4.31-era config.json, whose keys it calls deprecated
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{source}: no usable tokenizer ({e})") from None
    for needed in ("model.embed_tokens.weight", "model.out_mm_projector.0.weight"):
        if needed not in shapes:
            raise ConversionError(f"{source}: {needed} is missing: not a PixelLM-format checkpoint")
    name = f"{origin or source.name} (converted)"
    config = source_config(kind, src_config, clip_config, shapes, tokenizer, hardcoded, name)
    projector_known = kind == "pixellm"
    targets, report = plan(config, sorted(shapes), sorted(clip_shapes), projector_known)
    report.source, report.clip = str(origin or source), str(clip)
    both = shapes | {k: (s, f"{clip.name}/{f}") for k, (s, f) in clip_shapes.items()}
    check_shapes(targets, report, target_shapes(config), both)
    out.mkdir(parents=True, exist_ok=True)
    report.save(out / REPORT_NAME)
    log(f"{source}: {report.summary()}")
    if not report.complete:
        raise ConversionError(_refusal(report, shapes, out / REPORT_NAME, kind))
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        llava, heads = _tensors(targets, [src_files, clip_files], config)
        _check_finite(llava | heads)
        llava_config(config).save_pretrained(staging)
        save_file(llava, staging / LLAVA_WEIGHTS, metadata={"format": "pt"})
        save_file(heads, staging / HEADS_NAME)
        config.save(staging)
        tokenizer.save_pretrained(staging)
        _keep_legacy_flag(source, staging)
        report.save(staging / REPORT_NAME)
        (staging / CARD_NAME).write_text(model_card(kind, config, report, origin or str(source), revision, licence))
        for item in out.iterdir():
            if item.is_dir():
                shutil.rmtree(item)
            else:
                item.unlink()
        for item in staging.iterdir():
            item.rename(out / item.name)
    log(f"wrote {out}")
    return Conversion(out, report)


def _keep_legacy_flag(source: Path, saved: Path) -> None:
    """Write a LLaMA tokenizer's ``legacy`` flag into the saved ``tokenizer_config.json``: transformers 4.31 (PixelLM's)
    reads a missing flag as true, transformers 5 as false and does not write it back (``qground.tokenizer.is_legacy``),
    so the source's flag, else 4.31's default, is stated explicitly."""
    path = source / "tokenizer_config.json"
    original = read_json(path) if path.exists() else {}
    if "llama" not in str(original.get("tokenizer_class", "")).lower():
        return
    target = saved / "tokenizer_config.json"
    config = read_json(target)
    config["legacy"] = bool(original.get("legacy", True))
    target.write_text(json.dumps(config, indent=2) + "\n")


def _refusal(report: Report, shapes: dict[str, tuple[torch.Size, str]], path: Path, kind: str) -> str:
    """The one-line error for an incomplete plan: the first problem, with its file, and how many more."""
    problems = len(report.unplaced) + len(report.missing) + len(report.wrong_shapes)
    more = f" ({problems - 1} more in {path})" if problems > 1 else f" (see {path})"
    if report.wrong_shapes:
        return f"wrong shape: {report.wrong_shapes[0]}{more}"
    if report.unplaced:
        key = report.unplaced[0]
        file = shapes[key][1] if key in shapes else "the CLIP source"
        what = "φv key" if kind == "qground" and re.fullmatch(QGROUND_PROJECTOR, key) else "key"
        hint = " (Q-Ground's φv is not documented: docs/pixellm.md)" if what == "φv key" else ""
        return f"{file}: cannot place {what} {key}{hint}{more}"
    return f"no source provides {report.missing[0]}{more}"


def _tensors(
    targets: dict[str, Target], files: list[SourceFiles], config: QGroundConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Build every target, reading one shard at a time: a target is made as soon as all its sources have been read;
    source tensors are released once every target that needs them is made. Returns (LLaVA state, heads state)."""
    needs: dict[str, list[str]] = {}
    for key, t in targets.items():
        for s in t.sources:
            needs.setdefault(s, []).append(key)
    held: dict[str, torch.Tensor] = {}
    built: dict[str, torch.Tensor] = {k: t.fn() for k, t in targets.items() if not t.sources}
    for source in files:
        for _file, tensors in source.shards():
            held.update({key: tensor for key, tensor in tensors.items() if key in needs})
            for key in [k for k, t in targets.items() if k not in built and all(s in held for s in t.sources)]:
                built[key] = targets[key].fn(*[held[s] for s in targets[key].sources]).contiguous().clone()
            for key in [k for k in held if all(t in built for t in needs[k])]:
                del held[key]
            del tensors
    dtype = built["model.language_model.embed_tokens.weight"].dtype
    llava, heads = {}, {}
    for key, tensor in built.items():
        (llava if key.startswith(("model.", "lm_head.")) else heads)[key] = tensor.to(dtype)
    return llava, heads


def _check_finite(state: dict[str, torch.Tensor]) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ConversionError(f"{key}: holds NaN or infinite values; the source is damaged")


def model_card(
    kind: str, config: QGroundConfig, report: Report, origin: str, revision: str | None, licence: str
) -> str:
    """The converted folder's README: what it is, where it came from, and how to check it against PixelLM."""
    what = "PixelLM" if kind == "pixellm" else "Q-Ground (PixelLM format)"
    return f"""# {config.name}

Converted by `python -m qground convert {kind}` from **{origin}** (revision `{revision or "as found"}`), a {what}
release, with its vision tower from **{report.clip}**.

- Licence of the source: {licence or "see the source repository"}.
- Architecture: `qground_config.json` (PixelLM decoder style, padding masks, ImageNet normalization, bilinear
  resizing); conversion report: `{REPORT_NAME}` ({report.summary()}).
- Differences from PixelLM's own inference (`docs/pixellm.md`): EXIF orientation is applied; a broken seg-token
  group drops only itself (PixelLM drops every mask of the answer); decoding uses a KV cache with the same masks.

Check it against PixelLM's `chat.py` (transformers 4.31, GPU with ~16 GB) on a few photos with the same question:
the generated token ids should match and the masks' IoU be close to 1.
"""


# -- the Hub -----------------------------------------------------------------------------------------------------------
def fetch(repo_or_folder: str, revision: str | None, subfolder: str = "", allow_bin: bool = False) -> Path:
    """A local folder as is, or a Hub repo's weights, JSON and tokenizer files at ``revision``; ``subfolder``: where
    the weights sit. Pickled ``.bin`` weights are fetched only with ``allow_bin`` and only when the repo has no
    safetensors there (this module is the one place that fetches them; ``SourceFiles`` reads them weights-only)."""
    path = Path(repo_or_folder).expanduser()
    if path.is_dir():
        return path / subfolder if subfolder else path
    from huggingface_hub import snapshot_download

    from qground.checkpoint import hub_errors

    with hub_errors(repo_or_folder, revision):
        folder = Path(
            snapshot_download(
                repo_or_folder, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
            )
        )
        weights = folder / subfolder if subfolder else folder
        if allow_bin and not any(weights.glob("*.safetensors")):
            snapshot_download(repo_or_folder, revision=revision, allow_patterns=["*.json", "*.bin", "*.model", "*.txt"])
    return weights


def cache_root() -> Path:
    """``$QGROUND_CACHE``, else ``$XDG_CACHE_HOME/qground``, else ``~/.cache/qground``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "qground"


def converted_release(repo: str, revision: str | None = None, log: Callable[[str], None] = print) -> Path:
    """The converted folder of a known release (``RELEASES``) at ``revision``: from the cache, else downloaded
    (weights and CLIP) and converted into it once."""
    release = RELEASES[repo]
    out = cache_root() / "converted" / f"{repo.replace('/', '--')}@{revision or 'main'}"
    if (out / CONFIG_NAME).exists():
        return out
    source = fetch(repo, revision, release.subfolder, allow_bin=release.allow_bin)
    clip = fetch(release.clip, None, allow_bin=release.allow_bin)
    log(f"converting {repo} into {out} (once)")
    convert(
        release.kind,
        source,
        clip,
        out,
        allow_bin=release.allow_bin,
        origin=repo,
        revision=revision,
        licence=release.licence,
        log=log,
    )
    return out
