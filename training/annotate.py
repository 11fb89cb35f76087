"""Annotation-side tools of Q-Ground's data engine (Q-Ground supplementary §1.1–1.2).

SAM proposes regions; the image is drawn with numbered Set-of-Mark labels (``draw_set_of_marks``) and shown to GPT-4V
with ``gpt4v_messages``; its reply is parsed with ``parse_gpt4v_reply`` into ``qground.records.RegionLabel``s (free
distortion words mapped to the five classes by shortest edit distance) and stored as a QGround-100K record with
``qground.records.to_qground_record`` (by default in the released layout: one color mask for the annotator, e.g.
``annotator="gpt4v"``, so the records mix with the human part as they are).

Coordinate frame: masks are bool arrays of shape (H, W) in the pixel grid of the image they annotate (row y from the
top, column x from the left); regions are numbered from 1 in list order.
"""

from __future__ import annotations

import colorsys
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from qground.records import RegionLabel, is_no_distortion
from qground.taxonomy import CLASS_NAMES
from training.data.readers import label_to_class

__all__ = [
    "IMAGE_URL_PLACEHOLDER",
    "SEVERITIES",
    "draw_set_of_marks",
    "find_json",
    "gpt4v_messages",
    "mark_anchor",
    "mark_colors",
    "parse_gpt4v_reply",
]

IMAGE_URL_PLACEHOLDER = "<data URL to be filled>"
SEVERITIES = ("slight", "moderate", "severe")

_DEFINITIONS = {
    "blur": "the region is out of focus or soft; fine detail and edges are smeared evenly",
    "jitter": "motion blur or camera shake; edges are streaked or doubled in one direction",
    "overexposure": "too bright; highlights are blown out to white and detail is lost",
    "low light": "too dark or underexposed; shadows are crushed and detail is lost",
    "noise": "grain or random speckles of brightness or color",
}
_ID_KEYS = ("id", "region", "region_id", "region_number", "number", "mark")
_DISTORTION_KEYS = ("distortion", "distortion_type", "type", "label", "category", "class")
_SEVERITY_KEYS = ("severity", "level", "degree")
_FENCED = re.compile(r"```[\w-]*[ \t]*\n?(.*?)```", re.DOTALL)


# --------------------------------------------------------------------------------------------------------------------
# Set-of-Mark drawing


def draw_set_of_marks(image: Image.Image, masks: Sequence[np.ndarray]) -> Image.Image:
    """The image with every region outlined in its own color and numbered 1..N at its most interior point.

    image: PIL image of size (W, H), any mode (drawn on an RGB copy; never modified). masks: bool (H, W) arrays.
    Outlines are the regions' inner boundaries, ``max(1, min(H, W) // 200)`` px wide, painted in list order. Each number
    sits in a box filled with the region's color (black or white text, whichever reads better), centred on
    ``mark_anchor(mask)`` and shifted inside the image if needed; numbers are drawn after all outlines.
    """
    rgb = np.array(image.convert("RGB"))
    h, w = rgb.shape[:2]
    for k, mask in enumerate(masks):
        if mask.shape != (h, w):
            raise ValueError(f"mask {k + 1} has shape {mask.shape}, the image is {h}x{w}")
    colors = mark_colors(len(masks))
    width = max(1, min(h, w) // 200)
    for mask, color in zip(masks, colors):
        rgb[_inner_edge(mask.astype(bool), width)] = color
    marked = Image.fromarray(rgb)
    draw = ImageDraw.Draw(marked)
    font = ImageFont.load_default(size=max(10, min(h, w) // 25))
    for k, (mask, color) in enumerate(zip(masks, colors)):
        _draw_number(draw, str(k + 1), mark_anchor(mask), color, font, (h, w))
    return marked


def mark_anchor(mask: np.ndarray) -> tuple[int, int]:
    """The (y, x) pixel of a bool (H, W) region farthest from its boundary (the image edge counts as boundary):
    the maximum of the Euclidean distance transform; always inside the region, even for rings and L shapes."""
    if not mask.any():
        raise ValueError("cannot place a mark on an empty region")
    distance = ndimage.distance_transform_edt(np.pad(mask.astype(bool), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(y), int(x)


def mark_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct saturated RGB colors: hues spaced by the golden ratio, so neighbours in the list differ."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return [tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95)) for hue in hues]


def _inner_edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Bool (H, W): pixels of ``mask`` within ``width`` px (4-neighbour steps) of its boundary or the image edge."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def _draw_number(
    draw: ImageDraw.ImageDraw,
    text: str,
    anchor: tuple[int, int],
    color: tuple[int, int, int],
    font: ImageFont.FreeTypeFont,
    size: tuple[int, int],
) -> None:
    """A filled box with ``text`` centred on ``anchor`` (y, x), moved inside the (H, W) image when it sticks out."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0 = min(max(anchor[1] - box_w // 2, 0), max(size[1] - box_w, 0))
    y0 = min(max(anchor[0] - box_h // 2, 0), max(size[0] - box_h, 0))
    draw.rectangle((x0, y0, x0 + box_w - 1, y0 + box_h - 1), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    draw.text((x0 + pad - left, y0 + pad - top), text, font=font, fill=ink)


# --------------------------------------------------------------------------------------------------------------------
# GPT-4V prompt and reply


def gpt4v_messages(num_regions: int) -> list[dict[str, Any]]:
    """System + user messages (OpenAI chat format) asking GPT-4V to label ``num_regions`` numbered regions.

    The user message holds the instructions and one image part whose URL is ``IMAGE_URL_PLACEHOLDER``: replace it with
    a ``data:image/png;base64,...`` URL of the ``draw_set_of_marks`` image before sending.
    """
    if num_regions < 1:
        raise ValueError(f"need at least one region, got {num_regions}")
    definitions = "\n".join(f"- {name}: {_DEFINITIONS[name]}" for name in CLASS_NAMES)
    example = {
        "regions": [
            {"id": 1, "distortion": CLASS_NAMES[0], "severity": "severe"},
            {"id": 2, "distortion": "none", "severity": None},
        ]
    }
    instructions = (
        f"The image shows {num_regions} region{'s' if num_regions > 1 else ''}, each outlined in its own color and "
        f"marked with its number (1 to {num_regions}). For every numbered region, decide whether its image quality "
        f"suffers from one of these distortions:\n{definitions}\n"
        "or none, if the region looks clean. If a region shows several distortions, name the most severe one. "
        f"Rate the severity as {', '.join(SEVERITIES[:-1])} or {SEVERITIES[-1]}.\n"
        f"Answer with JSON only, one entry per region, ids 1 to {num_regions}, in this form:\n"
        f"{json.dumps(example)}"
    )
    return [
        {
            "role": "system",
            "content": "You are an expert in image quality assessment. You judge, region by region, whether a "
            "photograph's quality is degraded and by which distortion.",
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": instructions},
                {"type": "image_url", "image_url": {"url": IMAGE_URL_PLACEHOLDER}},
            ],
        },
    ]


def parse_gpt4v_reply(text: str) -> list[RegionLabel]:
    """GPT-4V's reply -> one RegionLabel per region entry, sorted by id.

    Tolerates ```json fences, prose around the JSON, trailing commas, single-quoted strings, a top-level list instead
    of ``{"regions": [...]}``, another single list-valued key, or an object keyed by region ids (``{"1": "blur"}``);
    ids as numbers or text ("1", "region 1"); distortion words with typos and variants (``label_to_class``:
    "Blurry" -> blur, "motion blur" -> jitter, "none"/"clean" -> None). Raises ValueError when no JSON object with
    region entries is found, an entry has no id or no distortion field, or an id repeats.
    """
    entries = _region_entries(find_json(text))
    labels = sorted((_region_label(entry, k) for k, entry in enumerate(entries)), key=lambda label: label.id)
    ids = [label.id for label in labels]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"region ids {repeated} appear more than once in the GPT-4V reply")
    return labels


def find_json(text: str, objects_only: bool = True) -> dict[str, Any] | list[Any]:
    """The first JSON object or list in a model's reply ``text`` (fenced ``` blocks first, then the whole text) that
    parses after repair (single-quoted strings, trailing commas) and is an object or a non-empty list of objects.

    With ``objects_only=False`` a list need only hold one object among other values (callers count the others as bad
    entries), and ``[]`` is returned when nothing else fits but an empty list was found. ValueError otherwise.
    """
    saw_empty_list = False
    for candidate in [*_FENCED.findall(text), text]:
        for start in (match.start() for match in re.finditer(r"[{\[]", candidate)):
            snippet = _balanced(candidate, start)
            if snippet is None:
                continue
            try:
                data = json.loads(_repair_json(snippet))
            except json.JSONDecodeError:
                continue
            objects = [isinstance(entry, dict) for entry in data] if isinstance(data, list) else []
            if isinstance(data, dict) or (objects and (all(objects) if objects_only else any(objects))):
                return data
            saw_empty_list = saw_empty_list or data == []
    if saw_empty_list and not objects_only:
        return []
    raise ValueError(f"no JSON object found in the reply: {text[:120]!r}")


def _balanced(text: str, start: int) -> str | None:
    """The bracketed span opening at ``text[start]`` ("{" or "["), skipping quoted strings; None if it never closes."""
    closing = {"{": "}", "[": "]"}
    stack: list[str] = []
    quote: str | None = None
    pos = start
    while pos < len(text):
        char = text[pos]
        if quote:
            if char == "\\":
                pos += 1
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in closing:
            stack.append(closing[char])
        elif char in "}]":
            if not stack or stack.pop() != char:
                return None
            if not stack:
                return text[start : pos + 1]
        pos += 1
    return None


def _repair_json(snippet: str) -> str:
    """Rewrite single-quoted strings with double quotes and drop trailing commas before "}" or "]"."""
    out: list[str] = []
    quote: str | None = None
    pos = 0
    while pos < len(snippet):
        char = snippet[pos]
        if quote:
            if char == "\\" and pos + 1 < len(snippet):
                escaped = snippet[pos + 1]
                out.append("'" if escaped == "'" else char + escaped)  # JSON has no \' escape
                pos += 1
            elif char == quote:
                out.append('"')
                quote = None
            else:
                out.append('\\"' if char == '"' else char)
        elif char in "\"'":
            out.append('"')
            quote = char
        elif char == ",":
            following = snippet[pos + 1 :].lstrip()
            if not following.startswith(("}", "]")):
                out.append(char)
        else:
            out.append(char)
        pos += 1
    return "".join(out)


def _region_entries(data: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """The list of per-region objects in the parsed reply."""
    if isinstance(data, list):
        return data
    lowered = {str(key).lower(): value for key, value in data.items()}
    if isinstance(lowered.get("regions"), list):
        return _objects(lowered["regions"])
    lists = [value for value in data.values() if isinstance(value, list)]
    if len(lists) == 1:
        return _objects(lists[0])
    if data and all(re.search(r"\d", str(key)) for key in data):
        return [
            {"id": key, **value} if isinstance(value, dict) else {"id": key, "distortion": value}
            for key, value in data.items()
        ]
    raise ValueError(f"the JSON in the GPT-4V reply has no list of regions (keys {list(data)})")


def _objects(entries: list[Any]) -> list[dict[str, Any]]:
    bad = [entry for entry in entries if not isinstance(entry, dict)]
    if bad:
        raise ValueError(f"region entries must be JSON objects, got {bad[0]!r}")
    return entries


def _region_label(entry: dict[str, Any], position: int) -> RegionLabel:
    """One region object -> RegionLabel; ``position`` (0-based) only names the entry in error messages."""
    keys = {str(key).lower(): key for key in entry}
    id_key = next((keys[k] for k in _ID_KEYS if k in keys), None)
    if id_key is None:
        raise ValueError(f"region entry {position + 1} has no id ({list(_ID_KEYS)}): {entry!r}")
    region_id = _region_id(entry[id_key])
    distortion_key = next((keys[k] for k in _DISTORTION_KEYS if k in keys), None)
    if distortion_key is None:
        raise ValueError(f"region {region_id} has no distortion field ({list(_DISTORTION_KEYS)}): {entry!r}")
    raw = entry[distortion_key]
    if raw is not None and not isinstance(raw, str):
        raise ValueError(f"region {region_id}: the distortion must be a string or null, got {raw!r}")
    raw = raw or ""
    distortion = label_to_class(raw)
    severity_key = next((keys[k] for k in _SEVERITY_KEYS if k in keys), None)
    severity = entry.get(severity_key) if severity_key is not None else None
    if distortion is None or not isinstance(severity, str) or is_no_distortion(severity):
        severity = None
    return RegionLabel(region_id, distortion, severity.strip().lower() if severity else None, raw)


def _region_id(value: Any) -> int:
    """1, "1", "region 1", "#1" -> 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.search(r"\d+", value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"region id {value!r} holds no number")
    return int(match.group())
