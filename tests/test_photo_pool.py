"""The Debian photo pool without the network: fake .deb files built here, the apt step monkeypatched."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import debian, photo_pool
from training.data.archives import sha256_of
from training.data.debian import DebianPackage, fetch_package
from training.data.photo_pool import POOL, SPLITS, PoolPhoto, load_pool_photo, pool_photos

FORBIDDEN = ("mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-")


def build_deb(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    """A minimal ``name_1.0_all.deb`` holding ``files`` (paths relative to the package root)."""
    tree = tmp_path / "build" / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    )
    for rel, content in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(content)
    out = tmp_path / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(out)], check=True, capture_output=True)
    return out


class FakeApt(list):
    """The downloads asked for, as (name, version); ``served`` maps a package name to the .deb to hand out."""

    def __init__(self):
        super().__init__()
        self.served: dict[str, Path] = {}


@pytest.fixture
def fake_apt(monkeypatch):
    """Serves built .deb files instead of apt; returns the list of (name, version) downloads asked for."""
    calls = FakeApt()
    served = calls.served

    def download(name: str, version: str, dest: Path) -> None:
        calls.append((name, version))
        shutil.copy(served[name], dest / served[name].name)

    monkeypatch.setattr(debian, "apt_download", download)
    return calls


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing")


@needs_dpkg
def test_fetch_package_unpacks_once(tmp_path, fake_apt):
    deb = build_deb(tmp_path, "fakepkg", {"usr/share/fake/hello.txt": b"hi"})
    fake_apt.served["fakepkg"] = deb
    pkg = DebianPackage("fakepkg", "1.0", sha256_of(deb), "MIT")
    cache = tmp_path / "cache"
    root = fetch_package(pkg, cache)
    assert root == cache / "root" / "fakepkg"
    assert (root / "usr/share/fake/hello.txt").read_bytes() == b"hi"
    assert fetch_package(pkg, cache) == root
    assert fake_apt == [("fakepkg", "1.0")]
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@needs_dpkg
def test_fetch_package_rejects_wrong_sha(tmp_path, fake_apt):
    deb = build_deb(tmp_path, "fakepkg", {"usr/share/fake/hello.txt": b"hi"})
    fake_apt.served["fakepkg"] = deb
    pkg = DebianPackage("fakepkg", "1.0", "0" * 64, "MIT")
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {sha256_of(deb)}"):
        fetch_package(pkg, tmp_path / "cache")
    assert not (tmp_path / "cache" / "root" / "fakepkg").exists()


def test_pool_is_consistent():
    names = [p.name for p in POOL]
    assert len(names) == len(set(names))
    assert {p.split for p in POOL} <= set(SPLITS)
    packages = {s: {p.package.name for p in pool_photos(s)} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not packages[a] & packages[b], (a, b)
    for p in POOL:
        assert not any(p.package.name.startswith(f) for f in FORBIDDEN), p.package.name
        assert len(p.package.sha256) == 64 and p.license
    assert len(pool_photos("train")) >= 100
    assert len(pool_photos("val")) >= 25 and len(pool_photos("eval")) >= 25
    assert all(1 <= len(packages[s]) <= 2 for s in ("val", "eval")), packages


def test_pool_members_are_unique_per_package():
    members = [(p.package.name, p.member) for p in POOL]
    assert len(members) == len(set(members))


def test_rcc_member_reads_a_bundle():
    # a version-2 bundle with one zlib-compressed file /a/b.txt, laid out by hand
    payload = b"hello rcc"
    compressed = len(payload).to_bytes(4, "big") + zlib.compress(payload)
    data = len(compressed).to_bytes(4, "big") + compressed

    def name(text: str) -> bytes:
        return len(text).to_bytes(2, "big") + b"\0\0\0\0" + text.encode("utf-16-be")

    names = name("a") + name("b.txt")
    pad = b"\0" * 8  # version 2 entries end with a modification time

    def folder(name_off: int, count: int, first: int) -> bytes:
        return (
            name_off.to_bytes(4, "big") + (2).to_bytes(2, "big") + count.to_bytes(4, "big") + first.to_bytes(4, "big")
        )

    tree = folder(0, 1, 1) + pad + folder(0, 1, 2) + pad
    tree += (len(name("a"))).to_bytes(4, "big") + (1).to_bytes(2, "big") + b"\0" * 4 + (0).to_bytes(4, "big") + pad
    header = 20
    bundle = b"qres" + b"".join(
        x.to_bytes(4, "big") for x in (2, header, header + len(tree), header + len(tree) + len(data))
    )
    bundle += tree + data + names
    assert photo_pool.rcc_member(bundle, "/a/b.txt") == payload
    with pytest.raises(KeyError):
        photo_pool.rcc_member(bundle, "/a/c.txt")


def test_load_pool_photo_shrinks_and_caches(tmp_path, monkeypatch):
    root = tmp_path / "root" / "fakepics"
    (root / "pics").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)).save(root / "pics" / "a.jpg")
    monkeypatch.setattr(photo_pool, "fetch_package", lambda pkg, cache: root)
    photo = PoolPhoto("fake/a", DebianPackage("fakepics", "1.0", "0" * 64, "MIT"), "pics/a.jpg", "train", "MIT")
    pixels = load_pool_photo(photo, max_side=100, cache_dir=tmp_path)
    assert pixels.shape == (60, 100, 3) and pixels.dtype == np.uint8
    png = tmp_path / "photos" / "100" / "fake" / "a.png"
    assert png.exists()
    load_pool_photo.cache_clear()
    (root / "pics" / "a.jpg").unlink()  # a second load reads the cached PNG only
    np.testing.assert_array_equal(load_pool_photo(photo, max_side=100, cache_dir=tmp_path), pixels)
