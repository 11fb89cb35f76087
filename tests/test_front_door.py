"""One front door: the public API of ``import qground``, one model resolver, one table of default questions, one
phrase → class rule shared by every caller, and the app in the package (``app.py`` only starts it)."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qground
from qground import service as svc
from qground.__main__ import build_parser
from qground.evaluate import named_classes
from qground.inference import GROUNDING_QUESTION, GenerationSettings, GroundingResult
from qground.models import DEFAULT_MODEL, resolve_model
from qground.questions import COMPARE_PRESETS, QUESTIONS
from qground.taxonomy import CLASS_NAMES, DISTORTIONS, NEAR_MISSES, edit_distance, match_class, normalize
from training.data import questions
from training.data.readers import GROUNDING_QUESTIONS, label_to_class

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for folder in ("qground", "training", "bench", "tests")
    for p in sorted((ROOT / folder).rglob("*.py"))
    if "__pycache__" not in p.parts
] + [ROOT / "app.py"]


# -- the public API ----------------------------------------------------------------------------------------------------
def test_the_public_api_is_exported_and_import_qground_stays_cheap():
    assert set(qground.__all__) == {
        "DEFAULT_MODEL",
        "GenerationSettings",
        "GroundingResult",
        "QGroundEngine",
        "QUESTIONS",
        "REGISTRY",
        "load_engine",
        "load_model",
        "resolve_model",
    }
    from qground.builder import REGISTRY
    from qground.checkpoint import load_model
    from qground.inference import QGroundEngine

    assert qground.load_model is load_model and qground.REGISTRY is REGISTRY and qground.QGroundEngine is QGroundEngine
    assert qground.GenerationSettings is GenerationSettings and qground.GroundingResult is GroundingResult
    assert qground.load_engine is svc.load_engine and qground.resolve_model is resolve_model
    assert qground.DEFAULT_MODEL == DEFAULT_MODEL in REGISTRY and qground.QUESTIONS is QUESTIONS
    assert set(qground.__all__) <= set(dir(qground))
    with pytest.raises(AttributeError, match="no_such_name"):
        qground.no_such_name  # noqa: B018
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, qground; print(sorted({'torch', 'transformers', 'gradio'} & set(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert heavy.stdout.strip() == "[]"


# -- which model -------------------------------------------------------------------------------------------------------
def test_resolve_model_argument_then_environment_then_default():
    assert resolve_model("qground-tiny", {"QGROUND_MODEL": "some/repo"}) == "qground-tiny"
    assert resolve_model(None, {"QGROUND_MODEL": "some/repo"}) == "some/repo"
    assert resolve_model("", {"QGROUND_MODEL": "some/repo"}) == "some/repo"
    assert resolve_model(None, {"QGROUND_MODEL": ""}) == DEFAULT_MODEL == "qground-nano"
    assert resolve_model(None, {}) == DEFAULT_MODEL


def test_resolve_model_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("QGROUND_MODEL", "/models/mine")
    assert resolve_model() == "/models/mine"
    monkeypatch.delenv("QGROUND_MODEL")
    assert resolve_model() == DEFAULT_MODEL


def test_one_default_model_and_one_reader_of_qground_model():
    """DEFAULT_MODEL is defined once, and only qground.models reads $QGROUND_MODEL to choose a model (outside the
    tests)."""
    definitions, readers = [], []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == "DEFAULT_MODEL" for t in targets):
                definitions.append(path.relative_to(ROOT).as_posix())
            if (
                path.parent.name != "tests"
                and isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "getenv")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "QGROUND_MODEL"
            ):
                readers.append(path.relative_to(ROOT).as_posix())
    assert definitions == ["qground/models.py"]
    assert readers == []  # qground.models reads it through MODEL_ENV


def test_the_app_and_the_command_line_resolve_the_model_alike(monkeypatch):
    import qground.__main__ as cli

    asked = []

    def fake_load_engine(source, revision=None, quant="none", dtype=None):
        asked.append(source)
        raise svc.CheckpointError("not here")

    monkeypatch.setattr(svc, "load_engine", fake_load_engine)
    monkeypatch.setattr(cli, "load_engine", fake_load_engine)
    args = argparse.Namespace(model=None, revision=None, quant="none", strictness=None)
    for env in ({"QGROUND_MODEL": "from-env"}, {}):
        monkeypatch.delenv("QGROUND_MODEL", raising=False)
        monkeypatch.setenv("QGROUND_MODEL", env.get("QGROUND_MODEL", ""))
        asked.clear()
        with pytest.raises(svc.CheckpointError):  # the app tries the default and the random model next
            svc.load_engine_from_env(quant="none")
        with pytest.raises(cli.UsageError, match="QGROUND_MODEL"):
            cli.load_engine_and_settings(args)
        chosen = env.get("QGROUND_MODEL", DEFAULT_MODEL)
        assert asked[0] == asked[-1] == chosen == resolve_model(None, env)


# -- the default questions ---------------------------------------------------------------------------------------------
def test_one_table_of_default_questions_in_trained_wordings():
    assert set(QUESTIONS) == {"ground", "describe", "compare"}
    assert QUESTIONS["ground"] == GROUNDING_QUESTION == GROUNDING_QUESTIONS[0]  # the sentence the models learnt
    assert QUESTIONS["ground"] == "Please segment out distorted regions in the image."
    trained = {w for f, templates in questions.DESCRIBE.items() if f not in questions.HELD_OUT for t in templates
               for w in questions.expand(t)}  # fmt: skip
    assert QUESTIONS["describe"] in trained
    assert COMPARE_PRESETS["Overall quality"] == QUESTIONS["compare"]
    compare_trained = {q for families in questions.COMPARISONS.values() for q in families["plain"]}
    assert set(COMPARE_PRESETS.values()) <= compare_trained  # every preset of the Compare tab is a trained wording
    assert svc.COMPARE_PRESETS is COMPARE_PRESETS and svc.QUESTIONS is QUESTIONS
    with pytest.raises(TypeError):
        QUESTIONS["ground"] = "changed"  # type: ignore[index]


@pytest.mark.parametrize("command", ["ground", "describe", "compare"])
def test_the_command_line_asks_the_table(command):
    parser = build_parser()
    extra = {"ground": ["--out", "o"], "describe": [], "compare": ["b.png"]}[command]
    args = parser.parse_args([command, "a.png", *extra])
    assert args.question == QUESTIONS[command]


def test_a_blank_api_question_asks_the_table(tmp_path):
    from PIL import Image

    path = tmp_path / "p.png"
    Image.new("RGB", (16, 12), "gray").save(path)
    asked = []

    class Engine:
        name = "fake"

        def stream(self, images, turns, settings, stages=False):
            asked.append(turns[-1].question)
            yield GroundingResult("ok", "ok", {}, {}, image_size=None, timings={}, token_ids=[])

    assert list(svc.describe_request(Engine(), str(path), "  ", GenerationSettings())) == ["ok"]
    assert asked == [QUESTIONS["describe"]]


# -- the phrase → class rule -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        # every name, key, display name and alias, as written
        *[(p, d.name) for d in DISTORTIONS for p in (d.name, d.key, d.display, *d.aliases)],
        # inflections of one word
        ("blurriness", "blur"),
        ("graininess", "noise"),
        ("darker", "low light"),
        ("noises", "noise"),
        ("noisier", "noise"),
        ("jittering", "jitter"),
        # one-edit typos of ≥ 5 letters, adjacent swaps included
        ("bluryy", "blur"),
        ("nosie", "noise"),
        ("noizy", "noise"),
        ("jiter", "jitter"),
        ("over exposed", "overexposure"),
        ("overexposd", "overexposure"),
        ("low lihgt", "low light"),
        ("motion blurr", "jitter"),
        # not a class: short words, everyday words, two or more edits, other distortions
        ("blue", None),
        ("nose", None),
        ("dart", None),
        ("sharp", None),
        ("notes", None),
        ("haze", None),
        ("fog", None),
        ("rainy", None),
        ("spaceship", None),
        ("", None),
        *[(w, None) for w in sorted(NEAR_MISSES)],
    ],
)
def test_match_class(phrase, expected):
    assert match_class(phrase) == expected


@pytest.mark.parametrize(
    "word", ["blurry", "Motion-blur", "nosie", "over-exposed", "darker", "grainy", "shade", "sharp", "haze", "blue"]
)
def test_every_caller_names_a_word_alike(word):
    """The app's highlighting, the evaluation, the label reader and the rule agree on a lone word."""
    expected = match_class(word)
    highlighted = [label for _, label in svc.highlight_spans(word) if label]
    assert highlighted == ([expected] if expected else [])
    assert named_classes(f"The image is {word}.") == ({expected} if expected else set())
    assert label_to_class(word) == expected


def test_the_label_reader_keeps_no_distortion_words_apart():
    assert label_to_class("none") is None and label_to_class("no noise") is None  # not "noise"


def test_a_swap_of_adjacent_letters_is_one_edit():
    assert edit_distance("nosie", "noise") == edit_distance("noise", "nosie") == 1
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("ca", "abc") == 3  # no edit twice over


def test_the_rule_is_normalized_and_total_over_class_names():
    assert {match_class(name.upper()) for name in CLASS_NAMES} == set(CLASS_NAMES)
    assert match_class("  Out_of-FOCUS!! ") == "blur" == match_class(normalize("Out of focus"))


# -- the app -----------------------------------------------------------------------------------------------------------
def test_app_py_only_starts_the_packaged_app():
    tree = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [(node.module, [a.name for a in node.names]) for node in imports] == [("qground.app", ["main"])]
    assert re.search(r"^app_file: app\.py$", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)


def test_serve_runs_the_packaged_app(monkeypatch):
    import qground.app
    from qground.__main__ import main

    seen = []
    monkeypatch.setattr(qground.app, "main", seen.append)
    assert main(["serve", "--port", "7999"]) == 0
    assert seen == [["--port", "7999"]]
