"""Merge2Compare builder (``training.merge2compare``) with fake backends: seeded grouping, the near-duplicate filter,
Co-Instruct records that ``read_coinstruct`` reads back, rejected replies, resuming after a crash, and the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qground.prompts import ordinal
from training import merge2compare as m2c
from training.backends import BackendError
from training.data.readers import read_coinstruct
from training.data.sample import DataFormatError
from training.groups import MAX_CONSECUTIVE_FAILURES, Rejected, group_id, partial_path

NUM_IMAGES = 8


class FakeEmbedder:
    """Texts -> hand-chosen vectors (``table``); any other text gets its own axis (similarity 0 to the rest)."""

    def __init__(self, table: dict[str, Sequence[float]] | None = None, dim: int = 64):
        self.table = {text: np.asarray(v, dtype=np.float32) for text, v in (table or {}).items()}
        self.dim = dim
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            if text not in self.table:
                self.table[text] = np.eye(self.dim, dtype=np.float32)[len(self.table) + 8]
            vector = np.zeros(self.dim, dtype=np.float32)
            vector[: len(self.table[text])] = self.table[text]
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)


class FakeBackend:
    """Answers a merge prompt with a comparison naming each image of the prompt; raises ``error`` from call
    ``fail_from`` (1-based) on, or returns the scripted ``replies`` in turn."""

    def __init__(self, fail_from: int | None = None, error: Exception | None = None, replies: Sequence[str] = ()):
        self.fail_from, self.error, self.replies = fail_from, error, list(replies)
        self.prompts: list[str] = []

    def complete(self, prompt: str, images: Sequence[Path] = ()) -> str:
        self.prompts.append(prompt)
        if self.fail_from is not None and len(self.prompts) >= self.fail_from:
            raise self.error or RuntimeError("backend crashed")
        if self.replies:
            return self.replies.pop(0)
        k = len(re.findall(r"^The \w+ image: ", prompt, flags=re.MULTILINE))
        parts = [f"the {ordinal(i)} image is {'sharp' if i == 0 else 'blurry'}" for i in range(k)]
        return "The first image has the best quality: " + ", ".join(parts) + "."


def write_images(root: Path, count: int = NUM_IMAGES) -> list[str]:
    """``count`` tiny JPEGs under ``root/photos``; their paths relative to ``root``."""
    (root / "photos").mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        Image.new("RGB", (8, 6), (30 * k % 256, 90, 150)).save(root / "photos" / f"p{k}.jpg")
        names.append(f"photos/p{k}.jpg")
    return names


def description(k: int) -> str:
    return f"Photo {k} is {'sharp' if k % 2 else 'noisy'} with {'good' if k % 3 else 'poor'} exposure."


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    """(descriptions.json, image root): one Q-Pathway-like description per image."""
    root = tmp_path / "images"
    names = write_images(root)
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps([{"image": name, "text": description(k)} for k, name in enumerate(names)]))
    return path, root


def options(data: tuple[Path, Path], out: Path, **changes) -> m2c.Options:
    return m2c.Options(descriptions=data[0], images=data[1], out=out, **{"groups": 12, **changes})


def build(opts: m2c.Options, backend: FakeBackend, embedder: FakeEmbedder, **kwargs) -> m2c.Summary:
    return m2c.run(opts, m2c.make_plan(opts, embedder), backend, **kwargs)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in partial_path(out).read_text().splitlines()]


# -- input -------------------------------------------------------------------------------------------------------------
def test_reads_qpathway_and_llava_records_and_counts_missing_images(tmp_path):
    root = tmp_path / "images"
    names = write_images(root, 3)
    path = tmp_path / "d.jsonl"
    records = [
        {"image": names[0], "description": " Sharp. "},
        {"image": "./" + names[1], "caption": "Noisy."},
        {
            "id": 7,
            "image": [names[2]],
            "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "Dark."}],
        },
        {"image": "photos/gone.jpg", "text": "Lost."},
        {"image": names[0], "text": "  "},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    found, report = m2c.read_descriptions(path, root, max_bad_fraction=0.5)
    assert found == [
        m2c.Description(names[0], "Sharp."),
        m2c.Description(names[1], "Noisy."),
        m2c.Description(names[2], "Dark."),
    ]
    assert report.total == 5 and report.counts() == {"missing image": 1, "empty description": 1}
    assert "line 4: image 'photos/gone.jpg' not found" in report.problems["missing image"][0]
    with pytest.raises(DataFormatError, match="40.0% of the records are bad"):
        m2c.read_descriptions(path, root, max_bad_fraction=0.2)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"image": "a.jpg"}, "no description: expected one of"),
        ({"image": 3, "text": "x"}, "field 'image' must be a path"),
        ({"image": "a.jpg", "text": ["x"]}, "field 'text' must be a string"),
        ({"image": "a.jpg", "conversations": "x"}, "field 'conversations' must be a list"),
        ("text", "expected a JSON object"),
    ],
)
def test_an_unknown_layout_names_the_file_record_and_field(tmp_path, record, message):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataFormatError, match=message) as info:
        m2c.read_descriptions(path, tmp_path)
    assert str(path) in str(info.value) and "record 0" in str(info.value)


# -- grouping ----------------------------------------------------------------------------------------------------------
def test_grouping_is_deterministic_for_a_seed_and_differs_for_another(data):
    descriptions, _ = m2c.read_descriptions(*data)
    first = m2c.make_groups(descriptions, 30, seed=1)
    assert first == m2c.make_groups(descriptions, 30, seed=1)
    assert first != m2c.make_groups(descriptions, 30, seed=2)
    assert len(first) == 30 and {len(g.images) for g in first} == {2, 3, 4}
    assert all(len(set(g.images)) == len(g.images) for g in first)
    assert len({frozenset(g.images) for g in first}) == 30
    text = {d.image: d.text for d in descriptions}
    assert all(g.texts == tuple(text[image] for image in g.images) for g in first)
    assert m2c.make_groups(descriptions, 10, seed=1) == first[:10]  # more groups extend the same plan
    assert m2c.make_groups(list(reversed(descriptions)), 30, seed=1) == first  # listing order does not matter


def test_each_image_gets_one_of_its_descriptions_drawn_with_the_seed(data):
    descriptions, _ = m2c.read_descriptions(*data)
    more = descriptions + [m2c.Description(d.image, d.text + " Also soft.") for d in descriptions]
    first = m2c.make_groups(more, 30, seed=1)
    assert [g.images for g in first] == [g.images for g in m2c.make_groups(descriptions, 30, seed=1)]
    assert first == m2c.make_groups(more, 30, seed=1) and m2c.make_groups(more, 10, seed=1) == first[:10]
    texts = {text for group in first for text in group.texts}
    assert any(text.endswith("Also soft.") for text in texts) and any(not text.endswith("soft.") for text in texts)
    allowed = {d.image: set() for d in more}
    for d in more:
        allowed[d.image].add(d.text)
    assert all(text in allowed[image] for g in first for image, text in zip(g.images, g.texts))


def test_a_group_is_a_set_and_sizes_follow_the_weights(data):
    descriptions, _ = m2c.read_descriptions(*data)
    assert group_id("m2c", ["b.jpg", "a.jpg"]) == group_id("m2c", ["a.jpg", "b.jpg"]) != group_id("m2c", ["a.jpg"])
    assert m2c.Group(("b.jpg", "a.jpg"), ("x", "y")).id == group_id("m2c", ["a.jpg", "b.jpg"])
    assert len(m2c.Group(("a.jpg", "b.jpg"), ("x", "y")).id) == 4 + 16
    pairs = m2c.make_groups(descriptions, 28, sizes=(2, 3), weights=(1.0, 0.0))
    assert len({g.id for g in pairs}) == 28  # all 8·7/2 different pairs: repeated sets are skipped, never duplicated
    assert {len(g.images) for g in pairs} == {2}
    with pytest.raises(ValueError, match="8 described images make only 28 distinct groups of sizes 2"):
        m2c.make_groups(descriptions, 29, sizes=(2, 3), weights=(1.0, 0.0))
    with pytest.raises(ValueError, match="3 described images make only 4 distinct groups of sizes 2,3"):
        m2c.make_groups(descriptions[:3], 5)
    with pytest.raises(ValueError, match="1 described images, too few for a group of 2"):
        m2c.make_groups(descriptions[:1], 1)


# -- near-duplicate filter ---------------------------------------------------------------------------------------------
def test_filter_drops_exactly_the_groups_with_a_near_duplicate_pair():
    near = [np.cos(0.2), np.sin(0.2)]  # cosine 0.980 to "a"
    far = [np.cos(0.4), np.sin(0.4)]  # cosine 0.921 to "a", 0.980 to "near"
    embedder = FakeEmbedder({"a": [1.0, 0.0], "near": near, "far": far})
    groups = [
        m2c.Group(("1", "2"), ("a", "near")),
        m2c.Group(("1", "3"), ("a", "far")),
        m2c.Group(("1", "4", "5"), ("a", "other", "far")),
        m2c.Group(("2", "3", "4"), ("other", "far", "near")),
        m2c.Group(("4", "5"), ("other", "else")),
    ]
    kept, dropped = m2c.drop_near_duplicates(groups, embedder, max_similarity=0.95)
    assert dropped == 2
    assert [g.images for g, _ in kept] == [("1", "3"), ("1", "4", "5"), ("4", "5")]
    assert [round(s, 3) for _, s in kept] == [0.921, 0.921, 0.0]
    assert embedder.calls == [sorted({"a", "near", "far", "other", "else"})]  # every text embedded once
    kept, dropped = m2c.drop_near_duplicates(groups, embedder, max_similarity=0.9)
    assert dropped == 4 and [g.images for g, _ in kept] == [("4", "5")]


# -- prompt, reply and record ------------------------------------------------------------------------------------------
def test_prompt_labels_every_description_and_asks_the_question():
    prompt = m2c.merge_prompt(["Sharp.", "Noisy.", "Dark."], "Compare the quality of these images.")
    assert "The first image: Sharp.\nThe second image: Noisy.\nThe third image: Dark." in prompt
    assert "Compare the quality of these images." in prompt and '"the third image"' in prompt
    group = m2c.Group(("a.jpg", "b.jpg"), ("x", "y"))
    assert m2c.question_for(group) in m2c.QUESTIONS
    assert m2c.question_for(m2c.Group(("b.jpg", "a.jpg"), ("y", "x"))) == m2c.question_for(group)
    assert len({m2c.question_for(m2c.Group((str(k), "z"), ("x", "y"))) for k in range(40)}) == len(m2c.QUESTIONS)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("   ", "empty"),
        ("```\n\n```", "empty"),
        ("I'm sorry, but I cannot compare the first and second image.", "refusal"),
        ("As an AI language model, the first image and the second image are ...", "refusal"),
        ("I\u2019m unable to help: the first image, the second image.", "refusal"),
        ("The first image is sharper than the other one.", "missing_image"),
        ("The first image beats the second image and the third image.", "nonexistent_image"),
        ("According to the descriptions, the first image is better than the second.", "mentions_descriptions"),
    ],
)
def test_rejected_replies_are_named(reply, reason):
    with pytest.raises(Rejected) as info:
        m2c.check_reply(reply, 2)
    assert info.value.reason == reason


def test_a_good_reply_is_unwrapped():
    reply = "```text\nComparison: The first image is sharp; the second image is noisy.\n```"
    assert m2c.check_reply(reply, 2) == "The first image is sharp; the second image is noisy."
    assert m2c.check_reply("A third of the second image is dark; the first is fine.", 2).startswith("A third")


def test_records_round_trip_through_read_coinstruct(data, tmp_path):
    out = tmp_path / "m2c.json"
    summary = build(options(data, out), FakeBackend(), FakeEmbedder())
    records = json.loads(out.read_text())
    assert summary.sent == summary.records == len(records) == 12 and log_lines(out) == records
    samples, report = read_coinstruct(out, data[1], max_bad_fraction=0.0)
    assert report.bad == 0 and len(samples) == 12
    for record, sample in zip(records, samples):
        assert sample.id == record["id"] == group_id("m2c", record["image"])
        assert sample.images == [data[1] / image for image in record["image"]]
        assert len(sample.turns) == 1 and sample.turns[0].question in m2c.QUESTIONS
        assert sample.turns[0].answer == record["conversations"][1]["value"]
        assert all(f"the {ordinal(i)} image" in sample.turns[0].answer for i in range(len(sample.images)))
        assert record["conversations"][0]["value"].startswith("The first image: <image>\nThe second image: <image>\n")
        assert len(record["descriptions"]) == len(record["image"])


# -- the run -----------------------------------------------------------------------------------------------------------
def test_rejected_replies_are_counted_per_reason_skipped_and_asked_again(data, tmp_path):
    out = tmp_path / "m2c.json"
    replies = ["", "I'm sorry, I can't do that.", "The first image is best.", "As an AI, I cannot see images."]
    summary = build(options(data, out, groups=6), FakeBackend(replies=replies), FakeEmbedder())
    assert summary.rejected == {"empty": 1, "refusal": 2, "missing_image": 1}
    assert summary.sent == 6 and summary.records == 2 and not summary.failed and len(log_lines(out)) == 2
    again = FakeBackend()
    summary = build(options(data, out, groups=6), again, FakeEmbedder())
    assert len(again.prompts) == 4 and summary.done_before == 2 and summary.records == 6 and not summary.rejected


def test_a_crash_mid_run_resumes_without_duplicates(data, tmp_path):
    out = tmp_path / "m2c.json"
    with pytest.raises(RuntimeError, match="backend crashed"):
        build(options(data, out), FakeBackend(fail_from=4), FakeEmbedder())
    assert len(log_lines(out)) == 3 and not out.exists()
    with partial_path(out).open("a") as sink:
        sink.write('{"id": "m2c-cut-off-mid-wr')  # a record the crash left half-written
    backend, embedder = FakeBackend(), FakeEmbedder()
    summary = build(options(data, out), backend, embedder)
    assert summary.done_before == 3 and summary.sent == 9 and len(backend.prompts) == 9
    groups = m2c.make_groups(m2c.read_descriptions(*data)[0], 12)
    assert set(embedder.calls[0]) == {text for group in groups[3:] for text in group.texts}  # only the groups to do
    records = json.loads(out.read_text())
    assert [r["id"] for r in records] == [g.id for g in groups]
    assert log_lines(out) == records  # the torn line is gone, the log is kept
    again = build(options(data, out), FakeBackend(fail_from=1), FakeEmbedder())
    assert again.done_before == 12 and again.sent == 0 and len(log_lines(out)) == 12


def test_a_log_line_that_is_no_record_is_bad_input(data, tmp_path):
    out = tmp_path / "m2c.json"
    partial_path(out).write_text('{"id": "m2c-1", "conversations": []}\n{"id": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not a merge2compare log entry"):
        m2c.make_plan(options(data, out), FakeEmbedder())


def test_backend_errors_are_retried_then_counted_as_failed(data, tmp_path):
    out = tmp_path / "m2c.json"
    waits: list[float] = []
    backend = FakeBackend(fail_from=1, error=BackendError("HTTP 503"))
    summary = build(options(data, out, groups=3, retries=2), backend, FakeEmbedder(), sleep=waits.append)
    assert len(summary.failed) == 3 and summary.sent == 0 and not summary.stopped
    assert len(backend.prompts) == 6 and waits == [2.0, 2.0, 2.0]
    assert summary.exit_code == 1 and "HTTP 503" in summary.report(out)
    summary = build(options(data, out, groups=20, retries=1), backend, FakeEmbedder(), sleep=waits.append)
    assert summary.stopped and len(summary.failed) == MAX_CONSECUTIVE_FAILURES
    assert f"stopped after {MAX_CONSECUTIVE_FAILURES} failed requests in a row" in summary.report(out)
    assert json.loads(out.read_text()) == []


# -- command line ------------------------------------------------------------------------------------------------------
def test_cli_end_to_end_with_fakes(data, tmp_path, capsys):
    out = tmp_path / "run" / "m2c.json"
    near = {description(0): [1.0, 0.0], description(1): [1.0, 0.01]}  # images 0 and 1 say the same
    argv = [
        *("--descriptions", str(data[0]), "--images", str(data[1]), "--out", str(out)),
        *("--groups", "20", "--sizes", "2,3", "--size-weights", "3,1", "--seed", "5", "--model", "fake"),
    ]
    assert m2c.main(argv, backend=FakeBackend(), embedder=FakeEmbedder(near)) == 0
    printed = capsys.readouterr().out
    groups = m2c.make_groups(m2c.read_descriptions(*data)[0], 20, (2, 3), (3.0, 1.0), seed=5)
    duplicates = sum({"photos/p0.jpg", "photos/p1.jpg"} <= set(g.images) for g in groups)
    assert duplicates > 0
    assert f"groups: 20, {duplicates} dropped as near-duplicates (cosine ≥ 0.95)" in printed
    kept = 20 - duplicates
    assert f"requests: {kept} (0 done before, {kept} sent, 0 failed)" in printed
    assert f"records: {kept} in {out} (log {partial_path(out)})" in printed and "rejected: 0" in printed
    records = json.loads(out.read_text())
    assert len(records) == kept and {len(r["image"]) for r in records} == {2, 3}
    assert sum(len(r["image"]) == 2 for r in records) > sum(len(r["image"]) == 3 for r in records)
    assert m2c.main(argv, backend=FakeBackend(fail_from=1), embedder=FakeEmbedder(near)) == 0
    assert f"requests: {kept} ({kept} done before, 0 sent, 0 failed)" in capsys.readouterr().out
    assert json.loads(out.read_text()) == records


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sizes", "2,5"], "--sizes must be distinct group sizes from 2 to 4"),
        (["--sizes", "2,3", "--size-weights", "1"], "--size-weights needs one weight per size 2,3, got 1"),
        (["--size-weights", "0,0,0"], "--size-weights must be at least 0 with a positive sum"),
        (["--max-similarity", "1.5"], "--max-similarity is a cosine similarity in [-1, 1]"),
        (["--sizes", "two"], "--sizes must be comma-separated integers, got 'two'"),
        (["--groups", "0"], "--groups must be at least 1"),
        (["--retries", "0"], "--retries must be at least 1"),
    ],
)
def test_cli_refuses_bad_options_with_one_line(data, tmp_path, capsys, extra, message):
    argv = ["--descriptions", str(data[0]), "--images", str(data[1]), "--out", str(tmp_path / "m.json")]
    assert m2c.main([*argv, "--model", "fake", *extra], backend=FakeBackend(), embedder=FakeEmbedder()) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("python -m training.merge2compare: error: ") and message in error
    assert m2c.main([*argv[:-1], str(tmp_path / "m.jsonl"), "--model", "fake"], embedder=FakeEmbedder()) == 2
    assert "--out must be a file name ending in .json" in capsys.readouterr().err


def test_cli_reports_bad_input_in_one_line(data, tmp_path, capsys):
    argv = ["--images", str(data[1]), "--out", str(tmp_path / "m.json"), "--model", "fake"]
    few = tmp_path / "few.json"
    few.write_text(json.dumps([{"image": f"photos/p{k}.jpg", "text": description(k)} for k in range(3)]))
    assert m2c.main(["--descriptions", str(few), *argv], backend=FakeBackend(), embedder=FakeEmbedder()) == 2
    assert capsys.readouterr().err == (
        "python -m training.merge2compare: error: 3 described images make only 4 distinct groups of sizes 2,3\n"
    )
    missing = tmp_path / "missing.json"
    assert m2c.main(["--descriptions", str(missing), *argv], backend=FakeBackend(), embedder=FakeEmbedder()) == 2
    assert "No such file or directory" in capsys.readouterr().err
