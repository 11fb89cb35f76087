"""The question lexicon: words the model never trained on read as trained words of the same sense (qground.lexicon),
built from WordNet and the training grammar (training.lexicon), applied by the engine to every question."""

import json
import re

import pytest
from PIL import Image

from conftest import TINY_TRAINED
from qground.builder import ASSETS
from qground.config import ConfigError
from qground.inference import QGroundEngine
from qground.lexicon import LEXICON_NAME, Lexicon
from qground.prompts import Turn
from qground.questions import COMPARE_PRESETS, QUESTIONS
from training import lexicon as build_lexicon
from training.data.questions import training_wordings


def small() -> Lexicon:
    trained = frozenset({"which", "image", "is", "the", "darkest", "dark"})
    return Lexicon(trained, {"gloomiest": "darkest", "murky": "dark"})


def test_rewrite_keeps_trained_words_punctuation_and_case():
    lex = small()
    assert lex.rewrite("Which image is the gloomiest?") == "Which image is the darkest?"
    assert lex.rewrite("Murky?  Is it MURKY, or dark…") == "Dark?  Is it Dark, or dark…"
    assert lex.rewrite("Which image is the darkest?") == "Which image is the darkest?"
    assert lex.rewrite("") == ""


def test_more_and_most_become_the_trained_form():
    lex = Lexicon(
        frozenset({"is", "the", "least", "sharp"}), {}, {"more": {"blurry": "blurrier"}, "most": {"sharp": "sharpest"}}
    )
    assert lex.rewrite("Which image is the most sharp?") == "Which image is the sharpest?"
    assert lex.rewrite("More  blurry? most blurry?") == "Blurrier? most blurry?"  # no trained "blurriest" here
    assert lex.rewrite("the least sharp, MOST sharp") == "the least sharp, Sharpest"


def test_a_hyphenated_word_is_read_in_its_trained_spelling():
    trained = frozenset({"is", "it", "out", "of", "focus", "overexposed", "blown-out", "washed"})
    lex = Lexicon(trained, {"razor-sharp": "sharp"})
    assert lex.rewrite("Is it out-of-focus?") == "Is it out of focus?"  # trained words apart
    assert lex.rewrite("Is it Over-exposed?") == "Is it Overexposed?"  # one trained word
    assert lex.rewrite("blown-out, razor-sharp") == "blown-out, sharp"  # trained as typed; a synonym first
    assert lex.rewrite("washed-up e-mail") == "washed-up e-mail"  # a part never trained: as typed
    assert lex.spelling("out") is None


def test_the_shipped_lexicon_reads_hyphenated_class_words():
    lex = Lexicon.load(ASSETS / "qground-nano")
    assert lex.rewrite("Which picture is the most out-of-focus?") == "Which picture is the most out of focus?"
    assert lex.rewrite("Is it washed-out or under-exposed?") == "Is it washed out or underexposed?"
    assert lex.rewrite("Any motion-blur? Low-light?") == "Any motion blur? Low-light?"


def test_trained_words_cannot_be_rewritten_and_bad_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="must not be rewritten.*dark"):
        Lexicon(frozenset({"dark"}), {"dark": "dim"})
    with pytest.raises(ConfigError, match="lower-case words"):
        Lexicon(frozenset(), {"Murky": "dark"})
    with pytest.raises(ConfigError, match="degrees are 'more' and 'most'"):
        Lexicon(frozenset(), {}, {"less": {"dark": "darker"}})
    with pytest.raises(ConfigError, match="newer"):
        Lexicon(frozenset(), {}, version=99)
    (tmp_path / LEXICON_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid lexicon"):
        Lexicon.load(tmp_path)
    assert Lexicon.load(tmp_path / "missing") is None


def test_save_load_round_trip(tmp_path):
    lex = small()
    lex.save(tmp_path)
    assert Lexicon.load(tmp_path) == lex


def test_build_reads_the_first_sense_with_a_trained_word(tiny_wordnet):
    lex = build_lexicon.build(build_lexicon.read_wordnet(tiny_wordnet), TINY_TRAINED)
    syn = lex.synonyms
    # a satellite through its "similar to" head, with the form the model trained on
    assert syn["murky"] == "dark" and syn["murkiest"] == "darkest" and syn["gloomiest"] == "darkest"
    assert syn["shadowy"] == "dim"  # its first sense has no trained word, its second does
    assert syn["poorest"] == "worst"  # WordNet's exception list: bad → worst
    assert "poor" not in syn and "poorer" not in syn  # "bad" and "worse" never trained: nothing to read them as
    assert syn["louder"] == "more noisy" and syn["loudest"] == "most noisy"  # only "noisy" itself trained
    assert syn["washy"] == "blown out"  # a trained phrase
    assert "darker" not in syn  # the model knows the root "dark"
    assert "tin" not in syn  # "can" holds the grammar together: never a target
    assert not set(syn) & lex.vocabulary
    # "most X" as the trained superlative, unless the pair itself was trained ("the most dim")
    assert lex.degrees["most"] == {"dark": "darkest", "bad": "worst"} and lex.degrees["more"] == {}
    assert lex.rewrite("Which image is the most murky?") == "Which image is the darkest?"
    assert lex.rewrite("Which image is the most dim?") == "Which image is the most dim?"


def test_main_writes_the_lexicon(tiny_wordnet, tmp_path, capsys):
    assert build_lexicon.main(["--out", str(tmp_path), "--wordnet", str(tiny_wordnet)]) == 0
    lex = Lexicon.load(tmp_path)
    assert lex.synonyms["murky"] == "dark" and "WordNet" in lex.source
    assert "other words read as trained ones" in capsys.readouterr().out


def test_the_shipped_lexicon_matches_the_grammar_and_leaves_trained_questions_alone():
    lex = Lexicon.load(ASSETS / "qground-nano")
    texts = build_lexicon.vocabulary_texts()
    assert lex.vocabulary == {w for t in texts for w in build_lexicon.words_of(t)}  # built from today's grammar
    asked = training_wordings() | set(QUESTIONS.values()) | set(COMPARE_PRESETS.values())
    changed = [q for q in asked if lex.rewrite(q) != q]
    assert not changed, changed[:5]
    assert len(lex.synonyms) > 1000 and lex.rewrite("Which image is the most sharp?") == "Which image is the sharpest?"
    # every value is made of trained words (a phrase or "most" + a trained word)
    assert all(set(re.findall(r"[a-z-]+", v)) <= lex.vocabulary | {"more", "most"} for v in lex.synonyms.values())
    assert json.loads((ASSETS / "qground-nano" / LEXICON_NAME).read_text())["version"] == 1


def test_the_engine_reads_every_question_through_its_lexicon(tiny):
    model, _, processor = tiny
    seen = []

    def spy(images, turns, **options):
        seen.append([t.question for t in turns])
        return processor(images, turns, **options)

    engine = QGroundEngine(model, processor, lexicon=small())
    engine.processor = spy
    image = Image.new("RGB", (64, 48), (90, 60, 30))
    turns = [Turn("Is it murky?", "It is."), Turn("Which image is the gloomiest?")]
    result = engine.chat([image], turns)
    assert seen == [["Is it dark?", "Which image is the darkest?"]]
    plain = QGroundEngine(model, processor).chat([image], [Turn("Is it dark?", "It is."), Turn(seen[0][1])])
    assert result.text == plain.text
    assert QGroundEngine(model, processor).read(turns) == turns  # no lexicon: as typed


def test_wordnet_comes_from_the_pinned_debian_package(tiny_wordnet, tmp_path, monkeypatch):
    fetched = []

    def fetch(pkg, cache):
        fetched.append((pkg, cache))
        root = tmp_path / "root"
        (root / "usr" / "share").mkdir(parents=True, exist_ok=True)
        (root / "usr" / "share" / "wordnet").symlink_to(tiny_wordnet)
        return root

    monkeypatch.setattr(build_lexicon, "fetch_package", fetch)
    assert build_lexicon.main(["--out", str(tmp_path), "--cache", str(tmp_path / "cache")]) == 0
    assert fetched == [(build_lexicon.WORDNET, tmp_path / "cache")]
    assert build_lexicon.WORDNET.name == "wordnet-base" and len(build_lexicon.WORDNET.sha256) == 64
    assert Lexicon.load(tmp_path).synonyms["gloomiest"] == "darkest"


def test_a_checkpoint_lexicon_loads_beside_its_weights(tmp_path):
    from qground.checkpoint import CheckpointError, load_lexicon

    assert load_lexicon("qground-tiny") is None  # a registry model without a shipped checkpoint
    assert load_lexicon("qground-nano") == Lexicon.load(ASSETS / "qground-nano")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "qground_config.json").write_text("{}")
    assert load_lexicon(str(folder)) is None  # a folder without the file
    (folder / LEXICON_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid lexicon"):
        load_lexicon(str(folder))
