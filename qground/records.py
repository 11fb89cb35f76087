"""QGround-100K records and COCO RLE masks: the on-disk formats shared by the app (``qground.sam`` exports and imports
them) and the training side (``training.annotate`` writes them from GPT-4V replies, ``training.data.readers`` reads
them).

Two record layouts (``RECORD_LAYOUTS``), both read by the training reader:

- ``released`` (the default; QGround-100K as released, DATA-FORMATS.md §1): ``{"id": "<id>_<annotator>", "image": str,
  "ann_list": [{"quality_description": str, "segmentation_mask": str}]}``, one ann per annotator. The mask is one color
  image of the whole photo (``color_mask``): background color, each region in its class's palette color
  (``qground.palette``), a later region covering an earlier one where they overlap; it is named
  ``<dir>/<stem>_<annotator>_<stem>.png`` (or ``.jpg``) after the image ``<dir>/<stem>.<ext>`` and lies under the mask
  folder. A clean image is an ann whose mask is all background.
- ``legacy`` (ours before the release was known): ``{"id": str, "image": str, "ann_list": [{"label": str, "mask": str
  [, "severity": str]}, ...]}``, each ``mask`` a PNG file name relative to the mask folder (uint8, 0 / 255, the size
  of the image), one ann per distorted region, in region order; a clean image has an empty ``ann_list``.

In both, ``image`` is a POSIX path relative to the image root.

Coordinate frame: masks are bool arrays of shape (H, W) in the pixel grid of the image they annotate (row y from the
top, column x from the left). COCO RLE runs go over the pixels in column-major (Fortran) order, ``size`` is [H, W].
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qground.palette import DEFAULT_PALETTE, Palette
from qground.taxonomy import CLASS_NAMES, NO_DISTORTION, normalize
from qground.visualize import region_location

__all__ = [
    "LEGACY",
    "NO_DISTORTION_WORDS",
    "RECORD_LAYOUTS",
    "RELEASED",
    "RegionLabel",
    "color_mask",
    "decode_rle",
    "describe_regions",
    "is_no_distortion",
    "mask_to_rle",
    "rle_from_string",
    "released_mask_name",
    "rle_to_string",
    "to_qground_record",
]

RELEASED, LEGACY = "released", "legacy"
RECORD_LAYOUTS = (RELEASED, LEGACY)
MASK_FORMATS = ("png", "jpg")

NO_DISTORTION_WORDS = frozenset(
    {
        NO_DISTORTION,
        "none",
        "no",
        "clean",
        "null",
        "n a",
        "na",
        "normal",
        "good",
        "undistorted",
        "no obvious distortion",
    }
)


def is_no_distortion(word: str) -> bool:
    """True for words that say a region is clean: "none", "no distortion", "clean", "No visible distortion", ..."""
    text = normalize(word)
    return text in NO_DISTORTION_WORDS or text.startswith(("no ", "not "))


# --------------------------------------------------------------------------------------------------------------------
# QGround-100K records


@dataclass(frozen=True)
class RegionLabel:
    """The verdict on region ``id`` (1-based, as drawn): ``distortion`` is a canonical class name or None (clean, or a
    word that matched no class); ``severity`` is lower-cased free text or None; ``raw`` is the distortion text as
    written ("" when absent or null)."""

    id: int
    distortion: str | None
    severity: str | None
    raw: str

    @property
    def unmatched(self) -> bool:
        """True when ``raw`` names something, not a no-distortion word, that matched no class."""
        return self.distortion is None and self.raw.strip() != "" and not is_no_distortion(self.raw)


def to_qground_record(
    id: str,
    image_path: str | Path,
    masks: Sequence[np.ndarray],
    labels: Sequence[RegionLabel],
    mask_dir: str | Path,
    *,
    layout: str = RELEASED,
    annotator: str = "app",
    description: str | None = None,
    palette: Palette | None = None,
    mask_format: str = "png",
) -> dict[str, Any]:
    """A QGround-100K record for one image, its mask files written under ``mask_dir`` (module docstring).

    masks: the regions, bool (H, W), numbered from 1; labels: their verdicts (e.g. GPT-4V's, parsed by
    ``training.annotate.parse_gpt4v_reply``). Regions labeled None are clean and left out; so are regions without a
    label. ``image`` is stored as given (relative to the image root, as a POSIX path); pass ``mask_dir`` as
    ``training.data.readers.read_qground100k``'s ``mask_root``. Raises ValueError for a label id outside
    1..len(masks), an unknown layout or mask format.

    ``layout="released"`` (default): one ann for ``annotator``, record id ``<id>_<annotator>``; ``description`` is
    its ``quality_description`` (default: ``describe_regions``); the color mask uses ``palette`` (default:
    ``qground.palette.DEFAULT_PALETTE``, what the training reader decodes with) and is written as ``mask_format``
    (``png``, lossless, or ``jpg`` as released). ``layout="legacy"``: one PNG per region,
    ``mask_dir/<id>_<region id>.png``; ``annotator``, ``description``, ``palette`` and ``mask_format`` are not used.
    """
    if layout not in RECORD_LAYOUTS:
        raise ValueError(f"layout must be one of {RECORD_LAYOUTS}, got {layout!r}")
    regions = _labeled_regions(masks, labels)
    if layout == LEGACY:
        return _legacy_record(id, image_path, regions, Path(mask_dir))
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    palette = palette or Palette.load(DEFAULT_PALETTE)
    shape = np.asarray(masks[0]).shape if len(masks) else None
    if shape is None:
        raise ValueError("the released layout needs at least one region mask, for the image size")
    image = Path(image_path).as_posix()
    who = _safe(annotator)
    relative = Path(image).parent / released_mask_name(Path(image).stem, who, mask_format)
    rgb = color_mask(shape, [(label.distortion, mask) for label, mask in regions], palette)
    _save_color_mask(rgb, Path(mask_dir) / relative, mask_format)
    text = description if description is not None else describe_regions([(lb.distortion, m) for lb, m in regions])
    ann = {"quality_description": text, "segmentation_mask": relative.as_posix()}
    return {"id": f"{id}_{who}", "image": image, "ann_list": [ann]}


def _labeled_regions(
    masks: Sequence[np.ndarray], labels: Sequence[RegionLabel]
) -> list[tuple[RegionLabel, np.ndarray]]:
    """(label, bool mask) of every region labeled with a distortion, in region order; ValueError for a bad id."""
    out = []
    for label in sorted(labels, key=lambda label: label.id):
        if not 1 <= label.id <= len(masks):
            raise ValueError(f"label for region {label.id}, but there are {len(masks)} regions")
        if label.distortion is not None:
            out.append((label, np.asarray(masks[label.id - 1], dtype=bool)))
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _legacy_record(
    id: str, image_path: str | Path, regions: list[tuple[RegionLabel, np.ndarray]], mask_dir: Path
) -> dict[str, Any]:
    """The legacy layout: one 0/255 PNG per region, ``mask_dir/<id>_<region id>.png``."""
    stem = _safe(id)
    mask_dir.mkdir(parents=True, exist_ok=True)
    anns = []
    for label, mask in regions:
        name = f"{stem}_{label.id}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / name)
        ann = {"label": label.distortion, "mask": name}
        if label.severity is not None:
            ann["severity"] = label.severity
        anns.append(ann)
    return {"id": id, "image": Path(image_path).as_posix(), "ann_list": anns}


def released_mask_name(stem: str, annotator: str, mask_format: str = "jpg") -> str:
    """The released name of an annotator's mask of image ``stem``: ``<stem>_<annotator>_<stem>.<mask_format>``."""
    return f"{stem}_{annotator}_{stem}.{mask_format}"


def color_mask(shape: tuple[int, int], regions: Sequence[tuple[str, np.ndarray]], palette: Palette) -> np.ndarray:
    """(H, W, 3) uint8 color mask of ``shape`` (H, W): ``palette.background``, then each (class name, bool (H, W)
    mask) of ``regions`` painted in order in its class color (a later region covers an earlier one). ValueError for
    a class the palette has no color for or a mask of another shape."""
    rgb = np.empty((*shape, 3), dtype=np.uint8)
    rgb[:] = palette.background
    for name, mask in regions:
        if name not in palette.colors:
            raise ValueError(f"the palette has no color for {name!r} ({palette.source or 'palette'})")
        if mask.shape != tuple(shape):
            raise ValueError(f"a {name} mask has shape {mask.shape}, the image {tuple(shape)}")
        rgb[mask] = palette.colors[name]
    return rgb


def _save_color_mask(rgb: np.ndarray, path: Path, mask_format: str) -> None:
    """PNG (lossless) or JPEG (quality 95, no chroma subsampling: the thinnest fringes JPEG allows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95, "subsampling": 0} if mask_format == "jpg" else {}
    Image.fromarray(rgb).save(path, **options)


def describe_regions(regions: Sequence[tuple[str, np.ndarray]]) -> str:
    """A plain quality description of (class name, bool mask) regions, in the words of the shipped answers: "The
    image has blur in the upper left and noise in the center." (one phrase per class, in taxonomy order, at the place
    of the union of its regions), or "The image has no obvious distortion." """
    by_class: dict[str, np.ndarray] = {}
    for name, mask in regions:
        by_class[name] = by_class[name] | mask if name in by_class else mask.copy()
    ordered = sorted(by_class, key=lambda name: CLASS_NAMES.index(name) if name in CLASS_NAMES else len(CLASS_NAMES))
    phrases = [f"{name} in {region_location(by_class[name])}" for name in ordered if by_class[name].any()]
    if not phrases:
        return "The image has no obvious distortion."
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"The image has {listing}."


# --------------------------------------------------------------------------------------------------------------------
# COCO run-length encoding


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """COCO RLE ``{"size": [h, w], "counts": list[int] | str}`` -> bool (h, w) mask.

    Counts are run lengths over the column-major (Fortran-order) pixels, alternating background / region and starting
    with background (a mask starting with region has counts[0] == 0). A string is COCO's compressed form
    (``rle_from_string``). Raises ValueError when the runs are negative or do not add up to h * w.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = np.asarray(rle_from_string(counts) if isinstance(counts, str) else counts, dtype=np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise ValueError(f"RLE runs add up to {runs.sum()} pixels (min run {runs.min(initial=0)}), size is {h}x{w}")
    values = np.arange(len(runs)) % 2 == 1  # run j is region when j is odd
    return np.repeat(values, runs).reshape((h, w), order="F")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Bool (h, w) mask -> COCO RLE ``{"size": [h, w], "counts": <compressed string>}`` (``decode_rle`` inverts it)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist() if flat.size else []
    if flat.size and flat[0]:
        runs.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_to_string(runs)}


def rle_from_string(text: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools ``rleFrString``) into run lengths.

    Each value is stored in 6-bit chunks, least significant first, as characters ``chr(48 + chunk)``: chunk bits 0-4
    carry data, bit 5 (0x20) says another chunk follows, and bit 4 of the last chunk is the sign (two's complement).
    From the fourth value on (index > 2) the stored value is the difference to the value two places before.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError(f"compressed RLE string ends inside a value: {text!r:.80}")
            chunk = ord(text[pos]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"invalid character {text[pos]!r} in compressed RLE string")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if not more and chunk & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_to_string(runs: Sequence[int]) -> str:
    """Encode run lengths as COCO's compressed RLE string (pycocotools ``rleToString``); inverse of
    ``rle_from_string``."""
    chars = []
    for i, run in enumerate(runs):
        value = int(run) - (int(runs[i - 2]) if i > 2 else 0)
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5  # arithmetic shift: negative values end at -1
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr(48 + (chunk | (0x20 if more else 0))))
    return "".join(chars)
