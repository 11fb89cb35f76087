"""Fuzzing `qground.imageio.load_image`, the one loader behind the app, the CLI and the API, with damaged files.

Seeds: small valid files of every supported format, written here by PIL and pillow-heif (`seed_files`): JPEG
(baseline, progressive, CMYK, with rich EXIF: orientation, Exif/GPS IFDs, a maker-note blob, XMP), PNG (RGB, RGBA,
palette with transparency, 16-bit, Adam7-interlaced, APNG, with eXIf), WebP (lossy with EXIF, lossless, animated),
GIF (animated, transparent), TIFF (raw, LZW, deflate, PackBits, JPEG, zstd, 16-bit, 1-bit group4), HEIC (with EXIF
orientation, with alpha) and BMP.

Mutations (`MUTATIONS`): truncation at a random offset; bit flips in the header region or in the pixel data; random
byte runs overwritten, inserted or deleted; a chunk/segment/box/tag length field set to an odd value (PNG chunk, JPEG
segment, RIFF chunk, ISO-BMFF box, TIFF tag count, GIF sub-block, BMP header fields); huge (or zero) declared sizes
(PNG IHDR, JPEG SOF, GIF screen and frame, TIFF width/length tags, WebP VP8/VP8L/VP8X, HEIC ispe, BMP header);
EXIF blocks with looping/nested/out-of-range IFD offsets, huge counts and odd orientation values; duplicated or
inserted chunks/segments/boxes; two or three of these stacked. PNG CRCs are fixed after header edits (always for
sizes, else half of the time) so the decoder reads what was changed rather than stopping at the checksum.

Property, for every input, read from its bytes (even indices) or from a file in tmp_path (odd indices) like the app's
uploads: `load_image` returns a fully decoded RGB image with both sides ≥ MIN_SIDE and at most MAX_PIXELS pixels, or
raises ImageLoadError whose message is "<label>: <non-empty reason>"; nothing else escapes (no OSError, ValueError,
struct.error, zlib.error, MemoryError, DecompressionBombError, RecursionError...).

Time: at most `TIME_LIMIT` seconds of this process's CPU time per input (wall time is reported too; the machine is
shared, so only CPU time is a stable measure). A watchdog (SIGALRM, `WATCHDOG` seconds of wall time) stops a
Python-level endless loop so the run reports the case instead of hanging.

Memory: the growth of the process's peak resident memory during the call (Linux VmHWM, reset before each input
through /proc/self/clear_refs, after glibc's malloc_trim has handed freed memory back so that new allocations show as
new pages). PIL and the codecs allocate pixel buffers with malloc, which tracemalloc does not see, so RSS is the
measure that counts them. The limit is `memory_limit`: MEMORY_BASE (64 MiB) plus BYTES_PER_PIXEL (10) bytes per pixel
the header declares, as PIL reads it, up to MAX_PIXELS: PIL's decoded image takes up to 4 bytes a pixel, the returned
RGB image 4 more, and the decoders some working memory (libjpeg's coefficients). So a file gets memory for the size it
declares and no more (no amplification), and at MAX_PIXELS (80 MP) the limit, 827 MiB, is what a legitimate 80 MP
photo needs: a 100-byte file may legitimately declare 80 MP (a GIF screen, a JPEG whose missing rows libjpeg fills) and
the loader must then stay at that worst case. WebP gets WEBP_BYTES_PER_PIXEL (20): libwebp's decoder keeps two RGBA
canvases and PIL a copy of one, before the two images above (a legitimate 80 MP WebP peaks near 1.5 GB). Without
/proc, memory is not checked.

Quick run (default, CI): `QUICK_INPUTS` inputs spread round-robin over every (seed, mutation) pair, in about 20 s;
pytest's ``-s`` shows the counts per format and mutation and the largest time and memory per format.
Long run: `QGROUND_FUZZ=20000 PYTHONPATH=. python -m pytest -q tests/test_fuzz_images.py -k fuzzed` (the number of
inputs); `QGROUND_FUZZ_SEED=<int>` picks another master seed (default 0). Input i is fully determined by the master
seed and i; a failure is reported as ``seed=S index=I format=<seed file> mutation=<name> (<detail>)``, the failing
inputs are written to tmp_path, and ``make_case(seed_files(), S, I)`` rebuilds the same bytes. Nothing is written
outside tmp_path. Each bug the fuzzing found has a deterministic regression test at the end of this module.
"""

from __future__ import annotations

import ctypes
import functools
import io
import os
import random
import re
import signal
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pillow_heif import register_heif_opener

from qground.imageio import MAX_PIXELS, MIN_SIDE, ImageLoadError, load_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # PIL's "Corrupt EXIF data" and the like

QUICK_INPUTS = 2000
TIME_LIMIT = 3.0  # seconds of CPU time per input (this process's, all threads: other load on the machine adds none)
MiB = 2**20
MEMORY_BASE = 64 * MiB  # peak RSS growth any input may cause, whatever it declares (decoder state, buffers, EXIF)
BYTES_PER_PIXEL = 10  # and per declared pixel: PIL's decoded image (≤ 4 bytes) + the RGB result (4) + decoder state
WEBP_BYTES_PER_PIXEL = 20  # libwebp's decoder keeps two RGBA canvases and PIL a copy of one, before the two above
WATCHDOG = 20  # seconds: a case still running is interrupted and reported


# -- seed files --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    """A valid file: ``fmt`` is its container ("jpeg", "png", "webp", "gif", "tiff", "heic", "bmp"), ``size`` its
    upright (W, H) as load_image returns it."""

    name: str
    fmt: str
    data: bytes
    size: tuple[int, int]


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """The image encoded in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: color gradients plus sensor noise, so compressed data is a few KB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 128 / (width + height)], axis=-1)
    noise = rng.normal(0, 16, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@functools.cache
def rich_exif(orientation: int = 6) -> bytes:
    """EXIF as a phone writes it: ``orientation``, camera tags, an Exif IFD with a maker-note blob (itself shaped like
    an IFD) and a user comment, and a GPS IFD."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Apple"
    exif[0x0110] = "iPhone 15 Pro"
    exif[0x0131] = "17.4"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2024:05:01 12:00:00"
    sub[0x927C] = b"Apple iOS\x00\x00\x01MM\x00\x05" + bytes(range(96))
    sub[0x9286] = b"ASCII\x00\x00\x00a photo"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 29.5)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.2)
    return exif.tobytes()


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)
HEIC_ORIENTATION = {"heic": 6, "heic_alpha": 1}  # the EXIF orientation each HEIC seed is written with
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def interlaced_png(image: Image.Image) -> bytes:
    """``image`` (RGB) as an Adam7-interlaced PNG, which PIL cannot write: every pass's rows, filter type 0."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    rows = [
        b"\x00" + pixels[y, x0::dx].tobytes() for x0, y0, dx, dy in ADAM7 if x0 < width for y in range(y0, height, dy)
    ]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def seed_files() -> dict[str, Seed]:
    """Every seed file by name (built once; PIL's and pillow-heif's encoders are deterministic)."""
    register_heif_opener()
    w, h = 40, 24
    base = photo(w, h, 0)
    frames = [photo(w, h, seed) for seed in (1, 2, 3)]
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((w, h)))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    deep = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    orientation = Image.Exif()
    orientation[0x0112] = 6
    tiff_extra = {"dpi": (72, 72), "software": "qground fuzz", "description": "seed"}
    seeds = [
        Seed("jpeg_baseline", "jpeg", encode(base, "JPEG", quality=85), (w, h)),
        Seed("jpeg_progressive", "jpeg", encode(base, "JPEG", quality=85, progressive=True, optimize=True), (w, h)),
        Seed("jpeg_exif", "jpeg", encode(base, "JPEG", quality=85, exif=rich_exif(), xmp=XMP), (h, w)),
        Seed("jpeg_cmyk", "jpeg", encode(base.convert("CMYK"), "JPEG", quality=85), (w, h)),
        Seed("png_rgb", "png", encode(base, "PNG"), (w, h)),
        Seed("png_rgba", "png", encode(rgba, "PNG"), (w, h)),
        Seed("png_palette", "png", encode(palette, "PNG", transparency=0), (w, h)),
        Seed("png_16bit", "png", encode(deep, "PNG"), (w, h)),
        Seed("png_interlaced", "png", interlaced_png(base), (w, h)),
        Seed("png_exif", "png", encode(base, "PNG", exif=orientation), (h, w)),
        Seed("png_apng", "png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=40), (w, h)),
        Seed("webp_lossy", "webp", encode(base, "WEBP", quality=80, exif=rich_exif()), (h, w)),
        Seed("webp_lossless", "webp", encode(rgba, "WEBP", lossless=True), (w, h)),
        Seed("webp_animated", "webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), (w, h)),
        Seed("gif_animated", "gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), (w, h)),
        Seed("gif_transparent", "gif", encode(palette, "GIF", transparency=0), (w, h)),
        Seed("tiff_raw", "tiff", encode(base, "TIFF", **tiff_extra), (w, h)),
        Seed("tiff_lzw", "tiff", encode(base, "TIFF", compression="tiff_lzw", **tiff_extra), (w, h)),
        Seed("tiff_deflate", "tiff", encode(rgba, "TIFF", compression="tiff_adobe_deflate", **tiff_extra), (w, h)),
        Seed("tiff_packbits", "tiff", encode(base, "TIFF", compression="packbits", exif=orientation), (h, w)),
        Seed("tiff_jpeg", "tiff", encode(base, "TIFF", compression="jpeg", **tiff_extra), (w, h)),
        Seed("tiff_16bit", "tiff", encode(deep, "TIFF", **tiff_extra), (w, h)),
        Seed("tiff_group4", "tiff", encode(base.convert("1"), "TIFF", compression="group4", **tiff_extra), (w, h)),
        Seed("heic", "heic", encode(base, "HEIF", quality=60, exif=rich_exif(6)), (h, w)),
        Seed("heic_alpha", "heic", encode(rgba, "HEIF", quality=60, exif=rich_exif(1)), (w, h)),
        Seed("bmp", "bmp", encode(base, "BMP"), (w, h)),
    ]
    if tiff_writes("zstd"):
        seeds.append(Seed("tiff_zstd", "tiff", encode(base, "TIFF", compression="zstd", **tiff_extra), (w, h)))
    return {seed.name: seed for seed in seeds}


def tiff_writes(compression: str) -> bool:
    """Whether this PIL's libtiff can write TIFF with ``compression`` (builds differ)."""
    try:
        encode(Image.new("RGB", (2, 2)), "TIFF", compression=compression)
    except (OSError, ValueError):
        return False
    return True


# -- file layouts: where the chunks, length fields and size fields are -------------------------------------------------
@dataclass(frozen=True)
class Field:
    """An unsigned integer field in a file: ``size`` bytes at ``offset``, byte order ``order`` ("<" or ">")."""

    offset: int
    size: int
    order: str

    def read(self, data: bytes | bytearray) -> int:
        return int.from_bytes(data[self.offset : self.offset + self.size], "little" if self.order == "<" else "big")

    def write(self, data: bytearray, value: int) -> None:
        value %= 1 << (8 * self.size)
        data[self.offset : self.offset + self.size] = value.to_bytes(
            self.size, "little" if self.order == "<" else "big"
        )


@dataclass(frozen=True)
class Segment:
    """A chunk, segment, box, block or tag entry: bytes [start, end), its ``lengths`` fields and the length fields of
    the boxes it sits in (``parents``), which grow when a segment is inserted next to it."""

    name: str
    start: int
    end: int
    lengths: tuple[Field, ...] = ()
    parents: tuple[Field, ...] = ()


def png_chunks(data: bytes) -> list[Segment]:
    """The PNG chunks after the signature."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        end = pos + 12 + struct.unpack_from(">I", data, pos)[0]
        if end > len(data):
            break
        out.append(Segment(data[pos + 4 : pos + 8].decode("latin-1"), pos, end, (Field(pos, 4, ">"),)))
        pos = end
    return out


def fix_png_crcs(data: bytearray) -> None:
    """Recompute the CRC of every PNG chunk that fits in the file, so the decoder reads the edited fields."""
    for chunk in png_chunks(bytes(data)):
        crc = zlib.crc32(bytes(data[chunk.start + 4 : chunk.end - 4]))
        data[chunk.end - 4 : chunk.end] = struct.pack(">I", crc)


def jpeg_segments(data: bytes) -> list[Segment]:
    """The JPEG marker segments after SOI; an SOS segment includes the entropy-coded data that follows it."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        if end > len(data):
            break
        if marker == 0xDA:
            while True:
                end = data.find(b"\xff", end)
                if end < 0 or end + 1 >= len(data):
                    end = len(data)
                    break
                if data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7:
                    break
                end += 2
        out.append(Segment(f"FF{marker:02X}", pos, end, (Field(pos + 2, 2, ">"),)))
        pos = end
    return out


def riff_chunks(data: bytes) -> list[Segment]:
    """The WebP RIFF chunks, and the chunks inside animation frames (ANMF)."""
    riff = Field(4, 4, "<")

    def walk(pos: int, stop: int, parents: tuple[Field, ...]) -> list[Segment]:
        out = []
        while pos + 8 <= stop:
            size = struct.unpack_from("<I", data, pos + 4)[0]
            end = pos + 8 + size + (size & 1)
            if end > stop:
                break
            name = data[pos : pos + 4].decode("latin-1")
            out.append(Segment(name, pos, end, (Field(pos + 4, 4, "<"),), parents))
            if name == "ANMF":
                out += walk(pos + 24, end, (*parents, Field(pos + 4, 4, "<")))
            pos = end
        return out

    return walk(12, len(data), (riff,))


BOX_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"dinf": 0, b"iref": 4, b"iinf": 6, b"moov": 0, b"trak": 0}


def bmff_boxes(data: bytes) -> list[Segment]:
    """The ISO-BMFF boxes of a HEIC file, with the boxes nested in meta, iprp, ipco, iinf, iref and dinf."""

    def walk(pos: int, stop: int, parents: tuple[Field, ...]) -> list[Segment]:
        out = []
        while pos + 8 <= stop:
            size = struct.unpack_from(">I", data, pos)[0]
            kind = data[pos + 4 : pos + 8]
            if size < 8 or pos + size > stop:
                break
            out.append(Segment(kind.decode("latin-1"), pos, pos + size, (Field(pos, 4, ">"),), parents))
            if kind in BOX_CONTAINERS:
                out += walk(pos + 8 + BOX_CONTAINERS[kind], pos + size, (*parents, Field(pos, 4, ">")))
            pos += size
        return out

    return walk(0, len(data), ())


def tiff_order(data: bytes) -> str:
    """The struct byte order of a TIFF file."""
    return "<" if data[:2] == b"II" else ">"


def tiff_entries(data: bytes) -> list[Segment]:
    """The 12-byte tag entries of every IFD in the chain (named by tag number); their count field is the length."""
    order, out, seen = tiff_order(data), [], set()
    offset = struct.unpack_from(order + "I", data, 4)[0]
    while 8 <= offset <= len(data) - 2 and offset not in seen:
        seen.add(offset)
        count = struct.unpack_from(order + "H", data, offset)[0]
        for k in range(count):
            entry = offset + 2 + 12 * k
            if entry + 12 > len(data):
                return out
            tag = struct.unpack_from(order + "H", data, entry)[0]
            out.append(Segment(str(tag), entry, entry + 12, (Field(entry + 4, 4, order),)))
        link = offset + 2 + 12 * count
        if link + 4 > len(data):
            break
        offset = struct.unpack_from(order + "I", data, link)[0]
    return out


def gif_blocks(data: bytes) -> list[Segment]:
    """The GIF extension and image blocks after the screen descriptor; every data sub-block size is a length."""
    if len(data) < 13:
        return []
    flags, pos, out = data[10], 13, []
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    while pos < len(data) and data[pos] in (0x21, 0x2C):
        start = pos
        if data[pos] == 0x21:
            name, pos = f"ext{data[pos + 1]:02X}" if pos + 1 < len(data) else "ext", pos + 2
        else:
            if pos + 10 > len(data):
                break
            local = data[pos + 9]
            name, pos = "image", pos + 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        sizes = []
        while pos < len(data) and data[pos]:
            sizes.append(Field(pos, 1, "<"))
            pos += 1 + data[pos]
        pos = min(pos + 1, len(data))
        out.append(Segment(name, start, pos, tuple(sizes)))
    return out


def bmp_fields(data: bytes) -> list[Segment]:
    """The BMP header as one segment whose lengths are bfSize, bfOffBits, biSize, biSizeImage and biClrUsed."""
    fields = tuple(Field(offset, 4, "<") for offset in (2, 10, 14, 34, 46) if offset + 4 <= len(data))
    return [Segment("header", 0, min(len(data), 54), fields)]


SEGMENTS: dict[str, Callable[[bytes], list[Segment]]] = {
    "png": png_chunks,
    "jpeg": jpeg_segments,
    "webp": riff_chunks,
    "heic": bmff_boxes,
    "tiff": tiff_entries,
    "gif": gif_blocks,
    "bmp": bmp_fields,
}


def header_end(data: bytes, fmt: str) -> int:
    """Where the pixel data starts (the header region is before): first IDAT, SOS, image block, VP8 payload, mdat,
    strip, bitmap."""
    segments = SEGMENTS[fmt](data)
    names = {
        "png": ("IDAT",),
        "jpeg": ("FFDA",),
        "gif": ("image",),
        "webp": ("VP8 ", "VP8L", "ANMF"),
        "heic": ("mdat",),
    }
    for segment in segments:
        if segment.name in names.get(fmt, ()):
            return segment.start + 8
    if fmt == "tiff":
        offsets = [Field(s.start + 8, 4, tiff_order(data)).read(data) for s in segments if s.name in ("273", "324")]
        return min([o for o in offsets if 8 < o < len(data)], default=len(data) // 4)
    if fmt == "bmp" and len(data) >= 14:
        return min(len(data), struct.unpack_from("<I", data, 10)[0])
    return min(len(data), 64)


# -- mutations ---------------------------------------------------------------------------------------------------------
Mutation = Callable[[bytearray, Seed, random.Random], str]


def truncate(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Cut the file at a random offset (at least one byte kept)."""
    cut = rng.randrange(1, len(data))
    del data[cut:]
    return f"cut at {cut} of {len(seed.data)}"


def flip_bits(data: bytearray, start: int, stop: int, rng: random.Random, count: int) -> str:
    """Flip ``count`` random bits in data[start:stop]; the detail lists the offsets."""
    offsets = []
    for _ in range(count):
        offset = rng.randrange(start, max(start + 1, stop))
        data[offset] ^= 1 << rng.randrange(8)
        offsets.append(offset)
    return f"bits at {sorted(offsets)}"


def maybe_fix_crcs(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Half of the time, make PNG CRCs valid again so the decoder reads the damage instead of the checksum."""
    if seed.fmt == "png" and rng.random() < 0.5:
        fix_png_crcs(data)
        return ", CRCs fixed"
    return ""


def flip_header(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Flip 1..4 bits in the header region (before the pixel data)."""
    detail = flip_bits(data, 0, header_end(seed.data, seed.fmt), rng, rng.randint(1, 4))
    return detail + maybe_fix_crcs(data, seed, rng)


def flip_data(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Flip 1..16 bits in the pixel data."""
    return flip_bits(data, min(header_end(seed.data, seed.fmt), len(data) - 1), len(data), rng, rng.randint(1, 16))


def random_bytes(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Overwrite, insert or delete a run of 1..64 bytes (random, 0x00 or 0xFF) at a random offset."""
    offset, length = rng.randrange(len(data)), rng.randint(1, 64)
    fill = rng.choice(["random", "zeros", "ones"])
    run = {"random": rng.randbytes(length), "zeros": bytes(length), "ones": b"\xff" * length}[fill]
    action = rng.choice(["overwrite", "insert", "delete"])
    if action == "overwrite":
        data[offset : offset + length] = run[: len(data) - offset]
    elif action == "insert":
        data[offset:offset] = run
    else:
        del data[offset : offset + length]
    return f"{action} {length} {fill} bytes at {offset}" + maybe_fix_crcs(data, seed, rng)


def odd_values(current: int, size: int, rng: random.Random) -> int:
    """A value a damaged or hostile file would put in a ``size``-byte field that now holds ``current``."""
    top = (1 << (8 * size)) - 1
    edges = (0, 1, 2, current - 1, current + 1, current * 2, current // 2, top, top >> 1, (top >> 1) + 1)
    return (rng.choice(edges) if rng.random() < 0.8 else rng.randint(0, top)) % (top + 1)


def bad_length(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Set a chunk/segment/box/tag length field to a wrong value."""
    fields = [(s.name, f) for s in SEGMENTS[seed.fmt](seed.data) for f in s.lengths]
    name, target = rng.choice(fields)
    old = target.read(data)
    new = odd_values(old, target.size, rng)
    target.write(data, new)
    return f"{name} length at {target.offset}: {old} -> {new}" + maybe_fix_crcs(data, seed, rng)


SIZE_KINDS = ("zero", "one", "field_max", "wide", "tall", "over_limit", "random", "moderate", "near_limit")
SIZE_WEIGHTS = (2, 2, 2, 2, 2, 2, 3, 1, 1)  # near the limit PIL allocates ~320 MB: kept rare so the run stays quick


def huge_dims(rng: random.Random, width: int, height: int, top: int) -> tuple[str, int, int]:
    """A declared (W, H) for a field holding at most ``top``: zero, one, maximal, just over or near MAX_PIXELS..."""
    kind = rng.choices(SIZE_KINDS, SIZE_WEIGHTS)[0]
    side = int(MAX_PIXELS**0.5)
    dims = {
        "zero": rng.choice([(0, height), (width, 0), (0, 0)]),
        "one": rng.choice([(1, height), (width, 1), (1, 1)]),
        "field_max": (top, top),
        "wide": (top, height),
        "tall": (width, top),
        "over_limit": (side + 1, side + 1),
        "random": (rng.randint(0, top), rng.randint(0, top)),
        "moderate": (4000, 3000),
        "near_limit": (10_000, MAX_PIXELS // 10_000),
    }[kind]
    return kind, min(dims[0], top), min(dims[1], top)


def huge_size(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Declare a huge, zero or odd image size where the format stores it (PNG CRC fixed so PIL reads it)."""
    w, h = seed.size
    fmt = seed.fmt
    if fmt == "png":
        chunk = rng.choice([c for c in png_chunks(seed.data) if c.name in ("IHDR", "fcTL")])
        start = chunk.start + 8 + (4 if chunk.name == "fcTL" else 0)
        kind, nw, nh = huge_dims(rng, w, h, 2**31 - 1 if rng.random() < 0.7 else 2**32 - 1)
        Field(start, 4, ">").write(data, nw)
        Field(start + 4, 4, ">").write(data, nh)
        fix_png_crcs(data)
        where = chunk.name
    elif fmt == "jpeg":
        sof = rng.choice([s for s in jpeg_segments(seed.data) if s.name in ("FFC0", "FFC1", "FFC2")])
        kind, nw, nh = huge_dims(rng, w, h, 0xFFFF)
        Field(sof.start + 5, 2, ">").write(data, nh)
        Field(sof.start + 7, 2, ">").write(data, nw)
        where = sof.name
    elif fmt == "gif":
        images = [b for b in gif_blocks(seed.data) if b.name == "image"]
        start, where = (6, "screen") if rng.random() < 0.5 else (rng.choice(images).start + 5, "frame")
        kind, nw, nh = huge_dims(rng, w, h, 0xFFFF)
        Field(start, 2, "<").write(data, nw)
        Field(start + 2, 2, "<").write(data, nh)
    elif fmt == "tiff":
        order = tiff_order(seed.data)
        kind, nw, nh = huge_dims(rng, w, h, 2**32 - 1)
        for entry in tiff_entries(seed.data):
            if entry.name in ("256", "257"):
                struct.pack_into(order + "HI", data, entry.start + 2, 4, 1)  # type LONG, count 1
                Field(entry.start + 8, 4, order).write(data, nw if entry.name == "256" else nh)
        where = "ImageWidth/ImageLength"
    elif fmt == "webp":
        where, kind, nw, nh = set_webp_size(data, seed, rng)
    elif fmt == "heic":
        ispe = rng.choice([b for b in bmff_boxes(seed.data) if b.name == "ispe"])
        kind, nw, nh = huge_dims(rng, w, h, 2**32 - 1)
        Field(ispe.start + 12, 4, ">").write(data, nw)
        Field(ispe.start + 16, 4, ">").write(data, nh)
        where = f"ispe at {ispe.start}"
    else:  # bmp: signed 32-bit width and height (a negative height is top-down)
        kind, nw, nh = huge_dims(rng, w, h, 2**32 - 1)
        Field(18, 4, "<").write(data, nw)
        Field(22, 4, "<").write(data, nh)
        where = "BITMAPINFOHEADER"
    return f"{where} claims {nw}x{nh} ({kind})"


def set_webp_size(data: bytearray, seed: Seed, rng: random.Random) -> tuple[str, str, int, int]:
    """Declare a size in a WebP file: the VP8X canvas (24 bits, minus one), a VP8 frame (14 bits) or a VP8L stream
    (14 bits, minus one), or an ANMF frame (24 bits, minus one)."""
    w, h = seed.size
    chunks = [c for c in riff_chunks(seed.data) if c.name in ("VP8X", "VP8 ", "VP8L", "ANMF")]
    chunk = rng.choice(chunks)
    payload = chunk.start + 8
    if chunk.name in ("VP8X", "ANMF"):
        kind, nw, nh = huge_dims(rng, w, h, 1 << 24)
        at = payload + (4 if chunk.name == "VP8X" else 6)
        Field(at, 3, "<").write(data, nw - 1)
        Field(at + 3, 3, "<").write(data, nh - 1)
    elif chunk.name == "VP8 ":
        kind, nw, nh = huge_dims(rng, w, h, 0x3FFF)
        for at, value in ((payload + 6, nw), (payload + 8, nh)):
            scale = Field(at, 2, "<").read(data) & 0xC000
            Field(at, 2, "<").write(data, scale | value)
    else:
        kind, nw, nh = huge_dims(rng, w, h, 1 << 14)
        word = Field(payload + 1, 4, "<").read(data)
        word = (word & ~0x0FFFFFFF) | ((nw - 1) & 0x3FFF) | (((nh - 1) & 0x3FFF) << 14)
        Field(payload + 1, 4, "<").write(data, word)
    return chunk.name, kind, nw, nh


def hostile_exif(rng: random.Random, order: str, base: int) -> tuple[bytes, str]:
    """IFDs a hostile file might carry, to be placed at offset ``base`` of a TIFF structure with byte order ``order``:
    IFD0 with an orientation of odd type or value, an Exif pointer that loops to IFD0, cycles back from the end of
    a chain, points at itself, past the end or at an odd offset, a deep chain of Exif/GPS/Interop IFDs, entries with
    huge counts, a maker note that is IFD0 again, an IFD claiming 65535 entries, a next-IFD link that loops. Returns
    the bytes (IFD0 first) and a description."""
    tricks = rng.sample(
        ["loop_ifd0", "cycle", "self_loop", "past_end", "odd_offset", "next_loop", "deep_chain", "huge_count"]
        + ["many_entries", "maker_note"],
        rng.randint(1, 4),
    )
    orientation = rng.choice(
        [(3, 1, 6), (3, 1, 0), (3, 1, 9), (3, 1, 0xFFFF), (4, 1, 2**31), (2, 4, 0x36), (5, 1, 0x7FFF_FFF0), (3, 0, 6)]
    )
    depth = rng.choice([2, 50, 400]) if "deep_chain" in tricks else 1
    # entries are (tag, type, count, value); a value None is the pointer to the next IFD of the chain
    ifds: list[list[tuple[int, int, int, int | None]]] = [[(0x0112, *orientation), (0x8769, 4, 1, None)]]
    for _ in range(depth):
        ifds.append([(0x9003, 2, 4, 0x3A303032), (rng.choice([0x8769, 0x8825, 0xA005]), 4, 1, None)])
    if "huge_count" in tricks:
        ifds[0].insert(0, (0x010F, 2, 0xFFFF_FFFF, 0))
        ifds[-1].insert(0, (0x0111, 4, 0x4000_0000, 8))
    starts, pos = [], base
    for entries in ifds:
        starts.append(pos)
        pos += 2 + 12 * len(entries) + 4
    end = pos
    if "maker_note" in tricks:
        ifds[-1].insert(0, (0x927C, 7, 64, starts[0]))  # a maker note that is IFD0 again (in the last IFD: no move)
    targets = [*starts[1:], 0]  # each IFD points at the next one; the last points nowhere
    if "loop_ifd0" in tricks:
        targets[0] = starts[0]
    if "past_end" in tricks:
        targets[0] = end + 10_000
    if "odd_offset" in tricks:
        targets[0] = starts[-1] + 1
    if "cycle" in tricks:
        targets[-1] = starts[0]
    if "self_loop" in tricks:
        targets[-1] = starts[-1]
    out = bytearray()
    for k, entries in enumerate(ifds):
        declared = 0xFFFF if k == 0 and "many_entries" in tricks else len(entries)
        block = struct.pack(order + "H", declared)
        for tag, kind, count, value in entries:
            value = targets[k] if value is None else value
            if kind == 3 and count <= 2:
                block += struct.pack(order + "HHIHH", tag, kind, count, value & 0xFFFF, 0)
            else:
                block += struct.pack(order + "HHII", tag, kind, count, value & 0xFFFF_FFFF)
        link = starts[0] if "next_loop" in tricks and k == 0 else 0
        out += block + struct.pack(order + "I", link)
    return bytes(out), f"{'+'.join(sorted(tricks))}, orientation {orientation}, depth {depth}"


def exif_block(rng: random.Random) -> tuple[bytes, str]:
    """A complete hostile TIFF-structured EXIF block (header at 0, IFD0 at 8)."""
    order = rng.choice("<>")
    ifds, detail = hostile_exif(rng, order, 8)
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    return header + ifds, detail


def exif_loop(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Give the file hostile EXIF where its format keeps it (JPEG APP1, PNG eXIf, WebP EXIF, the TIFF's own IFDs,
    the HEIC Exif item overwritten in place)."""
    if seed.fmt == "tiff":
        return tiff_exif_loop(data, seed, rng)
    block, detail = exif_block(rng)
    if seed.fmt == "jpeg":
        data[2:2] = b"\xff\xe1" + struct.pack(">H", len(block) + 8) + b"Exif\0\0" + block
        return f"APP1 after SOI: {detail}"
    if seed.fmt == "png":
        ihdr = png_chunks(seed.data)[0]
        data[ihdr.end : ihdr.end] = png_chunk(b"eXIf", block)
        return f"eXIf after IHDR: {detail}"
    if seed.fmt == "webp":
        chunks = [c for c in riff_chunks(seed.data) if c.name == "EXIF"]
        chunk = b"EXIF" + struct.pack("<I", len(block)) + block + b"\0" * (len(block) & 1)
        if chunks:
            data[chunks[0].start : chunks[0].end] = chunk
        else:
            data += chunk
        Field(4, 4, "<").write(data, len(data) - 8)
        return f"EXIF chunk {'replaced' if chunks else 'appended'}: {detail}"
    # heic: overwrite the Exif item's TIFF structure in place (its extent is fixed by the iloc box)
    original = rich_exif(HEIC_ORIENTATION[seed.name])
    start = seed.data.find(original)
    if start < 0:
        raise ValueError("no intact Exif item to overwrite")  # in a file an earlier stacked mutation damaged
    kept = min(len(original), len(block))
    data[start : start + kept] = block[:kept]
    return f"Exif item at {start} overwritten ({kept} of {len(block)} bytes): {detail}"


TIFF_IMAGE_TAGS = {"256", "257", "258", "259", "262", "273", "277", "278", "279", "284", "317", "338", "339", "347"}


def tiff_exif_loop(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Point a non-essential tag of a TIFF's IFD0 at hostile IFDs appended to the file, as Exif, GPS or SubIFDs."""
    order = tiff_order(seed.data)
    spare = [e for e in tiff_entries(seed.data) if e.name not in TIFF_IMAGE_TAGS]
    entry = rng.choice(spare)
    first = len(data) + (len(data) & 1)
    ifds, detail = hostile_exif(rng, order, first)
    data += b"\0" * (len(data) & 1) + ifds
    tag = rng.choice([0x8769, 0x8825, 0x014A])
    struct.pack_into(order + "HHII", data, entry.start, tag, 4, 1, first)
    if rng.random() < 0.3:  # and the IFD chain loops back on itself
        ifd0 = struct.unpack_from(order + "I", data, 4)[0]
        count = struct.unpack_from(order + "H", data, ifd0)[0]
        struct.pack_into(order + "I", data, ifd0 + 2 + 12 * count, ifd0)
        detail += ", IFD0 links to itself"
    return f"tag {entry.name} -> {tag:#x} at {first}: {detail}"


def duplicate(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Duplicate a chunk/segment/box/block (placed right after itself or elsewhere among its siblings), or insert a
    new one with random content and a consistent length (and CRC)."""
    segments = [s for s in SEGMENTS[seed.fmt](seed.data) if s.end - s.start < 200_000]
    if seed.fmt == "bmp" or not segments:
        start = rng.randrange(len(data))
        piece = bytes(data[start : start + rng.randint(1, 256)])
        at = rng.randrange(len(data))
        data[at:at] = piece
        return f"{len(piece)} bytes from {start} copied to {at}"
    segment = rng.choice(segments)
    siblings = [s for s in segments if s.parents == segment.parents]
    at = segment.end if rng.random() < 0.5 else rng.choice(siblings).start
    if rng.random() < 0.7:
        piece = bytes(seed.data[segment.start : segment.end])
        what = f"{segment.name} [{segment.start}, {segment.end}) duplicated"
    else:
        piece = new_segment(seed.fmt, rng)
        what = f"new {len(piece)}-byte segment"
    if seed.fmt == "tiff":  # entries are a fixed-size table: overwrite the neighbouring entry instead
        at = min(segment.end, len(data) - 12)
        data[at : at + 12] = piece[:12]
        return f"{what} over the entry at {at}"
    data[at:at] = piece
    for parent in segment.parents:
        parent.write(data, parent.read(data) + len(piece))
    return f"{what}, inserted at {at}"


PNG_CHUNK_TYPES = tuple(  # critical, APNG, metadata and an unknown one
    b"IHDR PLTE IDAT IEND tRNS eXIf acTL fcTL fdAT iCCP zTXt iTXt tEXt gAMA cHRM sRGB sBIT pHYs bKGD zzZz".split()
)
JPEG_SEGMENTS = (  # (marker, payload start): frame, tables, restart interval, scan, and APPn with their signatures
    *((marker, b"") for marker in (0xC0, 0xC2, 0xC4, 0xDB, 0xDD, 0xDA, 0xFE)),
    (0xE0, b"JFIF\0"),
    (0xE1, b"Exif\0\0"),
    (0xE1, b"http://ns.adobe.com/xap/1.0/\0"),
    (0xE2, b"ICC_PROFILE\0"),
    (0xE2, b"MPF\0"),
    (0xEE, b"Adobe"),
)


def new_segment(fmt: str, rng: random.Random) -> bytes:
    """A fresh segment of the format with a random payload and a length that matches it."""
    payload = rng.randbytes(rng.choice([0, 1, 13, 100, 1000]))
    if fmt == "png":
        return png_chunk(rng.choice(PNG_CHUNK_TYPES), payload)
    if fmt == "jpeg":
        marker, signature = rng.choice(JPEG_SEGMENTS)
        payload = (signature + payload)[:65000]
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    if fmt == "webp":
        kind = rng.choice([b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF"])
        return kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)
    if fmt == "heic":
        kind = rng.choice([b"ftyp", b"meta", b"iloc", b"ispe", b"irot", b"imir", b"pitm", b"mdat", b"free"])
        return struct.pack(">I", len(payload) + 8) + kind + payload
    if fmt == "gif":  # an extension (graphic control, application, comment) or an image block, with one sub-block
        intro = rng.choice([b"\x21\xf9", b"\x21\xff", b"\x21\xfe", b"\x2c" + rng.randbytes(9) + b"\x08"])
        return intro + bytes([len(payload[:255])]) + payload[:255] + b"\0"
    # tiff: an IFD entry (tag, type, count, value or offset)
    return struct.pack("<HHII", rng.randrange(65536), rng.randint(1, 12), rng.randrange(2**32), rng.randrange(2**32))


def stacked(data: bytearray, seed: Seed, rng: random.Random) -> str:
    """Two or three of the other mutations in a row, each reading the layout of the file the previous one left (a
    step that finds nothing to work on in the damaged file is skipped)."""
    steps = []
    for _ in range(rng.randint(2, 3)):
        name = rng.choice([m for m in MUTATIONS if m != "stacked" and (m != "exif_loop" or seed.fmt in EXIF_FORMATS)])
        current = Seed(seed.name, seed.fmt, bytes(data), seed.size)
        attempt = bytearray(data)
        try:
            detail = MUTATIONS[name](attempt, current, rng)
        except (IndexError, ValueError, struct.error, OverflowError):
            steps.append(f"{name} skipped")
            continue
        if attempt:
            data[:] = attempt
            steps.append(f"{name} ({detail})")
    return "; ".join(steps)


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_header": flip_header,
    "flip_data": flip_data,
    "random_bytes": random_bytes,
    "bad_length": bad_length,
    "huge_size": huge_size,
    "exif_loop": exif_loop,
    "duplicate": duplicate,
    "stacked": stacked,
}
EXIF_FORMATS = ("jpeg", "png", "webp", "tiff", "heic")


def pairs(seeds: dict[str, Seed]) -> list[tuple[str, str]]:
    """Every (seed name, mutation name) that applies (EXIF only where the format carries it), in a fixed order."""
    return [
        (name, mutation)
        for name, seed in seeds.items()
        for mutation in MUTATIONS
        if mutation != "exif_loop" or seed.fmt in EXIF_FORMATS
    ]


@dataclass(frozen=True)
class Case:
    """One fuzzed input and how it was made."""

    master: int
    index: int
    seed: str
    mutation: str
    detail: str
    data: bytes

    def __str__(self) -> str:
        return f"seed={self.master} index={self.index} format={self.seed} mutation={self.mutation} ({self.detail})"


def make_case(seeds: dict[str, Seed], master: int, index: int) -> Case:
    """Input ``index`` of the run with master seed ``master``: the pair is chosen round-robin, every random choice
    comes from a generator seeded by both numbers."""
    all_pairs = pairs(seeds)
    name, mutation = all_pairs[index % len(all_pairs)]
    rng = random.Random(f"qground-fuzz:{master}:{index}")
    data = bytearray(seeds[name].data)
    detail = MUTATIONS[mutation](data, seeds[name], rng)
    return Case(master, index, name, mutation, detail, bytes(data))


# -- running one input under measurement -------------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the watchdog in a case that runs far past the time limit (a BaseException: nothing catches it)."""


@dataclass
class Outcome:
    """What load_image did with one input: ``result`` ("ok WxH" or the error type), the problem if it broke the
    property (else None), its CPU and wall time, its peak memory growth (None when not measurable) and the memory
    limit."""

    result: str
    problem: str | None
    seconds: float
    wall_seconds: float
    peak_bytes: int | None
    limit_bytes: int


def declared(data: bytes) -> tuple[int, str | None]:
    """(W × H, PIL format) as PIL reads them from the header without decoding: (0, None) when PIL cannot open the
    file, MAX_PIXELS when PIL itself refuses it as a decompression bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.width * image.height, image.format
        except Image.DecompressionBombError:
            return MAX_PIXELS, None
        except Exception:  # noqa: BLE001 - whatever PIL makes of the header, the loader gets nothing bigger
            return 0, None


def memory_limit(pixels: int, fmt: str | None) -> int:
    """The most an input may add to the peak RSS: MEMORY_BASE plus BYTES_PER_PIXEL (WebP: WEBP_BYTES_PER_PIXEL) for
    each pixel its header declares, up to MAX_PIXELS."""
    per_pixel = WEBP_BYTES_PER_PIXEL if fmt == "WEBP" else BYTES_PER_PIXEL
    return MEMORY_BASE + per_pixel * min(pixels, MAX_PIXELS)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1)) * 1024


class PeakRss:
    """Peak resident memory of this process during a block, above what was resident at its start (``peak``, None
    where it cannot be measured). Before the block, memory the C allocator keeps after frees is handed back
    (glibc's malloc_trim), so that what the block allocates shows as new resident pages, and Linux's high-water mark
    (VmHWM) is reset through /proc/self/clear_refs; after it, VmHWM is read."""

    def __init__(self) -> None:
        try:
            self._trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            self._trim = None
        try:
            self._reset()
            _status_bytes("VmHWM")
            self.available = True
        except (OSError, AttributeError):
            self.available = False
        self.peak: int | None = None

    def _reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def __enter__(self) -> PeakRss:
        self.peak = None
        if self.available:
            if self._trim is not None:
                self._trim(0)
            self._reset()
            self._start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self.peak = _status_bytes("VmHWM") - self._start


def _alarm(signum, frame):
    raise Hang(f"still running after {WATCHDOG} s")


def run_case(case: Case, folder: Path | None, meter: PeakRss) -> Outcome:
    """Load ``case`` from its bytes (``folder`` None) or from a file in ``folder``, and check the property."""
    if folder is None:
        source, label = case.data, "cannot read the image"
    else:
        source = folder / f"upload-{case.index}.{seed_files()[case.seed].fmt}"
        source.write_bytes(case.data)
        label = f"cannot read {source}"
    limit = memory_limit(*declared(case.data))
    watchdog = hasattr(signal, "SIGALRM")
    if watchdog:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(WATCHDOG)
    image = error = None
    try:
        with meter:
            start, wall_start = time.process_time(), time.perf_counter()
            try:
                image = load_image(source)
            except Exception as err:  # noqa: BLE001 - anything but ImageLoadError is the bug being looked for
                error = err
            except Hang as err:
                error = err
            seconds, wall_seconds = time.process_time() - start, time.perf_counter() - wall_start
    finally:
        if watchdog:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        if folder is not None:
            source.unlink()
    outcome = Outcome("", None, seconds, wall_seconds, meter.peak, limit)
    if image is not None:
        outcome.result = f"ok {image.size[0]}x{image.size[1]}"
        outcome.problem = image_problem(image)
        del image
    elif isinstance(error, ImageLoadError):
        outcome.result = "ImageLoadError"
        reason = str(error).removeprefix(f"{label}: ")
        if not str(error).startswith(f"{label}: ") or not reason.strip():
            outcome.problem = f"ImageLoadError without a label and a reason: {error!r}"
    else:
        outcome.result = type(error).__name__
        outcome.problem = f"{type(error).__module__}.{type(error).__name__} escaped: {str(error)[:300]}"
    if outcome.problem is None and seconds > TIME_LIMIT:
        outcome.problem = f"took {seconds:.2f} s of CPU time (limit {TIME_LIMIT} s; wall time {wall_seconds:.2f} s)"
    if outcome.problem is None and outcome.peak_bytes is not None and outcome.peak_bytes > limit:
        outcome.problem = f"peak RSS grew by {outcome.peak_bytes / MiB:.0f} MiB (limit {limit / MiB:.0f} MiB)"
    return outcome


def image_problem(image: Image.Image) -> str | None:
    """Why a returned image breaks the property, or None: RGB, both sides ≥ MIN_SIDE, ≤ MAX_PIXELS, in memory."""
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        return f"returned {type(image).__name__} of mode {getattr(image, 'mode', None)}"
    w, h = image.size
    if min(w, h) < MIN_SIDE or w * h > MAX_PIXELS:
        return f"returned an image of {w}x{h}"
    if getattr(image, "fp", None) is not None:
        return "returned an image still reading its file"
    image.getpixel((w - 1, h - 1))  # the pixels are there
    return None


# -- the fuzz run ------------------------------------------------------------------------------------------------------
def fuzz_settings() -> tuple[int, int]:
    """(number of inputs, master seed) from QGROUND_FUZZ and QGROUND_FUZZ_SEED."""
    return int(os.environ.get("QGROUND_FUZZ", QUICK_INPUTS)), int(os.environ.get("QGROUND_FUZZ_SEED", "0"))


def test_seed_files_are_valid_and_load_upright():
    """The mutations start from files load_image reads, at their upright size, and the seeds are what they are
    named: the interlaced PNG is Adam7 with the same pixels as the plain one, the progressive JPEG is progressive,
    the animations have several frames."""
    seeds = seed_files()
    for seed in seeds.values():
        image = load_image(seed.data)
        assert image.mode == "RGB" and image.size == seed.size, seed.name
    with Image.open(io.BytesIO(seeds["png_interlaced"].data)) as interlaced:
        assert interlaced.info["interlace"] == 1
        assert np.array_equal(np.asarray(interlaced.convert("RGB")), np.asarray(load_image(seeds["png_rgb"].data)))
    with Image.open(io.BytesIO(seeds["jpeg_progressive"].data)) as progressive:
        assert progressive.info["progressive"]
    for name in ("png_apng", "webp_animated", "gif_animated"):
        with Image.open(io.BytesIO(seeds[name].data)) as animated:
            assert animated.n_frames == 3, name


def test_fuzz_inputs_are_reproducible():
    """The same master seed and index give the same bytes and description; different indices differ."""
    seeds = seed_files()
    first = [make_case(seeds, 7, index) for index in range(0, 400, 7)]
    again = [make_case(seeds, 7, index) for index in range(0, 400, 7)]
    assert first == again
    assert len({case.data for case in first}) == len(first)


def test_fuzzed_files_load_or_fail_cleanly(tmp_path):
    """Every input gives an RGB image or an ImageLoadError with a reason, within the time and memory limits."""
    count, master = fuzz_settings()
    seeds = seed_files()
    meter = PeakRss()
    inputs, results, failures = Counter(), Counter(), []
    slowest: dict[str, tuple[float, float, str]] = {}
    biggest: dict[str, tuple[int, float, str]] = {}
    started = time.perf_counter()
    for index in range(count):
        case = make_case(seeds, master, index)
        outcome = run_case(case, tmp_path if index % 2 else None, meter)
        fmt = seeds[case.seed].fmt
        inputs[fmt, case.mutation] += 1
        results[outcome.result.split()[0]] += 1
        slowest[fmt] = max(slowest.get(fmt, (0.0, 0.0, "")), (outcome.seconds, outcome.wall_seconds, str(case)))
        if outcome.peak_bytes is not None:
            biggest[fmt] = max(biggest.get(fmt, (0, 0.0, "")), (outcome.peak_bytes, outcome.limit_bytes, str(case)))
        if outcome.problem:
            saved = tmp_path / f"failure-{master}-{index}.{fmt}"
            saved.write_bytes(case.data)
            failures.append(f"{case}: {outcome.problem} [input saved as {saved}]")
    elapsed = time.perf_counter() - started
    print(f"\n{count} inputs (master seed {master}) in {elapsed:.1f} s; outcomes {dict(results)}")
    for fmt in sorted(slowest):
        counts = " ".join(f"{m}={inputs[fmt, m]}" for m in MUTATIONS if inputs[fmt, m])
        seconds, wall, slow_case = slowest[fmt]
        peak, limit, big_case = biggest.get(fmt, (0, 0, "not measured"))
        print(
            f"{fmt}: {sum(inputs[fmt, m] for m in MUTATIONS)} inputs ({counts}); slowest {seconds:.3f} s CPU "
            f"({wall:.3f} s wall) [{slow_case}]; largest peak RSS growth {peak / MiB:.0f} MiB of {limit / MiB:.0f} "
            f"allowed [{big_case}]"
        )
    assert not failures, f"{len(failures)} of {count} inputs broke the property:\n" + "\n".join(failures[:50])


# -- regressions: one deterministic input per bug the fuzzing found ----------------------------------------------------
TRUNCATED = "cannot read the image: the image file is truncated or damaged"
GARBAGE_EXIF = b"\xe0\x054\xb3JN\xe3#" + bytes(range(40))  # not a TIFF header ("II*\0" / "MM\0*")


def with_png_chunk(png: bytes, kind: bytes, payload: bytes, before: str) -> bytes:
    """``png`` with a new chunk inserted before its first ``before`` chunk."""
    at = next(c.start for c in png_chunks(png) if c.name == before)
    return png[:at] + png_chunk(kind, payload) + png[at:]


def damaged_exif(fmt: str) -> bytes:
    """A seed whose EXIF block does not start with a TIFF header: an eXIf chunk in a PNG, the EXIF chunk of a WebP,
    the Exif item of an iPhone-like HEIC."""
    seeds = seed_files()
    if fmt == "png":
        return with_png_chunk(seeds["png_rgb"].data, b"eXIf", GARBAGE_EXIF, "IDAT")
    if fmt == "webp":
        data = bytearray(seeds["webp_lossy"].data)
        chunk = next(c for c in riff_chunks(bytes(data)) if c.name == "EXIF")
    else:
        data = bytearray(seeds["heic"].data)
        start = bytes(data).find(rich_exif(6))
        chunk = Segment("Exif", start - 8, start + len(rich_exif(6)))
    data[chunk.start + 8 : chunk.start + 16] = GARBAGE_EXIF[:8]
    return bytes(data)


@pytest.mark.parametrize(("fmt", "size"), [("png", (40, 24)), ("webp", (40, 24)), ("heic", (24, 40))])
def test_damaged_exif_is_ignored(fmt, size):
    """Found: SyntaxError ("not a TIFF file") escaped from PIL's EXIF parser (fuzz seed=0 index=63, png_16bit
    duplicate: a random eXIf chunk; index=188, heic exif_loop). Now the photo is read as stored, as browsers do; the
    HEIC is still turned by its irot box."""
    image = load_image(damaged_exif(fmt))
    assert image.mode == "RGB" and image.size == size


def test_heic_declaring_a_size_over_libheifs_limits():
    """Found: RuntimeError ("Security limit exceeded") escaped from pillow-heif while decoding (seed=0 index=187,
    heic huge_size: the ispe box claims 4294967295x4294967295; the size PIL sees is the cropped 40x24)."""
    data = bytearray(seed_files()["heic"].data)
    ispe = next(b for b in bmff_boxes(bytes(data)) if b.name == "ispe")
    struct.pack_into(">II", data, ispe.start + 12, 2**32 - 1, 2**32 - 1)
    with pytest.raises(ImageLoadError, match=TRUNCATED):
        load_image(bytes(data))


def test_png_with_a_short_transparency_chunk_after_the_pixels():
    """Found: struct.error escaped from PIL's PNG reader, which reads chunks after IDAT while decoding (seed=1
    index=2840, png_interlaced duplicate: a 1-byte tRNS inserted before IEND)."""
    data = with_png_chunk(seed_files()["png_rgb"].data, b"tRNS", b"\x00", "IEND")
    with pytest.raises(ImageLoadError, match=TRUNCATED):
        load_image(data)


def test_palette_png_with_more_transparency_entries_than_colors():
    """Found: ValueError ("palette index out of range") escaped from the conversion to RGBA (seed=1 index=3889,
    png_palette duplicate: a 1000-byte tRNS for a 32-color palette)."""
    data = with_png_chunk(seed_files()["png_palette"].data, b"tRNS", b"\x80" * 1000, "IDAT")
    with pytest.raises(ImageLoadError, match=TRUNCATED):
        load_image(data)


@pytest.mark.parametrize("tag_type", [2, 5, 12])  # ASCII, RATIONAL, DOUBLE
def test_tiff_strip_offsets_of_the_wrong_type(tag_type):
    """Found: TypeError escaped from PIL's TIFF reader, which seeks to the StripOffsets values whatever their type
    (seed=1 index=4427 and 19510, tiff flip_header: one flipped bit in the tag's type)."""
    data = bytearray(seed_files()["tiff_raw"].data)
    entry = next(e for e in tiff_entries(bytes(data)) if e.name == "273")
    struct.pack_into(tiff_order(bytes(data)) + "H", data, entry.start + 2, tag_type)
    with pytest.raises(ImageLoadError, match=TRUNCATED):
        load_image(bytes(data))


def declaring(name: str, width: int, height: int) -> bytes:
    """A JPEG seed whose SOF, or a GIF seed whose logical screen, declares ``width`` x ``height``."""
    data = bytearray(seed_files()[name].data)
    if name.startswith("jpeg"):
        sof = next(s for s in jpeg_segments(bytes(data)) if s.name == "FFC0")
        struct.pack_into(">HH", data, sof.start + 5, height, width)
    else:
        struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "size"),
    [("jpeg_exif", (8000, 10_000)), ("gif_transparent", (10_000, 8000))],
    ids=["rotated-jpeg", "transparent-gif"],
)
def test_80_megapixel_image_from_a_tiny_file_holds_two_buffers_at_most(name, size):
    """Found: a file of a few KB declaring 10000x8000 pixels (just at MAX_PIXELS) decodes (libjpeg fills the missing
    rows, a GIF frame may be smaller than its screen), and the loader then held several full-size copies: 916 MiB
    for the JPEG with EXIF orientation 6 (decoded, exif_transpose's copy, convert's copy; seed=0 index=234, jpeg_exif
    huge_size), 1374 MiB for the transparent GIF (P, copy, RGBA, white, composite, RGB). Now the conversion works in
    bands and the decoded image is freed before the rotation: two 4-byte-per-pixel buffers at most."""
    meter = PeakRss()
    if not meter.available:
        pytest.skip("peak RSS is measured through Linux's /proc/self")
    data = declaring(name, 10_000, 8000)
    assert len(data) < 4096
    with meter:
        image = load_image(data)
        assert image.mode == "RGB" and image.size == size
        del image
    assert meter.peak <= 2 * 4 * MAX_PIXELS + MEMORY_BASE, f"{meter.peak / MiB:.0f} MiB"


def whole_image_rgb(image: Image.Image) -> np.ndarray:
    """The loader's conversion done on the whole image at once (as before the banded conversion): transparency
    composited on white with Image.alpha_composite, 16-bit gray scaled by 255/65535."""
    if image.mode == "I;16":
        scaled = np.rint(np.asarray(image, dtype=np.float32) * np.float32(255 / 65535)).astype(np.uint8)
        return np.asarray(Image.fromarray(scaled).convert("RGB"))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P-transparent", "I;16", "CMYK"])
def test_large_images_converted_in_bands_match_a_whole_image_conversion(mode):
    """The memory fix converts images of more than 2**20 pixels band by band: the pixels are those of one conversion
    of the whole image, for every kind of transparency and depth (a 1500x1100 image: two bands)."""
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (1100, 1500, 4), dtype=np.uint8)
    image = {
        "RGBA": lambda: Image.fromarray(noise, "RGBA"),
        "LA": lambda: Image.fromarray(noise, "RGBA").convert("LA"),
        "P-transparent": lambda: Image.fromarray(noise[..., :3]).convert("P"),
        "I;16": lambda: Image.fromarray(noise[..., 0].astype(np.uint16) * 257 + noise[..., 1]),
        "CMYK": lambda: Image.fromarray(noise, "CMYK"),
    }[mode]()
    if mode == "P-transparent":
        image.info["transparency"] = 3
    expected = whole_image_rgb(image)
    loaded = load_image(encode(image, "TIFF" if mode == "CMYK" else "PNG", compress_level=1))
    assert np.array_equal(np.asarray(loaded), expected)
