"""Reading user images faithfully: one upright, 8-bit RGB PIL image per photo, or an error a photographer understands.

`load_image` accepts a path, the file's bytes, or a PIL image, and returns a new ``PIL.Image.Image`` of mode "RGB"
at the file's full resolution (nothing is downscaled), turned upright by its EXIF orientation. Its pixel grid, rows y
from the top and columns x from the left, is the frame every mask and overlay of this package is expressed in. The
returned image carries no metadata (its ``info`` is empty): its orientation is applied and must not be applied again.
EXIF that cannot be parsed (a damaged block) is ignored and the photo used as stored, as browsers do.

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
with a side shorter than `MIN_SIDE` pixels. Whatever a damaged file makes PIL or pillow-heif raise while decoding is
reported that way (tests/test_fuzz_images.py fuzzes every format for it).

Memory: beyond what the decoder needs for the decoded image (at most 4 bytes a pixel in PIL, plus libjpeg's or
libwebp's working buffers), converting and turning it upright holds one more RGB image (4 bytes a pixel): large images
are converted in bands of rows, and the decoded image is freed before the upright copy is made. At MAX_PIXELS that is
about 640 MB for a JPEG, PNG, GIF or TIFF, also when a tiny file declares that size.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

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
_BAND_PIXELS = 1 << 20  # pixels converted at a time in a large image
# What decoding a damaged file raises: PIL's plugins raise OSError, SyntaxError, ValueError or EOFError, and while
# reading header fields that came late (a PNG chunk after the pixels, TIFF strip tags) they trust their length and
# type, so a short or mistyped field surfaces as struct.error or TypeError; pillow-heif reports libheif's errors
# (damaged stream, a size over libheif's own limits) as RuntimeError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, TypeError, RuntimeError)
_TRANSPOSITIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What PIL raises while parsing damaged EXIF (a TIFF structure): a bad header, short or out-of-range values.
_EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError, OSError, struct.error)


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


def jpeg_round_trip(image: Image.Image, quality: int, subsampling: int = 2) -> Image.Image:
    """An RGB image after one JPEG encode and decode at ``quality`` (1–95) with PIL's chroma ``subsampling`` (2:
    4:2:0, the cameras' and the web's default; 0: 4:4:4): what a photo's pixels are after a save as JPEG."""
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be 1–95, got {quality}")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def load_image_after_jpeg(source: ImageSource, quality: int | None) -> Image.Image:
    """``load_image(source)``, then one JPEG save at ``quality`` (4:2:0; ``jpeg_round_trip``) unless it is None: the
    image as evaluations under JPEG (``eval --jpeg``, ``training.probe_readout``) show it to a model."""
    image = load_image(source)
    return image if quality is None else jpeg_round_trip(image, quality)


def load_image(source: ImageSource) -> Image.Image:
    """Read an image as a new upright RGB, 8-bit PIL image of its full size (W, H as stored, after EXIF rotation).

    ``source``: a path (str or os.PathLike), the encoded file as bytes, or a PIL image (never modified).
    Raises ImageLoadError for unusable images and FileNotFoundError (naming the path) for a missing file.
    """
    if isinstance(source, Image.Image):
        return _upright(*_rgb(source, "cannot use the image"))
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
            rgb, transposition = _rgb(opened, label)
    del opened  # the decoded pixels are freed before the upright copy is made
    return _upright(rgb, transposition)


def _rgb(img: Image.Image, label: str) -> tuple[Image.Image, Image.Transpose | None]:
    """Check the header size, decode every pixel, read the EXIF orientation and convert to RGB (a new image);
    returns it with the transposition that turns it upright."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(_too_many_pixels(label, width * height))
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(
            f"{label}: the image is {width}×{height} pixels, too small (each side needs at least {MIN_SIDE} pixels)"
        )
    try:
        img.load()
    except _DECODE_ERRORS as err:
        raise ImageLoadError(f"{label}: {_TRUNCATED}") from err
    except MemoryError as err:
        raise ImageLoadError(f"{label}: there is not enough memory to decode this {width}×{height} image") from err
    return _to_rgb(img, label), _transposition(img)


def _transposition(img: Image.Image) -> Image.Transpose | None:
    """The transposition that turns ``img`` upright by its EXIF orientation (or XMP tiff:Orientation, as
    ``ImageOps.exif_transpose`` reads it); None when there is none. Damaged EXIF metadata is ignored, as browsers and
    photo viewers do, and the photo is used as stored."""
    try:
        return _TRANSPOSITIONS.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except _EXIF_ERRORS:
        return None


def _upright(rgb: Image.Image, transposition: Image.Transpose | None) -> Image.Image:
    """``rgb`` turned upright, without metadata (its orientation is applied: nothing may apply it again)."""
    if transposition is not None:
        rgb = rgb.transpose(transposition)
    rgb.info = {}
    return rgb


def _to_rgb(img: Image.Image, label: str) -> Image.Image:
    """Any PIL mode to 8-bit RGB (a new image); transparency is composited on white. Large images are converted in
    bands of rows, so that the conversion adds one RGB image to the decoded one and not several full-size buffers."""
    width, height = img.size
    full_scale = _full_scale(img) if img.mode in _HIGH_BIT_DEPTH_MODES else None
    rows = max(1, _BAND_PIXELS // width)
    if rows >= height:
        return _band_to_rgb(img, full_scale, label)
    out = Image.new("RGB", img.size)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        out.paste(_band_to_rgb(img.crop(box), full_scale, label), box)
    return out


def _band_to_rgb(img: Image.Image, full_scale: float | None, label: str) -> Image.Image:
    """One band of the image (or all of it) to 8-bit RGB; ``full_scale`` for high-bit-depth modes."""
    if full_scale is not None:
        img = _to_8bit_gray(img, full_scale)
    if img.has_transparency_data:
        try:
            rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        except ValueError as err:  # e.g. a PNG transparency table longer than its palette
            raise ImageLoadError(f"{label}: {_TRUNCATED}") from err
        rgb = Image.new("RGB", img.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba)  # alpha compositing on white, to the same rounding as Image.alpha_composite
        return rgb
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ImageLoadError(f"{label}: its color mode {img.mode} is not supported") from err


def _full_scale(img: Image.Image) -> float:
    """The value read as white in a 16/32-bit integer or float single-channel image: 65535 for integers; for float
    (F) images 1.0 when no value exceeds 1, else 255."""
    if img.mode != "F":
        return 65535.0
    rows = max(1, _BAND_PIXELS // img.width)
    peaks = [
        np.asarray(img.crop((0, top, img.width, min(img.height, top + rows)))).max()
        for top in range(0, img.height, rows)
    ]
    return 1.0 if np.max(peaks) <= 1.0 else 255.0


def _to_8bit_gray(img: Image.Image, full_scale: float) -> Image.Image:
    """A 16/32-bit integer or float single-channel image to mode "L", scaling 0..``full_scale`` to 0..255 (no
    clipping)."""
    values = np.array(img, dtype=np.float32)  # (H, W), a writable copy
    np.clip(values, 0.0, full_scale, out=values)
    values *= 255.0 / full_scale
    return Image.fromarray(np.rint(values, out=values).astype(np.uint8))


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
