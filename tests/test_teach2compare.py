"""Teach2Compare builder: image scan, seeded groups, prompts, lenient reply parsing with counted rejections, the
resumable log and the final Co-Instruct JSON, with a fake vision backend."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from qground.prompts import ordinal
from training.backends import BackendError
from training.data.readers import read_coinstruct
from training.groups import MAX_CONSECUTIVE_FAILURES, Rejected, group_id, partial_path
from training.teach2compare import (
    KINDS,
    Options,
    QAPair,
    main,
    make_groups,
    make_plan,
    parse_description,
    parse_qa,
    run,
    scan_images,
)

GOOD_IMAGES = ["a.png", "b.jpg", "e.bmp", "nested/c.png", "nested/deep/d.webp", "z.PNG"]
DESCRIPTION = "The first image is sharp and well exposed, while the second image is dark, noisy and slightly blurry."


def image_folder(root: Path) -> Path:
    """Six tiny readable images (nested, mixed formats), a damaged JPEG, an empty PNG and a text file."""
    for k, name in enumerate(GOOD_IMAGES):
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (40 * k, 100, 200 - 30 * k)).save(path)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "notes.txt").write_text("not an image")
    return root / "images"


def good_reply(prompt: str, num_images: int) -> str:
    """A clean reply to either prompt: a description naming every image, or two Q&A pairs (one multiple choice)."""
    if "JSON list" in prompt:
        last = f"The {ordinal(num_images - 1)} image"
        pairs = [
            {"question": "Which image is the sharpest?", "answer": f"{last} is the sharpest."},
            {"question": "Which image has the least noise?", "options": ["The first image", last], "correct": "A"},
        ]
        return json.dumps(pairs)
    names = ", ".join(f"the {ordinal(i)} image" for i in range(num_images))
    return f"Comparing {names}: the first image is the clearest and brightest, the others look darker and noisier."


class FakeBackend:
    """Replies from ``script`` in order (an Exception item is raised), then ``good_reply``; every call is recorded.
    From call number ``fail_from`` (1-based) on, every call raises BackendError."""

    def __init__(self, script: Sequence[str | Exception] = (), fail_from: int | None = None):
        self.script = list(script)
        self.fail_from = fail_from
        self.calls: list[tuple[str, list[Path]]] = []

    def complete(self, prompt: str, images: Sequence[Path] = ()) -> str:
        self.calls.append((prompt, list(images)))
        if self.fail_from is not None and len(self.calls) >= self.fail_from:
            raise BackendError("HTTP 503")
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        return good_reply(prompt, len(images))


def options(folder: Path, out: Path, **changes) -> Options:
    return Options(**{"images": folder, "out": out, "groups": 4, "seed": 3, "backoff": 0.0, **changes})


def build(opts: Options, backend: FakeBackend):
    return run(opts, make_plan(opts), backend)


def cli(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--images", str(folder), "--out", str(out), "--groups", "4", "--backoff", "0", "--model", "fake", *extra]


def final_records(out: Path) -> list[dict]:
    return json.loads(out.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------------
# Images and groups


def test_scan_images_keeps_readable_images_and_counts_the_rest(tmp_path):
    readable, unreadable = scan_images(image_folder(tmp_path))
    assert readable == sorted(GOOD_IMAGES)
    assert [path for path, _ in unreadable] == ["broken.jpg", "empty.png"]
    assert "truncated or damaged" in unreadable[0][1] and "empty" in unreadable[1][1]


def test_grouping_is_deterministic_per_seed():
    images = [f"img{k:02d}.png" for k in range(12)]
    groups = make_groups(images, 20, (2, 3, 4), seed=1)
    assert groups == make_groups(list(reversed(images)), 20, (2, 3, 4), seed=1)  # listing order does not matter
    assert groups != make_groups(images, 20, (2, 3, 4), seed=2)
    assert make_groups(images, 5, (2, 3, 4), seed=1) == groups[:5]  # more groups extend the same plan
    assert len({group.id for group in groups}) == 20
    assert {len(group.images) for group in groups} == {2, 3, 4}
    for group in groups:
        assert len(set(group.images)) == len(group.images) and set(group.images) <= set(images)
        assert group.id == group_id("t2c", sorted(group.images)) == group_id("t2c", list(reversed(group.images)))
        assert group.id.startswith("t2c-") and len(group.id) == 4 + 16
    assert {len(g.images) for g in make_groups(images, 10, (3,), seed=0)} == {3}
    weighted = make_groups(images, 30, (2, 3, 4), (0.0, 1.0, 0.0), seed=1)
    assert {len(g.images) for g in weighted} == {3}  # a size of weight 0 is never drawn


def test_grouping_refuses_what_the_images_cannot_give():
    images = ["a.png", "b.png", "c.png"]
    assert len(make_groups(images, 3, (2,), seed=0)) == 3  # every pair of three images
    with pytest.raises(ValueError, match="only 3 distinct groups of sizes 2"):
        make_groups(images, 4, (2,), seed=0)
    assert len(make_groups(images, 4, (2, 3, 4), seed=0)) == 4  # sizes the folder cannot fill are left out
    with pytest.raises(ValueError, match="3 readable images, too few for a group of 4"):
        make_groups(images, 1, (4,), seed=0)


def test_each_request_gets_its_groups_images_in_order_and_a_prompt_naming_them(tmp_path):
    folder = image_folder(tmp_path)
    opts = options(folder, tmp_path / "out.json", groups=5, questions=7)
    backend = FakeBackend()
    build(opts, backend)
    groups = make_plan(opts).groups
    assert len(backend.calls) == 2 * len(groups)
    for k, group in enumerate(groups):
        (description, images_d), (qa, images_q) = backend.calls[2 * k : 2 * k + 2]
        assert images_d == images_q == [folder / path for path in group.images]
        count = len(group.images)
        for prompt in (description, qa):
            assert all(f"the {ordinal(i)} image" in prompt for i in range(count))
            assert f"the {ordinal(count)} image" not in prompt
        assert "JSON list" not in description
        assert "JSON list" in qa and "Write 7 question-answer pairs" in qa and "noise" in qa


# --------------------------------------------------------------------------------------------------------------------
# Reply parsing


@pytest.mark.parametrize(
    "reply",
    [
        DESCRIPTION,
        f"\n\n  {DESCRIPTION}  \n",
        f"```\n{DESCRIPTION}\n```",
        f"**Comparison:** {DESCRIPTION}",
        f"Description: {DESCRIPTION}",
        f'```json\n{{"description": "{DESCRIPTION}",}}\n```',
        f"{{'Comparison': '{DESCRIPTION}'}}",
    ],
    ids=["plain", "padded", "fenced", "bold-label", "label", "fenced-json-trailing-comma", "single-quoted-json"],
)
def test_description_replies_parse(reply):
    assert parse_description(reply, 2) == DESCRIPTION


OPEN = QAPair("Which image is sharper?", "The first image is sharper.")
CHOICE = QAPair("Which image is noisier?", "B. The second image", ("The first image", "The second image"))


@pytest.mark.parametrize(
    "reply",
    [
        '[{"question": "Which image is sharper?", "answer": "The first image is sharper."}, {"question": "Which image '
        'is noisier?", "options": ["The first image", "The second image"], "correct": "B"}]',
        "Here are the pairs:\n```json\n[\n {'q': 'Which image is sharper?', 'a': 'The first image is sharper.',},\n"
        " {'Q': 'Which image is noisier?', 'choices': ['A. The first image', 'B. The second image'], 'answer': 'B'},"
        "\n]\n```\nHope this helps!",
        '{"pairs": [{"Question": "Which image is sharper?", "Answer": "The first image is sharper."}, {"question": '
        '"Which image is noisier?", "options": {"A": "The first image", "B": "The second image"}, "correct_option": '
        '"(B)"}]}',
        '{"qa": [{"query": "Which image is sharper?", "response": "The first image is sharper."}, {"question": '
        '"Which image is noisier?", "options": ["The first image", "The second image"], "answer": "the second '
        'image."}]}',
        '{"result": [{"question": "Which image is sharper?", "answer": "The first image is sharper."}, {"question": '
        '"Which image is noisier?", "options": ["The first image", "The second image"], "correct_answer": "B. The '
        'second image"}]}',
    ],
    ids=["list", "fenced-single-quotes-aliases", "pairs-object-options-dict", "qa-object-option-text", "lone-list"],
)
def test_qa_replies_parse(reply):
    assert parse_qa(reply, 2) == [OPEN, CHOICE]


def test_a_single_pair_object_and_human_text():
    assert parse_qa('{"question": "Which image is sharper?", "answer": "The first image is sharper."}', 3) == [OPEN]
    assert CHOICE.human_text() == "Which image is noisier?\nA. The first image\nB. The second image"


@pytest.mark.parametrize(
    "reply, count, reason",
    [
        ("   ", 2, "empty"),
        ("I'm sorry, but I can't help with comparing these images.", 2, "refusal"),
        ("I cannot view images.", 3, "refusal"),
        ("Both look fine to me.", 2, "too_short"),
        (
            '{"verdict": "The first image is better than the second image in every respect, by far."}',
            2,
            "missing_answer",
        ),
        ("{'description': 'The first image is sharp", 2, "no_json"),
        (DESCRIPTION.replace("second image", "fourth image"), 2, "bad_image_reference"),
        (DESCRIPTION.replace("second image", "image 3"), 2, "bad_image_reference"),
    ],
)
def test_description_rejections(reply, count, reason):
    with pytest.raises(Rejected) as caught:
        parse_description(reply, count)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("Sorry, I can't compare images.", "refusal"),
        ("The first image is better.", "no_json"),
        ("[]", "empty"),
        ('```json\n{"pairs": []}\n```', "empty"),
        ('{"note": "nothing to ask"}', "empty"),
    ],
)
def test_whole_qa_reply_rejections(reply, reason):
    with pytest.raises(Rejected) as caught:
        parse_qa(reply, 2)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "pair, reason",
    [
        ('"Which image is sharper? The first."', "bad_pair"),
        ('{"answer": "The first image."}', "missing_question"),
        ('{"question": "Which image is sharper?"}', "missing_answer"),
        ('{"question": "Which image is sharper?", "answer": ""}', "missing_answer"),
        ('{"question": "Which image is sharper?", "options": ["x", "y"]}', "missing_answer"),
        ('{"question": "Which is sharper?", "answer": "I am unable to tell from these images."}', "refusal"),
        ('{"question": "Which image is sharper?", "options": ["The first image"], "correct": "A"}', "bad_option"),
        ('{"question": "Which image is sharper?", "options": "A or B", "correct": "A"}', "bad_option"),
        (
            '{"question": "Which is sharper?", "options": ["The first image", "The second image"], "correct": "D"}',
            "bad_option",
        ),
        ('{"question": "Is the third image sharper?", "answer": "Yes."}', "bad_image_reference"),
        (
            '{"question": "Which?", "options": ["The first image", "The 3rd image"], "correct": "A"}',
            "bad_image_reference",
        ),
    ],
)
def test_pair_rejections_keep_the_good_pairs(pair, reason):
    good = '{"question": "Which image is sharper?", "answer": "The first image is sharper."}'
    items = parse_qa(f"[{good}, {pair}, {good}]", 2)
    assert items[0] == items[2] == OPEN
    assert isinstance(items[1], Rejected) and items[1].reason == reason


# --------------------------------------------------------------------------------------------------------------------
# Runs, records and resuming


def test_every_rejection_is_counted_and_skipped_in_a_run(tmp_path):
    out = tmp_path / "out.json"
    pairs = [
        '{"q": "Which image is sharper?", "a": "The first image."}',
        '"just text"',
        '{"answer": "The first image."}',
        '{"question": "Why?"}',
        '{"question": "Which is sharper?", "answer": "Sorry, I cannot tell."}',
        '{"question": "Which is sharper?", "options": ["The first image", "The second image"], "correct": "C"}',
        '{"question": "Is the fourth image sharper?", "answer": "No."}',
    ]
    script = [  # (description, qa) of groups 0–4, the description of group 5, then good replies
        *("   ", "I'm sorry, I can't help with that."),
        *("I cannot compare these.", "Here are my thoughts: both are fine."),
        *("Both fine.", "[]"),
        *(
            '{"verdict": "The first image is better than the second one in every respect, by far."}',
            f"[{', '.join(pairs)}]",
        ),
        *("{'description': 'The first image is sharp", good_reply("JSON list", 2)),
        DESCRIPTION.replace("second image", "fourth image"),
    ]
    summary = build(options(image_folder(tmp_path), out, groups=6, sizes=(2,)), FakeBackend(script))
    assert summary.sent == 12 and not summary.failed
    assert summary.rejected == {
        "empty": 2,
        "refusal": 3,
        "no_json": 2,
        "too_short": 1,
        "missing_answer": 2,
        "bad_image_reference": 2,
        "bad_pair": 1,
        "missing_question": 1,
        "bad_option": 1,
    }
    groups = make_plan(options(tmp_path / "images", out, groups=6, sizes=(2,))).groups
    ids = [record["id"] for record in final_records(out)]
    assert summary.records == len(ids) == 1 + 2 + 2
    assert ids == [f"{groups[3].id}-qa-1", *(f"{groups[k].id}-qa-{i}" for k in (4, 5) for i in (1, 2))]
    log = [json.loads(line) for line in partial_path(out).read_text().splitlines()]
    assert [entry["kind"] for entry in log] == list(KINDS) * 6
    assert log[0]["records"] == [] and log[0]["reply"] == "   " and log[0]["rejected"][0]["reason"] == "empty"
    details = [rejected["detail"] for rejected in log[7]["rejected"]]
    assert len(details) == 6 and all(detail.startswith(f"pair {k}: ") for k, detail in zip(range(2, 8), details))


def test_records_round_trip_through_read_coinstruct(tmp_path):
    folder = image_folder(tmp_path)
    out = tmp_path / "data" / "teach2compare.json"
    build(options(folder, out), FakeBackend())
    records = final_records(out)
    samples, report = read_coinstruct(out, folder, max_bad_fraction=0.0)
    assert report.bad == 0 and len(samples) == len(records) == 4 * 3
    for record, sample in zip(records, samples):
        assert sample.id == record["id"] and sample.source == "coinstruct"
        assert sample.images == [folder / path for path in record["image"]]
        human, gpt = record["conversations"]
        slots = "".join(f"The {ordinal(i)} image: <image>\n" for i in range(len(record["image"])))
        assert human["value"] == slots + sample.turns[0].question
        assert len(sample.turns) == 1 and "<image>" not in sample.turns[0].question
        assert sample.turns[0].answer == gpt["value"]
    kinds = [record["id"].split("-", 2)[2] for record in records]
    assert kinds[:3] == ["description", "qa-1", "qa-2"]
    last = f"The {ordinal(len(samples[2].images) - 1)} image"
    assert samples[2].turns[0].question == f"Which image has the least noise?\nA. The first image\nB. {last}"
    assert samples[2].turns[0].answer == "A. The first image"


def test_retries_cure_transient_failures(tmp_path):
    out = tmp_path / "out.json"
    backend = FakeBackend([BackendError("429"), BackendError("503")])
    summary = build(options(image_folder(tmp_path), out, groups=1, retries=3), backend)
    assert summary.sent == 2 and not summary.failed and len(backend.calls) == 4
    assert backend.calls[0] == backend.calls[1] == backend.calls[2]


def test_failure_mid_run_then_rerun_has_no_duplicates(tmp_path):
    folder = image_folder(tmp_path)
    clean_out = tmp_path / "clean" / "out.json"
    build(options(folder, clean_out), FakeBackend())

    out = tmp_path / "out.json"
    failing = FakeBackend(fail_from=4)  # requests 1–3 answered; the rest fail after 2 attempts each
    assert main(cli(folder, out, "--retries", "2", "--seed", "3"), backend=failing) == 1
    assert len(partial_path(out).read_text().splitlines()) == 3
    assert len(failing.calls) == 3 + 2 * 5
    assert len(final_records(out)) == 1 + 2 + 1  # what was answered is written out too

    rerun = FakeBackend()
    assert main(cli(folder, out, "--seed", "3"), backend=rerun) == 0
    assert len(rerun.calls) == 5
    records = final_records(out)
    assert len({r["id"] for r in records}) == len(records)
    assert records == final_records(clean_out)
    assert len(partial_path(out).read_text().splitlines()) == 8

    again = FakeBackend()
    assert main(cli(folder, out, "--seed", "3"), backend=again) == 0 and again.calls == []
    assert final_records(out) == records


def test_a_run_stops_after_failures_in_a_row_and_reports_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("training.teach2compare.PROGRESS_EVERY", 4)
    out = tmp_path / "out.json"
    backend = FakeBackend(fail_from=3)
    summary = build(options(image_folder(tmp_path), out, groups=8, retries=1), backend)
    assert summary.stopped and summary.sent == 2 and len(summary.failed) == MAX_CONSECUTIVE_FAILURES
    assert len(backend.calls) == 2 + MAX_CONSECUTIVE_FAILURES  # of 16 requests
    assert "4 of 16 requests sent, 2 failed" in capsys.readouterr().err
    report = summary.report(out)
    assert f"stopped after {MAX_CONSECUTIVE_FAILURES} failed requests in a row" in report
    assert "requests: 16 (0 done before, 2 sent, 10 failed)" in report and "HTTP 503" in report


def test_a_crash_and_a_torn_log_line_resume_cleanly(tmp_path):
    folder = image_folder(tmp_path)
    out = tmp_path / "out.json"
    opts = options(folder, out)
    with pytest.raises(RuntimeError):
        build(opts, FakeBackend([good_reply("", 2), RuntimeError("killed")]))
    log = partial_path(out)
    with log.open("a") as handle:
        handle.write('{"group": "t2c-torn", "kind": "qa", "rec')  # the process died mid-line
    summary = build(opts, FakeBackend())
    assert summary.done_before == 1 and summary.sent == 7
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 8 and len({(line["group"], line["kind"]) for line in lines}) == 8
    groups = make_plan(opts).groups
    assert {(record["group"], record["kind"]) for record in final_records(out)} == {
        (group.id, kind) for group in groups for kind in KINDS
    }


def test_main_end_to_end(tmp_path, capsys):
    folder = image_folder(tmp_path)
    out = tmp_path / "out.json"
    backend = FakeBackend()
    assert main(cli(folder, out, "--sizes", "3", "--kinds", "qa", "--seed", "1"), backend=backend) == 0
    printed = capsys.readouterr().out
    assert "images: 6 readable, 2 unreadable" in printed and "broken.jpg" in printed
    assert "groups: 4" in printed and "requests: 4 (0 done before, 4 sent, 0 failed)" in printed
    assert f"records: 8 in {out}" in printed and "rejected: 0" in printed
    assert all(len(images) == 3 for _, images in backend.calls)
    assert all(record["kind"] == "qa" for record in final_records(out))
    assert [g.images for g in make_groups(GOOD_IMAGES, 4, (3,), seed=1)] == [
        tuple(path.relative_to(folder).as_posix() for path in images) for _, images in backend.calls
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sizes", "1,5"], "--sizes must be distinct group sizes from 2 to 4"),
        (["--sizes", "2,2"], "--sizes must be distinct group sizes from 2 to 4"),
        (["--sizes", "two"], "--sizes must be comma-separated integers"),
        (["--sizes", "2,3", "--size-weights", "1"], "--size-weights needs one weight per size 2,3, got 1"),
        (["--size-weights", "1,x,1"], "--size-weights must be comma-separated numbers"),
        (["--kinds", "description,captions"], "--kinds must be distinct names out of description,qa"),
        (["--groups", "0"], "--groups must be at least 1"),
        (["--groups", "99"], "6 readable images make only"),
        (["--retries", "0"], "--retries must be at least 1"),
        (["--backoff", "-1"], "--backoff must not be negative"),
    ],
)
def test_main_refuses_bad_input_in_one_line(tmp_path, capsys, extra, message):
    folder = image_folder(tmp_path)
    assert main(cli(folder, tmp_path / "out.json", *extra), backend=FakeBackend()) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_main_refuses_a_missing_image_folder_and_an_out_that_is_no_json_file(tmp_path, capsys):
    assert main(cli(tmp_path / "nowhere", tmp_path / "out.json"), backend=FakeBackend()) == 2
    error = capsys.readouterr().err
    assert error == f"python -m training.teach2compare: error: --images {tmp_path / 'nowhere'}: not a folder\n"
    folder = image_folder(tmp_path)
    for out in (tmp_path / "out.jsonl", folder):
        assert main(cli(folder, out), backend=FakeBackend()) == 2
        assert "--out must be a file name ending in .json" in capsys.readouterr().err
