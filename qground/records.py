"""QGround-100K records and COCO RLE masks: the on-disk formats shared by the app (``qground.sam`` exports and imports
them) and the training side (``training.annotate`` writes them from GPT-4V replies, ``training.data.readers`` reads
them).

A record is ``{"id": str, "image": str, "ann_list": [{"label": str, "mask": str[, "severity": str]}, ...]}``: ``image``
is a POSIX path relative to the image root, each ``mask`` a PNG file name relative to the mask folder (uint8, 0 / 255,
the size of the image), one ann per distorted region, in region order; a clean image has an empty ``ann_list``.

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

from qground.taxonomy import NO_DISTORTION, normalize

__all__ = [
    "NO_DISTORTION_WORDS",
    "RegionLabel",
    "decode_rle",
    "is_no_distortion",
    "mask_to_rle",
    "rle_from_string",
    "rle_to_string",
    "to_qground_record",
]

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
) -> dict[str, Any]:
    """A QGround-100K record ``{"id", "image", "ann_list": [{"label", "mask"[, "severity"]}, ...]}`` for one image.

    masks: the regions, bool (H, W), numbered from 1; labels: their verdicts (e.g. GPT-4V's, parsed by
    ``training.annotate.parse_gpt4v_reply``). Each labeled region with a distortion is written to
    ``mask_dir/<id>_<region id>.png`` (uint8 0/255, (H, W)) and listed in region order with its mask file name, relative
    to ``mask_dir`` — pass ``mask_dir`` as ``training.data.readers.read_qground100k``'s ``mask_root``. Regions labeled
    None are clean and left out; so are regions without a label. ``image`` is stored as given (relative to the image
    root, as a POSIX path). Raises ValueError for a label id outside 1..len(masks).
    """
    mask_dir = Path(mask_dir)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", id)
    mask_dir.mkdir(parents=True, exist_ok=True)
    anns = []
    for label in sorted(labels, key=lambda label: label.id):
        if not 1 <= label.id <= len(masks):
            raise ValueError(f"label for region {label.id}, but there are {len(masks)} regions")
        if label.distortion is None:
            continue
        name = f"{stem}_{label.id}.png"
        Image.fromarray(np.asarray(masks[label.id - 1], dtype=bool).astype(np.uint8) * 255).save(mask_dir / name)
        ann = {"label": label.distortion, "mask": name}
        if label.severity is not None:
            ann["severity"] = label.severity
        anns.append(ann)
    return {"id": id, "image": Path(image_path).as_posix(), "ann_list": anns}


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
