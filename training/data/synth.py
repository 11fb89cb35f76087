"""Synthetic distortion data engine: clean photos shipped inside packages → region-wise distortions with exact masks,
quality descriptions, grounding answers and multi-image comparisons whose truth follows from what was applied.

``python -m training.data.synth --out DIR --num N --split train|eval|val [--seed S] [--workers W] [--comparisons M]``
writes ``DIR/images/STEM.png``, ``DIR/gt/STEM/<class key>.png`` (255 = that class; the evaluation layout),
``qground.json`` (QGround-100K-style records), ``describe.json`` / ``caption.json`` / ``compare.json`` (LLaVA schema;
each comparison also records its ``kind``, for ``qground.evaluate``), ``compare_pairs.json`` (two-image groups with
free-form answers only: the nano recipe's first comparison stage) and ``meta.json``. Everything follows from
``(seed, split, index)``; the three splits use disjoint photos (``val``: for choosing inference settings on photos
neither trained on nor held out, as ``training.calibrate`` does).

Frames: images are (H, W, 3) uint8, masks (H, W) bool, both at the generated image's size.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import signal
from skimage.draw import polygon as draw_polygon
from tqdm import tqdm

from qground.answers import Finding, describe_answer, quality_word, yes_no_answer
from qground.imageio import jpeg_round_trip
from qground.mcq import LETTERS, mcq_prompt
from qground.prompts import grounding_answer, image_header
from qground.taxonomy import CLASS_NAMES, get
from qground.tokens import SegTokens
from qground.visualize import region_location
from training.data.archives import Archive, read_member
from training.data.distortions import HELD_OUT, Family, families, strength_of_severity
from training.data.photo_pool import POOL, PoolPhoto, load_pool_photo, pool_photos
from training.data.questions import COMPARISONS, comparison_question, describe_question, follow_up, yes_no_question

# Longest side of the generated photos (each is shrunk to a side drawn log-uniformly in [MIN_SIDE, MAX_SIDE]: the model
# meets photos of every size); qground-nano's detail_max_side reads larger photos at this scale.
MAX_SIDE = 1280
MIN_SIDE = 320
POOL_MAX_SIDE = 2048  # pool photos are read at most this large (room for a capture larger than the generated size)
UPSCALE_MIN = 1600  # --upscale: photos enlarged to a longest side in [UPSCALE_MIN, upscale] (large-photo validation)
# --large: every image at a longest side drawn log-uniformly in LARGE_SIDES (2.6–12 MP at 4:3), its photo enlarged by at
# most LARGE_ENLARGE when smaller (a camera's softness at its own pixel scale, not a 7× enlargement's mush)
LARGE_SIDES = (1600, 4096)
LARGE_ENLARGE = 2.0
CAPTURE = 0.35  # share of images distorted at up to twice their final size, then shrunk (a larger camera's photo)
WHOLE_IMAGE = 0.3  # share of one-class images distorted everywhere
SPLITS = ("train", "eval", "val")  # disjoint photos: training, held-out evaluation, validation (choosing settings)
# Share of training images whose pixels went through JPEG once after their distortions (quality 75–95, chroma at half
# resolution (4:2:0) three times in four), as a camera's or the web's photos have: the tower must not take JPEG's
# smooth chroma or 8 × 8 blocks for a distortion, nor lean on evidence JPEG removes. Validation and evaluation images
# stay lossless (their JPEG copies test this).
JPEG_SHARE = 0.4
PNG_LEVEL = 1  # zlib level of written PNGs: lossless at any level; 1 encodes 4× faster than the default 6, 5 % larger
ORDINALS = ("first", "second", "third", "fourth")


OPENCV_SDIST = Archive(
    "https://files.pythonhosted.org/packages/79/4c/a438d23e09ce2033c09f7b784ad2fbdb0adf529e434101ed28f142226f98/"
    "opencv_python-5.0.0.93.tar.gz",
    "66aac3e5b5faa48d4025816592f3af19e4bfc2c68dec067bae2dbb4ca10aa9e2",
)
ULTRALYTICS_WHEEL = Archive(
    "https://files.pythonhosted.org/packages/d5/15/9843a1e0a100fc329f6545f9128d88a3ff172a2527a4111972c3ae568c13/"
    "ultralytics-8.4.190-py3-none-any.whl",
    "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8",
)
ARCHIVES = {"opencv-python": OPENCV_SDIST, "ultralytics": ULTRALYTICS_WHEEL}
OPENCV_SAMPLES = "opencv_python-5.0.0.93/opencv/samples/data"


@dataclass(frozen=True)
class PhotoSource:
    """A clean photo shipped inside a package. ``package`` is an installed one (skimage, sklearn, matplotlib, gradio;
    ``item`` a ``skimage.data`` function or a file in the package's sample folder) or a key of ``ARCHIVES`` (a PyPI
    file read without installing it; ``item`` the member's path inside it); ``license`` says under which terms."""

    name: str
    package: str
    item: str
    license: str
    split: str

    @property
    def origin(self) -> str:
        if self.package in ARCHIVES:
            return f"{ARCHIVES[self.package].filename} (PyPI): {self.item}"
        if self.package == "skimage" and "." not in self.item:
            return f"skimage.data.{self.item}()"
        folder = {
            "skimage": "skimage/data",
            "sklearn": "sklearn.datasets sample images",
            "matplotlib": "matplotlib sample_data",
            "gradio": "gradio/media_assets/images",
        }
        return f"{folder[self.package]}/{self.item}"


def _opencv(name: str, file: str) -> PhotoSource:
    return PhotoSource(name, "opencv-python", f"{OPENCV_SAMPLES}/{file}", "Apache-2.0 (OpenCV sample data)", "val")


PHOTOS = (
    PhotoSource("astronaut", "skimage", "astronaut", "public domain (NASA)", "train"),
    PhotoSource("chelsea", "skimage", "chelsea", "CC0 (Stefan van der Walt)", "train"),
    PhotoSource("rocket", "skimage", "rocket", "public domain (SpaceX, CC0 release)", "train"),
    PhotoSource("immunohistochemistry", "skimage", "immunohistochemistry", "public domain", "train"),
    PhotoSource("camera", "skimage", "camera", "CC0 (Lav Varshney)", "train"),
    PhotoSource("coins", "skimage", "coins", "no known copyright restrictions (Brooklyn Museum)", "train"),
    PhotoSource("grass", "skimage", "grass", "CC0", "train"),
    PhotoSource("gravel", "skimage", "gravel", "CC0 (CC0Textures)", "train"),
    PhotoSource("brick", "skimage", "brick", "CC0 (CC0Textures)", "train"),
    PhotoSource("china", "sklearn", "china.jpg", "CC BY 2.0 (scikit-learn)", "train"),
    PhotoSource("flower", "sklearn", "flower.jpg", "CC BY 2.0 (scikit-learn)", "train"),
    PhotoSource("tower", "gradio", "tower.jpg", "Apache-2.0 (gradio package asset)", "train"),
    PhotoSource("groot", "gradio", "groot.jpeg", "Apache-2.0 (gradio package asset)", "train"),
    PhotoSource("lion", "gradio", "lion.jpg", "Apache-2.0 (gradio package asset)", "train"),
    PhotoSource("retina", "skimage", "retina", "CC0 (Mikael Häggström)", "train"),
    PhotoSource("hubble_deep_field", "skimage", "hubble_deep_field", "public domain (NASA)", "train"),
    PhotoSource("motorcycle", "skimage", "motorcycle_left.png", "BSD-3 (scikit-image; Middlebury 2014 stereo)", "val"),
    PhotoSource("bus", "ultralytics", "ultralytics/assets/bus.jpg", "AGPL-3.0 (ultralytics package asset)", "val"),
    _opencv("aerial", "aero1.jpg"),
    _opencv("aloe", "aloeL.jpg"),
    _opencv("circuit_board", "board.jpg"),
    _opencv("building", "building.jpg"),
    _opencv("butterfly", "butterfly.jpg"),
    _opencv("castle", "castle.jpg"),
    _opencv("dog", "chicky_512.png"),
    _opencv("fruits", "fruits.jpg"),
    _opencv("graffiti", "graf1.png"),
    _opencv("house", "home.jpg"),
    _opencv("street", "leuvenA.jpg"),
    _opencv("color_chart", "mcc_ccm_test.jpg"),
    _opencv("rubber_whale", "rubberwhale1.png"),
    PhotoSource("grace_hopper", "matplotlib", "grace_hopper.jpg", "public domain (US Navy)", "eval"),
    PhotoSource("coffee", "skimage", "coffee", "CC0 (Rachel Michetti)", "eval"),
)


@cache
def load_photo(name: str) -> np.ndarray:
    """The clean photo as (H, W, 3) uint8 (gray photos repeated over the three channels; pool photos shrunk to a
    longest side of ``POOL_MAX_SIDE``)."""
    if name in _pool():
        return load_pool_photo(_pool()[name], POOL_MAX_SIDE)
    source = next(p for p in PHOTOS if p.name == name)
    if source.package in ARCHIVES:
        photo = np.asarray(Image.open(io.BytesIO(read_member(ARCHIVES[source.package], source.item))).convert("RGB"))
    elif source.package == "skimage":  # a skimage.data function, or a file in its data folder
        import skimage.data

        if "." in source.item:
            photo = np.asarray(Image.open(Path(skimage.data.data_dir) / source.item).convert("RGB"))
        else:
            photo = getattr(skimage.data, source.item)()
    elif source.package == "sklearn":
        from sklearn.datasets import load_sample_image

        photo = load_sample_image(source.item)
    elif source.package == "matplotlib":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(source.item) as f:
            photo = np.asarray(Image.open(f).convert("RGB"))
    else:
        import gradio

        folder = Path(gradio.__file__).parent / "media_assets" / "images"
        photo = np.asarray(Image.open(folder / source.item).convert("RGB"))
    photo = np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo
    return np.ascontiguousarray(photo[..., :3])


@cache
def _pool() -> dict[str, PoolPhoto]:
    return {p.name: p for p in POOL}


def photo_names(split: str) -> list[str]:
    """The names of a split's photos: the package photos of ``PHOTOS``, then the Debian pool's
    (``training.data.photo_pool``; each whole package in one split)."""
    return [p.name for p in PHOTOS if p.split == split] + [p.name for p in pool_photos(split)]


# -- image generation --------------------------------------------------------------------------------------------------
def _rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """``img`` (H, W, 3) uint8 resampled (Lanczos) by ``scale``, each side rounded and at least 8 px."""
    size = (max(8, round(img.shape[1] * scale)), max(8, round(img.shape[0] * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size, Image.Resampling.LANCZOS))


def augment(photo: np.ndarray, rng: np.random.Generator, max_side: int, min_side: int = MIN_SIDE) -> np.ndarray:
    """Random crop (≥ 50 % area), flip, shrink to a longest side drawn log-uniformly in [min_side, max_side] (never
    enlarged: upscaling would smooth the photo's own detail and blur every pixel), mild color jitter."""
    h, w = photo.shape[:2]
    scale = np.sqrt(rng.uniform(0.5, 1.0))
    ch, cw = int(h * scale * rng.uniform(0.85, 1.15)), int(w * scale * rng.uniform(0.85, 1.15))
    ch, cw = min(ch, h), min(cw, w)
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    side = int(np.exp(rng.uniform(np.log(min(min_side, max_side)), np.log(max_side))))
    s = min(1.0, side / max(ch, cw))
    out = _rescale(crop, s).astype(np.float32) * rng.uniform(0.9, 1.1, size=3) + rng.uniform(-8, 8)
    return np.clip(out, 0, 255).astype(np.uint8)


def recolor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Train-time content variety: channels permuted (30 %), gray (10 %), a mild tone curve (gain 0.7–1.1,
    γ 0.85–1.2: darker photos are not low light; mid-gray stays ≥ 0.3, twice the weakest low light's 0.165)."""
    out = img.astype(np.float32) / 255
    if rng.random() < 0.3:
        out = out[..., rng.permutation(3)]
    if rng.random() < 0.1:
        out = np.repeat(out.mean(-1, keepdims=True), 3, axis=-1)
    out = rng.uniform(0.7, 1.1) * out ** rng.uniform(0.85, 1.2)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def _window(img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random (h, w) window of ``img``, mirrored at its borders when it is smaller (never resampled)."""
    ih, iw = img.shape[:2]
    if ih < h or iw < w:
        img = np.pad(img, ((0, max(0, h - ih)), (0, max(0, w - iw)), (0, 0)), mode="symmetric")
        ih, iw = img.shape[:2]
    y0, x0 = rng.integers(0, ih - h + 1), rng.integers(0, iw - w + 1)
    return img[y0 : y0 + h, x0 : x0 + w]


def leaves(pool: list[str], rng: np.random.Generator, max_side: int, min_side: int = MIN_SIDE) -> np.ndarray:
    """A "dead leaves" collage: disks of photo texture occluding each other, radii drawn from p(r) ∝ r⁻³ (the
    scale-invariant statistics of natural images), each filled with a window of a randomly chosen, augmented photo.
    New layouts of real textures and sharp occlusion edges, so the model cannot learn what each photo looks like."""
    base = recolor(augment(load_photo(pool[int(rng.integers(len(pool)))]), rng, max_side, min_side), rng)
    h, w = base.shape[:2]
    out = base.copy()
    rmin, rmax = 0.03 * min(h, w), 0.4 * min(h, w)
    for _ in range(int(rng.integers(8, 25))):
        r = (rmin**-2 - rng.random() * (rmin**-2 - rmax**-2)) ** -0.5
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        photo = recolor(augment(load_photo(pool[int(rng.integers(len(pool)))]), rng, max_side, min_side), rng)
        out[y0:y1, x0:x1][disk] = _window(photo, y1 - y0, x1 - x0, rng)[disk]
    return out


def clean_base(split: str, rng: np.random.Generator, max_side: int, min_side: int = MIN_SIDE) -> tuple[np.ndarray, str]:
    """The undistorted image and where it comes from. Eval: an augmented held-out photo. Train: 35 % dead-leaves
    collages (photo ``"leaves"``), else an augmented, recolored training photo. Its longest side is drawn in
    [min_side, max_side] but never above the photo's."""
    pool = photo_names(split)
    if split == "train" and rng.random() < 0.2:
        return leaves(pool, rng, max_side, min_side), "leaves"
    name = pool[int(rng.integers(len(pool)))]
    clean = augment(load_photo(name), rng, max_side, min_side)
    return (recolor(clean, rng) if split == "train" else clean), name


def smooth_field(noise: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(noise, sigma)`` (reflected edges, kernel truncated at 4σ) for a (H, W) field,
    through FFTs: the same values to float rounding, 3–4× faster at the σ of ``region`` (a tenth of the image)."""
    r = int(4 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = noise
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="symmetric")  # numpy's "symmetric" is ndimage's "reflect"
        out = signal.fftconvolve(padded, np.expand_dims(kernel, 1 - axis), mode="valid", axes=axis)
    return out


def region(shape: tuple[int, int], free: np.ndarray, area: float, rng: np.random.Generator) -> np.ndarray:
    """A blob or polygon covering about ``area`` of the image, inside ``free``."""
    h, w = shape
    if rng.random() < 0.6:  # smooth blob: threshold a smooth random field at the right quantile
        field = smooth_field(rng.standard_normal((h, w)), sigma=max(h, w) / rng.uniform(5, 10))
        values = field[free]
        if values.size == 0:
            return np.zeros(shape, dtype=bool)
        k = min(values.size, int(area * h * w))
        cut = np.partition(values, -k)[-k] if k > 0 else np.inf
        return (field >= cut) & free
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = np.sqrt(area * h * w / np.pi) * rng.uniform(0.8, 1.25, n)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    rr, cc = draw_polygon(cy + radius * np.sin(angles), cx + radius * np.cos(angles), shape)
    mask = np.zeros(shape, dtype=bool)
    mask[rr, cc] = True
    return mask & free


def split_families(cls: str, split: str, rng: np.random.Generator) -> Family:
    """A random family of ``cls`` for ``split``: training never sees the held-out families
    (``training.data.distortions.HELD_OUT``); validation asks them half the time; evaluation draws from all."""
    pool = families(cls)
    if split == "train" or (split == "val" and rng.random() < 0.5):
        pool = tuple(f for f in pool if f.key not in HELD_OUT)
    elif split == "val":
        pool = tuple(f for f in pool if f.key in HELD_OUT)
    return pool[int(rng.integers(len(pool)))]


def _shrink(img: np.ndarray, masks: dict[str, np.ndarray], size: tuple[int, int]):
    """(H, W, 3) float image and its bool masks → ``size`` (h, w): Lanczos for the image, area > ½ for masks."""
    h, w = size
    small = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).resize((w, h), Image.Resampling.LANCZOS)
    out = {
        n: np.asarray(Image.fromarray(m.astype(np.float32)).resize((w, h), Image.Resampling.BOX)) > 0.5
        for n, m in masks.items()
    }
    return np.asarray(small, dtype=np.float32) / 255, out


@dataclass
class Generated:
    """One synthetic image: ``masks``/``severity`` per applied class (taxonomy order)."""

    image: np.ndarray
    masks: dict[str, np.ndarray]
    severity: dict[str, int]
    photo: str
    families: dict[str, str]  # class → family key ("blur/defocus")
    jpeg: int | None = None  # the JPEG quality the pixels went through (training images only), None: lossless


def enlarge(img: np.ndarray, side: int, most: float) -> np.ndarray:
    """``img`` (H, W, 3) uint8 enlarged (Lanczos) towards a longest side of ``side`` px by at most ``most`` times;
    returned as it is when it is that large already."""
    scale = min(most, side / max(img.shape[:2]))
    return img if scale <= 1 else _rescale(img, scale)


def generate(
    index: int, split: str, seed: int, max_side: int = MAX_SIDE, upscale: int = 0, large: bool = False
) -> Generated:
    """Image ``index`` of a split: 0 classes (25 %), else 1–3 classes on disjoint regions (one class: the whole image
    ``WHOLE_IMAGE`` of the time), each by a random family of its class (``split_families``). ``CAPTURE`` of the images
    are distorted at up to twice their final size and then shrunk, as a larger camera's photo would be; ``JPEG_SHARE``
    of the training images then go through JPEG once (``jpeg_round_trip``). ``upscale`` (validation of large photos;
    0: off): every photo is enlarged (Lanczos) to a longest side drawn log-uniformly in [``UPSCALE_MIN``, upscale]
    before its distortions, as a large camera's photo (smooth at the pixel scale) would be distorted. ``large``: the
    image is drawn at a longest side in ``LARGE_SIDES`` (its photo enlarged at most ``LARGE_ENLARGE`` times when
    smaller; ``max_side`` and ``CAPTURE`` do not apply) and distorted at that size, every family with its parameters
    in pixels as at any other size (a 20 px shake is as likely on a 12 MP photo as on a small one)."""
    if large and upscale:
        raise ValueError("large and upscale are two ways of drawing large photos: choose one")
    rng = np.random.default_rng([seed, SPLITS.index(split), index, *([1] if large else [])])  # large: its own draws
    if large:
        side = int(np.exp(rng.uniform(*np.log(LARGE_SIDES))))
        clean, photo = clean_base(split, rng, side, side)
        clean = enlarge(clean, side, LARGE_ENLARGE)
        max_side = max(clean.shape[:2])
    else:
        capture = rng.uniform(1.2, 2.0) if rng.random() < CAPTURE else 1.0
        clean, photo = clean_base(split, rng, round(max_side * capture))
    if upscale:
        side = int(np.exp(rng.uniform(np.log(UPSCALE_MIN), np.log(upscale))))
        clean = _rescale(clean, side / max(clean.shape[:2]))
        max_side = max(max_side, upscale)
    k = int(rng.choice([0, 1, 2, 3], p=[0.25, 0.4, 0.25, 0.1]))
    classes = sorted(rng.choice(len(CLASS_NAMES), size=k, replace=False).tolist())
    shape = clean.shape[:2]
    free = np.ones(shape, dtype=bool)
    img = clean.astype(np.float32) / 255
    out = img.copy()
    masks, severity, used = {}, {}, {}
    for ci in classes:
        name = CLASS_NAMES[ci]
        if k == 1 and rng.random() < WHOLE_IMAGE:
            mask = free.copy()
        else:
            mask = region(shape, free, rng.uniform(0.08, 0.5 if k > 1 else 0.6), rng)
        if mask.mean() < 0.02:
            continue
        sev = int(rng.integers(1, 4))
        family = split_families(name, split, rng)
        out[mask] = family.apply(img, strength_of_severity(sev, rng), rng)[mask]
        free &= ~mask
        masks[name], severity[name], used[name] = mask, sev, family.key
    if max(shape) > max_side:
        s = max_side / max(shape)
        out, masks = _shrink(out, masks, (max(8, round(shape[0] * s)), max(8, round(shape[1] * s))))
        masks = {n: m for n, m in masks.items() if m.any()}
        severity, used = {n: severity[n] for n in masks}, {n: used[n] for n in masks}
    image = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    quality = None
    if split == "train" and rng.random() < JPEG_SHARE:  # drawn last: every earlier draw is as without it
        quality = int(rng.integers(75, 96))
        subsampling = 2 if rng.random() < 0.75 else 0  # 4:2:0 or 4:4:4
        image = np.asarray(jpeg_round_trip(Image.fromarray(image), quality, subsampling))
    return Generated(image, masks, severity, photo, used, quality)


# -- text --------------------------------------------------------------------------------------------------------------
def scores(g: Generated) -> dict[str, float]:
    """Per class severity × area fraction (0 when absent)."""
    return {
        name: g.severity.get(name, 0) * float(g.masks[name].mean()) if name in g.masks else 0.0 for name in CLASS_NAMES
    }


def findings(g: Generated) -> list[Finding]:
    return [Finding(n, g.severity[n], region_location(g.masks[n])) for n in g.masks]


def describe(g: Generated) -> str:
    """The quality description (``qground.answers.describe_answer``): each distortion, its strength and where it is,
    then the overall quality."""
    return describe_answer(findings(g), quality_word(sum(scores(g).values())))


def conversation(g: Generated, rng: np.random.Generator, held_out: bool) -> list[tuple[str, str]]:
    """1–2 turns of (question, answer) about ``g``: an open question (55 %) or a yes/no about one class (half of the
    time one it has), then 30 % of the time a follow-up. ``held_out``: only the held-out phrasing families."""
    quality = quality_word(sum(scores(g).values()))
    found = findings(g)

    def yes_no(cls: str, question: str) -> tuple[str, str]:
        return question, yes_no_answer(cls, found, quality)

    def asked_class() -> str:
        present = list(g.masks)
        return str(rng.choice(present if present and rng.random() < 0.5 else CLASS_NAMES))

    if rng.random() < 0.55:
        turns = [(describe_question(rng, held_out)[0], describe_answer(found, quality))]
    else:
        cls = asked_class()
        turns = [yes_no(cls, yes_no_question(cls, rng, held_out)[0])]
    if rng.random() < 0.3:
        if rng.random() < 0.5:
            cls = asked_class()
            turns.append(yes_no(cls, follow_up(cls, rng)))
        else:
            turns.append((follow_up(None, rng), describe_answer(found, quality)))
    return turns


def _luma_ok(kind: str, group: list[dict], best: int) -> bool:
    """ "darkest" must also hold for the pixels, not only for the applied distortion."""
    return kind != "darkest" or group[best]["luma"] <= min(m["luma"] for m in group)


def comparison_values(kind: str, group: list[dict]) -> list[float]:
    """Per image, how much it answers a comparison of ``kind`` (``questions.COMPARISONS``): the one to pick scores
    highest. From the meta records' per-class severity × area ``scores``."""
    sc = [m["scores"] for m in group]
    values = {
        "best": [-sum(s.values()) for s in sc],
        "worst": [sum(s.values()) for s in sc],
        "sharpest": [-(s["blur"] + s["jitter"]) for s in sc],
        "blurriest": [s["blur"] for s in sc],
        "least noise": [-s["noise"] for s in sc],
        "noisiest": [s["noise"] for s in sc],
        "best exposed": [-(s["overexposure"] + s["low light"]) for s in sc],
        "darkest": [s["low light"] for s in sc],
        "overexposed": [s["overexposure"] for s in sc],
        "shakiest": [s["jitter"] for s in sc],
    }
    return values[kind]


MARGIN = 0.15


def comparison(
    group: list[dict], rng: np.random.Generator, choices: bool = True, held_out: bool = False
) -> tuple[str, str, str] | None:
    """(kind, question, answer): a question about ``group`` (meta records) whose answer is unambiguous, of a kind of
    ``COMPARISONS``; None if none is. Half are multiple choice when ``choices``, else every answer is free-form ("The
    second image.")."""
    for kind in rng.permutation(list(COMPARISONS)).tolist():
        values = comparison_values(kind, group)
        order = np.argsort(values)[::-1]
        best = int(order[0])
        if values[best] - values[order[1]] < MARGIN or not _luma_ok(kind, group, best):
            continue
        question = comparison_question(kind, rng, held_out)[0]
        if not choices or rng.random() < 0.5:
            return kind, question, f"The {ORDINALS[best]} image."
        perm = rng.permutation(len(group))
        mcq = mcq_prompt(question, [f"The {ORDINALS[p]} image" for p in perm])
        return kind, mcq, LETTERS[int(np.nonzero(perm == best)[0][0])]
    return None


# -- writing -----------------------------------------------------------------------------------------------------------
def write_one(args: tuple[Path, int, str, int, int, int, bool]) -> dict:
    """Generate and write image ``index``; returns its meta record (with the texts)."""
    out, index, split, seed, max_side, upscale, large = args
    g = generate(index, split, seed, max_side, upscale, large)
    stem = f"{split}_{index:06d}"
    Image.fromarray(g.image).save(out / "images" / f"{stem}.png", compress_level=PNG_LEVEL)
    gt = out / "gt" / stem
    gt.mkdir(parents=True, exist_ok=True)
    for name, mask in g.masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{get(name).key}.png", compress_level=PNG_LEVEL)
    rng = np.random.default_rng([seed, 7, index])
    turns = conversation(g, rng, held_out=split != "train")
    return {
        "id": stem,
        "image": f"images/{stem}.png",
        "photo": g.photo,
        "size": list(g.image.shape[:2]),
        "classes": list(g.masks),
        "severity": g.severity,
        "area": {n: float(m.mean()) for n, m in g.masks.items()},
        "location": {n: region_location(m) for n, m in g.masks.items()},
        "scores": scores(g),
        "luma": float((g.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).mean() / 255),
        "families": g.families,
        "jpeg": g.jpeg,
        "description": describe(g),
        "turns": turns,
    }


def reuse_images(
    out: Path, source: Path, num: int, split: str, seed: int, max_side: int, upscale: int = 0, large: bool = False
) -> list[dict]:
    """The first images (at most ``num``) of an earlier dataset of the same split, seed and photo size, hard-linked
    (or copied) into ``out`` with their masks: image ``i`` depends only on (seed, split, i), so they are the images
    this dataset would generate. Returns their meta records."""
    meta = json.loads((source / "meta.json").read_text())
    made = (
        meta["split"],
        meta["seed"],
        meta.get("max_side", MAX_SIDE),
        meta.get("upscale", 0),
        meta.get("large", False),
    )
    if made != (split, seed, max_side, upscale, large):
        raise ValueError(
            f"{source} holds (split, seed, max side, upscale, large) {made}, not "
            f"{(split, seed, max_side, upscale, large)}"
        )
    metas = [{k: v for k, v in m.items() if k != "grounding_answer"} for m in meta["images"][:num]]
    for m in metas:
        files = [m["image"], *(f"gt/{m['id']}/{get(n).key}.png" for n in m["classes"])]
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            try:
                (out / name).hardlink_to(source / name)
            except OSError:  # another file system
                (out / name).write_bytes((source / name).read_bytes())
    return metas


def write_dataset(
    out: Path,
    num: int,
    split: str,
    seed: int,
    comparisons: int,
    workers: int = 1,
    max_side: int = MAX_SIDE,
    reuse: Path | None = None,
    upscale: int = 0,
    large: bool = False,
) -> None:
    """Generate ``num`` images and every JSON file of the layout into ``out`` (``comparisons`` groups of 2–4 images);
    with ``reuse``, the images an earlier dataset of the same split and seed already holds are taken from it."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    if upscale and upscale < UPSCALE_MIN:
        raise ValueError(f"upscale must be 0 or at least {UPSCALE_MIN} px, got {upscale}")
    if large and upscale:
        raise ValueError("large and upscale are two ways of drawing large photos: choose one")
    metas = reuse_images(out, reuse, num, split, seed, max_side, upscale, large) if reuse else []
    jobs = [(out, i, split, seed, max_side, upscale, large) for i in range(len(metas), num)]
    for name in photo_names(split):  # fetch archived photos once, before workers would race to
        load_photo(name)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            metas += tqdm(pool.map(write_one, jobs, chunksize=8), total=len(jobs), desc=f"synth {split}")
    else:
        metas += [write_one(j) for j in tqdm(jobs, desc=f"synth {split}")]
    group_text = SegTokens().group_text()
    records = [
        {
            "id": m["id"],
            "image": m["image"],
            "ann_list": [{"label": n, "mask": f"gt/{m['id']}/{get(n).key}.png"} for n in m["classes"]],
        }
        for m in metas
    ]
    describe_json = [_conv(m["id"], m["image"], m["turns"]) for m in metas]
    caption_json = [
        _conv(m["id"], m["image"], [("Render a clear and concise summary of the photo.", m["description"])])
        for m in metas
    ]
    rng = np.random.default_rng([seed, 11, SPLITS.index(split)])
    held_out = split != "train"
    compare_json = comparison_records(metas, comparisons, rng, f"cmp_{split}", held_out=held_out)
    pairs_rng = np.random.default_rng([seed, 13, SPLITS.index(split)])
    pairs_json = comparison_records(metas, comparisons, pairs_rng, f"pair_{split}", 2, False, held_out)
    for name, data in (
        ("qground.json", records),
        ("describe.json", describe_json),
        ("caption.json", caption_json),
        ("compare.json", compare_json),
        ("compare_pairs.json", pairs_json),
    ):
        (out / name).write_text(json.dumps(data, indent=1))
    meta = {"split": split, "seed": seed, "max_side": max_side, "upscale": upscale, "large": large}
    meta |= {"held_out_families": sorted(HELD_OUT), "images": metas}
    for m in metas:  # the grounding answer is what the reader builds from qground.json; kept here for inspection
        m["grounding_answer"] = grounding_answer(m["classes"], group_text)
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def comparison_records(
    metas: list[dict],
    count: int,
    rng: np.random.Generator,
    prefix: str,
    max_images: int = 4,
    choices: bool = True,
    held_out: bool = False,
) -> list[dict]:
    """``count`` LLaVA-schema comparison records over random groups of 2–``max_images`` of ``metas``, each with the
    ``kind`` of its question (a key of ``COMPARISONS``); groups without an unambiguous answer are skipped.
    ``choices=False``: free-form answers only; ``held_out``: held-out phrasings."""
    records = []
    draws = 1000 + 100 * count
    for _ in range(draws):
        if len(records) == count:
            return records
        group = [metas[i] for i in rng.choice(len(metas), size=int(rng.integers(2, max_images + 1)), replace=False)]
        found = comparison(group, rng, choices, held_out)
        if found is not None:
            kind, question, answer = found
            record = _conv(f"{prefix}_{len(records):06d}", [m["image"] for m in group], [(question, answer)])
            records.append(record | {"kind": kind})
    if len(records) < count:
        raise ValueError(
            f"{prefix}: only {len(records)} of {count} comparison groups have an unambiguous answer after {draws} "
            f"draws from {len(metas)} images; generate more images or ask for fewer comparisons"
        )
    return records


def _conv(sample_id: str, image: str | list[str], turns: list[tuple[str, str]]) -> dict:
    """A LLaVA-schema record of (question, answer) turns; several images get Co-Instruct's "The first image:
    <image>" lines before the first question."""
    slots = "".join(f"{h}<image>\n" for h in image_header(len(image))) if isinstance(image, list) else "<image>\n"
    conversations = []
    for k, (question, answer) in enumerate(turns):
        conversations += [
            {"from": "human", "value": (slots if k == 0 else "") + question},
            {"from": "gpt", "value": answer},
        ]
    return {"id": sample_id, "image": image, "conversations": conversations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num", type=int, required=True)
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--comparisons", type=int, default=None, help="default: as many as images")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--max-side", type=int, default=MAX_SIDE, help="longest side of the photos (default %(default)s)"
    )
    parser.add_argument("--reuse", type=Path, default=None, help="an earlier dataset of the same split and seed")
    parser.add_argument(
        "--upscale",
        type=int,
        default=0,
        help=f"enlarge every photo to a longest side in [{UPSCALE_MIN}, UPSCALE] before its distortions (large photos)",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help=f"every image at a longest side in {list(LARGE_SIDES)}, its photo enlarged at most {LARGE_ENLARGE}×",
    )
    args = parser.parse_args(argv)
    write_dataset(
        args.out,
        args.num,
        args.split,
        args.seed,
        args.comparisons or args.num,
        args.workers,
        args.max_side,
        args.reuse,
        args.upscale,
        args.large,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
