"""Native-resolution detail channels: evidence of noise and blur that resizing a photo down to the model input erases.

Computed on the photo's luminance Y at its own resolution, then area-averaged onto the model's content grid (h, w):
0. noise energy   — log mean of (Y − 3×3 binomial blur of Y)² (fine residual);
1. detail energy  — log mean of the squared Sobel gradient of Y (sharp textures high, blur/defocus low);
2. coherence      — structure-tensor anisotropy ((Jxx − Jyy)² + 4 Jxy²)^½ / (Jxx + Jyy) in [0, 1] (motion blur
                    leaves gradients along one direction).
Log channels are affinely scaled to roughly [-1, 1]; the result is float32 (3, h, w), row y / column x of the content
frame. Filters are shifted-slice sums (elementwise work only; a 3×3 single-channel conv2d is 10× slower on CPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_DETAIL_CHANNELS = 3
_LUMA = (0.299, 0.587, 0.114)
_LOG_SHIFT, _LOG_SCALE = 7.0, 4.0


def _smooth(p: torch.Tensor, dim: int) -> torch.Tensor:
    """[1, 2, 1] / 4 along ``dim`` of a tensor padded by one on that dim (output shrinks by 2 there)."""
    n = p.shape[dim]
    a, b, c = (p.narrow(dim, i, n - 2) for i in range(3))
    return (a + 2 * b + c) * 0.25


def _diff(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Central difference (x[i+1] − x[i−1]) / 2 along ``dim`` (output shrinks by 2 there)."""
    n = p.shape[dim]
    return (p.narrow(dim, 2, n - 2) - p.narrow(dim, 0, n - 2)) * 0.5


def detail_channels(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``rgb`` uint8 (H, W, 3) at native resolution → (3, h, w) float32 detail channels for content size ``size``."""
    with torch.no_grad():
        y = torch.from_numpy(np.asarray(rgb, dtype=np.float32)) @ (torch.tensor(_LUMA) / 255.0)  # (H, W)
        p = F.pad(y[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]  # (H + 2, W + 2)
        blur = _smooth(_smooth(p, 0), 1)
        gx = _smooth(_diff(p, 1), 0)  # Sobel / 8
        gy = _smooth(_diff(p, 0), 1)

        def pool(t: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(t[None, None], size)[0, 0]

        noise = pool((y - blur).square_())
        jxx, jyy, jxy = pool(gx * gx), pool(gy * gy), pool(gx.mul_(gy))
        energy = jxx + jyy
        coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-8)
        logs = (torch.log(torch.stack([noise, energy]) + 1e-8) + _LOG_SHIFT) / _LOG_SCALE
        return torch.cat([logs, coherence[None]]).float()
