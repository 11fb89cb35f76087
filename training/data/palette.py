"""Color masks on disk: lazy per-class masks for training samples, and the palette finder.

Lazy masks. A QGround-100K mask file is one JPEG per annotator whose colors say the class (``qground.palette``).
``ColorMask(paths, label, palette, size)`` stands for one class's bool (H, W) mask in the frame of the image it
annotates (upright, after EXIF orientation, as ``qground.imageio.load_image`` reads it); it decodes on ``load()``:

- each file is read with ``qground.palette.read_label_map`` (decoded in its own pixel grid, the label map resized
  nearest-neighbour to the image's (H, W) when the sizes differ; a file of another aspect ratio is refused), as
  ``qground.evaluate`` reads reference masks;
- with several files (annotators) a pixel is in the class when more than half of them label it so
  (``qground.palette.vote``; 2 of 3, 2 of 2, 3 of 4, …), and the voted regions smaller than ``palette.min_region``
  are dropped.

A ``ColorMask`` is picklable, decodes its files again on each ``load()`` (the last ``CACHE_SIZE`` label maps are kept:
the classes of one sample share their files), and works where a mask path is expected: ``np.asarray(mask)`` gives the
bool array, and ``read()`` gives the mask as a binary PGM file (0 / 255), so ``PIL.Image.open(mask)`` opens it as the
single-class file it stands for (``training.data.dataset.load_mask`` does just that).

Palette finder: ``python -m training.data.palette MASK_DIR [--sample N] [--seed S] [--palette P] [--out palette.json]``
reads a seeded sample of the mask files under MASK_DIR (recursively; JPEG, PNG, BMP, WebP), clusters their colors and
prints the candidate palette: each color (mean RGB), its share of the sampled pixels and the number of sampled files
it appears in. Fringe pixels (``qground.palette.fringe``: JPEG blends between two colors) are left out of the
clustering, so blends do not become colors; every pixel then counts towards the share of its nearest color. With
``--palette`` the colors are named after the given palette's entries they are within its tolerance of, and the sample
is decoded with it (how many files it explains); with ``--out`` the candidate is written as a palette JSON whose
unnamed colors carry placeholder names (``class?1``, …) to replace with class names before ``Palette.load`` accepts
it. The printed table: ``color  share  files  name``, most pixels first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from qground.palette import (
    DEFAULT_PALETTE,
    MaskFileError,
    Palette,
    PaletteError,
    cluster_colors,
    color_histogram,
    decode_label_map,
    fringe,
    read_color_mask,
    read_label_map,
    vote,
)
from qground.taxonomy import CLASS_NAMES

__all__ = [
    "CACHE_SIZE",
    "ColorMask",
    "FoundColor",
    "find_palette",
    "fused_label_map",
    "image_size",
    "label_map",
    "main",
    "mask_files",
    "palette_json",
]

CACHE_SIZE = 6  # decoded label maps kept per process (uint8, one byte per pixel each)
MASK_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SAMPLE_PIXELS = 1 << 20  # the palette finder strides larger files down to about this many pixels

_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the stored image by 90°
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()


# --------------------------------------------------------------------------------------------------------------------
# Files


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image upright (after its EXIF orientation), from the header only. Raises FileNotFoundError or
    ``MaskFileError``."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            except Exception:  # damaged EXIF is ignored, as qground.imageio does
                orientation = 1
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise MaskFileError(f"{path}: not a readable image ({err})") from None
    return (w, h) if orientation in _SWAPS_AXES else (h, w)


# --------------------------------------------------------------------------------------------------------------------
# Label maps and lazy masks


def label_map(path: str | Path, palette: Palette, size: tuple[int, int] | None = None) -> np.ndarray:
    """``qground.palette.read_label_map`` (0 background, k = ``palette.names[k - 1]``, in the frame of ``size``),
    cached (``CACHE_SIZE`` maps). Raises FileNotFoundError, ``MaskFileError`` or ``PaletteError`` (naming the file)."""
    stat = Path(path).stat()  # FileNotFoundError for a missing file; a rewritten file is decoded again
    key = ("file", str(path), stat.st_mtime_ns, stat.st_size, size, palette.key)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    return _remember(key, read_label_map(path, palette, size))


def fused_label_map(paths: Sequence[str | Path], palette: Palette, size: tuple[int, int]) -> np.ndarray:
    """``vote`` over the ``label_map`` of each file, all resized to ``size`` (H, W). Cached like ``label_map``."""
    if len(paths) == 1:
        return label_map(paths[0], palette, size)
    stamps = tuple((str(p), Path(p).stat().st_mtime_ns) for p in paths)
    key = ("vote", stamps, tuple(size), palette.key)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    return _remember(key, vote([label_map(p, palette, size) for p in paths], palette))


def _remember(key: tuple, labels: np.ndarray) -> np.ndarray:
    labels.setflags(write=False)
    _cache[key] = labels
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return labels


@dataclass(frozen=True, eq=False)
class ColorMask:
    """Class ``label``'s mask in the color mask file(s) ``paths`` (one annotator, or several voted), as a bool (H, W)
    array in the frame of an image of ``size`` (H, W). Lazy: nothing is read before ``load()`` (module docstring)."""

    paths: tuple[Path, ...]
    label: str
    palette: Palette
    size: tuple[int, int]

    def load(self) -> np.ndarray:
        """The bool (H, W) mask (a new array)."""
        k = self.palette.names.index(self.label) + 1
        return fused_label_map(self.paths, self.palette, self.size) == k

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        mask = self.load()
        return mask if dtype is None else mask.astype(dtype)

    def read(self, size: int = -1) -> bytes:
        """The mask as a binary PGM file (8-bit, 0 / 255): ``PIL.Image.open`` reads objects without ``seek`` this way,
        so code that opens mask files (``load_mask``) opens this one as a single-class mask file."""
        mask = self.load()
        return f"P5\n{mask.shape[1]} {mask.shape[0]}\n255\n".encode("ascii") + (mask.astype(np.uint8) * 255).tobytes()

    def __repr__(self) -> str:
        files = ", ".join(p.name for p in self.paths)
        return f"ColorMask({self.label!r} in {files}, size={self.size})"


# --------------------------------------------------------------------------------------------------------------------
# Palette finder


@dataclass(frozen=True)
class FoundColor:
    """One color of the sampled masks: mean RGB, share of the sampled pixels, files it appears in, and its name
    (a class of the given palette, "background", or a placeholder)."""

    rgb: tuple[int, int, int]
    share: float
    files: int
    name: str
    distance: float | None = None  # to the named palette entry


def mask_files(mask_dir: str | Path) -> list[Path]:
    """The image files under ``mask_dir`` (recursively), sorted."""
    return sorted(p for p in Path(mask_dir).rglob("*") if p.suffix.lower() in MASK_SUFFIXES and p.is_file())


def find_palette(
    files: Sequence[Path],
    palette: Palette | None = None,
    merge_distance: float = 40.0,
    min_share: float = 0.001,
    contrast: float = 40.0,
    min_file_pixels: int = 16,
) -> list[FoundColor]:
    """The colors of ``files`` (module docstring), most pixels first. Colors are clusters of the non-fringe pixels
    (``cluster_colors`` with radius ``merge_distance``) holding at least ``min_share`` of them; ``share`` counts every
    pixel (fringes included) towards its nearest color; ``files`` counts files with at least ``min_file_pixels``
    (sampled) non-fringe pixels of it. Names: the entry of ``palette`` within its tolerance, else "background" for
    the largest color and ``class?1``, ``class?2``, … for the rest."""
    total_counts = total_sums = None
    smooth_counts = smooth_sums = None
    per_file = []
    for path in files:
        rgb = read_color_mask(path)
        stride = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / SAMPLE_PIXELS))))
        rgb = np.ascontiguousarray(rgb[::stride, ::stride])
        smooth = ~fringe(rgb, contrast)
        counts, sums = color_histogram(rgb.reshape(-1, 3))
        s_counts, s_sums = color_histogram(rgb[smooth])
        if total_counts is None:
            total_counts, total_sums, smooth_counts, smooth_sums = counts, sums, s_counts, s_sums
        else:
            total_counts += counts
            total_sums += sums
            smooth_counts += s_counts
            smooth_sums += s_sums
        bins = np.flatnonzero(s_counts)
        per_file.append((bins, s_counts[bins]))
    if total_counts is None:
        return []
    smooth_total = int(smooth_counts.sum())
    clusters = cluster_colors(smooth_counts, smooth_sums, merge_distance, min_count=max(1, min_share * smooth_total))
    if not clusters:
        return []
    centers = np.array([rgb for rgb, _ in clusters], dtype=np.float64)
    means = np.zeros_like(total_sums, dtype=np.float64)
    occupied = np.flatnonzero(total_counts)
    means[occupied] = total_sums[occupied] / total_counts[occupied, None]
    nearest = _nearest(means, centers)
    shares = np.bincount(nearest[occupied], weights=total_counts[occupied], minlength=len(centers))
    shares /= total_counts.sum()
    file_counts = np.zeros(len(centers), dtype=np.int64)
    smooth_means = np.zeros_like(means)
    s_occ = np.flatnonzero(smooth_counts)
    smooth_means[s_occ] = smooth_sums[s_occ] / smooth_counts[s_occ, None]
    smooth_nearest = _nearest(smooth_means, centers)
    for bins, counts in per_file:
        pixels = np.bincount(smooth_nearest[bins], weights=counts, minlength=len(centers))
        file_counts += pixels >= min_file_pixels
    order = np.argsort(-shares, kind="stable")
    names, distances = _names([tuple(int(v) for v in centers[i]) for i in order], palette)
    return [
        FoundColor(tuple(int(v) for v in centers[i]), float(shares[i]), int(file_counts[i]), name, dist)
        for i, name, dist in zip(order, names, distances)
    ]


def _nearest(colors: np.ndarray, centers: np.ndarray) -> np.ndarray:
    return np.linalg.norm(colors[:, None, :] - centers[None], axis=-1).argmin(axis=1)


def _names(colors: list[tuple[int, int, int]], palette: Palette | None) -> tuple[list[str], list[float | None]]:
    """Names for found colors (most pixels first): the nearest entry of ``palette`` within its tolerance (each entry
    once, closest color first), else background for the first color when no entry is background, else placeholders."""
    names: list[str | None] = [None] * len(colors)
    distances: list[float | None] = [None] * len(colors)
    if palette is not None:
        entries = {"background": palette.background, **palette.colors}
        pairs = sorted(
            (float(np.linalg.norm(np.subtract(c, rgb))), i, name)
            for i, c in enumerate(colors)
            for name, rgb in entries.items()
        )
        for dist, i, name in pairs:
            if dist <= palette.tolerance and names[i] is None and name not in names:
                names[i], distances[i] = name, dist
    if "background" not in names and names and names[0] is None:
        names[0] = "background"
    placeholder = 0
    for i, name in enumerate(names):
        if name is None:
            placeholder += 1
            names[i] = f"class?{placeholder}"
    return names, distances  # type: ignore[return-value]


def palette_json(found: Sequence[FoundColor], template: Palette | None = None) -> dict:
    """A palette JSON object for ``found`` colors (the background's and each class's found color), the tuning fields
    of ``template`` (or the defaults); placeholder names stay to be renamed."""
    background = next((f.rgb for f in found if f.name == "background"), (0, 0, 0))
    data = {
        "colors": {f.name: list(f.rgb) for f in found if f.name != "background"},
        "background": list(background),
    }
    for f in fields(Palette):
        if f.name not in ("colors", "background", "source"):
            data[f.name] = getattr(template, f.name) if template is not None else f.default
    if any(name.startswith("class?") for name in data["colors"]):
        data["_todo"] = f"rename each 'class?N' to one of {list(CLASS_NAMES)} (or delete it), then load it"
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.palette",
        description="List the colors of a sample of class-colored mask files: a candidate palette.",
    )
    parser.add_argument("mask_dir", type=Path, help="folder of mask files (searched recursively)")
    parser.add_argument("--sample", type=int, default=200, help="files to read (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--palette", type=Path, help=f"palette JSON to name the colors after (e.g. {DEFAULT_PALETTE})")
    parser.add_argument("--out", type=Path, help="write the candidate palette JSON here")
    parser.add_argument("--merge-distance", type=float, default=40.0, help="RGB distance merged into one color")
    parser.add_argument("--min-share", type=float, default=0.001, help="smallest pixel share listed (default 0.001)")
    args = parser.parse_args(argv)

    files = mask_files(args.mask_dir)
    if not files:
        print(f"no mask files ({', '.join(MASK_SUFFIXES)}) under {args.mask_dir}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    picked = [files[i] for i in sorted(rng.choice(len(files), min(args.sample, len(files)), replace=False))]
    template = Palette.load(args.palette) if args.palette else None
    found = find_palette(picked, template, merge_distance=args.merge_distance, min_share=args.min_share)
    print(f"{len(found)} colors in {len(picked)} of {len(files)} mask files under {args.mask_dir} (seed {args.seed}):")
    print(f"  {'color':<17} {'share':>7} {'files':>6}  name")
    for f in found:
        note = f"  (palette entry {f.distance:.0f} away)" if f.distance is not None else ""
        print(f"  {str(f.rgb):<17} {100 * f.share:6.2f}% {f.files:6d}  {f.name}{note}")
    if template is not None:
        unseen = [name for name in ["background", *template.colors] if name not in {f.name for f in found}]
        if unseen:
            print(f"palette entries not seen: {unseen}")
        failed = []
        for path in picked:
            try:
                decode_label_map(read_color_mask(path), template, where=str(path))
            except PaletteError as err:
                failed.append(str(err))
        print(f"{len(picked) - len(failed)} of {len(picked)} sampled files decode with {args.palette}")
        for message in failed[:3]:
            print(f"  {message}")
    if args.out:
        data = palette_json(found, template)
        args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        todo = " — rename the placeholder classes before use" if "_todo" in data else ""
        print(f"wrote {args.out}{todo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
