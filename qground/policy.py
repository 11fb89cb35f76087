"""How a trained model is run, apart from what it is: the ``InferencePolicy`` saved beside the weights.

The architecture config (``qground.config.QGroundConfig``) describes the weights. Everything chosen after training —
the default detection strictness, the physical-evidence gates on the readout, the mask blends, the mirrored second
view and the mask refinement — lives here, in ``inference_policy.json`` (as transformers keeps
``generation_config.json`` beside a model). ``training.calibrate`` writes it; ``qground.checkpoint.load_policy``
reads it; the engine owns it and a request may override the strictness.

The gates decide, per image and class, the readout presence logit a class needs before φv hears of it
(``readout_thresholds``). Frames: evidence maps are (M, S, S) over the padded model input (0: no evidence); readout
coverage is (M, K, G, G) over the same frame at any resolution G.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qground.config import ConfigError, QGroundConfig, load_dataclass, save_dataclass
from qground.detail import region_contrast
from qground.taxonomy import CLASS_NAMES

POLICY_NAME = "inference_policy.json"
POLICY_VERSION = 1
MAX_STRICTNESS = 8.0  # detection strictness range: 0..MAX_STRICTNESS
MOTION_SIGNATURE, LOG_CONTRAST = "motion_signature", "log_contrast"  # evidence maps (qground.detail) by name
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
    - ``jitter_min_motion_signature`` (> 0): while strictness > 0, jitter's evidence reaches φv only when the 75th
      percentile of the photo's motion-blur signature over the readout's jitter region is at least this (or nothing
      there holds texture). Camera shake leaves periodic zeros in the spectrum; defocus and sharp content do not.
    - ``low_light_min_log_contrast`` (> 0): while strictness > 0, low light's evidence reaches φv only when the median
      log contrast over the readout's low-light region is at least this (or the region is empty): underexposure is
      steep in the log domain, a well-exposed shadow is smooth.
    - ``readout_mask_weight`` w: masks become (1 − w) · the decoder's probability + w · the readout's coverage.
    - ``jitter_signature_weight`` w with ``jitter_signature_center`` / ``_scale``: jitter masks become (1 − w) · p +
      w · σ((signature − center) / scale) where the signature holds evidence.
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
    jitter_min_motion_signature: float = 0.0
    low_light_min_log_contrast: float = 0.0
    readout_mask_weight: float = 0.0
    jitter_signature_weight: float = 0.0
    jitter_signature_center: float = 0.0
    jitter_signature_scale: float = 1.0
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
        for name in ("readout_mask_weight", "jitter_signature_weight"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, got {value}")
        for name in ("jitter_min_motion_signature", "low_light_min_log_contrast", "mask_refine_radius"):
            value = getattr(self, name)
            _check(value >= 0.0, f"{name} must be ≥ 0, got {value}")
        _check(
            self.jitter_signature_scale > 0 and math.isfinite(self.jitter_signature_center),
            f"jitter_signature_scale must be > 0 and jitter_signature_center finite, got "
            f"{self.jitter_signature_scale} and {self.jitter_signature_center}",
        )
        _check(self.mask_refine_eps > 0, f"mask_refine_eps must be > 0, got {self.mask_refine_eps}")

    def check_model(self, config: QGroundConfig) -> None:
        """Raise ``ConfigError`` when this policy needs what the model lacks (a readout, or a refinement radius
        beyond its input size)."""
        needs_readout = [
            name
            for name in (
                "default_strictness",
                "overexposure_needs_clipping",
                "jitter_min_motion_signature",
                "low_light_min_log_contrast",
                "readout_mask_weight",
            )
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

    @property
    def evidence_maps(self) -> frozenset[str]:
        """The native-resolution evidence maps (``qground.detail``) the processor computes for this policy."""
        maps = set()
        if self.jitter_min_motion_signature or self.jitter_signature_weight:
            maps.add(MOTION_SIGNATURE)
        if self.low_light_min_log_contrast:
            maps.add(LOG_CONTRAST)
        return frozenset(maps)

    def replace(self, **changes) -> InferencePolicy:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        return save_dataclass(self, Path(folder) / POLICY_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> InferencePolicy:
        """The policy saved in ``folder``, or the as-trained default when it has none."""
        path = Path(folder) / POLICY_NAME
        return load_dataclass(cls, path, POLICY_NAME) if path.exists() else cls()


# -- the readout gates -------------------------------------------------------------------------------------------------
def clipped_white(pixel_values: torch.Tensor, config: QGroundConfig) -> torch.Tensor:
    """``pixel_values`` (M, C, S, S) normalized, padded model inputs → (M,) bool: the image holds a pixel whose every
    RGB channel is ≥ ``CLIPPED_WHITE`` once un-normalized (the padding is the mean color, never white)."""
    mean = torch.tensor(config.image_mean[:3]).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std[:3]).view(1, 3, 1, 1)
    rgb = pixel_values[:, :3].float().cpu() * std + mean
    return (rgb.amin(dim=1) >= CLIPPED_WHITE).flatten(1).any(dim=1)


def region_passes(
    evidence: torch.Tensor,
    coverage: torch.Tensor,
    minimum: float,
    level: Callable[[torch.Tensor, torch.Tensor], float | None],
) -> torch.Tensor:
    """``evidence`` (M, S, S) an evidence map, ``coverage`` (M, G, G) the readout's coverage of one class → (M,) bool:
    ``level(map, region)`` over the region where the coverage is above one half is ≥ ``minimum``, or it is None (no
    evidence there: no check possible). ``level`` takes the map and the region (bool), both at the coverage's size."""
    maps = F.interpolate(evidence[:, None].float(), size=coverage.shape[-2:], mode="nearest")[:, 0]
    keep = []
    for v, c in zip(maps.cpu(), coverage.float().cpu(), strict=True):
        value = level(v, c > 0.5)
        keep.append(value is None or value >= minimum)
    return torch.tensor(keep)


def signature_level(signature: torch.Tensor, region: torch.Tensor) -> float | None:
    """The 75th percentile of the motion-blur signature over the region's windows that hold evidence, or None."""
    values = signature[region & (signature > 0)]
    return float(torch.quantile(values, 0.75)) if values.numel() else None


def readout_thresholds(
    policy: InferencePolicy,
    config: QGroundConfig,
    strictness: float,
    pixel_values: torch.Tensor,
    evidence: Mapping[str, torch.Tensor],
    coverage: Callable[[], torch.Tensor],
) -> torch.Tensor | None:
    """The presence logit each image needs per class, (M, K), at ``strictness`` (None at 0: as trained).
    ``pixel_values`` (M, C, S, S) the normalized model inputs, ``evidence`` the images' maps by name, stacked
    (M, S, S), ``coverage()`` the readout's (M, K, G, G) coverage (computed only when a region gate asks). A gated
    class needs +inf."""
    if not strictness:
        return None
    confidence = torch.tensor(config.readout_confidence or (1.0,) * len(CLASS_NAMES))
    threshold = (strictness * confidence / confidence.mean()).repeat(len(pixel_values), 1)  # (M, K)
    if policy.overexposure_needs_clipping:
        threshold[~clipped_white(pixel_values, config), CLASS_NAMES.index("overexposure")] = float("inf")
    gates = (
        ("jitter", MOTION_SIGNATURE, policy.jitter_min_motion_signature, signature_level),
        ("low light", LOG_CONTRAST, policy.low_light_min_log_contrast, region_contrast),
    )
    for name, source, minimum, level in gates:
        if minimum:
            k = CLASS_NAMES.index(name)
            passed = region_passes(evidence[source], coverage()[:, k], minimum, level)
            threshold[~passed, k] = float("inf")
    return threshold
