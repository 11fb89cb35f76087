"""Everything drawn from a grounding result: colored mask overlays, mask areas, a legend and gradio annotations.

Coordinate frame: all arrays are in the pixel grid of the original image as `qground.imageio.load_image` returned it
(full resolution, EXIF-upright): row y from the top, column x from the left. Masks are boolean arrays of shape (H, W);
RGB images are uint8 arrays of shape (H, W, 3). Nothing here resizes anything.

Masks come as a dict keyed by class name: canonical ("low light"), key ("low_light") or display name ("Low light"), all
resolved with `qground.taxonomy.get` (unknown names raise its KeyError); results are keyed by the canonical name.
Classes are always drawn in taxonomy order, later ones over earlier ones, each in its taxonomy color.

How `overlay` stays fast on 12 MP photos with numpy only: the image is processed in strips of `_STRIP_ROWS` rows so that
temporaries stay in the CPU cache. In a strip, the masks are packed into one integer code per pixel (bit j: inside layer
j; bit n + j: on layer j's outline), and a per-channel lookup table, built once per color/alpha set by blending the
colors in order, maps (code, input value) to the output value; columns no mask touches are copied unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from qground.taxonomy import DISTORTION_COLORS, DISTORTIONS, Distortion, get

__all__ = [
    "area_percent",
    "color_map",
    "hex_to_rgb",
    "legend_image",
    "masks_to_annotations",
    "overlay",
    "region_location",
]

_STRIP_ROWS = 64


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """Parse "#rrggbb" (the "#" optional, any case) into an (r, g, b) tuple of ints in 0..255."""
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", color)
    if match is None:
        raise ValueError(f"expected a color like '#0072B2', got {color!r}")
    value = int(match.group(1), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF


def color_map() -> dict[str, str]:
    """Canonical class name -> "#rrggbb", e.g. for gradio ``AnnotatedImage(color_map=...)``."""
    return dict(DISTORTION_COLORS)


def overlay(
    image: Image.Image | np.ndarray,
    masks: Mapping[str, np.ndarray],
    alpha: float = 0.45,
    outline: bool = True,
    outline_width: int = 2,
    classes: Iterable[str] | None = None,
) -> np.ndarray:
    """The image with each class mask tinted in its color; returns a new (H, W, 3) uint8 array.

    image: PIL image (any mode, converted to RGB) or uint8 array of shape (H, W, 3); never modified.
    masks: class name -> bool array of shape (H, W), same H, W as the image (ValueError naming the class otherwise).
    alpha: opacity of the tint in [0, 1]; a masked pixel becomes (1 - alpha) * pixel + alpha * color, in taxonomy order.
    outline: also draw each mask's inner boundary, ``outline_width`` pixels wide (4-neighbour steps), in the
        full-opacity color; a mask is not outlined along the image border. Later classes' tints go over earlier
        outlines.
    classes: names of the classes to draw (per-class toggles); None draws every class in ``masks``.
    Pixels outside every drawn mask keep their exact input value.
    """
    rgb = _rgb_array(image)
    layers = _layers(masks, rgb.shape[:2], classes)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if outline and outline_width < 1:
        raise ValueError(f"outline_width must be at least 1, got {outline_width}")
    if not layers:
        return rgb.copy()
    width = outline_width if outline else 0
    colors = tuple(hex_to_rgb(cls.color) for cls, _ in layers)
    table = _blend_table(colors, float(alpha), width > 0)
    planes = [mask for _, mask in layers]
    out = np.empty_like(rgb)
    for top in range(0, rgb.shape[0], _STRIP_ROWS):
        bottom = min(top + _STRIP_ROWS, rgb.shape[0])
        code = _strip_code(planes, top, bottom, width)
        _apply_table(table, code, rgb[top:bottom], out[top:bottom])
    return out


def area_percent(masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Canonical class name -> percent (0..100) of the image's pixels inside its mask, in taxonomy order.

    masks: class name -> bool array of shape (H, W); all masks must share one shape.
    """
    return {cls.name: 100.0 * np.count_nonzero(mask) / mask.size for cls, mask in _layers(masks)}


def region_location(mask: np.ndarray) -> str:
    """Where a region is, in the words the training descriptions use ("the upper left", "the center", "most of the
    image", …), from its area and centroid; "nowhere" for an empty mask. mask: bool (H, W), row y down, column x
    right."""
    rows = np.count_nonzero(mask, axis=1)  # (H,) pixels per row: the centroid without listing every pixel
    total = int(rows.sum())
    if total == 0:
        return "nowhere"
    area = total / mask.size
    if area > 0.97:
        return "the whole image"
    if area > 0.6:
        return "most of the image"
    cols = np.count_nonzero(mask, axis=0)
    y = float(rows @ np.arange(mask.shape[0])) / total
    x = float(cols @ np.arange(mask.shape[1])) / total
    v = ("upper", "middle", "lower")[min(2, int(3 * y / mask.shape[0]))]
    h = ("left", "center", "right")[min(2, int(3 * x / mask.shape[1]))]
    return {
        ("middle", "center"): "the center",
        ("upper", "center"): "the top",
        ("lower", "center"): "the bottom",
        ("middle", "left"): "the left side",
        ("middle", "right"): "the right side",
    }.get((v, h), f"the {v} {h}")


def legend_image(classes: Iterable[str] | None = None, dpi: int = 100) -> Image.Image:
    """A small RGB legend: one color patch and display name per class, in taxonomy order.

    classes: names of the classes to list; None lists all five. dpi scales the image (about 2 x 1.6 inches for five).
    """
    wanted = _wanted(classes)
    shown = [cls for cls in DISTORTIONS if wanted is None or cls.name in wanted]
    if not shown:
        raise ValueError("legend_image needs at least one class")
    figure = Figure(figsize=(2.0, 0.28 * len(shown) + 0.2), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    handles = [Patch(facecolor=cls.color, edgecolor="none", label=cls.display) for cls in shown]
    figure.legend(handles=handles, loc="center", frameon=False)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def masks_to_annotations(masks: Mapping[str, np.ndarray], opacity: float = 0.5) -> list[tuple[np.ndarray, str]]:
    """Masks as gradio ``AnnotatedImage`` annotations: [(float32 (H, W) array, canonical class name)], taxonomy order.

    Each array is ``opacity`` inside the mask and 0 outside (gradio uses it as the alpha of the class color).
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    return [(mask.astype(np.float32) * np.float32(opacity), cls.name) for cls, mask in _layers(masks)]


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """The image as a uint8 (H, W, 3) array (a PIL image is converted to RGB)."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB array of shape (H, W, 3), got {array.dtype} {array.shape}")
    return array


def _wanted(classes: Iterable[str] | None) -> set[str] | None:
    """Canonical names of the toggled-on classes, or None for all."""
    return None if classes is None else {get(name).name for name in classes}


def _layers(
    masks: Mapping[str, np.ndarray], shape: tuple[int, ...] | None = None, classes: Iterable[str] | None = None
) -> list[tuple[Distortion, np.ndarray]]:
    """Validated (class, bool (H, W) mask) pairs in taxonomy order, restricted to ``classes`` when given.

    shape: the required (H, W); None requires all masks to share the first mask's shape.
    """
    found: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        cls = get(name)
        array = np.asarray(mask)
        if array.dtype != np.bool_:
            raise TypeError(f"mask {cls.name!r} must be a bool array, got dtype {array.dtype}")
        expected = "(H, W)" if shape is None else f"(H, W) = {shape}"
        if array.ndim != 2 or array.shape != (shape or array.shape):
            raise ValueError(f"mask {cls.name!r} has shape {array.shape}, expected {expected}")
        shape = array.shape
        if cls.name in found:
            raise ValueError(f"two masks given for class {cls.name!r}")
        found[cls.name] = array
    wanted = _wanted(classes)
    drawn = [cls for cls in DISTORTIONS if cls.name in found and (wanted is None or cls.name in wanted)]
    return [(cls, found[cls.name]) for cls in drawn]


@lru_cache(maxsize=64)
def _blend_table(colors: tuple[tuple[int, int, int], ...], alpha: float, outline: bool) -> np.ndarray:
    """Lookup table of shape (3, n_codes * 256) uint8: entry [channel, code * 256 + value] is the drawn value.

    Layer j (color ``colors[j]``) tints codes with bit j set and, with ``outline``, paints codes with bit n + j set,
    layer after layer, exactly as drawing the layers one over another would (then rounded once). Every code's result is
    affine in the input value, ``value * scale[code] + offset[code, channel]``, which is tracked through the layers.
    """
    n = len(colors)
    codes = np.arange(1 << (2 * n if outline else n))[:, None]  # (n_codes, 1)
    scale = np.ones((len(codes), 1))  # (n_codes, 1)
    offset = np.zeros((len(codes), 3))  # (n_codes, 3)
    for j, color in enumerate(colors):
        tinted = ((codes >> j) & 1) == 1
        scale = np.where(tinted, scale * (1.0 - alpha), scale)
        offset = np.where(tinted, offset * (1.0 - alpha) + np.multiply(color, alpha), offset)
        if outline:
            painted = ((codes >> (n + j)) & 1) == 1
            scale = np.where(painted, 0.0, scale)
            offset = np.where(painted, color, offset)
    value = scale.T[:, :, None] * np.arange(256) + offset.T[:, :, None]  # (3 or 1, n_codes, 256) -> (3, n_codes, 256)
    table = np.rint(value).astype(np.uint8).reshape(3, -1)
    table.flags.writeable = False
    return table


def _strip_code(planes: list[np.ndarray], top: int, bottom: int, width: int) -> np.ndarray:
    """Per-pixel layer code of rows [top, bottom): (bottom - top, W) uint16, fill bits 0..n-1, outline bits n..2n-1."""
    # The erosion needs ``width`` rows of context above and below; wrong values at the context edges move one row per
    # step and so never reach the strip itself.
    first, last = max(0, top - width), min(planes[0].shape[0], bottom + width)
    bits = _pack_bits([plane[first:last] for plane in planes])
    rows = slice(top - first, bottom - first)
    code = bits[rows].astype(np.uint16)
    if width:
        edge = _inner_edge(bits, width)[rows].astype(np.uint16)
        edge *= np.uint16(1 << len(planes))
        code += edge
    return code


def _pack_bits(planes: list[np.ndarray]) -> np.ndarray:
    """Bool (h, W) planes (at most 8) to one uint8 (h, W) array with bit j = plane j."""
    bits = planes[0].view(np.uint8).copy()
    scratch = np.empty_like(bits)
    for j, plane in enumerate(planes[1:], 1):
        np.multiply(plane.view(np.uint8), np.uint8(1 << j), out=scratch)  # multiply: uint8 shifts are not vectorized
        bits += scratch  # the bits are disjoint, so + is |
    return bits


def _inner_edge(bits: np.ndarray, width: int) -> np.ndarray:
    """Bitwise inner boundary of every bit plane of ``bits`` (h, W) uint8: set where a 4-neighbour erosion repeated
    ``width`` times clears the bit. Beyond the array's edge its edge pixels are repeated: edges are not boundaries."""
    core = bits.copy()
    for _ in range(width):
        before = core.copy()
        core[1:] &= before[:-1]
        core[:-1] &= before[1:]
        core[:, 1:] &= before[:, :-1]
        core[:, :-1] &= before[:, 1:]
    return bits ^ core  # core is a subset of bits


def _apply_table(table: np.ndarray, code: np.ndarray, src: np.ndarray, dst: np.ndarray) -> None:
    """dst[y, x, c] = table[c, code[y, x] * 256 + src[y, x, c]] for src, dst (h, W, 3) uint8 and code (h, W) uint16;
    columns where every code is 0 are copied unchanged."""
    dst[...] = src
    active = np.flatnonzero(code.any(axis=0))
    if active.size == 0:
        return
    cols = slice(active[0], active[-1] + 1)
    base = code[:, cols].astype(np.intp)
    base *= 256
    index = np.empty_like(base)
    for channel in range(3):
        np.bitwise_or(base, src[:, cols, channel], out=index)
        dst[:, cols, channel] = table[channel].take(index)
