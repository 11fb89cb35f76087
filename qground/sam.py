"""The annotation backend: click points on a photo, SAM draws the region, the region gets a distortion label.

``SamAnnotator`` wraps ``segment_anything.SamPredictor``: the image embedding is computed once per image and cached by
a key (the SHA-256 of the photo's pixels), so every further click only runs the prompt encoder and mask decoder.
Weights come from ``QGROUND_SAM``: a local ``.pth`` (read with ``torch.load(weights_only=True)``, which refuses
pickled code) or ``.safetensors`` file, or a Hub file as ``repo_id:filename`` (downloaded with ``hf_hub_download``).

An ``Annotation`` is one session's work on one photo: committed ``Region``s (label, points, mask) and the pending
points/mask of the region being drawn. The functions on it return new ``Annotation``s (nothing is changed in place).

Coordinate frame: the pixel grid of the photo as ``qground.imageio.load_image`` returns it (full resolution,
EXIF-upright); points are (x, y) = (column, row) from the top-left; masks are bool (H, W).

Export zip (written atomically with ``qground.files.write_atomically``), in one of ``qground.records.RECORD_LAYOUTS``.
``released`` (default), QGround-100K's layout as released, so that unzipped it is a training data source as it is
(``json: …/qground_dataset/qground_train.json``, ``image_root: …/images``, ``mask_root: …/masks``)::

    qground_dataset/qground_train.json                 [record]: one ann, the annotator's quality_description and
                                                       segmentation_mask (qground.records.to_qground_record)
    qground_dataset/images/app/<name>                  the photo's original bytes
    qground_dataset/masks/app/<stem>_<annotator>_<stem>.png   all regions in one lossless color mask (palette colors)
    regions.json                                       {"image": <zip member>, "regions": [{"label", "points", "rle"}]}:
                                                       what the color mask cannot hold (overlaps, points), for import

``legacy``::

    record.json          QGround-100K-style record (legacy layout) + per ann "rle" (COCO, column-major,
                         qground.records.mask_to_rle) and "points" ([[x, y, 1 include | 0 exclude], ...])
    images/<name>        the photo's original bytes
    masks/<id>_<n>.png   region n (1-based) as a lossless 8-bit PNG, 0 / 255

``import_zip`` reads either back to the same regions (masks bit-exact). A released-layout zip without
``regions.json`` gives one region per class of its color mask (decoded with the default palette), without points.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw

from qground import files
from qground.imageio import load_image
from qground.palette import DEFAULT_PALETTE, Palette, PaletteError, decode_color_mask
from qground.records import LEGACY, RECORD_LAYOUTS, RELEASED, RegionLabel, decode_rle, mask_to_rle, to_qground_record
from qground.taxonomy import get
from qground.visualize import overlay

__all__ = [
    "SAM_ENV",
    "SAM_HELP",
    "Annotation",
    "AnnotationError",
    "Point",
    "Region",
    "SamAnnotator",
    "SamUnavailable",
    "add_point",
    "add_region",
    "annotate",
    "delete_region",
    "export_zip",
    "import_zip",
    "parse_regions",
    "region_rows",
    "render",
    "start",
    "status",
    "undo",
    "write_atomically",
]

SAM_ENV = "QGROUND_SAM"
SAM_HELP = (
    "Click-to-segment needs Segment Anything weights. Set the environment variable QGROUND_SAM before starting the "
    "app, to a local checkpoint file (e.g. QGROUND_SAM=/models/sam_vit_b_01ec64.pth, or a .safetensors file) or to a "
    "file in a Hub model repo as repo_id:filename (e.g. QGROUND_SAM=ORG/sam-weights:sam_vit_b_01ec64.pth), holding "
    "the original Segment Anything ViT-B, ViT-L or ViT-H state dict. On Spaces, set it as a variable and list that "
    "repo and file under preload_from_hub."
)
PENDING_COLOR = (86, 180, 233)  # Okabe-Ito sky blue: not a class color
INCLUDE_COLOR = (0, 200, 0)
EXCLUDE_COLOR = (230, 0, 0)
MAX_ZIP_BYTES = 1 << 30
_SAM_DEPTHS = {12: "vit_b", 24: "vit_l", 32: "vit_h"}


class SamUnavailable(RuntimeError):
    """SAM weights that cannot be found or read; the message says what to set."""


class AnnotationError(ValueError):
    """An annotation step or file that cannot be used; the message says why in plain words."""


# -- SAM ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Embedding:
    features: torch.Tensor  # (1, C, h, w) image-encoder output
    original_size: tuple[int, int]  # (H, W) of the photo
    input_size: tuple[int, int]  # (h', w') of the photo resized so its longest side is the encoder's img_size


class SamAnnotator:
    """A SAM model behind a lock, with an LRU cache of image embeddings keyed by image hash.

    ``embeddings_computed`` counts image-encoder runs (cache misses).
    """

    def __init__(self, sam, name: str, cache_size: int = 4) -> None:
        from segment_anything import SamPredictor

        self.name = name
        self.predictor = SamPredictor(sam.eval())
        self.cache_size = cache_size
        self.embeddings_computed = 0
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, spec: str, device: str | torch.device | None = None) -> SamAnnotator:
        """SAM ViT-B/L/H from a local ``.pth``/``.safetensors`` file or a Hub file ``repo_id:filename``."""
        from segment_anything import sam_model_registry

        path = _checkpoint_file(spec)
        state = _read_state_dict(path)
        depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
        if depth not in _SAM_DEPTHS:
            raise SamUnavailable(f"{path} is not a SAM ViT-B/L/H state dict (image encoder depth {depth}). {SAM_HELP}")
        sam = sam_model_registry[_SAM_DEPTHS[depth]]()
        try:
            sam.load_state_dict(state)
        except RuntimeError as err:
            raise SamUnavailable(f"{path} does not fit SAM {_SAM_DEPTHS[depth]}: {err}") from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(sam.to(device), f"SAM {_SAM_DEPTHS[depth]} ({Path(path).name})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> tuple[SamAnnotator | None, str]:
        """``(annotator, "")`` from ``QGROUND_SAM``, or ``(None, why)`` when it is unset or cannot be loaded."""
        spec = (os.environ if env is None else env).get(SAM_ENV, "").strip()
        if not spec:
            return None, SAM_HELP
        try:
            return cls.from_checkpoint(spec), ""
        except SamUnavailable as err:
            return None, f"{SAM_ENV}={spec!r} could not be loaded: {err}"

    @classmethod
    def tiny_random(cls, seed: int = 0, img_size: int = 64) -> SamAnnotator:
        """A tiny random SAM (ViT encoder of width 32 at ``img_size`` px, patch 8) for tests: fast, meaningless."""
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        torch.manual_seed(seed)
        dim, patch = 32, 8
        grid = img_size // patch
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch,
                embed_dim=32,
                depth=2,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=4,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=dim,
                transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
                num_multimask_outputs=3,
                iou_head_depth=3,
                iou_head_hidden_dim=32,
            ),
        )
        return cls(sam, "SAM tiny (random, for tests)")

    # -- prediction --------------------------------------------------------------------------------------------------
    @staticmethod
    def image_key(image: np.ndarray) -> str:
        """SHA-256 of a uint8 (H, W, 3) image's shape and pixels."""
        digest = hashlib.sha256(repr(image.shape).encode())
        digest.update(np.ascontiguousarray(image).data)
        return digest.hexdigest()

    def has(self, key: str) -> bool:
        """Whether the embedding of the image with this key is cached."""
        return key in self._cache

    def embed(self, image: np.ndarray, key: str | None = None) -> str:
        """Compute (or find in the cache) the embedding of a uint8 (H, W, 3) RGB image; returns its key."""
        key = key or self.image_key(image)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return key
            self.predictor.set_image(image, image_format="RGB")
            self.embeddings_computed += 1
            p = self.predictor
            self._cache[key] = _Embedding(p.features, tuple(p.original_size), tuple(p.input_size))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return key

    def predict(self, key: str, points: list[Point]) -> np.ndarray:
        """Bool (H, W) mask of the cached image ``key`` for include/exclude points (at least one include point).

        SAM returns three candidate masks; the one that agrees with the most points (include points inside, exclude
        points outside) wins, ties going to SAM's predicted IoU.
        """
        if not any(p.include for p in points):
            raise AnnotationError("add at least one include point")
        coords = np.array([[p.x, p.y] for p in points], dtype=np.float32)
        labels = np.array([int(p.include) for p in points])
        with self._lock:
            if key not in self._cache:
                raise KeyError(f"no cached embedding for image {key[:12]}…; call embed() first")
            self._cache.move_to_end(key)
            emb = self._cache[key]
            p = self.predictor
            p.features, p.original_size, p.input_size, p.is_image_set = (
                emb.features,
                emb.original_size,
                emb.input_size,
                True,
            )
            masks, scores, _ = p.predict(coords, labels, multimask_output=True)
        agree = [sum(bool(m[pt.y, pt.x]) == pt.include for pt in points) for m in masks]
        best = max(range(len(masks)), key=lambda i: (agree[i], scores[i]))
        return masks[best].astype(bool)


def _checkpoint_file(spec: str) -> Path:
    """A local file, or ``repo_id:filename`` downloaded from the Hub (cached)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if ":" not in spec or spec.startswith((".", "/", "~")):
        raise SamUnavailable(f"no such file {spec!r}. {SAM_HELP}")
    repo_id, filename = spec.split(":", 1)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError:  # first: it is also an EntryNotFoundError
        raise SamUnavailable(
            f"{spec} is not cached and the Hub cannot be reached: download it once, or use a path"
        ) from None
    except EntryNotFoundError:
        raise SamUnavailable(f"the Hub repo {repo_id} has no file {filename}") from None
    except RepositoryNotFoundError:
        raise SamUnavailable(f"no Hub repo {repo_id} (or it is private: set HF_TOKEN)") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth`` read with ``weights_only=True`` (no code is unpickled)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise SamUnavailable(f"{path} is not a plain tensor checkpoint ({type(err).__name__}): refusing it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamUnavailable(f"{path} does not hold a state dict of tensors")
    return state


# -- regions -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """A click at pixel column ``x``, row ``y``; ``include`` False marks background."""

    x: int
    y: int
    include: bool = True


@dataclass(frozen=True)
class Region:
    """A labelled region: canonical class ``label``, the points that drew it, its bool (H, W) ``mask``."""

    label: str
    points: tuple[Point, ...]
    mask: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Annotation:
    """One photo being annotated: ``image_path`` (original file), its ``size`` (H, W), the SAM cache ``key``,
    committed ``regions`` and the pending ``points``/``mask`` (None until the first include point)."""

    image_path: str
    size: tuple[int, int]
    key: str
    regions: tuple[Region, ...] = ()
    points: tuple[Point, ...] = ()
    mask: np.ndarray | None = field(default=None, compare=False)


def start(sam: SamAnnotator, image_path: str | os.PathLike) -> Annotation:
    """A new annotation of a photo file; computes (or reuses) its SAM embedding."""
    rgb = np.asarray(load_image(image_path))
    key = sam.embed(rgb)
    return Annotation(image_path=str(image_path), size=rgb.shape[:2], key=key)


def _ensure_embedding(sam: SamAnnotator, ann: Annotation) -> None:
    if not sam.has(ann.key):
        sam.embed(np.asarray(load_image(ann.image_path)), ann.key)


def add_point(sam: SamAnnotator, ann: Annotation, x: int, y: int, include: bool = True) -> Annotation:
    """Add a click at pixel (x, y) and recompute the pending mask (exclude points alone draw nothing)."""
    h, w = ann.size
    if not (0 <= x < w and 0 <= y < h):
        raise AnnotationError(f"the point ({x}, {y}) is outside the {w}×{h} photo")
    points = (*ann.points, Point(int(x), int(y), bool(include)))
    return _with_points(sam, ann, points)


def _with_points(sam: SamAnnotator, ann: Annotation, points: tuple[Point, ...]) -> Annotation:
    mask = None
    if any(p.include for p in points):
        _ensure_embedding(sam, ann)
        mask = sam.predict(ann.key, list(points))
    return dataclasses.replace(ann, points=points, mask=mask)


def undo(sam: SamAnnotator, ann: Annotation) -> Annotation:
    """Remove the last pending point, or, with none pending, the last committed region."""
    if ann.points:
        return _with_points(sam, ann, ann.points[:-1])
    if ann.regions:
        return dataclasses.replace(ann, regions=ann.regions[:-1])
    raise AnnotationError("nothing to undo")


def add_region(ann: Annotation, label: str) -> Annotation:
    """Commit the pending mask as a region labelled ``label`` (canonical, key or display class name)."""
    if ann.mask is None or not ann.mask.any():
        raise AnnotationError("click on the photo first: there is no region to add")
    region = Region(get(label).name, ann.points, ann.mask)
    return dataclasses.replace(ann, regions=(*ann.regions, region), points=(), mask=None)


def delete_region(ann: Annotation, number: int) -> Annotation:
    """Delete region ``number`` (1-based, as listed)."""
    if not 1 <= number <= len(ann.regions):
        raise AnnotationError(f"there is no region {number}; regions are numbered 1 to {len(ann.regions)}")
    return dataclasses.replace(ann, regions=ann.regions[: number - 1] + ann.regions[number:])


def parse_regions(text: str) -> list[tuple[str, tuple[Point, ...]]]:
    """Regions as JSON text, ``[{"label": "blur", "points": [[x, y], [x, y, 0], ...]}, ...]`` (a point's third value
    is 1 include, the default, or 0 exclude) → [(canonical label, points)]; AnnotationError shows the format."""
    example = '[{"label": "blur", "points": [[120, 80], [300, 40, 0]]}]'
    try:
        data = json.loads(text)
        regions = []
        for entry in data:
            points = tuple(Point(int(p[0]), int(p[1]), bool(p[2]) if len(p) > 2 else True) for p in entry["points"])
            regions.append((get(entry["label"]).name, points))
    except (json.JSONDecodeError, TypeError, KeyError, IndexError, ValueError) as err:
        raise AnnotationError(f"regions must be JSON like {example} ({type(err).__name__}: {err})") from None
    if not regions:
        raise AnnotationError(f"give at least one region, e.g. {example}")
    return regions


def annotate(sam: SamAnnotator, image_path: str | os.PathLike, regions: list[tuple[str, tuple[Point, ...]]]):
    """An annotation of a photo with one committed region per (label, points), each drawn by SAM."""
    ann = start(sam, image_path)
    for label, points in regions:
        for p in points:
            ann = add_point(sam, ann, p.x, p.y, p.include)
        ann = add_region(ann, label)
    return ann


def render(ann: Annotation, alpha: float = 0.45) -> np.ndarray:
    """Preview (H, W, 3) uint8: regions tinted in their class colors, the pending mask in sky blue, include points as
    green and exclude points as red dots (radius ``max(3, min(H, W) // 100)``) on the pending region's clicks."""
    rgb = np.asarray(load_image(ann.image_path))
    by_class: dict[str, np.ndarray] = {}
    for region in ann.regions:
        by_class[region.label] = by_class.get(region.label, np.zeros(ann.size, bool)) | region.mask
    out = overlay(rgb, by_class, alpha=alpha)
    if ann.mask is not None:
        tint = np.asarray(PENDING_COLOR, dtype=np.float32)
        out[ann.mask] = np.rint(out[ann.mask] * (1 - alpha) + tint * alpha).astype(np.uint8)
    if ann.points:
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        r = max(3, min(ann.size) // 100)
        for p in ann.points:
            color = INCLUDE_COLOR if p.include else EXCLUDE_COLOR
            draw.ellipse(
                (p.x - r, p.y - r, p.x + r, p.y + r), fill=color, outline=(255, 255, 255), width=max(1, r // 3)
            )
        out = np.asarray(image)
    return out


def region_rows(ann: Annotation | None) -> list[list]:
    """[[region number, class display name, number of points, area %]] for the regions table."""
    if ann is None:
        return []
    return [
        [k, get(r.label).display, len(r.points), round(100.0 * float(r.mask.mean()), 2)]
        for k, r in enumerate(ann.regions, 1)
    ]


def status(ann: Annotation | None) -> str:
    """Markdown: the pending points with their pixel coordinates and what to do next."""
    if ann is None:
        return "Upload a photo, then click on it: each click adds a point and SAM draws the region."
    h, w = ann.size
    done = f"{len(ann.regions)} region{'s' if len(ann.regions) != 1 else ''} so far on this {w}×{h} photo."
    if not ann.points:
        return f"{done} Click on the photo to start a region."
    points = " · ".join(f"({p.x}, {p.y}) {'include' if p.include else 'exclude'}" for p in ann.points)
    hint = "pick its distortion and press **Add region**" if ann.mask is not None else "add an include point"
    return f"Pending region, points at (x, y): {points} — {hint}. {done}"


# -- export / import ---------------------------------------------------------------------------------------------------
def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """``qground.files.write_atomically`` for files the app saves for its user: a full disk raises AnnotationError
    saying so (shown as is); every other error is re-raised unchanged. Nothing partial is ever left behind."""
    try:
        return files.write_atomically(path, write)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        name = Path(path).name
        raise AnnotationError(
            f"the disk is full: {name} could not be saved (nothing was written); free some space and try again"
        ) from None


def _record_id(image_path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(image_path).stem) or "image"


RELEASED_ROOT = "qground_dataset"
RELEASED_JSON = f"{RELEASED_ROOT}/qground_train.json"
REGIONS_JSON = "regions.json"
APP_FOLDER = "app"  # the images/ and masks/ subfolder of exported photos (the release has spaq_koniq/)


def export_zip(
    ann: Annotation,
    path: str | os.PathLike,
    layout: str = RELEASED,
    annotator: str = "app",
    description: str | None = None,
) -> Path:
    """Write the annotation as a zip (layouts in the module docstring) to ``path``, atomically. ``annotator`` and
    ``description`` (default: ``qground.records.describe_regions``) fill the released layout's ann."""
    if not ann.regions:
        raise AnnotationError("there are no regions to export: click on the photo and press “Add region” first")
    if layout not in RECORD_LAYOUTS:
        raise ValueError(f"layout must be one of {RECORD_LAYOUTS}, got {layout!r}")
    build = _legacy_members if layout == LEGACY else partial(_released_members, annotator=annotator, text=description)
    members = build(ann)

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for member, data in members.items():
                zf.writestr(member, data)

    return write_atomically(path, write)


def _labels(ann: Annotation) -> list[RegionLabel]:
    return [RegionLabel(k + 1, r.label, None, r.label) for k, r in enumerate(ann.regions)]


def _legacy_members(ann: Annotation) -> dict[str, bytes]:
    """Zip member name → bytes of the legacy layout."""
    name = Path(ann.image_path).name
    with tempfile.TemporaryDirectory() as tmp:
        record = to_qground_record(
            _record_id(ann.image_path),
            f"images/{name}",
            [r.mask for r in ann.regions],
            _labels(ann),
            tmp,
            layout=LEGACY,
        )
        for ann_entry, region in zip(record["ann_list"], ann.regions):
            ann_entry["rle"] = mask_to_rle(region.mask)
            ann_entry["points"] = [[p.x, p.y, int(p.include)] for p in region.points]
        members = {"record.json": json.dumps(record, indent=1).encode()}
        members[f"images/{name}"] = Path(ann.image_path).read_bytes()
        for entry in record["ann_list"]:
            members[f"masks/{entry['mask']}"] = (Path(tmp) / entry["mask"]).read_bytes()
    return members


def _released_members(ann: Annotation, annotator: str, text: str | None) -> dict[str, bytes]:
    """Zip member name → bytes of the released layout (+ ``regions.json``)."""
    name = f"{_record_id(ann.image_path)}{Path(ann.image_path).suffix}"
    image = f"{APP_FOLDER}/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        record = to_qground_record(
            _record_id(ann.image_path),
            image,
            [r.mask for r in ann.regions],
            _labels(ann),
            tmp,
            annotator=annotator,
            description=text,
        )
        mask = record["ann_list"][0]["segmentation_mask"]
        members = {
            RELEASED_JSON: json.dumps([record], indent=1).encode(),
            f"{RELEASED_ROOT}/images/{image}": Path(ann.image_path).read_bytes(),
            f"{RELEASED_ROOT}/masks/{mask}": (Path(tmp) / mask).read_bytes(),
        }
    regions = [
        {"label": r.label, "points": [[p.x, p.y, int(p.include)] for p in r.points], "rle": mask_to_rle(r.mask)}
        for r in ann.regions
    ]
    members[REGIONS_JSON] = json.dumps({"image": f"{RELEASED_ROOT}/images/{image}", "regions": regions}).encode()
    return members


def import_zip(sam: SamAnnotator, path: str | os.PathLike, workdir: str | os.PathLike) -> Annotation:
    """Read an exported zip (either layout) back: the photo is written to ``workdir``; regions come back with the
    same labels, points and masks (legacy: PNG and RLE must agree). Raises AnnotationError naming what is wrong."""
    label = Path(path).name
    try:
        with zipfile.ZipFile(path) as zf:
            if sum(info.file_size for info in zf.infolist()) > MAX_ZIP_BYTES:
                raise AnnotationError(f"{label}: the zip unpacks to more than {MAX_ZIP_BYTES >> 20} MB")
            names = set(zf.namelist())
            read = _read_legacy if "record.json" in names else _read_released
            image_name, image_bytes, entries = read(zf, names, label)
    except zipfile.BadZipFile:
        raise AnnotationError(f"{label} is not a zip file exported by the Annotate tab") from None
    image_path = Path(workdir) / Path(image_name).name
    image_path.parent.mkdir(parents=True, exist_ok=True)
    image_path.write_bytes(image_bytes)
    ann = start(sam, image_path)
    regions = []
    for k, (entry, mask) in enumerate(entries):
        if mask.shape != ann.size:
            raise AnnotationError(f"{label}: region {k + 1} mask is {mask.shape}, the photo is {ann.size}")
        try:
            name = get(str(entry.get("label", ""))).name
        except KeyError as err:
            raise AnnotationError(f"{label}: region {k + 1}: {err.args[0]}") from None
        points = tuple(Point(int(x), int(y), bool(inc)) for x, y, inc in entry.get("points", []))
        regions.append(Region(name, points, mask))
    return dataclasses.replace(ann, regions=tuple(regions))


Entries = list[tuple[dict[str, Any], np.ndarray]]


def _read_legacy(zf: zipfile.ZipFile, names: set[str], label: str) -> tuple[str, bytes, Entries]:
    """(image member, its bytes, [(region entry, bool mask)]) of a legacy-layout zip."""
    record = _zip_json(zf, "record.json", label)
    image_name = _record_field(record, "image", str, label)
    entries = _record_field(record, "ann_list", list, label)
    masks = [_zip_mask(zf, entry, k, label) for k, entry in enumerate(entries)]
    return image_name, _zip_member(zf, image_name, label), list(zip(entries, masks))


def _read_released(zf: zipfile.ZipFile, names: set[str], label: str) -> tuple[str, bytes, Entries]:
    """(image member, its bytes, [(region entry, bool mask)]) of a released-layout zip: the regions of
    ``regions.json``, else one per class of the color mask."""
    if REGIONS_JSON in names:
        data = _zip_json(zf, REGIONS_JSON, label)
        image_name = _record_field(data, "image", str, label)
        entries = _record_field(data, "regions", list, label)
        masks = [_zip_mask(zf, entry, k, label) for k, entry in enumerate(entries)]
        return image_name, _zip_member(zf, image_name, label), list(zip(entries, masks))
    if RELEASED_JSON not in names:
        raise AnnotationError(f"{label} has neither record.json nor {RELEASED_JSON}: not an Annotate tab export")
    try:
        records = json.loads(_zip_member(zf, RELEASED_JSON, label))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{label}: {RELEASED_JSON} is not valid JSON ({err})") from None
    record = records[0] if isinstance(records, list) and records and isinstance(records[0], dict) else {}
    image_name = f"{RELEASED_ROOT}/images/{_record_field(record, 'image', str, label)}"
    anns = _record_field(record, "ann_list", list, label)
    mask_name = anns[0].get("segmentation_mask") if anns and isinstance(anns[0], dict) else None
    if not isinstance(mask_name, str):
        raise AnnotationError(f"{label}: {RELEASED_JSON} ann_list[0] has no segmentation_mask")
    with Image.open(io.BytesIO(_zip_member(zf, f"{RELEASED_ROOT}/masks/{mask_name}", label))) as img:
        rgb = np.asarray(img.convert("RGB"))
    try:
        by_class = decode_color_mask(rgb, Palette.load(DEFAULT_PALETTE), where=f"{label}: {mask_name}")
    except PaletteError as err:
        raise AnnotationError(str(err)) from None
    entries = [({"label": name}, mask) for name, mask in by_class.items() if mask.any()]
    return image_name, _zip_member(zf, image_name, label), entries


def _zip_member(zf: zipfile.ZipFile, name: str, label: str) -> bytes:
    try:
        return zf.read(name)
    except KeyError:
        raise AnnotationError(f"{label} has no {name}") from None


def _zip_json(zf: zipfile.ZipFile, name: str, label: str) -> dict[str, Any]:
    try:
        data = json.loads(_zip_member(zf, name, label))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{label}: {name} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{label}: {name} must hold one record object")
    return data


def _record_field(record: dict[str, Any], key: str, kind: type, label: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind):
        raise AnnotationError(f"{label}: record.json field {key!r} must be a {kind.__name__}, got {value!r:.60}")
    return value


def _zip_mask(zf: zipfile.ZipFile, entry: Any, k: int, label: str) -> np.ndarray:
    """Region ``k``'s bool mask from its PNG (non-zero = region), checked against its RLE when both are present."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{label}: ann_list[{k}] must be an object")
    mask = None
    if isinstance(entry.get("mask"), str):
        with Image.open(io.BytesIO(_zip_member(zf, f"masks/{entry['mask']}", label))) as png:
            mask = np.asarray(png.convert("L")) > 0
    if isinstance(entry.get("rle"), dict):
        try:
            rle_mask = decode_rle(entry["rle"])
        except (KeyError, ValueError) as err:
            raise AnnotationError(f"{label}: region {k + 1} has a bad RLE ({err})") from None
        if mask is not None and not np.array_equal(mask, rle_mask):
            raise AnnotationError(f"{label}: region {k + 1}: its PNG and RLE masks differ")
        mask = rle_mask
    if mask is None:
        raise AnnotationError(f"{label}: region {k + 1} has neither a mask PNG nor an RLE")
    return mask
