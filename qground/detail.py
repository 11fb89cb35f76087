"""Native-resolution detail channels: evidence of noise and blur that resizing a photo down to the model input erases.

Computed on the photo at its own resolution (luminance Y in [0, 1]), then area-averaged onto the model's content grid
(h, w). The noise channel may be read on a larger copy of the same photo (``noise_rgb``): shrinking a photo averages
its pixel noise away (a 3× smaller photo keeps a third of the noise's amplitude), while clean content stays smooth
at the pixel scale. Scale 2 is Y box-downsampled by 2 (what a 2× smaller photo would show), so the log-energy
differences between scales describe the local spectrum independently of the content's contrast:
0. noise energy    — log mean of (Y − 3×3 binomial blur of Y)² (the finest residual);
1. detail energy 1 — log mean squared Sobel gradient of Y (sharp textures high, blur/defocus low);
2. detail energy 2 — the same at scale 2 (blur lowers scale 1 far more than scale 2; noise raises scale 1 only);
3. coherence 1     — structure-tensor anisotropy ((Jxx − Jyy)² + 4 Jxy²)^½ / (Jxx + Jyy) in [0, 1] at scale 1
                     (motion blur leaves gradients along one direction);
4. coherence 2     — the same at scale 2 (long camera shake);
5. directional    — max − min over the directions 0°, 45°, 90°, 135° of log(scale-1 / scale-2 directional gradient
                     energy): camera shake removes fine detail along one direction only, defocus along all;
6. clipped         — fraction of pixels whose brightest channel is ≥ 0.97 (blown highlights);
7. dark            — fraction of pixels with Y ≤ 0.06 (crushed shadows);
8. chroma noise    — (``chroma=True``) log mean of the finest residuals of Cb and Cr, squared and summed, read on the
                     noise channel's photo with Cb and Cr first box-averaged 2 × 2 (the grid a JPEG keeps chroma on,
                     4:2:0, so chroma a JPEG upsampled is not read as missing detail): natural texture is mostly
                     achromatic, while sensor, Gaussian, ISO, speckle and impulse noise hit the color channels
                     independently, so where texture masks luma noise the chroma residual still shows it.
Log channels are affinely scaled to roughly [-1.5, 1.5]; the result is float32 (8, h, w) ((9, h, w) with chroma), row
y / column x of the content frame. Filters are shifted-slice sums (elementwise work only; a 3×3 single-channel conv2d
is 10× slower).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)
_CB, _CR = (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312)  # BT.601 chroma, as JPEG's YCbCr
_LOG_SHIFT, _LOG_SCALE, _LOG_EPS = 7.0, 4.0, 1e-6
_CLIPPED = 248  # the smallest 8-bit value ≥ 0.97 × 255: a channel this bright is clipped
# Rows per stripe (here and in qground.masks): every per-pixel map is computed and pooled one stripe of rows at a time,
# so a stripe's buffers stay in the CPU's cache (at 4,000 px wide a float map of 64 rows is 1 MB) instead of streaming
# 48 MB maps at 12 MP.
STRIPE = 64


def _weighted(x: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """Integer (…, 3) RGB in 0–255 → (…) float32 Σ weights[c] · x[..., c] / 255."""
    out = x[..., 0] * (weights[0] / 255)
    return out.add_(x[..., 1], alpha=weights[1] / 255).add_(x[..., 2], alpha=weights[2] / 255)


def luminance(rgb: np.ndarray) -> torch.Tensor:
    """``rgb`` uint8 (H, W, 3) → (H, W) float32 luminance Y in [0, 1], read ``STRIPE`` rows at a time (3× faster
    than at once at 12 MP)."""
    rgb = np.asarray(rgb)
    parts = [_weighted(torch.from_numpy(rgb[a : a + STRIPE].copy()), _LUMA) for a in range(0, len(rgb), STRIPE)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # copies: rgb may be read-only


def _halved(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) → (⌈H/2⌉, ⌈W/2⌉, 3) int16 means of 2 × 2 boxes rounded half up, exactly PIL's
    ``Image.reduce(2)`` (an odd last row or column is averaged with itself)."""
    x = torch.from_numpy(rgb.astype(np.int16))
    if len(x) % 2:
        x = torch.cat([x, x[-1:]])
    if x.shape[1] % 2:
        x = torch.cat([x, x[:, -1:]], 1)
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2] + 2) // 4


def _sum3(p: torch.Tensor, dim: int) -> torch.Tensor:
    """[1, 2, 1] along ``dim`` of a tensor padded by one on that dim (output shrinks by 2 there): 4 × the binomial
    blur. Filters here leave out their power-of-two normalizations, which are applied exactly to the pooled maps
    (``_GRADIENT_SCALE``, ``_RESIDUAL_SCALE``): two passes over the data instead of four."""
    n = p.shape[dim]
    return torch.add(p.narrow(dim, 0, n - 2), p.narrow(dim, 2, n - 2)).add_(p.narrow(dim, 1, n - 2), alpha=2)


def _diff(p: torch.Tensor, dim: int) -> torch.Tensor:
    """x[i+1] − x[i−1] along ``dim`` (2 × the central difference; output shrinks by 2 there)."""
    n = p.shape[dim]
    return torch.sub(p.narrow(dim, 2, n - 2), p.narrow(dim, 0, n - 2))


_GRADIENT_SCALE = 64.0  # _gradients' terms are those of Sobel / 8 times 8²
_RESIDUAL_SCALE = 256.0  # _residual is the squared residual times 16²


def _halo(rows, a: int, b: int, n: int) -> torch.Tensor:
    """Rows a − 1 … b of an ``n``-row map, read by ``rows(a', b')`` → (…, b' − a', W), padded one column on each side:
    (…, b − a + 2, W + 2), borders replicated (the map's first and last rows where the halo leaves it)."""
    top, bottom = max(0, a - 1), min(n, b + 1)
    x = rows(top, bottom)
    p = F.pad(x.reshape(1, -1, *x.shape[-2:]), (1, 1, int(top == a), int(bottom == b)), mode="replicate")
    return p.view(*x.shape[:-2], *p.shape[-2:])


def _residual(p: torch.Tensor) -> torch.Tensor:
    """Padded (…, r + 2, W + 2) → (…, r, W) squared finest residual, the centre minus its 3×3 binomial blur, times
    ``_RESIDUAL_SCALE``."""
    return torch.sub(_sum3(_sum3(p, -2), -1), p[..., 1:-1, 1:-1], alpha=16).square_()


def _gradients(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded (r + 2, W + 2) → the structure tensor's per-pixel terms gx², gy², gx·gy of the Sobel gradient / 8, each
    (r, W) times ``_GRADIENT_SCALE``."""
    gx = _sum3(_diff(p, -1), -2)
    gy = _sum3(_diff(p, -2), -1)
    return gx * gx, gy * gy, gx.mul_(gy)


def _pooled(maps, rows: int, size: tuple[int, int], stripe: int) -> torch.Tensor:
    """``maps(a, b)`` → k per-pixel maps (b − a, W) of rows a … b − 1 of a ``rows``-row source; → (k, h, w) their
    means over the bins of ``F.adaptive_avg_pool2d`` onto ``size``, read ``stripe`` rows at a time (each stripe's
    columns pooled at once, the rows at the end: the same bins and values as pooling whole maps)."""
    w = size[1]
    parts = [
        torch.stack([F.adaptive_avg_pool1d(m[:, None], w)[:, 0] for m in maps(a, min(rows, a + stripe))])
        for a in range(0, rows, stripe)
    ]
    return F.adaptive_avg_pool2d(torch.cat(parts, 1)[None], size)[0]


def _structure(energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled (3, h, w) ``_gradients`` → gradient energy, coherence (each (h, w)) and the directional gradient
    energies (4, h, w) at 0°, 45°, 90°, 135°."""
    jxx, jyy, jxy = energies / _GRADIENT_SCALE
    energy = jxx + jyy
    coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (energy + 1e-8)
    directional = torch.stack([jxx, energy / 2 + jxy, jyy, energy / 2 - jxy])
    return energy, coherence, directional


def _noise_energy(y: torch.Tensor, size: tuple[int, int], stripe: int = STRIPE) -> torch.Tensor:
    """(H, W) → (h, w) mean squared finest residual Y − 3×3 binomial blur of Y per content pixel."""
    rows = len(y)
    maps = _pooled(lambda a, b: [_residual(_halo(lambda i, j: y[i:j], a, b, rows))], rows, size, stripe)
    return maps[0] / _RESIDUAL_SCALE


def _chroma_energy(rgb: np.ndarray, size: tuple[int, int], stripe: int = STRIPE) -> torch.Tensor:
    """``rgb`` uint8 (H, W, 3) → (h, w) mean of the squared finest residuals of Cb and Cr on the photo box-averaged
    2 × 2 in uint8 as PIL's ``reduce`` does (the grid a JPEG keeps chroma on; at full size when a side is shorter than
    4 px), summed. Cb and Cr are linear in RGB, so averaging RGB first averages them."""
    rgb = np.asarray(rgb)
    halve = min(rgb.shape[:2]) >= 4

    def planes(a: int, b: int) -> torch.Tensor:  # (2, b − a, W'): Cb, Cr of rows a … b − 1 of the halved photo
        x = _halved(rgb[2 * a : 2 * b]) if halve else torch.from_numpy(rgb[a:b].astype(np.int16))
        return torch.stack([_weighted(x, _CB), _weighted(x, _CR)])

    rows = (len(rgb) + 1) // 2 if halve else len(rgb)
    maps = _pooled(lambda a, b: [_residual(_halo(planes, a, b, rows)).sum(0)], rows, size, stripe)
    return maps[0] / _RESIDUAL_SCALE


def detail_channels(
    rgb: np.ndarray,
    size: tuple[int, int],
    noise_rgb: np.ndarray | None = None,
    chroma: bool = False,
    stripe: int = STRIPE,
) -> torch.Tensor:
    """``rgb`` uint8 (H, W, 3) at native resolution → (8, h, w) float32 detail channels for content size ``size``
    ((9, h, w) with ``chroma``: the chroma noise channel last). ``noise_rgb``: the same photo larger (uint8
    (H', W', 3), same aspect), the source of the noise channels; None: ``rgb``. ``stripe``: rows read at a time
    (speed only: every value is the same up to float rounding)."""
    rgb = np.asarray(rgb)
    rows = len(rgb)
    halved = min(rgb.shape[:2]) >= 4  # scale 2 exists; else it repeats scale 1

    halves = torch.empty(rows // 2, rgb.shape[1] // 2)  # scale 2: Y box-downsampled by 2, filled by scale1

    def y(a: int, b: int) -> torch.Tensor:  # luminance of rows a … b − 1
        return luminance(rgb[a:b])

    def scale1(a: int, b: int) -> list[torch.Tensor]:  # 5 or 6 maps (b − a, W); a is even (stripe is)
        p = _halo(y, a, b, rows)
        core = p[1:-1, 1:-1]
        if halved and a < len(halves) * 2:
            halves[a // 2 : b // 2] = F.avg_pool2d(core[None, None], 2)[0, 0]
        part = rgb[a:b]
        brightest = np.maximum(np.maximum(part[..., 0], part[..., 1]), part[..., 2])  # 30× numpy's max(-1)
        maps = [*_gradients(p), torch.from_numpy(brightest >= _CLIPPED).float(), (core <= 0.06).float()]
        return maps + ([_residual(p)] if noise_rgb is None else [])

    with torch.no_grad():
        pooled1 = _pooled(scale1, rows, size, stripe + stripe % 2)
        noise = pooled1[5] / _RESIDUAL_SCALE if noise_rgb is None else _noise_energy(luminance(noise_rgb), size, stripe)
        energy1, coherence1, dir1 = _structure(pooled1[:3])
        if halved:
            rows2 = rows // 2
            energy2, coherence2, dir2 = _structure(
                _pooled(lambda a, b: _gradients(_halo(lambda i, j: halves[i:j], a, b, rows2)), rows2, size, stripe)
            )
        else:
            energy2, coherence2, dir2 = energy1, coherence1, dir1
        ratio = torch.log((dir1 + _LOG_EPS) / (dir2 + _LOG_EPS))  # (4, h, w)
        directional = (ratio.amax(0) - ratio.amin(0)) / _LOG_SCALE
        energies = [noise, energy1, energy2]
        if chroma:
            energies.append(_chroma_energy(rgb if noise_rgb is None else noise_rgb, size, stripe))
        logs = (torch.log(torch.stack(energies) + _LOG_EPS) + _LOG_SHIFT) / _LOG_SCALE
        shape = torch.stack([coherence1, coherence2, directional, pooled1[3], pooled1[4]])
        return torch.cat([logs[:3], shape, logs[3:]]).float()
