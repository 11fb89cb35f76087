"""``bench.load`` in small: 2 gradio_client users × 3 requests on the overfit tiny engine, no error, no cross-talk, and
the temp space measured; its temp-space bound, tagged uploads and disk walk on their own."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from bench.load import (
    ENDPOINTS,
    Record,
    Report,
    Sample,
    TempArea,
    Usage,
    User,
    disk_table,
    guarded,
    loopback_only,
    run,
    summary,
    tagged,
    usage,
    verdict,
)


@pytest.fixture(scope="module")
def users(overfit_photo_files) -> list[User]:
    """User 0 sends the 'noise' photo first, user 1 the 'blur + low light' one (and both, swapped, to /compare)."""
    paths = overfit_photo_files
    known = ("noise", "blur + low light")
    return [User((paths[0], paths[1]), known), User((paths[1], paths[0]), known[::-1])]


def test_two_users_each_get_their_own_answers(trained_tiny, users, tmp_path):
    report = run(trained_tiny, "qground-tiny-overfit", users, requests=3, queue_size=4, deadline_s=300, folder=tmp_path)
    assert report.problems() == [] and len(report.records) == report.planned == 6
    assert {r.endpoint for r in report.records} == set(ENDPOINTS)
    ground = [ref["/ground"] for ref in report.references]
    assert [labels for _, labels, *_ in ground] == [("noise",), ("blur", "low light")]
    assert verdict(report.references, 0, "/ground", ground[1]).startswith("cross-talk: user 0 got user 1's")
    assert report.queue.endswith("the next request succeeded") and report.passed()

    # temp space: both areas found and measured from the start to the end of the load; a load of seconds cannot
    # outlast the app's cleanup windows, so the bounds are untested, never failed
    assert [a.name for a in report.areas] == ["Gradio temp", "Scratch"] and all(a.roots for a in report.areas)
    assert len(report.samples) >= 2 and report.samples[0].requests == 0 and report.samples[-1].requests == 6
    gradio, scratch = checks = report.disk_checks()
    for check in checks:
        for figure in (check.before, check.after):
            assert figure.bytes >= 0 and figure.files >= 0 and figure.folders >= 0
        assert check.peak_bytes >= max(check.before.bytes, check.after.bytes) >= 0
        assert check.peak_entries >= max(check.before.entries, check.after.entries)
        assert all(np.isfinite(check.per_100)) and check.held is None and check.note.startswith("untested")
    assert gradio.after.files > gradio.before.files  # every request uploads its own, distinct, copy of the photos
    assert scratch.after.files > scratch.before.files  # each /ground leaves an overlay PNG there

    # the printed disk figures: before, after, peak (MiB, entries) of each area and in all, all ≥ 0
    text = summary(report, users, "overfit photos")
    mib = r"\s+([\d.]+) MiB"
    rows = {m[1] or "": m for m in re.finditer(rf"^(\S+)?.*\bbytes{mib}{mib}{mib}", text, re.M)}
    assert set(rows) == {"Gradio", "Scratch", "all"}
    assert all(float(v) >= 0 for m in rows.values() for v in m.groups()[1:])
    entries = re.findall(r"^\s+entries\s+(\d+)\s+(\d+)\s+(\d+)\s", text, re.M)
    assert len(entries) == 3 and all(int(v) >= 0 for row in entries for v in row)
    assert text.splitlines()[-1] == "PASS (temp-space bound untested for: Gradio temp, Scratch)"


def soak(sizes: list[tuple[int, int]], window_s: float | None = 10.0, every_s: float = 1.0) -> Report:
    """A made-up load of 1 request a second, one sample a second: ``sizes`` (bytes, entries) of one area after each
    second."""
    area = TempArea("Gradio temp", (), None if window_s is None else window_s - every_s, every_s)
    report = Report("fake", users=1, planned=len(sizes) - 1, areas=(area,))
    report.samples = [Sample(float(t), t, (Usage(b, e, 0),)) for t, (b, e) in enumerate(sizes)]
    report.records = [Record(0, "/ground", 0.1, "", 0, float(t)) for t in range(1, len(sizes))]
    return report


def test_disk_bound_holds_for_a_cleaned_area_and_fails_for_a_leak():
    # 1000 bytes and 2 entries per request, removed after 10 s: ≤ 10 requests' worth at any time
    cleaned = soak([(1000 * min(t, 10), 2 * min(t, 10)) for t in range(60)])
    (check,) = cleaned.disk_checks()
    assert check.held is True and check.bound == (1500 * 11, 3 * 11) and check.late_per_100 == (0.0, 0.0)
    assert check.per_100 == pytest.approx((100 * 10_000 / 59, 100 * 20 / 59))
    assert cleaned.passed() and "yes" in disk_table(cleaned)
    # the files are removed, one empty folder per request is not: the entries grow with N and the bound fails
    folders = soak([(1000 * min(t, 10), 2 * min(t, 10) + max(0, t - 10)) for t in range(60)])
    (leak,) = folders.disk_checks()
    assert leak.held is False and leak.note.endswith(
        "its entries still grew 86% as fast as over the whole load: the cleanup did not keep up or did not run"
    )
    assert folders.failures() == ["Gradio temp: temp space above its bound"]
    # shorter than the window: untested, with what the window implies
    (short,) = soak([(1000 * t, 2 * t) for t in range(8)]).disk_checks()
    assert short.held is None and short.bound is None and "one window keeps ≈ 0.01 MiB" in short.note
    (never,) = soak([(1000 * t, 2 * t) for t in range(20)], window_s=None).disk_checks()
    assert never.held is None and never.note.startswith("never cleaned")


def test_tagged_uploads_differ_in_bytes_not_pixels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt, **({"exif": Image.Exif()} if fmt == "JPEG" else {}))
        data = buffer.getvalue()
        one, two = tagged(data, b"user 0 request 1"), tagged(data, b"user 0 request 2")
        assert len({data, one, two}) == 3
        pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in (data, one, two)]
        assert all(np.array_equal(pixels[0], p) for p in pixels[1:]), fmt
    assert tagged(b"GIF89a...", b"x") == b"GIF89a..."


def test_usage_counts_files_folders_and_their_blocks(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.bin").write_bytes(b"x" * 10_000)
    (tmp_path / "g.txt").write_text("hi")
    found = usage([tmp_path, tmp_path / "missing"])
    assert (found.files, found.folders) == (2, 2) and found.bytes >= 10_000 + 2
    assert usage([]) == Usage() and found + Usage(1, 1, 1) == Usage(found.bytes + 1, 3, 3)


def test_connections_off_the_machine_are_refused_only_while_guarded():
    """The audit hook cannot be removed: after a load test in this process, a package registry is reachable again."""
    away, home = ("socket.connect", (None, ("203.0.113.80", 443))), ("socket.connect", (None, ("127.0.0.1", 7860)))
    with guarded():
        with pytest.raises(PermissionError, match="refused a connection to 203.0.113.80"):
            loopback_only(*away)
        loopback_only(*home)
    loopback_only(*away)
