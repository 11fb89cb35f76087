"""load_image: orientation, mode conversions, HEIC/HEIF and every refusal, on small images generated in tmp_path; one
rotated HEIC grounded end to end by the overfit tiny model."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import iou
from qground.imageio import MAX_PIXELS, ImageLoadError, _register_heif, load_image

NOT_AN_IMAGE = "not an image PIL can read — supported: JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF"
TRUNCATED = "the image file is truncated or damaged"


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """The image encoded in memory."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    """``data`` written to tmp_path / name."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def noisy(h: int, w: int) -> Image.Image:
    """A random RGB image (H, W): compresses badly, so truncation always cuts pixel data."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def heic(image: Image.Image, orientation: int | None = None, quality: int = 90) -> bytes:
    """The image encoded as HEIC by pillow-heif, like an iPhone photo: with an EXIF ``orientation`` tag, which
    pillow-heif also writes as the container's rotation/mirror boxes."""
    assert _register_heif()  # pillow-heif's writer too
    params = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    return encode(image, "HEIF", quality=quality, **params)


QUADRANTS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def quadrants(width: int, height: int) -> Image.Image:
    """An RGB image split in four flat quadrants: red top-left, green top-right, blue bottom-left, yellow
    bottom-right."""
    image = Image.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for (x, y), color in zip([(0, 0), (w, 0), (0, h), (w, h)], QUADRANTS.values(), strict=True):
        image.paste(color, (x, y, x + w, y + h))
    return image


def quadrant_colors(image: Image.Image) -> list[np.ndarray]:
    """The mean color of the middle of each quadrant: top-left, top-right, bottom-left, bottom-right."""
    pixels = np.asarray(image, dtype=np.float64)
    h, w = pixels.shape[0] // 4, pixels.shape[1] // 4
    return [
        pixels[y - h // 2 : y + h // 2, x - w // 2 : x + w // 2].mean(axis=(0, 1))
        for y in (h, 3 * h)
        for x in (w, 3 * w)
    ]


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed): cheap bomb header."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts at byte 16: width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over chunk type + 13-byte payload
    return bytes(data)


def test_exif_orientation_6_is_rotated_clockwise(tmp_path):
    stored = Image.new("RGB", (32, 16), (0, 0, 255))  # W=32, H=16
    stored.paste((255, 0, 0), (0, 0, 8, 8))  # red 8x8 block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = write(tmp_path, "portrait.jpg", encode(stored, "JPEG", quality=95, exif=exif))
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (16, 32)
    red = np.asarray(image)[0:8, 8:16].reshape(-1, 3).mean(axis=0)  # displayed top-right block: y 0..7, x 8..15
    blue = np.asarray(image)[24:32, 0:8].reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[2] < 60
    assert blue[2] > 200 and blue[0] < 60


def test_rgba_is_composited_on_white(tmp_path):
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    array[0, 0] = (255, 0, 0, 0)  # fully transparent red
    array[0, 1] = (0, 0, 255, 255)  # opaque blue
    array[0, 2] = (0, 0, 0, 128)  # half transparent black
    image = load_image(write(tmp_path, "rgba.png", encode(Image.fromarray(array, "RGBA"), "PNG")))
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == (0, 0, 255)
    assert np.all(np.abs(pixels[0, 2].astype(int) - 127) <= 1)


def test_palette_with_transparent_index(tmp_path):
    image = Image.new("P", (4, 2), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red, index 1 green
    image.paste(1, (2, 0, 4, 2))
    loaded = np.asarray(load_image(write(tmp_path, "p.png", encode(image, "PNG", transparency=0))))
    assert tuple(loaded[0, 0]) == (255, 255, 255)  # transparent index -> white
    assert tuple(loaded[1, 3]) == (0, 255, 0)


def test_grayscale_l(tmp_path):
    loaded = load_image(write(tmp_path, "gray.png", encode(Image.new("L", (3, 2), 77), "PNG")))
    assert loaded.mode == "RGB"
    assert np.all(np.asarray(loaded) == 77)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535], [257, 514, 65535]], dtype=np.uint16)
    path = write(tmp_path, "deep.png", encode(Image.fromarray(values), "PNG"))
    assert Image.open(path).mode == "I;16"
    loaded = np.asarray(load_image(path))
    assert loaded.dtype == np.uint8
    assert loaded[..., 0].tolist() == [[0, 128, 255], [1, 2, 255]]
    assert np.all(loaded[..., 0:1] == loaded)  # gray: R = G = B


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", [[0, 32768], [65535, 70000]], [[0, 128], [255, 255]]),  # 32-bit integer read as 16-bit
        ("F", [[0.0, 0.5], [1.0, 0.25]], [[0, 128], [255, 64]]),  # float in 0..1
        ("F", [[0.0, 127.0], [255.0, 300.0]], [[0, 127], [255, 255]]),  # float in 0..255
    ],
)
def test_high_bit_depth_pil_modes(mode, values, expected):
    source = Image.fromarray(np.array(values, dtype=np.int32 if mode == "I" else np.float32))
    assert source.mode == mode
    assert np.asarray(load_image(source))[..., 1].tolist() == expected


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure magenta + yellow ink = red
    loaded = load_image(write(tmp_path, "print.jpg", encode(cmyk, "JPEG", quality=95)))
    r, g, b = np.asarray(loaded).reshape(-1, 3).mean(axis=0)
    assert loaded.mode == "RGB"
    assert r > 240 and g < 15 and b < 15


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 4), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    loaded = load_image(write(tmp_path, "anim.gif", data))
    assert loaded.size == (6, 4)
    assert np.all(np.asarray(loaded) == (255, 0, 0))


def test_bytes_and_pil_sources_give_new_rgb_images_at_full_size():
    original = Image.new("L", (40, 30), 9)
    from_pil = load_image(original)
    assert from_pil is not original and original.mode == "L"
    assert from_pil.mode == "RGB" and from_pil.size == (40, 30)
    assert load_image(encode(noisy(30, 40), "PNG")).size == (40, 30)


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.jpg", b"")
    with pytest.raises(ImageLoadError, match="the file is empty") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_zero_bytes():
    with pytest.raises(ImageLoadError, match="the file is empty"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("kept", [0.02, 0.5, 0.95])
def test_truncated_file(tmp_path, fmt, kept):
    data = encode(noisy(48, 48), fmt)
    path = write(tmp_path, f"cut.{fmt.lower()}", data[: int(len(data) * kept)])
    with pytest.raises(ImageLoadError, match=TRUNCATED) as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"<!DOCTYPE html>\n<html><body>Not found</body></html>", "an HTML web page"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "a PDF document"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4"></svg>', "an SVG drawing"),
        (b"just some notes, not a photo\n", None),
    ],
)
def test_non_image_renamed_jpg(tmp_path, content, kind):
    path = write(tmp_path, "photo.jpg", content)
    with pytest.raises(ImageLoadError, match=NOT_AN_IMAGE) as info:
        load_image(path)
    assert str(path) in str(info.value)
    if kind is not None:
        assert f"looks like {kind}" in str(info.value)


def test_one_pixel_image_is_too_small(tmp_path):
    path = write(tmp_path, "dot.png", encode(Image.new("RGB", (1, 1)), "PNG"))
    with pytest.raises(ImageLoadError, match="1×1 pixels, too small"):
        load_image(path)


@pytest.mark.parametrize(
    ("width", "height"),
    [(20_000, 20_000), (10_000, 9_000), (9_000, 9_000)],  # PIL error, PIL warning, our own header check
)
def test_decompression_bomb_is_refused_from_the_header(tmp_path, width, height):
    path = write(tmp_path, "bomb.png", png_claiming_size(width, height))
    assert path.stat().st_size < 100
    with pytest.raises(ImageLoadError, match=f"{width * height:,} pixels, more than the limit of {MAX_PIXELS:,}"):
        load_image(path)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        load_image(path)


# -- HEIC/HEIF (iPhone photos), read through pillow-heif ---------------------------------------------------------------
def test_heic_with_exif_orientation_6_is_rotated_clockwise_once(tmp_path):
    stored = quadrants(64, 48)  # W=64, H=48 as the sensor wrote it; shown rotated 90 degrees clockwise
    path = write(tmp_path, "IMG_0001.HEIC", heic(stored, orientation=6))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (48, 64)  # rotated once: rotating twice would give 64x48 back
    top_left, top_right, bottom_left, bottom_right = quadrant_colors(image)
    # Turned clockwise: the stored bottom-left (blue) comes to the top-left, the stored top-left (red) to the top-right.
    for seen, name in [(top_left, "blue"), (top_right, "red"), (bottom_left, "yellow"), (bottom_right, "green")]:
        assert np.abs(seen - QUADRANTS[name]).max() < 40, (name, seen)  # HEIC is lossy


@pytest.mark.parametrize("orientation", [None, *range(1, 9)])
def test_heic_is_upright_like_an_exif_oriented_jpeg(orientation):
    stored = quadrants(64, 48)
    if orientation is None:
        expected = stored
    else:
        tagged = stored.copy()
        tagged.getexif()[0x0112] = orientation
        expected = ImageOps.exif_transpose(tagged)  # what a viewer shows for the JPEG with that tag
    image = load_image(heic(stored, orientation))
    assert image.size == expected.size
    for seen, want in zip(quadrant_colors(image), quadrant_colors(expected), strict=True):
        assert np.abs(seen - want).max() < 40, (orientation, seen, want)


@pytest.mark.parametrize("kept", [0.02, 0.5, 0.95])
def test_truncated_heic(tmp_path, kept):
    data = heic(noisy(48, 64))
    path = write(tmp_path, "cut.heic", data[: int(len(data) * kept)])
    with pytest.raises(ImageLoadError, match=TRUNCATED) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_heic_with_damaged_pixel_data(tmp_path):
    data = heic(noisy(48, 64))
    start = data.index(b"mdat") + 4
    path = write(tmp_path, "damaged.heic", data[:start] + bytes(len(data) - start))  # header intact, pixels zeroed
    with pytest.raises(ImageLoadError, match=TRUNCATED) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_heic_without_pillow_heif_names_the_package(tmp_path, monkeypatch):
    path = write(tmp_path, "IMG_0002.HEIC", heic(quadrants(64, 48)))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import pillow_heif raises ImportError
    _register_heif.cache_clear()
    try:
        with pytest.raises(ImageLoadError, match=r"needs the pillow-heif package \(pip install pillow-heif\)") as info:
            load_image(path)
    finally:
        _register_heif.cache_clear()
    assert str(path) in str(info.value)


def test_rotated_heic_is_grounded_in_the_upright_frame(tmp_path, trained_tiny, overfit_batch):
    """The overfit photo (80x48, noise top-left) stored turned a quarter left with EXIF orientation 6, as an iPhone
    stores a photo taken upright: it is grounded as the upright photo, masks at its size, the noise top-left."""
    upright, truth = overfit_batch[0][0]
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 48x80; orientation 6 turns it back clockwise
    path = write(tmp_path, "IMG_0003.HEIC", heic(stored, orientation=6, quality=95))
    image = load_image(path)
    assert image.size == upright.size == (80, 48)
    result = trained_tiny.ground(image)
    assert list(result.masks) == ["noise"]
    assert result.masks["noise"].shape == (48, 80)
    assert iou(result.masks["noise"], truth["noise"]) >= 0.5
