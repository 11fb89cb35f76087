"""Which parameters train in a stage, made explicit (the paper: stage 1 φv only; stages 2–3 LoRA + φv + seg head +
decoder + seg-token rows)."""

from __future__ import annotations

from qground.checkpoint import apply_lora
from qground.config import LoraSettings
from qground.modeling import QGroundModel


def _group(name: str) -> str | None:
    """The trainable group a parameter name belongs to (None: never trained, e.g. the vision tower)."""
    if "trainable_tokens_delta" in name:
        return "token_rows"
    if "lora_" in name:
        return "lora"
    if name.startswith("llava.model.multi_modal_projector."):
        return "projector"
    if name.startswith(("llava.model.language_model.", "llava.lm_head.")):
        return "llm"
    if name.startswith("seg_head."):
        return "seg_head"
    if name.startswith("pixel_decoder."):
        return "pixel_decoder"
    if name.startswith("choice_head."):
        return "choice_head"
    return None


def set_trainable(model: QGroundModel, groups: list[str], lora: LoraSettings) -> list[str]:
    """Inject LoRA if the stage trains it and the model has none yet, then set ``requires_grad`` exactly for the
    parameters of ``groups``. Returns the trainable parameter names."""
    if "lora" in groups and not hasattr(model, "peft_config"):
        apply_lora(model, lora, train_token_rows="token_rows" in groups)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad = _group(name) in groups
        if param.requires_grad:
            names.append(name)
    return names
