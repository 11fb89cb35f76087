"""The app's engine layer (qground.service) and the SAM annotation backend (qground.sam), called directly."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qground import sam as annot
from qground import service as svc
from qground.imageio import fit_size
from qground.inference import GenerationSettings, GroundingResult, QGroundEngine
from qground.lexicon import Lexicon
from qground.naming import named_images
from qground.taxonomy import DISTORTION_COLORS
from qground.visualize import hex_to_rgb

H, W = 40, 60


def rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A bool (H, W) mask, True on rows y0..y1-1 and columns x0..x1-1."""
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def make_result(
    masks: dict[str, np.ndarray], text: str = "The segmentation results are: noise, low light"
) -> GroundingResult:
    return GroundingResult(
        text=text,
        raw_text=text,
        masks=masks,
        scores={name: 0.8 for name in masks},
        image_size=(H, W),
        timings={"total": 0.1},
        token_ids=[],
    )


@pytest.fixture
def photo_path(tmp_path) -> str:
    """A random (H, W) RGB PNG."""
    path = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def scratch(tmp_path) -> svc.Scratch:
    return svc.Scratch(tmp_path / "scratch")


class FakeEngine:
    """Streams two partial texts and a fixed result, recording the turns it was asked."""

    name = "fake"

    def __init__(self, result: GroundingResult, lexicon: Lexicon | None = None) -> None:
        self.result = result
        self.lexicon = lexicon
        self.calls: list[list] = []

    read_question = QGroundEngine.read_question  # the engine's own reading (it needs only ``lexicon``)

    def stream(self, images, turns, settings, stages=False):
        self.calls.append(turns)
        yield "The segmentation"
        yield "The segmentation results are:"
        yield self.result


# -- result views ------------------------------------------------------------------------------------------------------
def test_highlight_spans_color_distortion_words_and_keep_the_text():
    text = "Noise, motion blur and low light; the sky is too dark, out of focus. A blue sky, no noises here."
    spans = svc.highlight_spans(text)
    assert "".join(part for part, _ in spans) == text
    labelled = [(part, label) for part, label in spans if label]
    assert labelled == [
        ("Noise", "noise"),
        ("motion blur", "jitter"),
        ("low light", "low light"),
        ("too dark", "low light"),
        ("out of focus", "blur"),
        ("noises", "noise"),
    ]
    assert all(label in DISTORTION_COLORS for _, label in labelled)


def test_annotated_image_outlines_in_png_and_fills_from_annotations(photo_path, scratch):
    result = make_result({"noise": rect(5, 20, 5, 30), "low light": rect(25, 40, 0, 60)})
    base_path, annotations = svc.annotated_image(photo_path, result, scratch, opacity=0.4)
    base = np.asarray(Image.open(base_path))
    original = np.asarray(Image.open(photo_path))
    assert Image.open(base_path).format == "PNG" and base.shape == original.shape
    assert (base[5, 10] == hex_to_rgb(DISTORTION_COLORS["noise"])).all()  # on the noise outline
    assert (base[12, 15] == original[12, 15]).all() and (base[0, 50] == original[0, 50]).all()  # inside / outside
    assert [label for _, label in annotations] == ["low light", "noise"]  # taxonomy order
    assert np.unique(annotations[1][0]).tolist() == pytest.approx([0.0, 0.4])
    _, only_noise = svc.annotated_image(photo_path, result, scratch, classes=["noise"], opacity=1.0)
    assert [label for _, label in only_noise] == ["noise"] and only_noise[0][0].max() == 1.0


def test_table_rows_note_and_choices():
    result = make_result({"noise": rect(0, 20, 0, 30), "blur": rect(0, 4, 0, 6)})
    assert svc.table_rows(result) == [["Blur", 1.0, "the upper left", 0.8], ["Noise", 25.0, "the upper left", 0.8]]
    assert svc.class_choices(result) == [("Blur", "blur"), ("Noise", "noise")]
    assert svc.mask_note(result) == (
        "Drew 2 masks: blur — 1.0 % of the image, the upper left; noise — 25.0 % of the image, the upper left."
    )
    empty = make_result({}, "The image is clean.")
    empty.warnings.append("a mask had no distortion name before it and was left out")
    assert svc.mask_note(empty).startswith("No distortion masks in this answer.")
    assert "left out" in svc.mask_note(empty)
    clean = dataclasses.replace(make_result({}, "There is no obvious distortion in the image."), strictness=6.0)
    assert svc.mask_note(clean) == (
        "No distortion found at detection strictness 6; a lower one (Generation settings) also shows weaker evidence."
    )
    assert svc.mask_note(dataclasses.replace(clean, strictness=0.0)) == "No distortion masks in this answer."
    assert svc.table_rows(empty) == [] and svc.table_rows(None) == []


def test_masks_zip_holds_one_lossless_png_per_class_and_result_json(tmp_path):
    masks = {"noise": rect(0, 20, 0, 30), "low light": rect(25, 40, 0, 60)}
    path = svc.masks_zip(make_result(masks), tmp_path / "out" / "masks.zip", "street.png", "fake")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["low_light.png", "noise.png", "result.json"]
        for name, key in (("noise", "noise"), ("low light", "low_light")):
            png = Image.open(zf.open(f"{key}.png"))
            assert png.mode == "L" and set(np.unique(png)) <= {0, 255}
            assert np.array_equal(np.asarray(png) == 255, masks[name])
        summary = json.loads(zf.read("result.json"))
    assert summary["image"] == "street.png" and summary["image_size"] == [H, W] and summary["model"] == "fake"
    assert summary["strictness"] == 0.0
    assert [c["name"] for c in summary["classes"]] == ["low light", "noise"]
    assert summary["classes"][1] == {
        "name": "noise",
        "key": "noise",
        "file": "noise.png",
        "color": DISTORTION_COLORS["noise"],
        "area_percent": 25.0,
        "where": "the upper left",
        "score": 0.8,
    }
    assert os.listdir(tmp_path / "out") == ["masks.zip"]  # no temporary file left


def test_the_result_views_share_one_summary_of_each_mask(tmp_path, monkeypatch):
    from qground import inference

    calls = []
    monkeypatch.setattr(inference, "region_location", lambda m: calls.append(m) or "somewhere")
    result = make_result({"noise": rect(0, 20, 0, 30), "low light": rect(25, 40, 0, 60)})
    note = svc.mask_note(result)
    rows = svc.table_rows(result)
    svc.masks_zip(result, tmp_path / "masks.zip")
    assert len(calls) == 2, "each class's place is worked out once, not once per view"
    assert note == "Drew 2 masks: low light — 37.5 % of the image, somewhere; noise — 25.0 % of the image, somewhere."
    assert rows == [["Low light", 37.5, "somewhere", 0.8], ["Noise", 25.0, "somewhere", 0.8]]


# -- requests ----------------------------------------------------------------------------------------------------------
def test_user_errors_are_specific(tmp_path):
    with pytest.raises(svc.UserError, match="temperature must be between 0"):
        svc.generation_settings(256, -1, 1.0)
    with pytest.raises(svc.UserError, match="top-p"):
        svc.generation_settings(256, 0, 0)
    assert svc.generation_settings(64, 0.7, 0.9) == GenerationSettings(max_new_tokens=64, temperature=0.7, top_p=0.9)
    assert svc.generation_settings(64, 0, 1, 2.5, readout=True).strictness == 2.5
    with pytest.raises(svc.UserError, match="strictness must be between 0 and 8"):
        svc.generation_settings(64, 0, 1, 12, readout=True)
    with pytest.raises(svc.UserError, match="strictness needs a model with a distortion readout"):
        svc.generation_settings(64, 0, 1, 2.5, readout=False)
    with pytest.raises(svc.UserError, match="Upload a photo first"):
        svc.load_photo(None)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(svc.UserError) as err:
        svc.load_photo(str(bad))
    assert str(err.value).startswith("cannot read notes.png: not an image") and str(tmp_path) not in str(err.value)
    with pytest.raises(svc.UserError, match="no longer on the server"):
        svc.load_photo(str(tmp_path / "gone.png"))
    thread = svc.new_thread(str(bad))
    assert thread.image is None and "cannot be used" in thread.notice


def test_an_answer_says_how_its_question_was_read(photo_path):
    """With a lexicon, the note under an answer shows the question as the model read it; as typed, nothing."""
    lexicon = Lexicon(frozenset({"is", "it", "dark"}), {"murky": "dark"})
    engine = FakeEngine(make_result({}, "No."), lexicon)
    *_, (thread, _) = svc.chat_turn(engine, svc.new_thread(photo_path), "Is it murky?", GenerationSettings())
    assert thread.exchanges[-1].note == "Read as “Is it dark?”. No distortion masks in this answer."
    assert svc.reading_note(engine, "Is it dark?") == ""
    engine.lexicon = None
    assert svc.reading_note(engine, "Is it murky?") == ""


def test_chat_turn_streams_and_keeps_the_raw_answer_as_history(photo_path):
    raw = "The segmentation results are: noise [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]"
    result = make_result({"noise": rect(0, 20, 0, 30)}, "The segmentation results are: noise")
    result.raw_text = raw
    engine = FakeEngine(result)
    thread = svc.new_thread(photo_path)
    assert thread.notice.startswith("New photo street.png (60×40 px)")
    updates = list(svc.chat_turn(engine, thread, "  Where is the noise? ", GenerationSettings()))
    assert [done for _, done in updates] == [False, False, False, True]
    assert [u.exchanges[-1].answer for u, _ in updates[:3]] == ["", "The segmentation", "The segmentation results are:"]
    final = updates[-1][0]
    assert final.result is result and final.exchanges[-1].raw == raw
    messages = svc.thread_messages(final)
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]
    assert messages[2]["content"].endswith("*Drew 1 mask: noise — 25.0 % of the image, the upper left.*")
    *_, (second, _) = svc.chat_turn(engine, final, "And blur?", GenerationSettings())
    assert [(t.question, t.answer) for t in engine.calls[1]] == [("Where is the noise?", raw), ("And blur?", None)]
    previous, question = svc.undo_turn(second)
    assert question == "And blur?" and len(previous.exchanges) == 1 and previous.result is result
    cleared = svc.clear_thread(second)
    assert cleared.image == photo_path and cleared.exchanges == () and "cleared" in cleared.notice
    with pytest.raises(svc.UserError, match="no answer yet to undo or retry"):
        svc.undo_turn(cleared)
    with pytest.raises(svc.UserError, match="Type a question"):
        next(svc.chat_turn(engine, thread, "  ", GenerationSettings()))
    with pytest.raises(svc.UserError, match="Upload a photo"):
        next(svc.chat_turn(engine, svc.new_thread(None), "Hi", GenerationSettings()))


def test_masks_stay_through_answers_that_draw_none(photo_path):
    drew = make_result({"noise": rect(0, 20, 0, 30)}, "The segmentation results are: noise")
    words = make_result({}, "The image has no obvious distortion.")
    engine = FakeEngine(drew)
    *_, (first, _) = svc.chat_turn(engine, svc.new_thread(photo_path), "Where is the noise?", GenerationSettings())
    assert first.drawn == (1, drew) and svc.drawn_note(first) == svc.mask_note(drew)
    engine.result = words
    *_, (second, _) = svc.chat_turn(engine, first, "Is it sharp?", GenerationSettings())
    assert second.result is words and second.drawn == (1, drew)  # the overlay keeps turn 1's masks
    assert svc.drawn_note(second) == (
        "No distortion masks in this answer. Shown: the masks of turn 1 (“Where is the noise?”). "
        "Drew 1 mask: noise — 25.0 % of the image, the upper left."
    )
    engine.result = make_result({"blur": rect(0, 4, 0, 6)})
    *_, (third, _) = svc.chat_turn(engine, second, "And blur?", GenerationSettings())
    assert third.drawn[0] == 3 and list(third.drawn[1].masks) == ["blur"]  # new masks replace the old
    assert svc.same_drawing(first, second) and not svc.same_drawing(second, third)  # the app keeps the overlay
    assert not svc.same_drawing(svc.new_thread(photo_path), first)
    assert svc.undo_turn(third)[0].drawn == (1, drew)  # undone: back to the masks before
    assert not svc.same_drawing(third, svc.undo_turn(third)[0])  # a retry from turn 2 redraws turn 1's masks
    assert svc.clear_thread(third).drawn is None and svc.new_thread(photo_path).drawn is None
    assert svc.drawn_note(svc.new_thread(photo_path)) == ""


def test_display_overlay_is_screen_sized_and_keeps_the_masks(tmp_path, scratch):
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 800, 3), dtype=np.uint8)).save(path)
    mask = np.zeros((300, 800), dtype=bool)
    mask[:150, :400] = True
    result = make_result({"noise": mask})
    assert fit_size((800, 300), 400) == (400, 150) and fit_size((800, 300), None) == (800, 300)
    base, annotations = svc.annotated_image(str(path), result, scratch, max_side=400)
    assert Image.open(base).size == (400, 150) and annotations[0][0].shape == (150, 400)
    assert Image.open(base).format == "JPEG"  # a view: small and fast to write; on the outline, the class color
    assert np.abs(np.asarray(Image.open(base), int)[30, 199] - hex_to_rgb(DISTORTION_COLORS["noise"])).max() < 24
    assert annotations[0][0][:75, :200].min() > 0 and annotations[0][0][75:, 200:].max() == 0
    full, _ = svc.annotated_image(str(path), result, scratch)
    assert Image.open(full).format == "PNG" and Image.open(full).size == (800, 300)
    assert result.masks["noise"].shape == (300, 800)  # the result untouched
    preview = Image.open(path).resize((200, 75))  # a thread's preview: the masks are brought to its size
    small, on_preview = svc.annotated_image(preview, result, scratch, max_side=400)
    assert Image.open(small).size == (200, 75) and on_preview[0][0].shape == (75, 200)
    thread = svc.new_thread(str(path))
    assert thread.preview.size == (800, 300) and svc.clear_thread(thread).preview is thread.preview


def test_model_card_of_the_shipped_model(trained_tiny):
    card = svc.model_card(svc.load_engine("qground-nano"))
    assert card.startswith("# qground-nano") and "license:" not in card  # front matter removed
    assert svc.model_card(trained_tiny) == ""  # built in memory: no card


def test_a_pending_answer_names_its_stage(trained_tiny, overfit_batch, tmp_path):
    path = tmp_path / "overfit.png"
    overfit_batch[0][0][0].save(path)
    updates = list(svc.chat_turn(trained_tiny, svc.new_thread(str(path)), svc.GROUNDING_QUESTION, GenerationSettings()))
    notes = [thread.exchanges[-1].note for thread, _ in updates]
    stages = [note for k, note in enumerate(notes) if k == 0 or note != notes[k - 1]]
    assert stages == [*svc.STAGES.values(), svc.mask_note(updates[-1][0].result)]  # read, answer, masks, what it drew
    assert updates[-1][1] and not any(done for _, done in updates[:-1])


def test_too_long_prompt_is_a_user_error(trained_tiny, photo_path):
    with pytest.raises(svc.UserError, match="reads at most"):
        list(svc.describe_request(trained_tiny, photo_path, "blur " * 2000, GenerationSettings(max_new_tokens=2)))


def test_ground_request_and_ground_each_with_the_trained_model(trained_tiny, overfit_batch, tmp_path, scratch):
    img, truth = overfit_batch[0][0]
    path = tmp_path / "overfit.png"
    img.save(path)
    every_token = list(svc.ground_request(trained_tiny, str(path), "", GenerationSettings(), scratch, every_s=0.0))
    assert len(every_token) > 2 and all(u[0] is None and u[3] is None for u in every_token[:-1])
    updates = list(svc.ground_request(trained_tiny, str(path), "", GenerationSettings(), scratch, every_s=60.0))
    assert len(updates) == 2 and updates[0][1] == every_token[0][1]  # throttled: the first partial answer, the end
    annotated, answer, rows, archive = updates[-1]
    assert [label for _, label in annotated[1]] == list(truth) and "noise" in answer
    assert rows[0][0] == "Noise" and Path(archive).name == "overfit-masks.zip"
    gallery = list(
        svc.ground_each(trained_tiny, ["A", "B"], [img, overfit_batch[0][1][0]], GenerationSettings(), scratch)
    )
    assert len(gallery) == 2 and [caption.split(" — ")[0] for _, caption in gallery[-1]] == ["A", "B"]
    assert gallery[-1][0][1].startswith("A — noise") and Image.open(gallery[-1][0][0]).size == img.size


# -- comparison --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "labels", "expected"),
    [
        ("The second image.", "AB", [1]),
        ("B", "AB", [1]),
        ("(C) is the sharpest", "ABC", [2]),
        ("Image D is better than image A.", "ABCD", [3, 0]),
        ("The third photo is sharper than the first one.", "ABC", [2, 0]),
        ("image 2 wins over Image #1", "AB", [1, 0]),
        ("The latter.", "AB", [1]),
        ("Third.", "ABC", [2]),
        ("At first glance the second image wins.", "AB", [1]),
        ("A blurry picture overall.", "AB", []),  # the article "A" is not a choice
        ("The fourth image", "AB", []),  # only two images
        ("Image C", "ABD", []),  # slot C is empty
        ("Image D", "ABD", [2]),
    ],
)
def test_named_images_with_slot_labels(answer, labels, expected):
    slots = {label: k for k, label in enumerate(labels)}
    assert [index for index, _ in named_images(answer, len(labels), slots)] == expected


def test_ranking_rows_and_unparseable_answers():
    rows, note = svc.ranking_rows("The second image is sharper than the first image.", ["A", "C", "D"])
    assert rows == [[1, "C", "second image", ""], [2, "A", "first image", ""]] and "Not named: D" in note
    rows, note = svc.ranking_rows("Both look fine.", ["A", "B"])
    assert rows == [] and "does not say which image" in note
    rows, note = svc.ranking_rows("The third image.", ["A", "C", "D"], [0.2, 0.1, 0.7])  # a choice head's answer
    assert rows == [[1, "D", "third image", "70%"], [2, "A", "", "20%"], [3, "C", "", "10%"]]
    assert "choice head's probability" in note
    with pytest.raises(ValueError, match="2 choice probabilities for 3 images"):
        svc.ranking_rows("The third image.", ["A", "C", "D"], [0.5, 0.5])
    # a multiple-choice answer: its letter is the question's option, not the slot with that label
    question = "Which image is sharper?\nA. The second image\nB. The first image\nC. The third image"
    rows, _ = svc.ranking_rows("C. The third image.", ["A", "B", "C"], [0.1, 0.2, 0.7], question)
    assert rows[0] == [1, "C", "C.", "70%"] and rows[1][2] == rows[2][2] == ""
    rows, _ = svc.ranking_rows("A.", ["A", "B", "C"], None, question)
    assert rows[0][:3] == [1, "B", "A."]


def test_compare_needs_two_to_four_images(photo_path):
    labels, photos = svc.compare_photos([photo_path, None, photo_path])
    assert labels == ["A", "C"] and photos == [photo_path] * 2  # paths: the engine reads them, or finds them prepared
    for paths in ([photo_path], [photo_path] * 5, [None, None, None, None]):
        with pytest.raises(svc.UserError, match="Compare needs 2 to 4 images"):
            svc.compare_photos(paths)


# -- model resolution --------------------------------------------------------------------------------------------------
def test_unloadable_model_falls_back_and_says_what_to_set(tmp_path):
    engine, served = svc.load_engine_from_env(env={"QGROUND_MODEL": str(tmp_path / "missing"), "QGROUND_QUANT": "none"})
    assert served.name in (svc.DEFAULT_MODEL, svc.RANDOM_MODEL) and engine.name == served.name
    assert str(tmp_path / "missing") in served.notice and "QGROUND_MODEL" in served.notice
    assert served.device == "cpu" and served.quant == "none"
    if served.name == svc.RANDOM_MODEL:
        assert served.random and "RANDOM UNTRAINED MODEL" in served.footer()
    with pytest.raises(ValueError, match="QGROUND_QUANT must be one of"):
        svc.load_engine_from_env(env={"QGROUND_QUANT": "2bit"})


# -- SAM annotation ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam() -> annot.SamAnnotator:
    return annot.SamAnnotator.tiny_random()


def test_click_draws_a_mask_around_the_clicked_pixel_and_reuses_the_embedding(sam, photo_path, tmp_path):
    before = sam.embeddings_computed
    ann = annot.start(sam, photo_path)
    clicks = [(x, y) for y in range(0, H, 5) for x in range(0, W, 5)]
    hits = [annot.add_point(sam, ann, x, y).mask[y, x] for x, y in clicks]
    assert np.mean(hits) >= 0.85  # a random tiny SAM: most clicks, not all, land inside one of its three masks
    clicked = annot.add_point(sam, ann, 10, 10)
    assert clicked.mask.shape == (H, W) and clicked.mask[10, 10] and clicked.points == (annot.Point(10, 10, True),)
    annot.start(sam, photo_path)
    assert sam.embeddings_computed == before + 1  # same pixels, same cached embedding
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((2 * H, W, 3), np.uint8)).save(other)
    annot.start(sam, other)
    assert sam.embeddings_computed == before + 2
    assert annot.add_point(sam, ann, 10, 10).mask.shape == (H, W)  # the cached embedding keeps its own frame
    with pytest.raises(annot.AnnotationError, match="outside the 60×40 photo"):
        annot.add_point(sam, ann, W, 0)


def test_clicks_reach_sam_in_pixel_coordinates_and_the_agreeing_mask_wins(sam, photo_path, monkeypatch):
    ann = annot.start(sam, photo_path)
    seen = {}
    inside = rect(20, 40, 40, 60)  # holds (45, 30) but not (5, 5)

    def predict(point_coords, point_labels, multimask_output):
        seen.update(coords=point_coords.tolist(), labels=point_labels.tolist(), multi=multimask_output)
        return np.stack([~inside, inside, np.ones((H, W), bool)]), np.array([0.9, 0.1, 0.8]), None

    monkeypatch.setattr(sam.predictor, "predict", predict)
    ann = annot.add_point(sam, annot.add_point(sam, ann, 45, 30), 5, 5, include=False)
    assert seen == {"coords": [[45, 30], [5, 5]], "labels": [1, 0], "multi": True}
    assert np.array_equal(ann.mask, inside)  # the only candidate with the include point in and the exclude point out


def test_regions_undo_delete_and_preview(sam, photo_path):
    ann = annot.start(sam, photo_path)
    with pytest.raises(annot.AnnotationError, match="click on the photo first"):
        annot.add_region(ann, "blur")
    ann = annot.add_point(sam, ann, 20, 15)
    ann = annot.add_point(sam, ann, 50, 35, include=False)
    assert "(20, 15) include · (50, 35) exclude" in annot.status(ann)
    preview = annot.render(ann)
    assert tuple(preview[15, 20]) == annot.INCLUDE_COLOR and tuple(preview[35, 50]) == annot.EXCLUDE_COLOR
    ann = annot.undo(sam, ann)
    assert ann.points == (annot.Point(20, 15),)
    ann = annot.add_region(ann, "Low light")
    ann = annot.add_region(annot.add_point(sam, ann, 5, 5), "noise")
    assert [r.label for r in ann.regions] == ["low light", "noise"] and ann.points == () and ann.mask is None
    assert [row[:3] for row in annot.region_rows(ann)] == [[1, "Low light", 1], [2, "Noise", 1]]
    assert [r.label for r in annot.delete_region(ann, 1).regions] == ["noise"]
    assert [r.label for r in annot.undo(sam, ann).regions] == ["low light"]
    with pytest.raises(annot.AnnotationError, match="no region 3"):
        annot.delete_region(ann, 3)


def annotated(sam, photo_path) -> annot.Annotation:
    regions = annot.parse_regions(
        '[{"label": "blur", "points": [[10, 10], [50, 30, 0]]}, {"label": "noise", "points": [[40, 5]]}]'
    )
    return annot.annotate(sam, photo_path, regions)


def test_export_import_round_trip_is_bit_exact(sam, photo_path, tmp_path):
    ann = annotated(sam, photo_path)
    path = annot.export_zip(ann, tmp_path / "out" / "street-annotation.zip", layout="legacy")
    with zipfile.ZipFile(path) as zf:
        record = json.loads(zf.read("record.json"))
        assert sorted(zf.namelist()) == ["images/street.png", "masks/street_1.png", "masks/street_2.png", "record.json"]
        assert zf.read("images/street.png") == Path(photo_path).read_bytes()
    assert record["id"] == "street" and record["image"] == "images/street.png"
    assert [(a["label"], a["mask"], a["points"]) for a in record["ann_list"]] == [
        ("blur", "street_1.png", [[10, 10, 1], [50, 30, 0]]),
        ("noise", "street_2.png", [[40, 5, 1]]),
    ]
    back = annot.import_zip(sam, path, tmp_path / "imported")
    assert Path(back.image_path).read_bytes() == Path(photo_path).read_bytes() and back.size == (H, W)
    assert [(r.label, r.points) for r in back.regions] == [(r.label, r.points) for r in ann.regions]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(back.regions, ann.regions))


def test_export_is_atomic(sam, photo_path, tmp_path, monkeypatch):
    ann = annotated(sam, photo_path)
    path = annot.export_zip(ann, tmp_path / "out" / "a.zip")
    good = path.read_bytes()
    calls = []

    def failing_writestr(self, name, data, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(self, name, data, *args, **kwargs)

    original = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_writestr)
    with pytest.raises(OSError, match="disk full"):
        annot.export_zip(ann, path)
    assert path.read_bytes() == good and os.listdir(path.parent) == ["a.zip"]


def test_import_rejects_broken_zips(sam, photo_path, tmp_path):
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("hello")
    with pytest.raises(annot.AnnotationError, match="is not a zip file"):
        annot.import_zip(sam, not_zip, tmp_path)
    path = annot.export_zip(annotated(sam, photo_path), tmp_path / "a.zip", layout="legacy")
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    record = json.loads(members["record.json"])
    record["ann_list"][0]["rle"] = record["ann_list"][1]["rle"]
    members["record.json"] = json.dumps(record).encode()
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(annot.AnnotationError, match="region 1: its PNG and RLE masks differ"):
        annot.import_zip(sam, tampered, tmp_path / "w")


def test_parse_regions_explains_the_format():
    assert annot.parse_regions('[{"label": "Low light", "points": [[1, 2], [3, 4, 0]]}]') == [
        ("low light", (annot.Point(1, 2), annot.Point(3, 4, False)))
    ]
    for text in ("[", '[{"points": [[1, 2]]}]', '[{"label": "smog", "points": [[1, 2]]}]', "[]"):
        with pytest.raises(annot.AnnotationError, match="label"):
            annot.parse_regions(text)


class Payload:
    """Anything that is not a tensor: unpickling it would run code."""


def test_checkpoints_are_read_without_unpickling_code(sam, tmp_path):
    assert annot.SamAnnotator.from_env({}) == (None, annot.SAM_HELP)
    none, message = annot.SamAnnotator.from_env({"QGROUND_SAM": str(tmp_path / "nope.pth")})
    assert none is None and "QGROUND_SAM=" in message and "no such file" in message
    evil = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(annot.SamUnavailable, match="not a plain tensor checkpoint"):
        annot.SamAnnotator.from_checkpoint(str(evil))
    tiny = tmp_path / "tiny.pth"
    torch.save(sam.predictor.model.state_dict(), tiny)
    with pytest.raises(annot.SamUnavailable, match="not a SAM ViT-B/L/H state dict"):
        annot.SamAnnotator.from_checkpoint(str(tiny))


def test_an_upload_is_prepared_for_its_questions(tiny, photo_path, monkeypatch):
    """``new_thread`` with an engine preprocesses the photo in the background; questions about it read that result
    (one preprocessing for the upload and two questions, the same answer as without it, and the photo decoded once:
    the preview's decoding is the preprocessing's); an engine without an image cache prepares nothing. A prepared
    photo deleted or replaced by junk since gives the usual messages."""
    from collections import OrderedDict

    import qground.processor as processor_module
    from qground.processor import QGroundProcessor

    model, tokenizer, _ = tiny
    monkeypatch.setattr(processor_module, "_IMAGE_CACHE", OrderedDict())
    engines = [QGroundEngine(model, QGroundProcessor(tokenizer, model.config, cache_images=n)) for n in (4, 0)]
    calls = []
    for engine in engines:
        real = engine.processor._preprocess
        monkeypatch.setattr(
            engine.processor, "_preprocess", lambda *a, real=real, **k: calls.append(a) or real(*a, **k)
        )
    decodes = []
    real_load = processor_module.load_image
    monkeypatch.setattr(processor_module, "load_image", lambda p: decodes.append(p) or real_load(p))
    settings = GenerationSettings(max_new_tokens=8)
    answers = []
    for engine in engines:
        calls.clear()
        decodes.clear()
        thread = svc.new_thread(photo_path, engine)
        engine._preparing.submit(lambda: None).result()  # the preparation has run
        assert len(calls) == (1 if engine.processor.cache_images else 0)
        *_, (first, _) = svc.chat_turn(engine, thread, "Where is the noise?", settings)
        *_, (second, _) = svc.chat_turn(engine, first, "And blur?", settings)
        assert len(calls) == (1 if engine.processor.cache_images else 2)
        assert len(decodes) == (0 if engine.processor.cache_images else 2)  # prepared: new_thread's decoding only
        answers.append([ex.answer for ex in second.exchanges])
    assert answers[0] == answers[1]
    Path(photo_path).write_text("not an image")
    with pytest.raises(svc.UserError) as err:
        list(svc.chat_turn(engines[0], thread, "Again?", settings))
    assert str(err.value).startswith("cannot read street.png") and str(Path(photo_path).parent) not in str(err.value)
    os.remove(photo_path)
    with pytest.raises(svc.UserError, match="street.png is no longer on the server"):
        list(svc.chat_turn(engines[0], thread, "Again?", settings))


def test_uploads_queue_no_more_preparations_than_the_cache_keeps(tiny, tmp_path, monkeypatch):
    """While preparations wait, an engine queues at most ``cache_images`` of them; the rest are left to their
    questions."""
    import threading
    from collections import OrderedDict

    import qground.processor as processor_module
    from qground.processor import QGroundProcessor

    model, tokenizer, _ = tiny
    monkeypatch.setattr(processor_module, "_IMAGE_CACHE", OrderedDict())
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config, cache_images=2))
    release, started = threading.Event(), []
    real = engine.processor._preprocess

    def held(*args, **kwargs):
        started.append(args[0])
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.processor, "_preprocess", held)
    paths = []
    for k in range(5):
        paths.append(tmp_path / f"upload{k}.png")
        Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)).save(paths[-1])
        engine.prepare(paths[-1])
    release.set()
    engine._preparing.submit(lambda: None).result()
    assert started == paths[:2] and not engine._pending
    engine.prepare(paths[4])  # room again
    engine._preparing.submit(lambda: None).result()
    assert started == [*paths[:2], paths[4]]


def test_an_overlay_photo_is_decoded_at_the_size_it_is_shown(tmp_path, monkeypatch):
    """A JPEG shown at most ``max_side`` px is decoded at a reduced scale (``draft``) that still covers that size,
    upright by its EXIF orientation, and looks like the full decode shrunk; other photos are read whole."""
    from PIL import JpegImagePlugin

    rng = np.random.default_rng(1)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((400, 300)))
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 400 × 300, shown rotated: 300 × 400
    Image.fromarray(smooth).save(path, quality=95, exif=exif)
    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: drafts.append(size) or real(self, mode, size)
    )
    shown = svc._display_photo(str(path), 100)
    assert drafts == [(100, 75)] and shown.size == (75, 100)  # decoded at 1/4, just covering it, upright
    full = svc.load_photo(str(path)).resize(shown.size, Image.Resampling.BOX)
    assert np.abs(np.asarray(shown, np.int16) - np.asarray(full, np.int16)).mean() < 4
    png = tmp_path / "photo.png"
    Image.fromarray(smooth).save(png)
    assert svc._display_photo(str(png), 100).size == (400, 300) and len(drafts) == 1  # not a JPEG: read whole
    assert svc._display_photo(str(path), None).size == (300, 400)  # no display size: the whole photo


def test_comparison_slots_are_prepared_and_read_by_path(tiny, tmp_path, scratch, monkeypatch):
    """A photo put into a slot is prepared; comparing and grounding each image read the prepared photos (no second
    preprocessing) and draw overlays at the photos' size."""
    from collections import OrderedDict

    import qground.processor as processor_module
    from qground.processor import QGroundProcessor

    model, tokenizer, _ = tiny
    monkeypatch.setattr(processor_module, "_IMAGE_CACHE", OrderedDict())
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config, cache_images=4))
    calls = []
    real = engine.processor._preprocess
    monkeypatch.setattr(engine.processor, "_preprocess", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    paths = []
    for k, size in enumerate([(30, 50), (44, 20)]):
        paths.append(str(tmp_path / f"slot{k}.png"))
        Image.fromarray(np.full((*size, 3), 60 + 90 * k, np.uint8)).save(paths[-1])
        svc.prepare_photo(engine, paths[-1])
    svc.prepare_photo(engine, None)
    engine._preparing.submit(lambda: None).result()
    labels, photos = svc.compare_photos([paths[0], None, paths[1]])
    *_, (answer, _) = svc.compare_turn(engine, photos, "Which is darker?", GenerationSettings(max_new_tokens=4))
    gallery = list(svc.ground_each(engine, labels, photos, GenerationSettings(max_new_tokens=4), scratch))
    assert isinstance(answer, str) and calls == paths
    assert [Image.open(path).size for path, _ in gallery[-1]] == [(50, 30), (20, 44)]
