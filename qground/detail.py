"""Native-resolution detail channels: evidence of noise and blur that resizing a photo down to the model input erases.

Computed on the photo at its own resolution (luminance Y in [0, 1]), then area-averaged onto the model's content grid
(h, w). Scale 2 is Y box-downsampled by 2 (what a 2× smaller photo would show), so the log-energy differences between
scales describe the local spectrum independently of the content's contrast:
0. noise energy    — log mean of (Y − 3×3 binomial blur of Y)² (the finest residual);
1. detail energy 1 — log mean squared Sobel gradient of Y (sharp textures high, blur/defocus low);
2. detail energy 2 — the same at scale 2 (blur lowers scale 1 far more than scale 2; noise raises scale 1 only);
3. coherence 1     — structure-tensor anisotropy ((Jxx − Jyy)² + 4 Jxy²)^½ / (Jxx + Jyy) in [0, 1] at scale 1
                     (motion blur leaves gradients along one direction);
4. coherence 2     — the same at scale 2 (long camera shake);
5. directional    — max − min over the directions 0°, 45°, 90°, 135° of log(scale-1 / scale-2 directional gradient
                     energy): camera shake removes fine detail along one direction only, defocus along all;
6. clipped         — fraction of pixels whose brightest channel is ≥ 0.97 (blown highlights);
7. dark            — fraction of pixels with Y ≤ 0.06 (crushed shadows).
Log channels are affinely scaled to roughly [-1.5, 1.5]; the result is float32 (8, h, w), row y / column x of the
content frame. Filters are shifted-slice sums (elementwise work only; a 3×3 single-channel conv2d is 10× slower).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)
_LOG_SHIFT, _LOG_SCALE, _LOG_EPS = 7.0, 4.0, 1e-6


def _smooth(p: torch.Tensor, dim: int) -> torch.Tensor:
    """[1, 2, 1] / 4 along ``dim`` of a tensor padded by one on that dim (output shrinks by 2 there)."""
    n = p.shape[dim]
    out = p.narrow(dim, 1, n - 2) * 2  # in place from here: one full-size buffer instead of four
    out += p.narrow(dim, 0, n - 2)
    out += p.narrow(dim, 2, n - 2)
    return out.mul_(0.25)


def _diff(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Central difference (x[i+1] − x[i−1]) / 2 along ``dim`` (output shrinks by 2 there)."""
    n = p.shape[dim]
    return torch.sub(p.narrow(dim, 2, n - 2), p.narrow(dim, 0, n - 2)).mul_(0.5)


def _pad(y: torch.Tensor) -> torch.Tensor:
    """(H, W) → (H + 2, W + 2), borders replicated."""
    return F.pad(y[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]


def _structure(y: torch.Tensor, pool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H, W) luminance → pooled gradient energy, coherence (each (h, w)) and the directional gradient energies
    (4, h, w) at 0°, 45°, 90°, 135°."""
    p = _pad(y)
    gx = _smooth(_diff(p, 1), 0)  # Sobel / 8
    gy = _smooth(_diff(p, 0), 1)
    jxx, jyy, jxy = pool(gx * gx), pool(gy * gy), pool(gx.mul_(gy))
    energy = jxx + jyy
    coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (energy + 1e-8)
    directional = torch.stack([jxx, energy / 2 + jxy, jyy, energy / 2 - jxy])
    return energy, coherence, directional


def detail_channels(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``rgb`` uint8 (H, W, 3) at native resolution → (8, h, w) float32 detail channels for content size ``size``."""
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)) / 255.0  # (H, W, 3)
        y = x @ torch.tensor(_LUMA)  # (H, W)

        def pool(t: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(t[None, None], size)[0, 0]

        p = _pad(y)
        noise = pool((y - _smooth(_smooth(p, 0), 1)).square_())  # finest residual, scale 1 only
        energy1, coherence1, dir1 = _structure(y, pool)
        if min(y.shape) >= 4:
            energy2, coherence2, dir2 = _structure(F.avg_pool2d(y[None, None], 2)[0, 0], pool)
        else:  # too small to downsample: scale 2 repeats scale 1
            energy2, coherence2, dir2 = energy1, coherence1, dir1
        ratio = torch.log((dir1 + _LOG_EPS) / (dir2 + _LOG_EPS))  # (4, h, w)
        directional = (ratio.amax(0) - ratio.amin(0)) / _LOG_SCALE
        clipped = pool((x.amax(-1) >= 0.97).float())
        dark = pool((y <= 0.06).float())
        logs = (torch.log(torch.stack([noise, energy1, energy2]) + _LOG_EPS) + _LOG_SHIFT) / _LOG_SCALE
        return torch.cat([logs, torch.stack([coherence1, coherence2, directional, clipped, dark])]).float()
