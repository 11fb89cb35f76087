"""Reading user images faithfully: one upright, 8-bit RGB PIL image per photo, or an error a photographer understands.

`load_image` accepts a path, the file's bytes, or a PIL image, and returns a new ``PIL.Image.Image`` of mode "RGB"
at the file's full resolution (nothing is downscaled), turned upright by its EXIF orientation. Its pixel grid, rows y
from the top and columns x from the left, is the frame every mask and overlay of this package is expressed in.

Conversions: transparency (RGBA, LA, PA, P or L/RGB with a transparent color) is composited on white; palette,
grayscale, 1-bit, CMYK and YCbCr use PIL's conversion; 16-bit grayscale (I;16, 16-bit PNG/TIFF) and 32-bit integer (I)
images are read as 0..65535 and scaled by 255/65535, so mid-gray 32768 becomes 128 (PIL's own conversion would clip it
to 255); float (F) images are read as 0..1 when no value exceeds 1, else as 0..255. Animated GIF/APNG/MPO files give
their first frame; a PIL image passed in gives its current frame.

HEIC/HEIF photos (iPhone uploads) are read through the ``pillow-heif`` package, whose PIL opener is registered the
first time such a file is decoded (nothing is imported before). libheif turns them upright by the container's
rotation and mirror boxes (irot/imir, which iPhones write along with the EXIF tag) and pillow-heif then resets the EXIF
orientation to 1, so they are rotated exactly once; as in the HEIF standard and Apple's viewers, an EXIF orientation
without those boxes is ignored. Without pillow-heif installed a HEIC file is refused with a message naming the package.

Refused with `ImageLoadError`: empty files, files that are not images, truncated or damaged files (the whole image is
decoded before returning), images of more than `MAX_PIXELS` pixels (checked from the header, before decoding) and images
with a side shorter than `MIN_SIDE` pixels.
"""

from __future__ import annotations

import functools
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["MAX_PIXELS", "MIN_SIDE", "SUPPORTED_FORMATS", "ImageLoadError", "ImageSource", "fit_size", "load_image"]

MAX_PIXELS = 80_000_000
MIN_SIDE = 2
SUPPORTED_FORMATS = "JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF"

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image

_EMPTY = "the file is empty"
_NOT_AN_IMAGE = f"not an image PIL can read — supported: {SUPPORTED_FORMATS}"
_TRUNCATED = "the image file is truncated or damaged"
_NO_HEIF = "it is a HEIC/HEIF photo, and reading those needs the pillow-heif package (pip install pillow-heif)"

# File starts of the supported formats: a file that starts like an image but cannot be opened is damaged, not foreign.
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")
# ISO-BMFF major brands of HEIC/HEIF stills and sequences (at bytes 8..12, after "ftyp"): the ones pillow-heif opens.
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageLoadError(ValueError):
    """An image that cannot be used; the message says why in plain words and names the file when there is one."""


def fit_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(W, H) ``size`` scaled so its longer side is ``max_side`` (each side rounded, at least 1); unchanged when it
    already fits or ``max_side`` is None or 0."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_image(source: ImageSource) -> Image.Image:
    """Read an image as a new upright RGB, 8-bit PIL image of its full size (W, H as stored, after EXIF rotation).

    ``source``: a path (str or os.PathLike), the encoded file as bytes, or a PIL image (never modified).
    Raises ImageLoadError for unusable images and FileNotFoundError (naming the path) for a missing file.
    """
    if isinstance(source, Image.Image):
        return _upright_rgb(source, "cannot use the image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "cannot read the image")
    path = Path(source)
    return _decode(path.read_bytes(), f"cannot read {path}")


def _decode(data: bytes, label: str) -> Image.Image:
    """Open, check and fully decode an encoded image; ``label`` starts every error message."""
    if not data:
        raise ImageLoadError(f"{label}: {_EMPTY}")
    if _is_heif(data) and not _register_heif():
        raise ImageLoadError(f"{label}: {_NO_HEIF}")
    # PIL warns between 1x and 2x its own limit and raises above; a warning becomes an error here. (On Python < 3.14
    # concurrent threads may leave this filter installed, which only turns that warning into an error elsewhere too.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise ImageLoadError(f"{label}: {_unreadable_reason(data)}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(_too_many_pixels(label, _pixel_count(err))) from None
        except (OSError, ValueError, EOFError) as err:  # a recognized format whose header is broken
            raise ImageLoadError(f"{label}: {_TRUNCATED}") from err
        with opened:
            return _upright_rgb(opened, label)


def _upright_rgb(img: Image.Image, label: str) -> Image.Image:
    """Check the header size, decode every pixel, apply the EXIF orientation and convert to RGB (a new image)."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(_too_many_pixels(label, width * height))
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(
            f"{label}: the image is {width}×{height} pixels, too small (each side needs at least {MIN_SIDE} pixels)"
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageLoadError(f"{label}: {_TRUNCATED}") from err
    return _to_rgb(ImageOps.exif_transpose(img), label)


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        img = _to_8bit_gray(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageLoadError(f"{label}: its color mode {img.mode} is not supported") from err


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float single-channel image to mode "L", scaling its full range to 0..255 (no clipping)."""
    values = np.array(img, dtype=np.float32)  # (H, W), a writable copy
    if img.mode == "F":
        full_scale = 1.0 if values.max() <= 1.0 else 255.0
    else:
        full_scale = 65535.0
    np.clip(values, 0.0, full_scale, out=values)
    values *= 255.0 / full_scale
    return Image.fromarray(np.rint(values).astype(np.uint8))


def _is_heif(data: bytes) -> bool:
    """Whether ``data`` starts like a HEIC/HEIF file (an ISO-BMFF "ftyp" box with a HEIF brand)."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


@functools.cache
def _register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with PIL, once per process; False when pillow-heif is not installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _unreadable_reason(data: bytes) -> str:
    """Why PIL could not identify ``data``: a damaged image, or another kind of file (named when recognizable)."""
    if data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP") or _is_heif(data):
        return _TRUNCATED
    head = data[:4096].lstrip().lower()
    if head.startswith(b"%pdf-"):
        kind = "a PDF document"
    elif head.startswith((b"<!doctype html", b"<html")):
        kind = "an HTML web page"
    elif b"<svg" in head:
        kind = "an SVG drawing"
    else:
        return _NOT_AN_IMAGE
    return f"{_NOT_AN_IMAGE} (this file looks like {kind})"


def _pixel_count(err: Exception) -> int | None:
    """The pixel count in PIL's decompression-bomb message ("Image size (400000000 pixels) exceeds ..."), if present."""
    match = re.search(r"\((\d+) pixels\)", str(err))
    return int(match.group(1)) if match else None


def _too_many_pixels(label: str, pixels: int | None) -> str:
    """The message for an image above MAX_PIXELS."""
    size = "too many pixels" if pixels is None else f"{pixels:,} pixels"
    return (
        f"{label}: the image has {size}, more than the limit of {MAX_PIXELS:,} pixels "
        "(a safeguard against decompression bombs); reduce its size and try again"
    )
