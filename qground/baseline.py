"""The classical baseline: distortion masks from hand-written signal statistics — no learning, nothing fitted.

Every statistic is computed on the luminance Y = 0.299 R + 0.587 G + 0.114 B (float, 0..255) of the photo at its
native resolution (H, W) — the frame of `qground.imageio.load_image`, row y from the top, column x from the left —
and summarised on a grid of square cells of ``cell_size(H, W)`` ≈ 1/32 of the longest side: gh = ⌈H / cell⌉ rows by
gw = ⌈W / cell⌉ columns of cells (the last row/column is completed by repeating the border pixels).

Per cell (`CellStats`):
- ``clipped``    share of pixels with Y ≥ 250;
- ``mean``       mean Y;
- ``noise``      σ̂ = median |Y ∗ N| / (6 · 0.6745), N = [[1, −2, 1], [−2, 4, −2], [1, −2, 1]] (Immerkær 1996). N cancels
                 locally planar signals (shading, smooth gradients give 0); white noise of std σ gives Y ∗ N of std 6σ,
                 whose median absolute value is 0.6745 · 6σ. The median reads the flat-ish majority of the cell's pixels
                 and ignores the minority on edges and texture;
- ``contrast``   Δ = 98th − 2nd percentile of Y;
- ``sharpness``  q = 2 · (99th percentile of |∇Y|) / Δ, ∇ = Sobel / 8 (a smoothed central difference). It is an inverse
                 edge width: a one-pixel step edge gives 1, a linear ramp W px wide gives 2 / W, a step blurred by a
                 Gaussian of std s gives ≈ 0.8 / s;
- ``tensor``     the structure tensor (Jxx, Jyy, Jxy): cell means of gx², gy², gx·gy, divided by their trace so that
                 every cell weighs the same. Its *coherence* C = √((Jxx − Jyy)² + 4 Jxy²) / (Jxx + Jyy), with the
                 tensors of the judged cells (below) averaged over a 5×5-cell binomial window, is 1 when the gradients
                 of the neighbourhood share one orientation and 0 for isotropic texture.

Decisions — thresholds chosen by reasoning, never tuned on evaluation data:
- overexposure  smoothed ``clipped`` ≥ 0.5. Y ≥ 250 is within 2 % of white, where an 8-bit photo has lost highlight
                detail; asking for half of a (smoothed) cell keeps specular glints and small lamps out.
- low light     smoothed ``mean`` ≤ 40. sRGB 40 is ≈ 2 % linear luminance (L* ≈ 16): deep shadow, where detail is
                barely visible on a normal display.
- noise         smoothed ``noise`` ≥ 8 (≈ 3 % of full scale): grain is plainly visible on flat areas at this level, far
                above 8-bit quantisation (σ ≈ 0.3) and the residue of good JPEG compression (σ ≲ 2).
- blur / jitter a cell can be judged when it has structure to measure, Δ ≥ 40 (an edge or texture of at least 16 % of
                the range; a flat cell cannot tell sharp from blurred), and is not noisy (noise makes every cell look
                sharp) nor mostly clipped. A judged cell is *soft* when q < 0.5: its sharpest edges are ≥ 4 px wide
                (Gaussian s ≳ 1.6 px), where in-focus edges are 1–2 px wide. Soft cells with C ≥ 0.6 are *directional*
                (camera shake or motion smears a whole region along one direction, so only the gradients across it
                survive, with one orientation over neighbouring cells; natural structure changes orientation from cell
                to cell): jitter; other soft cells: blur. A cell is then labelled by normalised convolution over the
                5×5-cell binomial window: jitter (blur) where jitter (blur) cells make up at least half of the judged
                weight and judged cells at least a quarter of all weight — so flat cells next to soft edges inherit
                their verdict, while an isolated judged cell decides nothing.
Statistics are smoothed by a 3×3-cell binomial filter before thresholding (a lone outlier cell does not survive);
masks are the thresholded grid repeated up to (H, W). Classes covering less than ``MIN_AREA_FRACTION`` are omitted.

Known limits: smooth shading of ≥ 40 levels within one cell is indistinguishable from a blurred edge; dark objects
read as low light and bright white ones as overexposure; short motion blur (a few pixels) mostly reads as blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qground.imageio import ImageSource, load_image

__all__ = ["CellStats", "baseline_masks", "cell_labels", "cell_size", "cell_stats", "luminance"]

CELLS_PER_SIDE = 32
MIN_CELL = 4
CLIP_LEVEL = 250.0
CLIP_SHARE = 0.5
DARK_MEAN = 40.0
NOISE_SIGMA = 8.0
MIN_CONTRAST = 40.0
SOFT_SHARPNESS = 0.5
DIRECTIONAL_COHERENCE = 0.6
MIN_JUDGED_WEIGHT = 0.25
VERDICT_SHARE = 0.5
MIN_AREA_FRACTION = 0.001

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MAD_TO_SIGMA = 1.0 / (6.0 * 0.6745)


@dataclass(frozen=True)
class CellStats:
    """Per-cell statistics of one photo, float32 (gh, gw) grids and a (3, gh, gw) ``tensor`` (module docstring);
    ``cell`` is the cell side in pixels."""

    cell: int
    clipped: np.ndarray
    mean: np.ndarray
    noise: np.ndarray
    contrast: np.ndarray
    sharpness: np.ndarray
    tensor: np.ndarray


def luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB → float32 (H, W) luminance Y in 0..255 (Rec. 601 weights)."""
    return np.asarray(rgb, dtype=np.float32) @ _LUMA


def cell_size(height: int, width: int) -> int:
    """Side in pixels of the square cells: about 1/32 of the longest side, at least 4."""
    return max(MIN_CELL, round(max(height, width) / CELLS_PER_SIDE))


def _blocks(a: np.ndarray, cell: int) -> np.ndarray:
    """(H, W) → (gh, gw, cell²): the pixels of each cell, the last row/column of cells padded by edge repetition."""
    h, w = a.shape
    gh, gw = -(-h // cell), -(-w // cell)
    a = np.pad(a, ((0, gh * cell - h), (0, gw * cell - w)), mode="edge")
    return a.reshape(gh, cell, gw, cell).swapaxes(1, 2).reshape(gh, gw, cell * cell)


def _gradients(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel / 8 of (H, W) Y with replicated borders: (gx, gy), each (H, W), in levels per pixel."""
    p = np.pad(y, 1, mode="edge")
    dx = (p[:, 2:] - p[:, :-2]) * 0.5  # (H + 2, W)
    dy = (p[2:, :] - p[:-2, :]) * 0.5  # (H, W + 2)
    gx = (dx[:-2] + 2 * dx[1:-1] + dx[2:]) * 0.25
    gy = (dy[:, :-2] + 2 * dy[:, 1:-1] + dy[:, 2:]) * 0.25
    return gx, gy


def _second_difference(y: np.ndarray) -> np.ndarray:
    """|Y ∗ N| for Immerkær's kernel N = [1, −2, 1]ᵀ[1, −2, 1], (H, W), replicated borders."""
    p = np.pad(y, 1, mode="edge")
    rows = p[:, :-2] - 2 * p[:, 1:-1] + p[:, 2:]  # (H + 2, W)
    return np.abs(rows[:-2] - 2 * rows[1:-1] + rows[2:])


def _binomial(grid: np.ndarray, radius: int) -> np.ndarray:
    """Separable binomial smoothing of a (gh, gw) grid (radius 1: [1, 2, 1] / 4, radius 2: [1, 4, 6, 4, 1] / 16),
    replicated borders."""
    weights = np.array([1.0])
    for _ in range(2 * radius):
        weights = np.convolve(weights, [0.5, 0.5])
    out = grid.astype(np.float32)
    for axis in (0, 1):
        p = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(p, np.arange(k, k + n), axis=axis) for k, w in enumerate(weights))
    return out.astype(np.float32)


def _coherence(tensor: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """(gh, gw) coherence of the (3, gh, gw) trace-normalised tensors of the ``judged`` cells averaged over 5×5 cells
    (flat cells, whose gradient orientation is that of quantisation noise, take no part)."""
    jxx, jyy, jxy = (_binomial(t * judged, 2) for t in tensor)
    return np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)


def cell_stats(rgb: np.ndarray) -> CellStats:
    """uint8 (H, W, 3) RGB at native resolution → its `CellStats`."""
    y = luminance(rgb)
    cell = cell_size(*y.shape)
    gx, gy = _gradients(y)
    pixels = _blocks(y, cell)
    low, high = np.percentile(pixels, [2, 98], axis=-1)
    contrast = high - low
    peak = np.percentile(_blocks(np.hypot(gx, gy), cell), 99, axis=-1)
    tensor = np.stack([_blocks(t, cell).mean(-1) for t in (gx * gx, gy * gy, gx * gy)])
    tensor /= tensor[0] + tensor[1] + 1e-6
    return CellStats(
        cell=cell,
        clipped=(pixels >= CLIP_LEVEL).mean(-1, dtype=np.float32),
        mean=pixels.mean(-1, dtype=np.float32),
        noise=(np.median(_blocks(_second_difference(y), cell), axis=-1) * _MAD_TO_SIGMA).astype(np.float32),
        contrast=contrast.astype(np.float32),
        sharpness=(2 * peak / np.maximum(contrast, 1.0)).astype(np.float32),
        tensor=tensor.astype(np.float32),
    )


def cell_labels(stats: CellStats) -> dict[str, np.ndarray]:
    """Class name → bool (gh, gw) grid of the cells that show it (the decisions of the module docstring)."""
    overexposed = _binomial(stats.clipped, 1) >= CLIP_SHARE
    noisy = _binomial(stats.noise, 1) >= NOISE_SIGMA
    judged = (stats.contrast >= MIN_CONTRAST) & ~noisy & (stats.clipped < CLIP_SHARE)
    soft = judged & (stats.sharpness < SOFT_SHARPNESS)
    directional = _coherence(stats.tensor, judged) >= DIRECTIONAL_COHERENCE
    judged_weight = _binomial(judged, 2)
    enough = judged_weight >= MIN_JUDGED_WEIGHT
    share = np.maximum(judged_weight, 1e-6)
    return {
        "blur": enough & (_binomial(soft & ~directional, 2) / share >= VERDICT_SHARE),
        "jitter": enough & (_binomial(soft & directional, 2) / share >= VERDICT_SHARE),
        "overexposure": overexposed,
        "low light": _binomial(stats.mean, 1) <= DARK_MEAN,
        "noise": noisy,
    }


def baseline_masks(image: ImageSource | np.ndarray) -> dict[str, np.ndarray]:
    """Class name → bool (H, W) mask of ``image`` (a path, bytes, PIL image or uint8 (H, W, 3) array) in its
    original frame; classes covering less than ``MIN_AREA_FRACTION`` of the image are omitted."""
    rgb = image if isinstance(image, np.ndarray) else np.asarray(load_image(image))
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    stats = cell_stats(rgb)
    masks = {}
    for name, grid in cell_labels(stats).items():
        mask = np.repeat(np.repeat(grid, stats.cell, axis=0), stats.cell, axis=1)[:h, :w]
        if mask.mean() >= MIN_AREA_FRACTION:
            masks[name] = mask
    return masks
