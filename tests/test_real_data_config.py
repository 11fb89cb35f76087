"""Training on the real releases: the shipped configs name the released files and roots (DATA-FORMATS.md), a test split
never enters training, Q-Instruct's copies inside Co-Instruct are dropped, and stage 3 trains end to end over
fixtures shaped like the releases.

Release-shaped Q-/Co-Instruct fixtures are written per test (``release_shaped_instruct``): ``Q-Instruct-DB/
{cleaned_labels.json, spaq_koniq/, livefb_liveitw_aigc/}`` and ``Co-Instruct-DB/{coinstruct_562k_llava_format.json,
spaq_koniq/, data/}``, without ``id`` fields (their presence in the releases is unverified). Co-Instruct's first two
records are Q-Instruct's, one under the same relative path, one under a leading ``data/``; then the same image with
another question, and a two-image comparison. QGround-100K is the other agent's released-layout fixture
(``tests/fixtures/qground100k_released``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qground.config import ConfigError
from training.config import TEST_SPLITS, DataSource, TrainConfig, load_config
from training.data.dataset import drop_duplicates, duplicate_key, load_sources, read_source

CONFIGS = sorted(Path("training/configs").glob("*.yaml"))
RELEASED = Path("tests/fixtures/qground100k_released")
QGROUND = RELEASED / "qground_dataset"

MCQ = "How is the clarity of this image?\nA. Clear\nB. Blurry\nAnswer with the option's letter from the given choices."
DESCRIBE = "Describe the quality of this image."
COMPARE = "The first image: <image>\nThe second image: <image>Which image has better quality, and why?"


def conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((40, 32), Image.Resampling.BILINEAR).save(path, quality=85)


def release_shaped_instruct(root: Path) -> tuple[Path, Path]:
    """Write the two release-shaped folders under ``root``; returns (Q-Instruct-DB, Co-Instruct-DB)."""
    qi, ci = root / "Q-Instruct-DB", root / "Co-Instruct-DB"
    q_records = [
        {"image": "spaq_koniq/00011.jpg", "conversations": conversation(f"<image>\n{MCQ}", "B.")},
        {"image": "livefb_liveitw_aigc/AIGC_3.jpg", "conversations": conversation(f"{DESCRIBE}\n<image>", "Noisy.")},
    ]
    c_records = [
        {"image": "spaq_koniq/00011.jpg", "conversations": conversation(f"<image>\n{MCQ}", "B.")},
        {
            "image": "data/livefb_liveitw_aigc/AIGC_3.jpg",
            "conversations": conversation(f"<image> {DESCRIBE}", "Noisy."),
        },
        {"image": "spaq_koniq/00011.jpg", "conversations": conversation(f"<image>\n{DESCRIBE}", "Soft focus.")},
        {"image": ["./data/a.jpg", "./data/b.jpg"], "conversations": conversation(COMPARE, "The second image.")},
    ]
    for k, rel in enumerate(["spaq_koniq/00011.jpg", "livefb_liveitw_aigc/AIGC_3.jpg"]):
        write_jpg(qi / rel, k)
    for k, rel in enumerate(
        ["spaq_koniq/00011.jpg", "data/livefb_liveitw_aigc/AIGC_3.jpg", "data/a.jpg", "data/b.jpg"]
    ):
        write_jpg(ci / rel, k)
    (qi / "cleaned_labels.json").write_text(json.dumps(q_records))
    (ci / "coinstruct_562k_llava_format.json").write_text(json.dumps(c_records))
    return qi, ci


def instruct_sources(qi: Path, ci: Path) -> list[DataSource]:
    return [
        DataSource("q_instruct", "coinstruct", str(qi / "cleaned_labels.json"), str(qi)),
        DataSource("co_instruct", "coinstruct", str(ci / "coinstruct_562k_llava_format.json"), str(ci)),
    ]


# -- the shipped configs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_trains_on_no_test_split(path):
    cfg = load_config(path)
    assert cfg.data and not any(Path(src.json).name.lower() in TEST_SPLITS for src in cfg.data)


def test_the_7b_stages_name_the_released_files_and_roots():
    s1, s2, s3 = (load_config(f"training/configs/stage{i}.yaml") for i in (1, 2, 3))
    assert (s1.data[0].json, s1.data[0].image_root) == (
        "data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
        "data/LLaVA-Pretrain/images",
    )
    llava = ("data/LLaVA-Instruct-150K/llava_instruct_150k.json", "data/coco/train2017")
    assert (s2.data[0].json, s2.data[0].image_root) == llava
    data = {src.name: src for src in s3.data}
    assert set(data) == {"qground100k", "q_instruct", "co_instruct", "llava_instruct"}
    qg = data["qground100k"]
    assert qg.format == "qground100k" and Path(qg.json).name == "qground_train.json"
    root = Path(qg.json).parent  # qground.tar extracts to qground_dataset/
    assert root.name == "qground_dataset" and (Path(qg.image_root), Path(qg.mask_root)) == (
        root / "images",
        root / "masks",
    )
    for name, file_name, folder in (
        ("q_instruct", "cleaned_labels.json", "Q-Instruct-DB"),  # images in spaq_koniq/, livefb_liveitw_aigc/ beside it
        ("co_instruct", "coinstruct_562k_llava_format.json", "Co-Instruct-DB"),  # images under data/ beside it
    ):
        src = data[name]
        assert src.format == "coinstruct" and Path(src.json).name == file_name
        assert Path(src.image_root) == Path(src.json).parent and Path(src.image_root).name == folder
    assert (data["llava_instruct"].json, data["llava_instruct"].image_root) == llava
    assert s3.drop_duplicates


# -- the test split ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "json_path",
    ["data/QGround-100K/qground_dataset/qground_test.json", str(QGROUND / "qground_test.json"), "b/micbench_dev.json"],
)
def test_a_test_split_is_refused_in_one_line(json_path):
    with pytest.raises(ConfigError) as info:
        load_config("training/configs/stage3.yaml", [f"data.0.json={json_path}"])
    message = str(info.value)
    assert "is a test split" in message and "never enters training" in message and "\n" not in message
    source = DataSource("qg", "qground100k", json_path, "images")
    with pytest.raises(ConfigError, match="is a test split"):
        read_source(source, 0.01)  # the loader refuses it too, however the source was made


# -- duplicates across sources -----------------------------------------------------------------------------------------
def test_qinstruct_copies_inside_coinstruct_are_dropped_with_a_count(tmp_path, capsys):
    qi, ci = release_shaped_instruct(tmp_path)
    cfg = TrainConfig("t", "qground-tiny", str(tmp_path / "run"), ["projector"], instruct_sources(qi, ci))
    sources, dataset = load_sources(cfg, processor=None)
    assert [len(sources[name]) for name in ("q_instruct", "co_instruct")] == [2, 2] and len(dataset) == 4
    kept = sources["co_instruct"]
    assert [s.turns[0].answer for s in kept] == ["Soft focus.", "The second image."]
    assert [p.name for p in kept[1].images] == ["a.jpg", "b.jpg"]
    printed = capsys.readouterr().out
    assert "[co_instruct] dropped 2 of 4 samples as duplicates: 2 already in 'q_instruct'" in printed
    assert "duplicates dropped across sources: 2" in printed
    cfg.drop_duplicates = False
    sources, _ = load_sources(cfg, processor=None)
    assert len(sources["co_instruct"]) == 4 and "dropped" not in capsys.readouterr().out


def test_the_duplicate_key_is_images_and_conversation_text(tmp_path):
    qi, ci = release_shaped_instruct(tmp_path)
    q, c = (read_source(src, 0.0).samples for src in instruct_sources(qi, ci))
    assert duplicate_key(q[0], qi) == (("spaq_koniq/00011.jpg",), ((MCQ.replace("\n", " "), "B."),))
    assert duplicate_key(q[1], qi) == duplicate_key(c[1], ci)  # "data/" prefix and placeholder position aside
    assert duplicate_key(c[0], ci) != duplicate_key(c[2], ci)  # same image, another question
    data = instruct_sources(qi, ci)
    with pytest.raises(ValueError, match="every sample is already in"):
        drop_duplicates({"q_instruct": q, "co_instruct": q[:1]}, data)


# -- stage 3 end to end ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not QGROUND.is_dir(), reason="the released-layout QGround-100K fixture is not there yet")
def test_stage3_trains_on_release_shaped_fixtures(tiny, tmp_path, capsys):
    """Stage 3's config with its data pointed at the fixtures and its sizes at the tiny model's, from a saved tiny
    model (a LoRA stage saves on top of a checkpoint folder)."""
    from qground.checkpoint import save_checkpoint
    from training.train import train

    model, tokenizer, _ = tiny
    start = save_checkpoint(model, tokenizer, tmp_path / "start")
    qi, ci = release_shaped_instruct(tmp_path / "data")
    overrides = [
        f"model={start}",
        f"output_dir={tmp_path}/stage3",
        "bf16=false",
        "micro_batch_size=2",
        "grad_accum=1",
        "steps_per_epoch=3",
        "epochs=1",
        "save_every=0",
        "lora.r=8",
        f"data.0.json={QGROUND / 'qground_train.json'}",
        f"data.0.image_root={QGROUND / 'images'}",
        f"data.0.mask_root={QGROUND / 'masks'}",
        f"data.0.palette={RELEASED / 'palette.json'}",
        f"data.1.json={qi / 'cleaned_labels.json'}",
        f"data.1.image_root={qi}",
        f"data.2.json={ci / 'coinstruct_562k_llava_format.json'}",
        f"data.2.image_root={ci}",
        "data.3.json=tests/fixtures/llava_instruct/llava_instruct_150k.json",
        "data.3.image_root=tests/fixtures/llava_instruct/images",
    ]
    cfg = load_config("training/configs/stage3.yaml", overrides)
    final = train(cfg)
    assert (final / "adapter_model.safetensors").exists()
    log = [json.loads(line) for line in (tmp_path / "stage3" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert any(r["bce"] > 0 for r in log)  # QGround-100K's decoded masks were trained on
    assert "[co_instruct] dropped 2 of 4 samples as duplicates" in capsys.readouterr().out


# -- the Annotate tab's export as training data ------------------------------------------------------------------------
H, W = 48, 64


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def annotation(tmp_path):
    """Three regions drawn on a 64×48 photo; low light (drawn last) covers the lower left of blur."""
    from qground import sam as annot

    photo = tmp_path / "my photo.jpg"
    write_jpg(photo, 7)
    Image.open(photo).resize((W, H)).save(photo, quality=90)
    regions = (
        annot.Region("blur", (annot.Point(5, 5),), box(0, 24, 0, 32)),
        annot.Region("noise", (annot.Point(40, 30), annot.Point(2, 2, False)), box(24, 48, 32, 64)),
        annot.Region("low light", (annot.Point(8, 20),), box(16, 32, 0, 16)),
    )
    return annot.Annotation(image_path=str(photo), size=(H, W), key="k", regions=regions)


def painted() -> dict[str, np.ndarray]:
    """The classes of ``annotation``'s color mask: each region, minus what later regions cover."""
    return {
        "blur": box(0, 24, 0, 32) & ~box(16, 32, 0, 16),
        "low light": box(16, 32, 0, 16),
        "noise": box(24, 48, 32, 64),
    }


def test_the_annotate_export_is_a_released_layout_training_source(annotation, tmp_path):
    import zipfile

    from qground import sam as annot
    from training.data.dataset import load_mask

    path = annot.export_zip(annotation, tmp_path / "out.zip")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == [
            "qground_dataset/images/app/my_photo.jpg",
            "qground_dataset/masks/app/my_photo_app_my_photo.png",
            "qground_dataset/qground_train.json",
            "regions.json",
        ]
        zf.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped" / "qground_dataset"
    (record,) = json.loads((root / "qground_train.json").read_text())
    assert record["id"] == "my_photo_app" and record["image"] == "app/my_photo.jpg"
    (ann,) = record["ann_list"]
    assert ann["segmentation_mask"] == "app/my_photo_app_my_photo.png"
    description = "The image has blur in the upper left, low light in the left side and noise in the lower right."
    assert ann["quality_description"] == description
    source = DataSource(
        "mine", "qground100k", str(root / "qground_train.json"), str(root / "images"), 1.0, str(root / "masks")
    )
    (sample,) = read_source(source, 0.0).samples  # the default palette: the one the export paints with
    assert sample.id == "my_photo_app" and sample.mask_labels == ["blur", "low light", "noise"]
    for name, mask in zip(sample.mask_labels, sample.masks):
        np.testing.assert_array_equal(load_mask(mask), painted()[name], err_msg=name)
    assert ann["quality_description"] in [t.answer for t in sample.turns]


def test_jpeg_records_in_the_released_layout_read_back(annotation, tmp_path):
    from qground.records import RegionLabel, to_qground_record
    from training.data.dataset import load_mask
    from training.data.readers import read_qground100k

    labels = [RegionLabel(k + 1, r.label, None, r.label) for k, r in enumerate(annotation.regions)]
    masks = [r.mask for r in annotation.regions]
    record = to_qground_record(
        "p", "cam/p.jpg", masks, labels, tmp_path / "masks", annotator="gpt4v", mask_format="jpg"
    )
    assert record["id"] == "p_gpt4v" and record["ann_list"][0]["segmentation_mask"] == "cam/p_gpt4v_p.jpg"
    Image.open(annotation.image_path).save(tmp_path / "cam_p.jpg")
    (tmp_path / "images" / "cam").mkdir(parents=True)
    (tmp_path / "cam_p.jpg").rename(tmp_path / "images" / "cam" / "p.jpg")
    (tmp_path / "train.json").write_text(json.dumps([record]))
    (sample,), report = read_qground100k(tmp_path / "train.json", tmp_path / "images", tmp_path / "masks")
    assert report.bad == 0 and sample.mask_labels == ["blur", "low light", "noise"]
    for name, mask in zip(sample.mask_labels, sample.masks):
        np.testing.assert_array_equal(load_mask(mask), painted()[name], err_msg=name)


def test_released_exports_import_back_exactly_and_without_regions_json(annotation, tmp_path):
    import zipfile

    from qground import sam as annot

    sam = annot.SamAnnotator.tiny_random()
    path = annot.export_zip(annotation, tmp_path / "out.zip")
    back = annot.import_zip(sam, path, tmp_path / "w1")
    assert [(r.label, r.points) for r in back.regions] == [(r.label, r.points) for r in annotation.regions]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(back.regions, annotation.regions))  # overlap kept
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(path) as zf, zipfile.ZipFile(bare, "w") as out:
        for name in zf.namelist():
            if name != "regions.json":
                out.writestr(name, zf.read(name))
    back = annot.import_zip(sam, bare, tmp_path / "w2")  # one region per class of the color mask, no points
    assert {r.label: r.mask for r in back.regions}.keys() == painted().keys()
    for region in back.regions:
        assert region.points == () and np.array_equal(region.mask, painted()[region.label]), region.label


@pytest.mark.skipif(not QGROUND.is_dir(), reason="the released-layout QGround-100K fixture is not there yet")
def test_palette_and_fused_annotators_reach_the_qground_reader():
    """``palette`` and ``fuse_annotators`` pass from the config to ``read_qground100k``; other formats refuse them."""
    overrides = [
        f"data.0.json={QGROUND / 'qground_train.json'}",
        f"data.0.image_root={QGROUND / 'images'}",
        f"data.0.mask_root={QGROUND / 'masks'}",
        f"data.0.palette={RELEASED / 'palette.json'}",
    ]
    per_annotator = read_source(load_config("training/configs/stage3.yaml", overrides).data[0], 0.0)
    fused = read_source(
        load_config("training/configs/stage3.yaml", [*overrides, "data.0.fuse_annotators=true"]).data[0], 0.0
    )
    records = json.loads((QGROUND / "qground_train.json").read_text())
    assert len(per_annotator.samples) == sum(len(r["ann_list"]) for r in records) and len(fused.samples) == len(records)
    with pytest.raises(ConfigError, match="palette and fuse_annotators go with the qground100k format"):
        load_config("training/configs/stage3.yaml", ["data.1.palette=p.json"])
