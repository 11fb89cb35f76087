"""Edge-aware refinement of mask probabilities on the photo itself (``QGroundConfig.mask_refine_radius``).

The pixel decoder paints masks on the model input (S × S, S = 128 for qground-nano), so upsampled to a 640-px photo
each input pixel spreads over five: mask edges come out as soft ramps. The distortions themselves were applied to the
photo at its own resolution, where each leaves a sharp trace. A guided filter (He, Sun & Tang, "Guided Image
Filtering", TPAMI 2013) fits the mask probability p in every (2r + 1)² window as an affine function a · I + b of a
guide image I, then averages the fits, so where the guide changes (a region's boundary) the probability follows it,
and where it does not, p is smoothed. One guide per class, from the luminance Y in [0, 1]:

- overexposure: Y (clipped highlights are the brightest pixels);
- low light: log(Y + 0.01) (gamma and gain act multiplicatively);
- noise: log of the local energy of the finest residual (Y − its 5 × 5 binomial blur), 5 × 5 mean;
- blur and jitter: log of the local gradient energy, 5 × 5 mean.

Each guide is standardized over the image (zero mean, unit standard deviation), so ``eps`` means the same for all.
Tensors are (H, W), row y / column x of the photo's frame; work is box filters by cumulative sums (O(1) per pixel
whatever r).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qground.detail import luminance
from qground.taxonomy import CLASS_NAMES

_DARK_OFFSET, _LOG_EPS, _ENERGY_RADIUS = 0.01, 1e-5, 2
# the guide each class is refined with (``guide``)
GUIDE_OF_CLASS = {
    "blur": "gradient energy",
    "jitter": "gradient energy",
    "overexposure": "luminance",
    "low light": "log luminance",
    "noise": "residual energy",
}
assert set(GUIDE_OF_CLASS) == set(CLASS_NAMES)


def _box1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Mean over [i − r, i + r] ∩ [0, n) along ``dim`` (windows shrink at the borders)."""
    n = x.shape[dim]
    c = torch.cumsum(x, dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim)
    idx = torch.arange(n)
    hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
    shape = [1] * x.dim()
    shape[dim] = n
    return (c.index_select(dim, hi) - c.index_select(dim, lo)) / (hi - lo).view(shape).to(x.dtype)


def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """(…, H, W) float → the mean over each (2r + 1)² window clipped to the image. Rows, then columns: each running
    sum adds at most max(H, W) terms, so float32 keeps ~1e-6 accuracy on a 640-px photo (float64: 2.7× slower)."""
    return _box1d(_box1d(x, r, -1), r, -2)


def guide(y: torch.Tensor, kind: str) -> torch.Tensor:
    """(H, W) luminance → the (H, W) guide ``kind`` (a value of ``GUIDE_OF_CLASS``), standardized over the image."""
    if kind == "luminance":
        out = y
    elif kind == "log luminance":
        out = torch.log(y + _DARK_OFFSET)
    elif kind == "residual energy":
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
        padded = F.pad(y[None, None], (2, 2, 2, 2), mode="replicate")
        blurred = F.conv2d(F.conv2d(padded, k.view(1, 1, 1, 5)), k.view(1, 1, 5, 1))[0, 0]
        out = torch.log(box_filter((y - blurred).square(), _ENERGY_RADIUS) + _LOG_EPS)
    elif kind == "gradient energy":
        gx = F.pad(y[:, 1:] - y[:, :-1], (0, 1)).square()
        gy = F.pad(y[1:] - y[:-1], (0, 0, 0, 1)).square()
        out = torch.log(box_filter(gx + gy, _ENERGY_RADIUS) + _LOG_EPS)
    else:
        raise ValueError(f"unknown guide {kind!r}; known: {sorted(set(GUIDE_OF_CLASS.values()))}")
    return (out - out.mean()) / (out.std() + 1e-6)


def guided_filter(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """(H, W) guide and input → (H, W) output: per window p ≈ a · guide + b by least squares with ridge ``eps``,
    a and b averaged over the windows covering each pixel."""
    mean_i, mean_p = box_filter(guide, r), box_filter(p, r)
    a = (box_filter(guide * p, r) - mean_i * mean_p) / (box_filter(guide * guide, r) - mean_i.square() + eps)
    b = mean_p - a * mean_i
    return box_filter(a, r) * guide + box_filter(b, r)


def refine_logits(
    logits: torch.Tensor, rgb: np.ndarray, classes: list[str | None], radius: int, eps: float
) -> torch.Tensor:
    """(N, H, W) mask logits on the photo ``rgb`` (uint8 (H, W, 3)), one per entry of ``classes`` → (N, H, W) logits
    of the guided-filtered probabilities. A mask of no known class, or with no positive logit, is returned as it is:
    the filter moves edges, it does not add finds."""
    if logits.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"masks are {tuple(logits.shape[1:])}, the photo {rgb.shape[:2]}")
    if len(classes) != len(logits):
        raise ValueError(f"{len(logits)} masks but {len(classes)} class names")
    todo = [i for i, name in enumerate(classes) if name is not None and bool((logits[i] > 0).any())]
    if not todo:
        return logits
    y, guides = luminance(rgb), {}
    out = logits.clone()
    for i in todo:
        kind = GUIDE_OF_CLASS[classes[i]]
        if kind not in guides:
            guides[kind] = guide(y, kind)
        p = guided_filter(guides[kind], torch.sigmoid(logits[i].float()), radius, eps)
        out[i] = torch.logit(p.clamp_(0.0, 1.0), eps=1e-6)
    return out
