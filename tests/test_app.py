"""The Gradio app end to end through gradio_client: named endpoints, streaming, masks, comparison, SAM export."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import served_app
from qground import sam as annot
from qground import service as svc
from qground.lexicon import Lexicon
from qground.taxonomy import CLASS_NAMES, get

ENDPOINTS = {"/ground", "/describe", "/compare", "/segment"}


@pytest.fixture(scope="module")
def sam() -> annot.SamAnnotator:
    return annot.SamAnnotator.tiny_random()


@pytest.fixture(scope="module")
def photos(overfit_photo_files) -> list[str]:
    return overfit_photo_files


@pytest.fixture(scope="module")
def client(trained_tiny, sam, tmp_path_factory):
    """The app on loopback with the trained tiny engine and a tiny SAM, its own GRADIO_TEMP_DIR, no analytics."""
    with served_app(trained_tiny, tmp_path_factory.mktemp("gradio"), sam) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_only_the_named_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == ENDPOINTS and not api["unnamed_endpoints"]
    params = {name: [p["parameter_name"] for p in api["named_endpoints"][name]["parameters"]] for name in ENDPOINTS}
    assert params == {
        "/ground": ["image", "question", "strictness"],
        "/describe": ["image", "question", "strictness"],
        "/compare": ["images", "question"],
        "/segment": ["image", "regions_json"],
    }
    strict = {name: api["named_endpoints"][name]["parameters"][-1] for name in ("/ground", "/describe")}
    assert all(p["parameter_has_default"] and p["parameter_default"] == 0 for p in strict.values())


def test_strictness_through_the_api_needs_a_readout_model(client, photos):
    """The tiny model has no readout: strictness 0 (the default, also when left out) serves; any other is refused."""
    client.predict(handle_file(photos[0]), "", 0.0, api_name="/describe")
    with pytest.raises(AppError, match="strictness needs a model with a distortion readout"):
        client.predict(handle_file(photos[0]), "", 2.0, api_name="/ground")


def test_describe_streams_the_answer(client, photos):
    job = client.submit(handle_file(photos[0]), "", api_name="/describe")
    final = job.result(timeout=120)
    outputs = job.outputs()
    assert len(outputs) > 2 and outputs[-1] == final  # more than one partial answer before the final one
    assert all(final.startswith(partial) for partial in outputs[:-1] if partial)


def test_ground_returns_the_overlay_labelled_masks_and_a_lossless_zip(client, photos, trained_tiny, overfit_batch):
    job = client.submit(handle_file(photos[0]), "", api_name="/ground")
    annotated, answer, table, archive = job.result(timeout=120)
    first = job.outputs()[0]
    assert len(job.outputs()) >= 2 and first[0] is None and answer.startswith(first[1])  # text first, masks last
    labels = [a["label"] for a in annotated["annotations"]]
    assert labels == ["noise"] and set(labels) <= set(CLASS_NAMES) and "noise" in answer
    base = Image.open(annotated["image"])
    assert base.format == "PNG" and base.size == (80, 48)
    assert table["headers"] == ["Distortion", "Area %", "Where", "Score"] and table["data"][0][0] == "Noise"
    expected = trained_tiny.ground(overfit_batch[0][0][0]).masks
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([f"{get(n).key}.png" for n in expected] + ["result.json"])
        for name, mask in expected.items():
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(zf.read(f"{get(name).key}.png")))) > 0, mask)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_compare_takes_two_to_four_images(client, photos, count):
    paths = [photos[k % 2] for k in range(count)]
    answer, ranking, note = client.predict(
        [handle_file(p) for p in paths], "Which image is sharper?", api_name="/compare"
    )
    assert isinstance(answer, str) and ranking["headers"] == svc.RANKING_HEADERS and note
    assert svc.RANKING_HEADERS == ["Rank", "Image", "Named as", "Choice probability"]


def test_compare_says_how_it_read_a_question_in_words_never_trained_on(client, photos, trained_tiny, monkeypatch):
    lexicon = Lexicon(frozenset({"which", "image", "is", "the", "darkest"}), {"murkiest": "darkest"})
    monkeypatch.setattr(trained_tiny, "lexicon", lexicon)  # the served engine reads questions through it
    *_, note = client.predict([handle_file(p) for p in photos[:2]], "Which image is the murkiest?", api_name="/compare")
    assert note.startswith("Read as “Which image is the darkest?”. ")


@pytest.mark.parametrize("count", [1, 5])
def test_compare_rejects_other_counts_clearly(client, photos, count):
    with pytest.raises(AppError, match=f"Compare needs 2 to 4 images \\(slots A–D\\); got {count}"):
        client.predict([handle_file(photos[0])] * count, "Which is sharper?", api_name="/compare")


def test_segment_export_reimports_to_the_same_masks(client, photos, sam, tmp_path):
    regions = '[{"label": "blur", "points": [[10, 10], [60, 40, 0]]}, {"label": "low light", "points": [[70, 5]]}]'
    annotated, archive = client.predict(handle_file(photos[0]), regions, api_name="/segment")
    assert [a["label"] for a in annotated["annotations"]] == ["blur", "low light"]
    expected = annot.annotate(sam, photos[0], annot.parse_regions(regions))
    back = annot.import_zip(sam, archive, tmp_path)
    assert [(r.label, r.points) for r in back.regions] == [(r.label, r.points) for r in expected.regions]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(back.regions, expected.regions))
    with pytest.raises(AppError, match="regions must be JSON like"):
        client.predict(handle_file(photos[0]), "[{]", api_name="/segment")


def test_strictness_slider_only_for_readout_models(trained_tiny):
    """The tiny model has no distortion readout, so the strictness setting is hidden (and refused by the service)."""
    from qground.app import build_demo

    slider = next(b for b in build_demo(trained_tiny).blocks.values() if getattr(b, "elem_id", None) == "strictness")
    assert not slider.visible


def test_api_notes_name_the_address_served_and_only_the_endpoints_there(monkeypatch):
    from qground.app import _client_address, api_doc

    class Request:
        headers = {"host": "127.0.0.1:7861"}

    monkeypatch.delenv("SPACE_ID", raising=False)
    assert _client_address(Request()) == "http://127.0.0.1:7861"  # the port the app really came up on
    Request.headers = {"host": "qground.example", "x-forwarded-proto": "https"}
    assert _client_address(Request()) == "https://qground.example"
    monkeypatch.setenv("SPACE_ID", "ORG/qground")
    assert _client_address(Request()) == "ORG/qground"
    with_sam, without = api_doc("ORG/qground", True), api_doc("ORG/qground", False)
    assert 'Client("ORG/qground")' in with_sam and 'api_name="/segment"' in with_sam
    assert 'api_name="/segment"' not in without and "only when Segment Anything is on" in without
    assert "4 columns: distortion, area %, where, score" in without
    assert svc.TABLE_HEADERS == ["Distortion", "Area %", "Where", "Score"]


def test_a_user_error_is_one_log_line_and_leaves_the_outputs(caplog):
    import gradio as gr

    from qground.app import _ui

    def ask(text):
        raise svc.UserError("Type a question first.")
        yield  # a streaming handler

    def crash():
        raise RuntimeError("disk full")

    with caplog.at_level("INFO", logger="qground.app"):
        assert list(_ui(ask, 3)("")) == [(gr.skip(),) * 3]  # every output left as it was
        assert _ui(lambda: svc.load_photo(None), 1)() == gr.skip()
    assert [r.getMessage() for r in caplog.records] == [
        "user error: Type a question first.",
        "user error: Upload a photo first.",
    ]
    assert not any(r.exc_info for r in caplog.records)  # no traceback for a user's mistake
    caplog.clear()
    with caplog.at_level("INFO", logger="qground.app"), pytest.raises(gr.Error, match="RuntimeError: disk full"):
        _ui(crash, 2)()
    assert caplog.records[-1].exc_info is not None  # a real failure keeps its traceback in the log


def test_the_overlay_component_writes_gradios_layers(tmp_path):
    """``_overlay_component``'s output step gives what ``gr.AnnotatedImage``'s does for a photo path and array masks
    (its fast path), and hands anything else to it."""
    import gradio as gr

    from qground.app import _overlay_component
    from qground.visualize import color_map

    base = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(base)
    soft = np.linspace(0, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    value = (str(base), [(soft, "noise"), (np.where(soft > 0.5, 0.3, 0.0).astype(np.float32), "unknown label")])
    ours, theirs = (
        cls(format="png", color_map=color_map()).postprocess(value) for cls in (_overlay_component(), gr.AnnotatedImage)
    )
    assert ours.image.path == theirs.image.path == str(base)
    assert [a.label for a in ours.annotations] == [a.label for a in theirs.annotations] == ["noise", "unknown label"]
    for a, b in zip(ours.annotations, theirs.annotations, strict=True):
        assert np.array_equal(np.asarray(Image.open(a.image.path)), np.asarray(Image.open(b.image.path)))
    boxes = (str(base), [((2, 3, 20, 25), "blur")])
    assert _overlay_component()(format="png").postprocess(boxes).annotations[0].label == "blur"
