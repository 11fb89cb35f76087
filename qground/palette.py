"""Class-colored masks: the palette mapping a mask's pixel colors to distortion classes, and the decoding of lossy
(JPEG) color masks into one bool mask per class.

QGround-100K's released masks are one JPEG per annotator in which the pixel color says the class; the color → class
mapping is not published. A ``Palette`` is that mapping as data, saved as JSON (``Palette.load`` / ``save``):
``{"colors": {"blur": [r, g, b], …}, "background": [0, 0, 0], "tolerance": 60, "min_region": 64, "opening": 1,
"max_unmatched": 0.02, "fringe_contrast": 40}``. ``DEFAULT_PALETTE`` (``assets/palettes/qground100k.json``) is our
documented guess: black background and the five classes in pure primary/secondary colors. Confirm or fix it with
``python -m training.data.palette MASK_DIR``, which lists the colors a sample of masks actually holds.

Frame: an (H, W, 3) uint8 RGB mask, rows y from the top, columns x from the left, in the pixel grid of the mask file.
``read_label_map`` reads a file and resizes its labels nearest-neighbour to the frame of the image it annotates (a
file of another aspect ratio is refused); ``vote`` fuses several annotators' label maps of one image. Training
(``training.data.palette``, with a cache) and evaluation (``qground.evaluate``) both read masks this way.

Decoding (``decode_label_map``; ``class_masks`` splits a label map per class, ``decode_color_mask`` does both):

1. every pixel takes its nearest palette entry (background included), looked up in a 64³ table of 6-bit colors.
   "Nearest" weighs luma fully and chroma by ``CHROMA_WEIGHT`` (YCbCr): JPEG keeps luma at full resolution but
   averages chroma over 2×2 pixels (4:2:0), so luma places a boundary between two colors to the pixel where chroma
   would smear it by one. A pixel farther than ``tolerance`` (plain RGB distance, 0–441) from every entry is
   *unmatched*;
2. a pixel is *fringe* when the colors of its 3×3 neighbourhood span more than ``fringe_contrast`` in some channel:
   JPEG blends and rings there, so an unmatched fringe pixel keeps its nearest entry (which puts the boundary
   half-way between the two colors) and only unmatched *smooth* pixels are evidence against the palette;
3. when the unmatched smooth pixels number at least ``min_region`` and more than ``max_unmatched`` of the pixels that
   are not background (colored or unmatched) the palette does not fit the file: ``PaletteError`` names the unmatched
   colors (clustered, mean RGB) and their shares of the mask;
4. per entry (background too), an opening by reconstruction with a (2·``opening`` + 1)² square drops the
   8-connected regions the square fits nowhere in (the thin bands JPEG leaves where two colors meet, often nearest to
   a third entry) and keeps the others whole (tips and thin arms of real shapes); regions smaller than
   ``min_region`` pixels are dropped too (fringes are not regions). The pixels so removed, and the unmatched smooth
   ones, take the label of the nearest kept pixel within ``_fill_limit`` pixels (a fringe band between two regions is
   split between them), else background. Real regions thinner than the square or smaller than ``min_region`` are
   lost the same way.

Memory: steps 1–3 and the fill go over row chunks of about ``CHUNK_PIXELS`` pixels (no (H·W, K, 3) distance arrays);
cleaning holds a few (H, W) bool or uint8 planes and one int32 component plane of the largest entry's bounding box:
about 14 bytes per pixel on top of the input (measured: 161 MB peak for a 12 MP 4000×3000 mask, decoded in about 1 s;
0.07 s for 1024×768).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from qground.taxonomy import CLASS_NAMES

__all__ = [
    "ASPECT_TOLERANCE",
    "CHUNK_PIXELS",
    "DEFAULT_PALETTE",
    "MAX_UNMATCHED",
    "MaskAspectError",
    "MaskFileError",
    "Palette",
    "PaletteError",
    "class_masks",
    "cluster_colors",
    "color_histogram",
    "decode_color_mask",
    "decode_label_map",
    "drop_small_regions",
    "fringe",
    "read_color_mask",
    "read_label_map",
    "same_aspect",
    "unmatched_summary",
    "vote",
]

DEFAULT_PALETTE = Path(__file__).resolve().parent.parent / "assets" / "palettes" / "qground100k.json"
ASPECT_TOLERANCE = 0.01  # relative difference of width/height ratios under which a mask is resized to its image
MAX_UNMATCHED = 0.02  # share of a mask's non-background pixels that may match no palette entry
CHUNK_PIXELS = 1 << 18  # pixels per row chunk in the per-pixel steps
SUMMARY_RADIUS = 32.0  # unmatched colors closer than this (RGB distance) are reported as one
MIN_LISTED_SHARE = 0.001  # unmatched colors under this share of the mask are only counted ("and 3 rarer colors")

CHROMA_WEIGHT = 0.25  # weight of chroma against luma in the nearest-entry distance (JPEG halves chroma resolution)
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_UNMATCHED = 0x80  # flag bit of the lookup table: the entry in the low bits is farther than the tolerance
_UNASSIGNED = 0xFF  # label of a pixel removed by cleaning, before the fill
_HIST_BITS = 5  # color histograms count colors quantized to 5 bits per channel (32³ bins)


class MaskFileError(ValueError):
    """A mask file that cannot be read as an image, or does not fit its image's aspect ratio."""


class MaskAspectError(MaskFileError):
    """A mask file whose aspect ratio is not its image's (a different or rotated image): it cannot be resized to it."""


class PaletteError(ValueError):
    """A mask whose colors the palette does not explain, or a palette that cannot be used."""


@dataclass(frozen=True)
class Palette:
    """Class name → RGB color of its pixels; ``background`` the color of "no distortion"; ``tolerance`` the largest
    RGB distance (0–441) from a smooth pixel to its entry; ``min_region`` (pixels), ``opening`` (radius in pixels)
    and ``fringe_contrast`` (0–255) clean JPEG fringes; ``max_unmatched`` the share of non-background pixels that may
    match no entry (module docstring). The class order of ``colors`` is the order of ``decode_label_map``'s labels."""

    colors: dict[str, tuple[int, int, int]]
    background: tuple[int, int, int] = (0, 0, 0)
    tolerance: float = 60.0
    min_region: int = 64
    opening: int = 1
    max_unmatched: float = MAX_UNMATCHED
    fringe_contrast: float = 40.0
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        name = self.source or "palette"
        unknown = [c for c in self.colors if c not in CLASS_NAMES]
        if unknown or not self.colors:
            raise PaletteError(
                f"{name}: class names must be among {list(CLASS_NAMES)}, got {unknown or 'none'}"
                " (a palette written by `python -m training.data.palette --out` has placeholders to rename)"
            )
        try:
            colors = {c: _rgb_triple(v) for c, v in self.colors.items()}
            background = _rgb_triple(self.background)
        except (TypeError, ValueError):
            raise PaletteError(f"{name}: colors must be [r, g, b] with integer values 0–255") from None
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "background", background)
        entries = [background, *colors.values()]
        if len(set(entries)) != len(entries):
            raise PaletteError(f"{name}: two entries share a color")
        if not (self.tolerance > 0 and self.min_region >= 0 and self.opening >= 0 and self.fringe_contrast >= 0):
            raise PaletteError(f"{name}: tolerance must be > 0; min_region, opening, fringe_contrast ≥ 0")
        if not 0.0 <= self.max_unmatched <= 1.0:
            raise PaletteError(f"{name}: max_unmatched must be in [0, 1], got {self.max_unmatched}")

    @property
    def names(self) -> list[str]:
        """Class names in label order: label k (1-based) of ``decode_label_map`` is ``names[k - 1]``."""
        return list(self.colors)

    @property
    def entries(self) -> np.ndarray:
        """(K + 1, 3) float32: background, then the class colors in label order."""
        return np.array([self.background, *self.colors.values()], dtype=np.float32)

    @property
    def key(self) -> str:
        """A string that identifies the decoding (same key, same labels): for caches."""
        return json.dumps(self._data())  # class order matters: it is the label order

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PALETTE) -> Palette:
        """Read a palette JSON (module docstring); missing tuning fields take the defaults."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("colors"), dict):
                raise PaletteError(f"{path}: not a palette (expected an object with a 'colors' object)")
            return cls(
                colors=dict(data["colors"]),
                background=data.get("background", (0, 0, 0)),
                tolerance=float(data.get("tolerance", 60.0)),
                min_region=int(data.get("min_region", 64)),
                opening=int(data.get("opening", 1)),
                max_unmatched=float(data.get("max_unmatched", MAX_UNMATCHED)),
                fringe_contrast=float(data.get("fringe_contrast", 40.0)),
                source=str(path),
            )
        except FileNotFoundError:
            raise PaletteError(f"{path}: no such palette file") from None
        except PaletteError as err:
            if str(path) in str(err):
                raise
            raise PaletteError(f"{path}: {err}") from None
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise PaletteError(f"{path}: not a palette ({type(err).__name__}: {err})") from None

    def save(self, path: str | Path) -> Path:
        """Write the palette as JSON (``load`` reads it back equal)."""
        path = Path(path)
        path.write_text(json.dumps(self._data(), indent=2) + "\n", encoding="utf-8")
        return path

    def _data(self) -> dict:
        return {
            "colors": {name: list(rgb) for name, rgb in self.colors.items()},
            "background": list(self.background),
            "tolerance": self.tolerance,
            "min_region": self.min_region,
            "opening": self.opening,
            "max_unmatched": self.max_unmatched,
            "fringe_contrast": self.fringe_contrast,
        }


def _rgb_triple(value) -> tuple[int, int, int]:
    values = tuple(value)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
        raise ValueError(value)
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------------------------
# Decoding


def same_aspect(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether a mask of (h, w) can be resized to an image of (H, W): width/height ratios within ``ASPECT_TOLERANCE``
    of each other."""
    (mh, mw), (ih, iw) = mask_size, image_size
    return abs((mw / mh) / (iw / ih) - 1.0) <= ASPECT_TOLERANCE


def drop_small_regions(mask: np.ndarray, min_region: int) -> np.ndarray:
    """(H, W) bool ``mask`` without its 8-connected regions of fewer than ``min_region`` pixels (a voted mask's
    leftovers are not regions); unchanged when ``min_region`` ≤ 1 or the mask is empty."""
    if min_region <= 1 or not mask.any():
        return mask
    components, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    keep = np.bincount(components.ravel(), minlength=count + 1) >= min_region
    keep[0] = False
    return keep[components]


def decode_color_mask(rgb: np.ndarray, palette: Palette, where: str = "mask") -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 RGB color mask → class name → (H, W) bool, for every class of the palette (empty ones too),
    pairwise disjoint. ``where`` names the file in errors; raises ``PaletteError`` (module docstring, step 3)."""
    return class_masks(decode_label_map(rgb, palette, where), palette)


def class_masks(labels: np.ndarray, palette: Palette) -> dict[str, np.ndarray]:
    """(H, W) labels (``decode_label_map``) → class name → (H, W) bool, for every class of the palette."""
    return {name: labels == k for k, name in enumerate(palette.names, start=1)}


def read_color_mask(path: str | Path) -> np.ndarray:
    """A mask file → (H, W, 3) uint8 RGB in its stored pixel grid (masks carry no EXIF orientation). Raises
    FileNotFoundError or ``MaskFileError``."""
    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise MaskFileError(f"{path}: not a readable image ({err})") from None


def read_label_map(path: str | Path, palette: Palette, size: tuple[int, int] | None = None) -> np.ndarray:
    """One mask file → (H, W) uint8 labels (``decode_label_map``) in the frame of an image of ``size`` (H, W):
    decoded in the file's own pixel grid, then resized nearest-neighbour when the sizes differ; None: the file's grid.
    Raises FileNotFoundError, ``MaskFileError`` (unreadable), ``MaskAspectError`` (not the image's aspect ratio,
    ``same_aspect``; checked before decoding) or ``PaletteError``, each naming the file."""
    rgb = read_color_mask(path)
    if size is None or rgb.shape[:2] == tuple(size):
        return decode_label_map(rgb, palette, where=str(path))
    (mh, mw), (h, w) = rgb.shape[:2], size
    if not same_aspect((mh, mw), size):
        raise MaskAspectError(
            f"{path}: mask is {mw}×{mh} but the image is {w}×{h} (upright): not the same aspect ratio"
        )
    labels = decode_label_map(rgb, palette, where=str(path))
    return np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))


def vote(maps: list[np.ndarray] | tuple[np.ndarray, ...], palette: Palette) -> np.ndarray:
    """Label maps of the same image by several annotators (each (H, W) uint8) → one label map: a pixel takes class k
    when more than half of the maps give it k (else background: 2 of 3, 2 of 2, 3 of 4, …); voted regions smaller than
    ``palette.min_region`` go to background. One map is returned as is."""
    if len(maps) == 1:
        return maps[0]
    need = len(maps) // 2 + 1
    fused = np.zeros(maps[0].shape, dtype=np.uint8)
    for k in range(1, len(palette.colors) + 1):
        votes = np.zeros(maps[0].shape, dtype=np.uint8)
        for labels in maps:
            votes += labels == k
        won = drop_small_regions(votes >= need, palette.min_region)
        fused[won] = k  # a strict majority is unique: classes never overlap
    return fused


def decode_label_map(rgb: np.ndarray, palette: Palette, where: str = "mask") -> np.ndarray:
    """(H, W, 3) uint8 RGB color mask → (H, W) uint8 labels: 0 background, k the k-th class of ``palette.colors``
    (``palette.names[k - 1]``). Steps and memory: module docstring. ``where`` names the file in errors."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PaletteError(f"{where}: expected an (H, W, 3) uint8 RGB mask, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    lut = _lookup_table(palette.key)
    labels = np.empty((h, w), dtype=np.uint8)
    counts = np.zeros(1 << (3 * _HIST_BITS), dtype=np.int64)
    sums = np.zeros((1 << (3 * _HIST_BITS), 3), dtype=np.int64)
    unmatched_smooth = not_background = 0
    for y0, y1 in _row_chunks(h, w):
        code = lut[_lut_index(rgb[y0:y1])]
        labels[y0:y1] = code & (_UNMATCHED - 1)
        not_background += int(np.count_nonzero(code))
        ys, xs = np.nonzero(code >= _UNMATCHED)
        if len(ys):
            ys += y0
            smooth = _span_at(rgb, ys, xs) <= palette.fringe_contrast
            ys, xs = ys[smooth], xs[smooth]
            labels[ys, xs] = _UNASSIGNED
            unmatched_smooth += len(ys)
            _accumulate(rgb[ys, xs], counts, sums)
    if unmatched_smooth >= max(1, palette.min_region) and unmatched_smooth > palette.max_unmatched * not_background:
        raise PaletteError(f"{where}: {_summary(counts, sums, unmatched_smooth, h * w)}")
    _clean(labels, palette)
    return labels


def fringe(rgb: np.ndarray, contrast: float) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) bool: pixels whose 3×3 neighbourhood spans more than ``contrast`` in some channel
    (where JPEG blends and rings between two colors)."""
    span = ndimage.maximum_filter(rgb, size=(3, 3, 1)) - ndimage.minimum_filter(rgb, size=(3, 3, 1))
    return span.max(axis=2) > contrast


def _span_at(rgb: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The 3×3 color span of ``fringe`` at the pixels (ys, xs) only (edges replicated)."""
    h, w = rgb.shape[:2]
    low = np.full((len(ys), 3), 255, dtype=np.uint8)
    high = np.zeros((len(ys), 3), dtype=np.uint8)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            values = rgb[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
            np.minimum(low, values, out=low)
            np.maximum(high, values, out=high)
    return (high - low).max(axis=1)


@functools.lru_cache(maxsize=8)
def _lookup_table(key: str) -> np.ndarray:
    """64³ uint8 table over 6-bit colors: nearest entry index, | ``_UNMATCHED`` when farther than the tolerance."""
    data = json.loads(key)
    entries = np.array([data["background"], *data["colors"].values()], dtype=np.float32)
    levels = np.arange(64, dtype=np.float32) * 4 + 1.5  # the center of each 6-bit bin
    table = np.empty(64**3, dtype=np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, indexing="ij"), axis=-1).reshape(-1, 2)  # (g, b) pairs
    for r in range(64):
        colors = np.concatenate([np.full((len(grid), 1), levels[r], np.float32), grid], axis=1)
        diff = colors[:, None, :] - entries[None]  # (4096, K + 1, 3)
        ycc = diff @ _YCBCR.T
        nearest = (ycc[..., 0] ** 2 + CHROMA_WEIGHT * (ycc[..., 1:] ** 2).sum(axis=-1)).argmin(axis=1)
        far = (diff**2).sum(axis=-1).min(axis=1) > data["tolerance"] ** 2
        table[r * 4096 : (r + 1) * 4096] = nearest.astype(np.uint8) | np.where(far, _UNMATCHED, 0).astype(np.uint8)
    return table


def _lut_index(block: np.ndarray) -> np.ndarray:
    q = (block >> 2).astype(np.int32)
    return (q[..., 0] << 12) | (q[..., 1] << 6) | q[..., 2]


def _row_chunks(h: int, w: int):
    rows = max(1, CHUNK_PIXELS // max(w, 1))
    for y0 in range(0, h, rows):
        yield y0, min(h, y0 + rows)


def _fill_limit(palette: Palette) -> int:
    """How far (pixels) a removed pixel looks for a kept label: the half-width of what cleaning removes."""
    return max(2, 2 * palette.opening + 1, math.ceil(math.sqrt(palette.min_region) / 2))


def _clean(labels: np.ndarray, palette: Palette) -> None:
    """Step 4 in place: open and size-filter each entry's pixels, then fill what was removed (module docstring)."""
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[: len(palette.colors) + 1])
    square = np.ones((2 * palette.opening + 1,) * 2, dtype=bool) if palette.opening else None
    eight = np.ones((3, 3), dtype=bool)
    margin = palette.opening + 1
    for k in present:
        mask = labels == k
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (
            slice(max(0, rows[0] - margin), rows[-1] + 1 + margin),
            slice(max(0, cols[0] - margin), cols[-1] + 1 + margin),
        )
        region = mask[box]
        components, count = ndimage.label(region, structure=eight)
        keep = np.bincount(components.ravel(), minlength=count + 1) >= max(1, palette.min_region)
        if square is not None:
            # Opening by reconstruction: a component is kept whole (tips, thin arms and all) when the square fits in
            # it somewhere; bands thinner than the square, which is what JPEG fringes are, go whole. Outside the image
            # counts as this entry (a region along the border keeps its border rows); inside the crop the margin is
            # never this entry, so the border value only matters at the image's edges.
            core = ndimage.binary_erosion(region, square, border_value=1)
            keep &= np.bincount(components[core], minlength=count + 1) > 0
        keep[0] = False
        kept = keep[components]
        removed = region & ~kept
        if removed.any():
            labels[box][removed] = _UNASSIGNED
    _fill(labels, _fill_limit(palette))


def _fill(labels: np.ndarray, limit: int) -> None:
    """Unassigned pixels take the label of the nearest assigned pixel within ``limit`` pixels, else 0 (row chunks
    with a halo of ``limit`` rows)."""
    h, w = labels.shape
    todo = np.flatnonzero((labels == _UNASSIGNED).any(axis=1))
    if not len(todo):
        return
    source = labels.copy()  # the fill reads the labels as cleaned, not as partly filled
    for y0, y1 in _row_chunks(h, w):
        if not ((todo >= y0) & (todo < y1)).any():
            continue
        a, b = max(0, y0 - limit), min(h, y1 + limit)
        window = source[a:b]
        unassigned = window == _UNASSIGNED
        if unassigned.all():
            labels[y0:y1][labels[y0:y1] == _UNASSIGNED] = 0
            continue
        distance, (iy, ix) = ndimage.distance_transform_edt(unassigned, return_indices=True)
        filled = np.where(distance <= limit, window[iy, ix], 0).astype(np.uint8)
        part = labels[y0:y1]
        hole = part == _UNASSIGNED
        part[hole] = filled[y0 - a : y1 - a][hole]


# --------------------------------------------------------------------------------------------------------------------
# Color histograms and their clusters (error messages, ``python -m training.data.palette``)


def color_histogram(colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) uint8 colors → (counts (32³,) int64, sums (32³, 3) int64): per 5-bit color bin, how many colors fell in
    it and their channel sums (for mean colors)."""
    counts = np.zeros(1 << (3 * _HIST_BITS), dtype=np.int64)
    sums = np.zeros((1 << (3 * _HIST_BITS), 3), dtype=np.int64)
    _accumulate(np.asarray(colors, dtype=np.uint8).reshape(-1, 3), counts, sums)
    return counts, sums


def _accumulate(colors: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> None:
    shift = 8 - _HIST_BITS
    q = (colors >> shift).astype(np.int64)
    index = (q[:, 0] << (2 * _HIST_BITS)) | (q[:, 1] << _HIST_BITS) | q[:, 2]
    counts += np.bincount(index, minlength=len(counts))
    for c in range(3):
        sums[:, c] += np.bincount(index, weights=colors[:, c], minlength=len(counts)).astype(np.int64)


def cluster_colors(
    counts: np.ndarray, sums: np.ndarray, radius: float = SUMMARY_RADIUS, min_count: int = 1
) -> list[tuple[tuple[int, int, int], int]]:
    """Greedy clusters of a ``color_histogram``: the most frequent bin seeds a cluster that takes every unclaimed bin
    whose mean color is within ``radius`` of the cluster's (count-weighted) mean color, re-centered twice; repeat.
    Returns ``[((r, g, b) mean color, pixel count), …]``, most pixels first, clusters under ``min_count`` left out."""
    occupied = np.flatnonzero(counts)
    if not len(occupied):
        return []
    n = counts[occupied].astype(np.float64)
    means = sums[occupied] / n[:, None]
    free = np.ones(len(occupied), dtype=bool)
    clusters = []
    for seed in np.argsort(-n, kind="stable"):
        if not free[seed]:
            continue
        center = means[seed]
        for _ in range(3):
            members = free & (np.linalg.norm(means - center, axis=1) <= radius)
            members[seed] = True
            center = (means[members] * n[members, None]).sum(axis=0) / n[members].sum()
        free &= ~members
        total = int(n[members].sum())
        if total >= min_count:
            clusters.append((tuple(int(round(v)) for v in center), total))
    clusters.sort(key=lambda c: -c[1])
    return clusters


def unmatched_summary(colors: np.ndarray, total: int, most: int = 5) -> str:
    """ "N % of the mask's pixels match no palette color: (r, g, b) a %, …" for (n, 3) uint8 unmatched colors out of
    ``total`` pixels; colors within ``SUMMARY_RADIUS`` of each other are merged into their mean, the ``most``
    commonest listed first (those with at least ``MIN_LISTED_SHARE`` of the pixels), the rest counted."""
    counts, sums = color_histogram(colors)
    return _summary(counts, sums, len(colors), total, most)


def _summary(counts: np.ndarray, sums: np.ndarray, unmatched: int, total: int, most: int = 5) -> str:
    clusters = cluster_colors(counts, sums)
    shown = [c for c in clusters[:most] if c[1] >= MIN_LISTED_SHARE * total] or clusters[:1]
    listed = ", ".join(f"{rgb} {100 * count / total:.1f} %" for rgb, count in shown)
    more = f" and {len(clusters) - len(shown)} rarer colors" if len(clusters) > len(shown) else ""
    return f"{100 * unmatched / total:.1f} % of the mask's pixels match no palette color: {listed}{more}"
