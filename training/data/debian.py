"""Debian packages as pinned data sources: download one ``.deb`` with ``apt-get download NAME=VERSION``, check its
sha256 and unpack it once under a cache folder (``debs/`` holds the files, ``root/<name>/`` the unpacked trees)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.data.archives import sha256_of


@dataclass(frozen=True)
class DebianPackage:
    """One exact ``.deb``: ``sha256`` is the hex digest of the file apt downloads; ``license`` as its copyright says;
    ``arch`` the architecture in the file name (``all`` for data packages, ``amd64`` for the few that are not)."""

    name: str
    version: str
    sha256: str
    license: str
    arch: str = "all"


def default_cache() -> Path:
    """``$QGROUND_DATA_CACHE`` if set, else ``~/.cache/qground/debian``."""
    return Path(os.environ.get("QGROUND_DATA_CACHE") or Path.home() / ".cache" / "qground" / "debian")


def apt_download(name: str, version: str, dest: Path) -> None:
    """Run ``apt-get download name=version`` inside ``dest`` (the one step that needs the network)."""
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"apt-get is not available: cannot download the Debian package {name}={version}")
    done = subprocess.run(
        ["apt-get", "download", f"{name}={version}"], cwd=dest, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"apt-get download {name}={version} failed:\n{done.stderr.strip()}")


def deb_path(pkg: DebianPackage, cache: Path) -> Path:
    """Where the verified ``.deb`` lives (apt's file name: an epoch ``N:`` is spelled ``N%3a``)."""
    return cache / "debs" / f"{pkg.name}_{pkg.version.replace(':', '%3a')}_{pkg.arch}.deb"


def download_deb(pkg: DebianPackage, cache: Path) -> Path:
    """The package's ``.deb`` in ``cache/debs``, downloaded unless present, its sha256 checked either way."""
    path = deb_path(pkg, cache)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        apt_download(pkg.name, pkg.version, path.parent)
        if not path.exists():
            raise RuntimeError(f"apt-get download {pkg.name}={pkg.version} wrote no {path.name} in {path.parent}")
    got = sha256_of(path)
    if got != pkg.sha256:
        raise ValueError(f"sha256 mismatch for {path.name}: expected {pkg.sha256}, got {got}")
    return path


def fetch_package(pkg: DebianPackage, cache: Path | None = None) -> Path:
    """The root of the unpacked package (``cache/root/<name>``), downloading and unpacking it on first use; the tree
    is unpacked into a temporary folder beside it and renamed into place, so a half-unpacked tree is never seen."""
    cache = default_cache() if cache is None else cache
    root = cache / "root" / pkg.name
    if root.is_dir():
        return root
    deb = download_deb(pkg, cache)
    if shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"dpkg-deb is not available: cannot unpack {deb}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pkg.name}-", dir=root.parent))
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True, text=True)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
