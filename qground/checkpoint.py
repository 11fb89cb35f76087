"""Our checkpoint layout: save, resolve (registry / folder / Hub repo + revision) and load.

A folder holds ``qground_config.json`` (the architecture), tokenizer files, ``qground_heads.safetensors`` (φv, seg head,
pixel decoder, readout), optionally ``inference_policy.json`` (how it is run, ``qground.policy``) and either the full
LLaVA weights (``config.json`` + ``model.safetensors``, loadable by plain transformers too) or a LoRA adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, with the trained seg-token rows) over
``config.base_model_id``. Only safetensors are read; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from qground.builder import REGISTRY, assemble, build_from_registry, build_tokenizer
from qground.config import CONFIG_NAME, FORMAT_VERSION, ConfigError, LoraSettings, QGroundConfig
from qground.lexicon import Lexicon
from qground.modeling import QGroundModel
from qground.policy import InferencePolicy
from qground.tokenizer import bind_tokenizer

log = logging.getLogger(__name__)

HEADS_NAME = "qground_heads.safetensors"
ADAPTER_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FULL_WEIGHTS = "model.safetensors"
QUANT_CHOICES = ("none", "4bit", "8bit")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Kept in full precision under 4/8-bit: exact prefixes (transformers 5 matches by prefix, not substring).
QUANT_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# bitsandbytes' CPU NF4 kernel (0.50, CPUs with AVX512-BF16) packs a layer's output rows in blocks of 32 and its
# scales per 64 inputs; on CPU an LLM projection with other widths stays in the compute dtype (it would fail at the
# first forward).
CPU_4BIT_ROWS, CPU_4BIT_INPUTS = 32, 64


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or read, with what to do about it."""


# -- saving ------------------------------------------------------------------------------------------------------------
def head_state(model: QGroundModel) -> dict[str, torch.Tensor]:
    """φv, seg head, pixel decoder (readout, choice head) weights, keyed ``projector.*``, ``seg_head.*``,
    ``pixel_decoder.*`` (``readout.*``, ``choice_head.*``)."""
    return {
        f"{name}.{k}": v.detach().contiguous()
        for name, part in _head_parts(model).items()
        for k, v in part.state_dict().items()
    }


def _head_parts(model: QGroundModel) -> dict[str, torch.nn.Module]:
    parts = {"projector": model.projector, "seg_head": model.seg_head, "pixel_decoder": model.pixel_decoder}
    optional = {"readout": model.readout, "choice_head": model.choice_head}
    return parts | {name: part for name, part in optional.items() if part is not None}


def apply_lora(model: QGroundModel, settings: LoraSettings, train_token_rows: bool = True) -> LoraConfig:
    """Inject LoRA into the LLM's attention (and trainable rows for our special tokens in the embedding and lm_head)
    in place. Freezes everything else, as peft does; callers unfreeze what their stage trains."""
    token_ids = model.config.token_ids
    ids = [token_ids.image, *token_ids.seg, *[token_ids.choice] * model.config.choice_head]
    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        trainable_token_indices={"embed_tokens": ids, "lm_head": ids} if train_token_rows else None,
    )
    inject_adapter_in_model(lora, model)
    model.train(model.training)  # new LoRA modules (dropout) follow the model's mode
    return lora


def save_checkpoint(model: QGroundModel, tokenizer, folder: str | Path, include_base: bool = True) -> Path:
    """Write ``model`` in our layout, atomically: files go to a temporary sibling folder that replaces ``folder``
    only when complete, so a kill mid-save never leaves a checkpoint that loads wrong.

    ``include_base=False`` leaves the LLaVA weights out (they are ``config.base_model_id``'s, unchanged); a model with
    a LoRA adapter never includes them (its adapter is saved instead)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = model.config
        lora = getattr(model, "peft_config", {}).get("default")
        if (lora is not None or not include_base) and config.base_model_id is None:
            raise CheckpointError("saving without the LLaVA weights needs config.base_model_id to name them")
        if lora is not None:
            lora.save_pretrained(tmp)
            save_file(_contiguous(get_peft_model_state_dict(model)), tmp / ADAPTER_NAME)
        elif include_base:
            state = None
            if not projector_in_llava(config):  # φv fits no LLaVA projector; the heads file holds it
                state = {k: v for k, v in model.llava.state_dict().items() if ".multi_modal_projector." not in k}
            model.llava.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        config.save(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(head_state(model), tmp / HEADS_NAME)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def projector_in_llava(config: QGroundConfig) -> bool:
    """Whether φv's weights fit transformers' LLaVA projector (Linear(in → D), GELU, Linear(D → D)), so the full
    weights file holds it too; φv on a readout or with another hidden width lives only in the heads file."""
    return not config.readout and config.projector_hidden in (0, config.llm.hidden_size)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


# -- resolving ---------------------------------------------------------------------------------------------------------
def resolve(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A registry name with a shipped checkpoint, a local folder, or a Hub repo id (downloaded at ``revision``)."""
    text = str(source)
    entry = REGISTRY.get(text)
    if entry is not None and entry.checkpoint is not None:
        if not (entry.checkpoint / CONFIG_NAME).exists():
            raise CheckpointError(f"{text}: its shipped checkpoint {entry.checkpoint} is missing; reinstall qground")
        return entry.checkpoint
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).exists():
            hint = ""
            if "PixelLMForCausalLM" in _architectures(path):
                hint = f" (it is a PixelLM-format release: python -m qground convert pixellm {path} --out DIR)"
            raise CheckpointError(f"{path} is not a qground checkpoint: it has no {CONFIG_NAME}{hint}")
        return path
    from qground.convert import RELEASES, ConversionError, converted_release  # qground.convert imports this module

    if text in RELEASES:  # a released PixelLM / Q-Ground model: converted once into the cache
        try:
            return converted_release(text, revision)
        except ConversionError as e:
            raise CheckpointError(f"{text}: cannot be converted: {e}") from None
    if entry is not None or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(
            f"{text!r} is neither a shipped model ({', '.join(k for k, e in REGISTRY.items() if e.checkpoint)}), "
            "an existing checkpoint folder, nor a Hub repo id like 'org/name'"
        )
    return download(text, revision)


def _architectures(folder: Path) -> list[str]:
    """The ``architectures`` a transformers ``config.json`` in ``folder`` names (none when absent or unreadable)."""
    try:
        names = json.loads((folder / "config.json").read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return []
    return names if isinstance(names, list) else []


def download(repo_id: str, revision: str | None = None) -> Path:
    """``snapshot_download`` of the files our layout uses (safetensors, json, tokenizer), with clear errors."""
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision):
        return Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
            )
        )


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn the Hub's errors inside the block into a ``CheckpointError`` that says what to do."""
    import httpx2  # huggingface_hub's HTTP client: a connection lost mid-download surfaces as its TransportError
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision or 'main'}"
    try:
        yield
    except RevisionNotFoundError:
        raise CheckpointError(f"{at}: revision {revision!r} does not exist; check QGROUND_REVISION") from None
    except GatedRepoError:
        raise CheckpointError(f"{at} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{at}: no such model repo (or it is private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{at} is not in the local cache and the Hub cannot be reached (offline or HF_HUB_OFFLINE=1). "
            "Connect once to download it, or point QGROUND_MODEL at a local checkpoint folder"
        ) from None
    except (httpx2.TransportError, OSError) as e:  # connection lost or refused, proxy, server or disk errors
        raise CheckpointError(
            f"{at}: the download failed ({type(e).__name__}: {e}). Check the network (or HF_ENDPOINT and proxy "
            "settings) and try again, or point QGROUND_MODEL at a local checkpoint folder"
        ) from None


# -- loading -----------------------------------------------------------------------------------------------------------
def default_device_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 where the GPU supports it (Ampere and newer), else fp16; the CPU in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"fp32"`` / ``"bf16"`` / ``"fp16"`` → the torch dtype; None or ``"auto"`` → None (``default_device_dtype``)."""
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a compute dtype (``"bf16"``); other dtypes by torch's name."""
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def cpu_4bit_skips(config: QGroundConfig) -> list[str]:
    """Module-name suffixes of the LLM projections whose output width is not a multiple of ``CPU_4BIT_ROWS`` or whose
    input width is not a multiple of ``CPU_4BIT_INPUTS``."""
    t = config.llm
    kv = t.num_kv_heads * (t.hidden_size // t.num_heads)
    shapes = {  # (inputs, outputs)
        "self_attn.q_proj": (t.hidden_size, t.hidden_size),
        "self_attn.k_proj": (t.hidden_size, kv),
        "self_attn.v_proj": (t.hidden_size, kv),
        "self_attn.o_proj": (t.hidden_size, t.hidden_size),
        "mlp.gate_proj": (t.hidden_size, t.intermediate_size),
        "mlp.up_proj": (t.hidden_size, t.intermediate_size),
        "mlp.down_proj": (t.intermediate_size, t.hidden_size),
    }
    return [name for name, (i, o) in shapes.items() if i % CPU_4BIT_INPUTS or o % CPU_4BIT_ROWS]


def quantization_config(quant: str, compute_dtype: torch.dtype, skip: list[str] = ()):
    """``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quant) or ``"8bit"``, skipping ``QUANT_SKIP_MODULES`` and
    ``skip`` (module-name prefixes, suffixes or regexes, as transformers matches them)."""
    if quant not in QUANT_CHOICES:
        raise ValueError(f"quantization must be one of {QUANT_CHOICES}, got {quant!r}")
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[*QUANT_SKIP_MODULES, *skip])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=[*QUANT_SKIP_MODULES, *skip],
    )


def load_model(
    source: str | os.PathLike,
    revision: str | None = None,
    quant: str = "none",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_untrained: bool = False,
):
    """``(QGroundModel, tokenizer)`` from a registry name, folder or Hub repo id.

    Registry names without shipped weights: ``qground-tiny`` builds randomly; others (``qground-7b``) load their
    pretrained base LLaVA with untrained heads only when ``allow_untrained`` (the start of training).
    """
    default_device, default_dtype = default_device_dtype()
    device = torch.device(device) if device is not None else default_device
    dtype = dtype or default_dtype
    entry = REGISTRY.get(str(source))
    if entry is not None and entry.checkpoint is None:
        config = entry.config()
        if config.base_model_id is None:
            model, tokenizer = build_from_registry(str(source), device=device)
            return check_cpu_convolutions(model.to(dtype=dtype)), tokenizer
        if not allow_untrained:
            raise CheckpointError(
                f"{source} has no published trained weights yet; train it with training/ and pass the output folder "
                "or its Hub repo id"
            )
        tokenizer, config = build_tokenizer(config)
        llava = _load_llava(config.base_model_id, config, quant, device, dtype)
        _check_architecture(config, llava, config.base_model_id)
        model = assemble(config, llava)
        _heads_to(model, device, dtype)
        return check_cpu_convolutions(model.eval()), tokenizer
    folder = resolve(source, revision)
    _check_format(folder / CONFIG_NAME)
    try:
        config = QGroundConfig.load(folder)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bound = bind_tokenizer(config, tokenizer)
    if bound.token_ids != config.token_ids:
        raise CheckpointError(f"{folder}: tokenizer ids {bound.token_ids} ≠ {CONFIG_NAME} ids {config.token_ids}")
    base = folder if (folder / FULL_WEIGHTS).exists() else _base_folder(config)
    without_projector = not projector_in_llava(config) and base == folder
    llava = _load_llava(base, config, quant, device, dtype, without_projector=without_projector)
    _check_architecture(config, llava, base)
    model = assemble(config, llava)
    _load_safetensors(model, folder / HEADS_NAME, _load_heads)
    if (folder / ADAPTER_CONFIG).exists():
        inject_adapter_in_model(LoraConfig.from_pretrained(folder), model)
        _load_safetensors(model, folder / ADAPTER_NAME, _load_adapter)
    _heads_to(model, device, dtype)
    return check_cpu_convolutions(model.eval()), tokenizer


def load_policy(source: str | os.PathLike, revision: str | None = None) -> InferencePolicy:
    """The ``InferencePolicy`` saved beside a checkpoint's weights (``inference_policy.json``), for the same sources
    as ``load_model``; as trained (the default policy) for a registry model without a shipped checkpoint or a folder
    without the file."""
    return _beside_weights(source, revision, InferencePolicy.load, InferencePolicy())


def load_lexicon(source: str | os.PathLike, revision: str | None = None) -> Lexicon | None:
    """The ``Lexicon`` saved beside a checkpoint's weights (``lexicon.json``), for the same sources as ``load_model``;
    None for a registry model without a shipped checkpoint or a folder without the file."""
    return _beside_weights(source, revision, Lexicon.load, None)


def _beside_weights(source: str | os.PathLike, revision: str | None, read, default):
    """``read(folder)`` of a checkpoint's folder (``resolve``), or ``default`` for a registry model without a shipped
    checkpoint; a file ``read`` refuses (``ConfigError``) raises ``CheckpointError``."""
    entry = REGISTRY.get(str(source))
    if entry is not None and entry.checkpoint is None:
        return default
    try:
        return read(resolve(source, revision))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _check_format(path: Path) -> None:
    """Refuse a missing config, one that is not text, and one written by a newer qground (before reading any field it
    may have added or changed)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:  # a Hub repo that is not ours
        raise CheckpointError(f"{path.parent} is not a qground checkpoint: it has no {CONFIG_NAME}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is damaged (not text); delete the checkpoint and download it again") from None
    except json.JSONDecodeError:
        return  # QGroundConfig.load says where the JSON breaks
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer qground (format {version} > {FORMAT_VERSION}); upgrade qground "
            "(pip install -U -r requirements.txt) to load it"
        )


def check_cpu_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, after each distinct strided 2-D convolution of it held in bf16 or fp16 on the CPU has been run once
    on a random (1, C, 4·stride + kernel, …) input against fp32 on the same rounded values. Some oneDNN builds' AMX
    kernels give wrong strided bf16 convolutions (uxlfoundation/oneDNN#5494; seen with torch 2.14.1 on a Xeon with
    AMX: a patch embedding off by 100 %); when one disagrees by more than 5 % of its range, oneDNN is switched off for
    the process (``torch.backends.mkldnn.enabled``: PyTorch's own kernels, right and slower) and a warning logged."""
    seen = set()
    for conv in model.modules():
        weight = getattr(conv, "weight", None)
        if not isinstance(conv, torch.nn.Conv2d) or conv.padding_mode != "zeros" or weight.device.type != "cpu":
            continue
        key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, weight.dtype)
        if weight.dtype not in (torch.bfloat16, torch.float16) or max(conv.stride) == 1 or key in seen:
            continue
        seen.add(key)
        side = [4 * s + k for s, k in zip(conv.stride, conv.kernel_size, strict=True)]
        x = torch.randn(1, conv.in_channels, *side, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        with torch.inference_mode():
            bias = None if conv.bias is None else conv.bias.float()
            reference = F.conv2d(x.float(), weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            error = (conv(x).float() - reference).abs().max() / reference.abs().max().clamp_min(1e-6)
        if error > 0.05 and torch.backends.mkldnn.enabled:
            log.warning(
                "oneDNN computes a %s convolution %s wrongly on this CPU (error %.0f %% of its range): switched off",
                dtype_name(weight.dtype),
                key[:5],
                100 * float(error),
            )
            torch.backends.mkldnn.enabled = False
    return model


def _heads_to(model: QGroundModel, device: torch.device, dtype: torch.dtype) -> None:
    """φv and the qground heads follow the device and compute dtype (they are never quantized)."""
    for part in _head_parts(model).values():
        part.to(device=device, dtype=dtype)


def _base_folder(config: QGroundConfig) -> Path | str:
    if config.base_model_id is None:
        raise CheckpointError(f"this checkpoint has no {FULL_WEIGHTS} and names no base_model_id; it cannot be loaded")
    path = Path(config.base_model_id).expanduser()
    return path if path.is_dir() else config.base_model_id


def _drop_projector_report(record: logging.LogRecord) -> bool:
    """transformers' load report that lists the projector keys (checked by ``_load_llava`` itself) is not printed."""
    return "multi_modal_projector" not in record.getMessage()


def _from_pretrained_without_projector(base, kwargs: dict) -> LlavaForConditionalGeneration:
    """LLaVA weights that leave the projector out by design: any other missing or unexpected key is an error, and
    transformers' load report about the projector is not printed."""
    log = logging.getLogger("transformers.modeling_utils")
    log.addFilter(_drop_projector_report)
    try:
        llava, info = LlavaForConditionalGeneration.from_pretrained(base, output_loading_info=True, **kwargs)
    finally:
        log.removeFilter(_drop_projector_report)
    wrong = sorted(k for k in info["missing_keys"] if ".multi_modal_projector." not in k)
    wrong += sorted(info["unexpected_keys"])
    if wrong:
        raise CheckpointError(f"{base}/{FULL_WEIGHTS} does not fit {CONFIG_NAME}: missing or unexpected {wrong}")
    return llava


def _load_llava(
    base,
    config: QGroundConfig,
    quant: str,
    device: torch.device,
    dtype: torch.dtype,
    without_projector: bool = False,
) -> LlavaForConditionalGeneration:
    """``without_projector``: the weights leave LLaVA's projector out by design (``projector_in_llava``: the heads file
    keeps φv; see ``_from_pretrained_without_projector``). On CPU, 4-bit keeps ``cpu_4bit_skips`` unquantized."""
    skip = cpu_4bit_skips(config) if quant == "4bit" and device.type == "cpu" else []
    if skip:
        log.info("4-bit on CPU: %s stay in %s (bitsandbytes' CPU kernel cannot pack their widths)", skip, dtype)
    qconfig = quantization_config(quant, dtype, skip)
    kwargs = {"dtype": dtype, "use_safetensors": True}  # never a pickled pytorch_model.bin
    if qconfig is not None:
        kwargs |= {"quantization_config": qconfig, "device_map": {"": device}}
    try:
        if without_projector:
            llava = _from_pretrained_without_projector(base, kwargs)
        else:
            llava = LlavaForConditionalGeneration.from_pretrained(base, **kwargs)
    except SafetensorError as e:
        raise CheckpointError(
            f"{base}/{FULL_WEIGHTS} is damaged ({e}); delete it and download or save it again"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot load the base model {base}: {e}") from None
    return llava if qconfig is not None else llava.to(device)


def _check_architecture(config: QGroundConfig, llava: LlavaForConditionalGeneration, base) -> None:
    t, v = llava.config.text_config, llava.config.vision_config
    pairs = {
        "llm.hidden_size": (config.llm.hidden_size, t.hidden_size),
        "llm.num_layers": (config.llm.num_layers, t.num_hidden_layers),
        "vision.hidden_size": (config.vision.hidden_size, v.hidden_size),
        "vision.num_layers": (config.vision.num_layers, v.num_hidden_layers),
        "vision.patch_size": (config.vision.patch_size, v.patch_size),
    }
    wrong = {k: a for k, a in pairs.items() if a[0] != a[1]}
    if wrong:
        raise CheckpointError(f"base model {base} does not match {CONFIG_NAME}: (ours, base) = {wrong}")
    if llava.get_input_embeddings().weight.shape[0] < config.llm.vocab_size:
        llava.resize_token_embeddings(config.llm.vocab_size)


def _load_safetensors(model: QGroundModel, path: Path, apply) -> None:
    try:
        state = load_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; save or download it again") from None
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); delete the checkpoint and save or download it again") from None
    apply(model, state, path)


def _load_heads(model: QGroundModel, state: dict[str, torch.Tensor], path: Path) -> None:
    for name, part in _head_parts(model).items():
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        try:
            part.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: {name} weights do not fit this architecture: {e}") from None


def _load_adapter(model: QGroundModel, state: dict[str, torch.Tensor], path: Path) -> None:
    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: adapter weights not in this model: {result.unexpected_keys[:5]}")
