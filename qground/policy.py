"""How a trained model is run, apart from what it is: the ``InferencePolicy`` saved beside the weights.

The architecture config (``qground.config.QGroundConfig``) describes the weights. Everything chosen after training —
the default detection strictness, the clipping rule on the readout, the readout's mask blend, the mirrored second
view and the mask refinement — lives here, in ``inference_policy.json`` (as transformers keeps
``generation_config.json`` beside a model). ``training.calibrate`` writes it; ``qground.checkpoint.load_policy``
reads it; the engine owns it and a request may override the strictness.

The strictness and the clipping rule decide, per image and class, the readout presence logit a class needs before φv
hears of it (``readout_thresholds``).

Version 1 files also held two region gates (jitter needing a motion-blur signature, low light needing log contrast) and
a jitter mask blend with that signature; no calibration since v18 kept any of them on validation, so they were removed
(``docs/experiments/2026-12-07-unused-gates-removed.md``). A version 1 file loads when they are off and is refused,
naming them, when one is on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qground.config import ConfigError, QGroundConfig, load_dataclass, save_dataclass
from qground.taxonomy import CLASS_NAMES

POLICY_NAME = "inference_policy.json"
POLICY_VERSION = 2
MAX_STRICTNESS = 8.0  # detection strictness range: 0..MAX_STRICTNESS
# version 1's fields that are gone (see the module docstring): each loads only at the value that turned it off
RETIRED_OFF = {"jitter_min_motion_signature": 0.0, "low_light_min_log_contrast": 0.0, "jitter_signature_weight": 0.0}
RETIRED_INERT = ("jitter_signature_center", "jitter_signature_scale")  # read only with jitter_signature_weight
# An input pixel is clipped white when its every RGB channel is at least this (253 of 255 and up: JPEG ringing around a
# clipped highlight leaves it a few levels short of 255).
CLIPPED_WHITE = 0.99


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class InferencePolicy:
    """What the engine does around the model's forward pass. Every default is "as trained": no gate, no blend, one
    view, masks only upsampled.

    - ``default_strictness``: detection strictness (0 … ``MAX_STRICTNESS``) when a request names none (models with a
      readout). Strictness s asks class k for a readout presence logit of s × c_k / mean(c), c the config's
      ``readout_confidence`` (1 for every class when unset).
    - ``overexposure_needs_clipping``: while strictness > 0, overexposure's evidence reaches φv only in images holding
      a clipped white pixel (every RGB channel ≥ ``CLIPPED_WHITE``): a bright photo that clips nowhere is not
      overexposed, whatever the readout says.
    - ``readout_mask_weight`` w: masks become (1 − w) · the decoder's probability + w · the readout's coverage.
    - ``flip_average``: the tower also reads each image mirrored; readout logits, coverage and masks are averaged.
    - ``mask_refine_radius`` (model-input pixels) and ``mask_refine_eps``: masks guided-filtered on the photo
      (``qground.refine``); radius 0: only upsampled.
    - ``constrained_answers``: decoding is held to the answer grammar (``qground.answers``): one image, a grounding
      answer or a description; several images, ``The [CHOICE] image.`` (models with a choice head). Every answer is
      then a finished sentence; the model picks which.
    - ``answers_follow_readout`` (with ``constrained_answers``, models with a readout): a one-image answer names exactly
      the classes the readout finds present at the request's strictness (presence logit at its threshold), and says
      there is no obvious distortion when it finds none, so the words, the masks and the readout agree (the model
      picks severity, place and overall quality); a yes/no lead ("Yes." / "No, there is no blur.") answers only about
      the classes the question names.
    - ``calibration``: how the values were chosen (sweeps, references), for the record; never read at run time.
    """

    version: int = POLICY_VERSION
    default_strictness: float = 0.0
    overexposure_needs_clipping: bool = False
    readout_mask_weight: float = 0.0
    flip_average: bool = False
    mask_refine_radius: float = 0.0
    mask_refine_eps: float = 0.01
    constrained_answers: bool = False
    answers_follow_readout: bool = False
    calibration: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check(self.version <= POLICY_VERSION, f"{POLICY_NAME} version {self.version} is newer than this qground's")
        _check(
            0.0 <= self.default_strictness <= MAX_STRICTNESS,  # also refuses NaN
            f"default_strictness must be between 0 and {MAX_STRICTNESS:g}, got {self.default_strictness}",
        )
        w = self.readout_mask_weight
        _check(0.0 <= w <= 1.0, f"readout_mask_weight must be between 0 and 1, got {w}")
        _check(self.mask_refine_radius >= 0.0, f"mask_refine_radius must be ≥ 0, got {self.mask_refine_radius}")
        _check(self.mask_refine_eps > 0, f"mask_refine_eps must be > 0, got {self.mask_refine_eps}")

    def check_model(self, config: QGroundConfig) -> None:
        """Raise ``ConfigError`` when this policy needs what the model lacks (a readout, or a refinement radius
        beyond its input size)."""
        needs_readout = [
            name
            for name in ("default_strictness", "overexposure_needs_clipping", "readout_mask_weight")
            if getattr(self, name)
        ]
        _check(config.readout or not needs_readout, f"{', '.join(needs_readout)} need a model with a readout")
        _check(
            not self.answers_follow_readout or (config.readout and self.constrained_answers),
            "answers_follow_readout needs constrained_answers and a model with a readout",
        )
        _check(
            self.mask_refine_radius <= config.image_size,
            f"mask_refine_radius {self.mask_refine_radius} exceeds the model's input size {config.image_size}",
        )

    def replace(self, **changes) -> InferencePolicy:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        return save_dataclass(self, Path(folder) / POLICY_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> InferencePolicy:
        """The policy saved in ``folder``, or the as-trained default when it has none. A version 1 file loads without
        its retired fields when they are off (``RETIRED_OFF``); ``ConfigError`` naming them when one is on."""
        path = Path(folder) / POLICY_NAME
        if not path.exists():
            return cls()
        return load_dataclass(cls, path, POLICY_NAME, upgrade=_upgrade)


def _upgrade(data: Any) -> Any:
    """A version 1 policy's data as version 2: without its retired fields when they are off."""
    if not isinstance(data, dict) or data.get("version") != 1:
        return data
    on = sorted(name for name, off in RETIRED_OFF.items() if data.get(name, off) != off)
    _check(
        not on,
        f"this version 1 policy turns on {', '.join(on)}, removed from qground in policy version {POLICY_VERSION}; "
        "calibrate the model again (python -m training.calibrate)",
    )
    retired = set(RETIRED_OFF) | set(RETIRED_INERT)
    return {k: v for k, v in data.items() if k not in retired} | {"version": POLICY_VERSION}


# -- the readout's thresholds ------------------------------------------------------------------------------------------
def clipped_white(pixel_values: torch.Tensor, config: QGroundConfig) -> torch.Tensor:
    """``pixel_values`` (M, C, S, S) normalized, padded model inputs → (M,) bool: the image holds a pixel whose every
    RGB channel is ≥ ``CLIPPED_WHITE`` once un-normalized (the padding is the mean color, never white)."""
    mean = torch.tensor(config.image_mean[:3]).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std[:3]).view(1, 3, 1, 1)
    rgb = pixel_values[:, :3].float().cpu() * std + mean
    return (rgb.amin(dim=1) >= CLIPPED_WHITE).flatten(1).any(dim=1)


def readout_thresholds(
    policy: InferencePolicy, config: QGroundConfig, strictness: float, pixel_values: torch.Tensor
) -> torch.Tensor | None:
    """The presence logit each image needs per class, (M, K), at ``strictness`` (None at 0: as trained).
    ``pixel_values`` (M, C, S, S) the normalized model inputs. Overexposure in an image without a clipped white pixel
    needs +inf under ``overexposure_needs_clipping``."""
    if not strictness:
        return None
    confidence = torch.tensor(config.readout_confidence or (1.0,) * len(CLASS_NAMES))
    threshold = (strictness * confidence / confidence.mean()).repeat(len(pixel_values), 1)  # (M, K)
    if policy.overexposure_needs_clipping:
        threshold[~clipped_white(pixel_values, config), CLASS_NAMES.index("overexposure")] = float("inf")
    return threshold
