"""Multiple-choice benchmarks (``qground.mcq``): the answer reader on every accepted form and on refusals, the two
file layouts (committed fixtures in tests/fixtures/mcq/, images drawn here), a hand-checked score with a scripted
engine, one-line errors on files it cannot read, ``eval --mcq`` end to end on the tiny model, and the per-type
breakdown of the synthetic comparison task."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from qground.__main__ import main
from qground.evaluate import evaluate, report_table, side_by_side_table
from qground.inference import GenerationSettings
from qground.mcq import INSTRUCTION, MCQFormatError, evaluate_mcq, extract_choice, mcq_prompt, mcq_table, read_mcq

FIXTURES = Path(__file__).parent / "fixtures" / "mcq"
IMAGES = "abcd"  # a.png … d.png, 16 px high and 20, 24, 28, 32 px wide


def draw_images(folder: Path) -> Path:
    """a.png … d.png in ``folder`` and (as Q-Bench2's release keeps its single images) in
    ``folder/all_single_images``."""
    for sub in (folder, folder / "all_single_images"):
        sub.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(IMAGES):
            pixels = np.random.default_rng(k).integers(0, 256, size=(16, 20 + 4 * k, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(sub / f"{name}.png")
    return folder


class ScriptedEngine:
    """Answers the questions with ``answers`` in turn and records what it was asked."""

    name = "scripted"

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.calls: list[tuple[list[str], str]] = []

    def chat(self, images, turns, settings):
        self.calls.append(([Path(p).name for p in images], turns[-1].question))
        return SimpleNamespace(text=self.answers.pop(0))


# -- the answer reader -------------------------------------------------------------------------------------------------
PLACES = ["The first image", "The second image", "The third image"]
YES_NO = ["Yes", "No"]
KINDS = ["Motion blur", "Noise", "Motion blur and noise"]


@pytest.mark.parametrize(
    ("answer", "options", "expected"),
    [
        ("B", PLACES, 1),
        ("B.", PLACES, 1),
        ("(B)", PLACES, 1),
        ("B) The second image is the sharpest.", PLACES, 1),
        ("b", PLACES, 1),
        ("Answer: C", PLACES, 2),
        ("The answer is (A).", PLACES, 0),
        ("Option B", PLACES, 1),
        ("B. The second image.", PLACES, 1),  # the engine's own letter before its answer
        ("The second image.", PLACES, 1),
        ("the first one", PLACES, 0),
        ("Image 3", PLACES, 2),
        ("first", ["first", "second"], 0),  # a whole-answer ordinal, options that are bare ordinals
        ("the SECOND image!", PLACES, 1),  # the option's text, case and punctuation aside
        ("motion blur.", KINDS, 0),
        ("Motion blur, and noise", KINDS, 2),  # the longest option named hides the shorter ones inside it
        ("Noise", KINDS, 1),
        ("Yes", YES_NO, 0),
        ("No, it is darker.", YES_NO, 1),
        ("yes.", YES_NO, 0),
    ],
)
def test_extract_choice_reads_every_accepted_form(answer, options, expected):
    assert extract_choice(answer, options) == expected


@pytest.mark.parametrize(
    ("answer", "options"),
    [
        ("", PLACES),
        ("   ", YES_NO),
        ("I cannot tell from these images.", PLACES),
        ("Sorry, I can't determine that.", YES_NO),
        ("I am not sure.", KINDS),
        ("(A) or (B)", PLACES),  # two letters
        ("Answer: A. Option C is close.", PLACES),
        ("The first image and the second image.", PLACES),  # two options
        ("The second image is sharper than the first image.", PLACES),
        ("Answer: E", PLACES),  # a letter no option has
        ("It is a bit blurry.", PLACES),  # no option named ("a" is no letter)
        ("Neither.", YES_NO),
    ],
)
def test_extract_choice_refusals_and_ambiguous_answers_pick_nothing(answer, options):
    assert extract_choice(answer, options) is None


def test_prompt_lists_the_options_and_asks_for_the_letter():
    prompt = mcq_prompt("Which image is sharper?", ["The first image", "The second image"])
    assert prompt == f"Which image is sharper?\nA. The first image\nB. The second image\n{INSTRUCTION}"
    assert INSTRUCTION == "Answer with the option's letter from the given choices directly."


# -- the layouts -------------------------------------------------------------------------------------------------------
def test_micbench_file_scores_a_scripted_engine(tmp_path):
    """Five MICBench questions: three answered right in different forms, one wrong, one refusal → 3/5, one
    unanswerable; per type, per number of images; images in order, the options listed under each question."""
    images = draw_images(tmp_path)
    bench = read_mcq(FIXTURES / "micbench_dev.json", images)
    assert bench.layout == "qbench" and [item.id for item in bench.items] == ["0", "1", "2", "3", "4"]
    assert [item.qtype for item in bench.items] == ["which", "which", "yes-or-no", "other", "which"]
    assert bench.items[1].images == [images / f"{n}.png" for n in "abcd"] and bench.items[1].answer_index == 2
    engine = ScriptedEngine(
        ["B", "The third image.", "No, it is darker.", "Answer: A", "I cannot tell from these images."]
    )
    report = evaluate_mcq(engine, bench, progress=False)
    assert engine.calls[0] == (
        ["a.png", "b.png", "c.png"],
        f"Which image is the sharpest?\nA. The first image\nB. The second image\nC. The third image\n{INSTRUCTION}",
    )
    assert [names for names, _ in engine.calls[2:]] == [
        ["b.png", "c.png", "d.png"],
        ["a.png", "b.png", "c.png", "d.png"],
        ["d.png", "c.png", "a.png"],
    ]
    assert (report["accuracy"], report["correct"], report["items"], report["unanswerable"]) == (0.6, 3, 5, 1)
    assert report["by_type"] == {
        "other": {"accuracy": 0.0, "correct": 0, "items": 1, "unanswerable": 0},
        "which": {"accuracy": 2 / 3, "correct": 2, "items": 3, "unanswerable": 1},
        "yes-or-no": {"accuracy": 1.0, "correct": 1, "items": 1, "unanswerable": 0},
    }
    assert report["by_images"] == {
        "3": {"accuracy": 2 / 3, "correct": 2, "items": 3, "unanswerable": 1},
        "4": {"accuracy": 0.5, "correct": 1, "items": 2, "unanswerable": 0},
    }
    assert report["by_concern"] == {}
    assert [(a["picked"], a["truth"], a["correct"]) for a in report["answers"]] == [
        ("B", "B", True),
        ("C", "C", True),
        ("B", "B", True),
        ("A", "C", False),
        (None, "A", False),
    ]
    table = mcq_table(report)
    assert table.splitlines()[0] == f"model scripted on {FIXTURES / 'micbench_dev.json'} (qbench layout)"
    assert "all questions                  5     0.600             1" in table
    assert "type which                     3     0.667             1" in table
    assert "4 images                       2     0.500             0" in table


def test_qbench2_pairs_are_read_as_their_two_single_images(tmp_path):
    """Q-Bench2's JSON lines: each "…\\A_cat_B.jpg" side-by-side pair is its single images A, B in
    all_single_images/; the answer is the candidate's text; type and concern names are kept."""
    images = draw_images(tmp_path)
    bench = read_mcq(FIXTURES / "q-bench2-a1-dev.jsonl", images)
    assert bench.layout == "qbench" and len(bench.items) == 3
    first, second, third = bench.items
    assert first.images == [images / "all_single_images" / "a.png", images / "all_single_images" / "b.png"]
    assert third.images == [images / "all_single_images" / "d.png", images / "all_single_images" / "c.png"]
    assert [(i.qtype, i.concern, i.answer_index) for i in bench.items] == [
        ("what", "Distortion", 1),
        ("yes-or-no", "Distortion", 0),
        ("how", "Other", 1),
    ]
    assert second.options == ["Yes", "No"] and third.question.startswith("How is the lighting")
    # scored by hand: right ("B. …" picks option B), right ("Yes"), wrong ("(A)" where B is true) → 2/3
    report = evaluate_mcq(ScriptedEngine(["B. Blur.", "Yes", "(A)"]), bench, progress=False)
    assert (report["accuracy"], report["correct"], report["unanswerable"]) == (2 / 3, 2, 0)
    assert report["by_type"]["how"] == {"accuracy": 0.0, "correct": 0, "items": 1, "unanswerable": 0}
    assert report["by_concern"]["Distortion"] == {"accuracy": 1.0, "correct": 2, "items": 2, "unanswerable": 0}
    # without an all_single_images/ folder the single images are looked for in the image folder itself
    plain = read_mcq(FIXTURES / "q-bench2-a1-dev.jsonl", images / "all_single_images")
    assert plain.items[0].images == [images / "all_single_images" / "a.png", images / "all_single_images" / "b.png"]


def test_qbench2_hf_rows(tmp_path):
    """Q-Bench2-HF rows: option0…option3 without the "N/A" ones, the answer's letter, type codes 0, 1, 2 as
    yes-or-no, how, what, concern codes kept as numbers; ids from the rows."""
    bench = read_mcq(FIXTURES / "q-bench2-hf-dev.json", tmp_path)
    assert bench.layout == "qbench-hf"
    assert [(i.id, len(i.options), i.answer_index, i.qtype, i.concern) for i in bench.items] == [
        ("0", 2, 1, "yes-or-no", "0"),
        ("1", 3, 0, "how", "1"),
        ("2", 4, 3, "what", "3"),
    ]
    assert bench.items[1].images == [tmp_path / "c.png", tmp_path / "d.png"]
    report = evaluate_mcq(ScriptedEngine(["No", "B", "Underexposure."]), bench, progress=False)
    assert report["by_concern"]["1"] == {"accuracy": 0.0, "correct": 0, "items": 1, "unanswerable": 0}
    assert (report["correct"], report["by_images"]["2"]["items"]) == (2, 3)


# -- files it cannot read ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"image": "a.png", "query": "Which?", "answer": "A"}], r"record 0 is in no known layout .*'candidates'"),
        ([{"img_path": "a.png", "question": "Q?", "candidates": ["x", "y"], "correct_ans": "z"}], "'correct_ans'"),
        ([{"img_path": ["a.png"], "question": "Q?", "candidates": ["x", "y"]}], "no field 'correct_ans'"),
        (
            [{"id": 7, "image1": "a.png", "question": "Q?", "option0": "x", "option1": "y", "correct_choice": "C"}],
            r"record 0 \(id 7\): field 'correct_choice'",
        ),
        ([{"option0": "x", "option1": "y", "question": "Q?", "correct_choice": "A"}], "no field 'image1'"),
    ],
)
def test_unreadable_records_are_one_line_errors(tmp_path, records, message):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(records))
    with pytest.raises(MCQFormatError, match=message) as caught:
        read_mcq(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_eval_mcq_usage_errors(tmp_path, capsys):
    """Exit 2 with one line before any model is loaded: an unknown layout, a missing file, a missing image,
    --tasks with --mcq, --images with --data."""
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"image": "a.png", "prompt": "Which?"}]))
    assert main(["eval", "--mcq", str(unknown), "--model", "qground-tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unknown}: record 0 is in no known layout" in err
    assert main(["eval", "--mcq", str(tmp_path / "none.json")]) == 2
    assert "none.json: No such file or directory" in capsys.readouterr().err
    assert main(["eval", "--mcq", str(FIXTURES / "micbench_dev.json"), "--images", str(tmp_path)]) == 2
    assert f"no image {tmp_path / 'a.png'}" in capsys.readouterr().err
    assert main(["eval", "--mcq", str(unknown), "--tasks", "ground"]) == 2
    assert "--tasks, --against and --jpeg go with --data" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--images", str(tmp_path)]) == 2
    assert "--images goes with --mcq" in capsys.readouterr().err


# -- end to end --------------------------------------------------------------------------------------------------------
def test_eval_mcq_on_the_tiny_model(tmp_path, capsys):
    """``python -m qground eval --mcq`` on the random tiny model: the report's structure, the printed table."""
    images = draw_images(tmp_path / "images")
    out = tmp_path / "report.json"
    argv = ["eval", "--mcq", str(FIXTURES / "micbench_dev.json"), "--images", str(images), "--model", "qground-tiny"]
    assert main([*argv, "--limit", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"model", "data", "layout", "strictness", "accuracy", "correct", "items", "unanswerable"} <= set(report)
    assert report["model"] == "qground-tiny" and report["layout"] == "qbench" and report["items"] == 2
    assert set(report["by_type"]) == {"which"} and set(report["by_images"]) == {"3", "4"}
    assert report["correct"] + sum(not a["correct"] for a in report["answers"]) == 2
    assert report["unanswerable"] == sum(a["picked"] is None for a in report["answers"])
    assert report["seconds_per_item"] > 0
    printed = capsys.readouterr().out
    assert "all questions" in printed and "type which" in printed and "3 images" in printed


def test_synthetic_comparisons_are_broken_down_by_question_type(tmp_path):
    """``eval --data``'s compare task carries a per-type breakdown next to the per-images one (the synthetic groups
    ask "which" questions only)."""
    record = {
        "id": "c0",
        "image": ["images/a.png", "images/b.png"],
        "conversations": [
            {"from": "human", "value": "Which image is sharper?\nA. The first image\nB. The second image"},
            {"from": "gpt", "value": "A"},
        ],
    }
    (tmp_path / "compare.json").write_text(json.dumps([record, record | {"id": "c1"}]))
    engine = ScriptedEngine(["A. The first image.", "B"])
    report = evaluate(engine, tmp_path, ["compare"], progress=False, settings=GenerationSettings(strictness=0.0))
    assert report["compare"]["by_type"] == {"which": {"accuracy": 0.5, "items": 2}}
    assert report["compare"]["by_images"] == {"2": {"accuracy": 0.5, "items": 2}}
    assert "which 0.500 (2)" in report_table(report) and "by_kind" not in report["compare"]  # no kind recorded


def test_synthetic_comparisons_are_broken_down_by_the_kind_they_record(tmp_path):
    """Entries that record their ``kind`` (``training.data.synth`` writes it) are scored per kind too, in the report,
    its table and the side-by-side table of several models."""
    record = {
        "image": ["images/a.png", "images/b.png"],
        "conversations": [
            {"from": "human", "value": "Which image is sharper?\nA. The first image\nB. The second image"},
            {"from": "gpt", "value": "A"},
        ],
    }
    shaky = {"from": "human", "value": "Which image is the shakiest?"}
    records = [
        record | {"id": "c0", "kind": "sharpest"},
        record | {"id": "c1", "kind": "sharpest"},
        record
        | {"id": "c2", "kind": "shakiest", "conversations": [shaky, {"from": "gpt", "value": "The second image."}]},
    ]
    (tmp_path / "compare.json").write_text(json.dumps(records))
    settings = GenerationSettings(strictness=0.0)
    answers = ["A", "B. The second image.", "The first image."]
    report = evaluate(ScriptedEngine(answers), tmp_path, ["compare"], progress=False, settings=settings)
    assert report["compare"]["by_kind"] == {
        "shakiest": {"accuracy": 0.0, "items": 1},
        "sharpest": {"accuracy": 0.5, "items": 2},
    }
    assert "sharpest 0.500 (2)" in report_table(report)
    other = evaluate(ScriptedEngine(["A", "A", "B"]), tmp_path, ["compare"], progress=False, settings=settings)
    table = side_by_side_table({"a": report, "b": other})
    assert re.search(r"… sharpest \(2\)\s+0\.500\s+1\.000", table)
    assert re.search(r"… shakiest \(1\)\s+0\.000\s+1\.000", table)  # "B" without options: the second image
    first = evaluate(ScriptedEngine(["A"]), tmp_path, ["compare"], limit=1, progress=False, settings=settings)
    assert first["compare"]["by_kind"] == {"sharpest": {"accuracy": 1.0, "items": 1}}
