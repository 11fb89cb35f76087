"""``python -m qground convert``: PixelLM-format checkpoints (random weights in the released layouts,
``pixellm_layout``) into our layout. Every key is placed or dropped with a reason, the full-size PixelLM-7B inventory
maps completely, bad sources fail in one line naming the file and the key, Q-Ground's undocumented φv is refused by
name, and a release named on the command line or in ``--model`` is converted once into the cache and served."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import pixellm_layout as layout
from llama_pieces import llama_like_tokenizer
from qground.__main__ import main
from qground.checkpoint import HEADS_NAME, resolve
from qground.convert import (
    REPORT_NAME,
    ConversionError,
    Hardcoded,
    check_shapes,
    convert,
    pixellm_position_table,
    plan,
    source_config,
    target_shapes,
)
from qground.service import load_engine

TINY_HARDCODED = Hardcoded(decoder_heads=layout.TINY.dec_heads, decoder_layers=(-2, -3))  # hidden states 3 and 2
TINY_ARGS = ["--decoder-heads", "2", "--decoder-layers=-2,-3"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The TINY PixelLM checkpoint as safetensors shards and as .bin shards, and its CLIP."""
    root = tmp_path_factory.mktemp("pixellm-sources")
    layout.write_pixellm(root / "safetensors", layout.TINY, fmt="safetensors")
    layout.write_pixellm(root / "bin", layout.TINY, fmt="bin")
    layout.write_clip(root / "clip", layout.TINY)
    return {"safetensors": root / "safetensors", "bin": root / "bin", "clip": root / "clip"}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_small_checkpoint_converts_with_every_key_accounted_for(sources, tmp_path, fmt):
    out = tmp_path / "converted"
    result = convert(
        "pixellm", sources[fmt], sources["clip"], out, allow_bin=fmt == "bin", hardcoded=TINY_HARDCODED, log=print
    )
    report = result.report
    assert report.complete and not report.unplaced and not report.missing and not report.wrong_shapes
    source_keys = set(layout.pixellm_shapes(layout.TINY)) | set(layout.clip_shapes(layout.TINY))
    assert set(report.consumed) | set(report.dropped) == source_keys
    assert not set(report.consumed) & set(report.dropped)
    assert all(report.dropped.values())  # every drop says why
    assert json.loads((out / REPORT_NAME).read_text())["consumed"] == report.consumed

    src = {**load_file(sources["safetensors"] / "model-00001-of-00002.safetensors")}
    src |= load_file(sources["safetensors"] / "model-00002-of-00002.safetensors")
    heads = load_file(out / HEADS_NAME)
    llava = load_file(out / "model.safetensors")
    torch.testing.assert_close(
        heads["pixel_decoder.prefix_tokens"],
        torch.cat([src["model.mask_decoder.iou_token.weight"], src["model.mask_decoder.mask_tokens.weight"]]),
    )
    rows = src["model.embed_tokens.weight"].shape[0]
    embed = llava["model.language_model.embed_tokens.weight"]
    assert torch.equal(embed[:rows], src["model.embed_tokens.weight"]) and embed.shape[0] % 64 == 0
    assert not llava["lm_head.weight"][rows:].any()
    assert torch.equal(heads["projector.linear_1.weight"], src["model.mm_projector.0.weight"])
    assert "model.multi_modal_projector.linear_1.weight" not in llava  # φv's 2·D hidden width: heads file only

    engine = load_engine(str(out))  # strict: every key of our model present, nothing left over
    config = engine.model.config
    assert config.decoder.style == "pixellm" and config.vision_padding_mask and config.llm_image_padding_mask
    assert config.llm.sampled_vocab == rows and config.image_wrap
    result = engine.ground(Image.new("RGB", (50, 30), (90, 60, 30)))
    assert result.token_ids and max(result.token_ids) < rows


def test_position_table_is_pixellms_quirk():
    w = torch.arange(10 * 2, dtype=torch.float32).view(10, 2)  # CLS + 3 × 3 patches
    table = pixellm_position_table(w, grid=4)
    grid = (
        torch.nn.functional.interpolate(
            w[:-1].T.reshape(1, 2, 3, 3), size=(4, 4), mode="bilinear", align_corners=False
        )[0]
        .flatten(1)
        .T
    )
    assert table.shape == (17, 2)
    assert torch.equal(table[0], grid[0])  # CLS ← the resized grid's cell 0 (CLIP's CLS row sat there)
    assert torch.equal(table[1:16], grid[1:16])  # patch p ← cell p + 1
    assert torch.equal(table[16], w[-1])  # the last patch keeps CLIP's last-patch row


def _seven_b_plan():
    """Our config and the plan for the full-size PixelLM-7B inventory (meta shapes: no memory)."""
    s = layout.SEVEN_B
    tokenizer = llama_like_tokenizer()
    tokenizer.add_tokens(list(layout.SEG_TOKENS))
    tokenizer.add_tokens([layout.IM_START, layout.IM_END], special_tokens=True)
    assert len(tokenizer) == s.vocab
    shapes = {k: (torch.Size(v), "pytorch_model-00001-of-00002.bin") for k, v in layout.pixellm_shapes(s).items()}
    clip = {k: (torch.Size(v), "clip/model.safetensors") for k, v in layout.clip_shapes(s).items()}
    seg_ids = tokenizer.convert_tokens_to_ids(list(layout.SEG_TOKENS))
    src = layout.pixellm_config(s, seg_ids, "bfloat16")
    config = source_config("pixellm", src, layout.clip_config(s, torch.float32), shapes, tokenizer, Hardcoded(), "7b")
    targets, report = plan(config, sorted(shapes), sorted(clip))
    check_shapes(targets, report, target_shapes(config), shapes | clip)
    return config, report


def test_full_size_pixellm_7b_inventory_maps_completely():
    config, report = _seven_b_plan()
    assert report.complete, (report.unplaced[:3], report.missing[:3], report.wrong_shapes[:3])
    assert len(report.consumed) + len(report.dropped) == len(layout.pixellm_shapes(layout.SEVEN_B)) + len(
        layout.clip_shapes(layout.SEVEN_B)
    )
    assert config.decoder.layers == (23, 14) and config.feature_layers == (23,) and config.decoder.num_heads == 8
    assert (config.decoder.input_hidden, config.decoder.input_dim, config.projector_hidden) == (8192, 4096, 8192)
    assert (config.llm.vocab_size, config.llm.sampled_vocab, config.llm.rms_norm_eps) == (32064, 32008, 1e-6)
    assert config.num_image_tokens == 256 and config.image_size == config.vision.native_image_size == 448
    assert config.token_ids.seg == tuple(range(32000, 32006))
    assert (config.token_ids.image_start, config.token_ids.image_end, config.token_ids.image) == (32006, 32007, 32008)


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["convert", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def _copy(sources, tmp_path, fmt: str = "safetensors") -> Path:
    return Path(shutil.copytree(sources[fmt], tmp_path / "src"))


def _shard_of(folder: Path, key: str) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / index["weight_map"][key]


def _edit_shard(folder: Path, key: str, edit) -> Path:
    shard = _shard_of(folder, key)
    state = load_file(shard)
    edit(state)
    save_file(state, shard, metadata={"format": "pt"})
    return shard


def test_missing_shard_is_one_line_naming_file_and_key(sources, tmp_path, capsys):
    src = _copy(sources, tmp_path)
    shard = _shard_of(src, "lm_head.weight")
    shard.unlink()
    code, err = _cli(capsys, "pixellm", str(src), "--clip", str(sources["clip"]), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.splitlines()) == 1
    assert "model.safetensors.index.json" in err and shard.name in err and "missing" in err
    assert "model." in err or "lm_head" in err  # a key the shard holds


def test_wrong_shape_is_one_line_naming_file_and_key(sources, tmp_path, capsys):
    src = _copy(sources, tmp_path)
    key = "model.mask_decoder.level_embed.weight"
    shard = _edit_shard(src, key, lambda state: state.__setitem__(key, torch.zeros(3, layout.TINY.dec_dim)))
    out = tmp_path / "o"
    code, err = _cli(capsys, "pixellm", str(src), "--clip", str(sources["clip"]), "--out", str(out), *TINY_ARGS)
    assert code == 2 and len(err.splitlines()) == 1
    assert shard.name in err and key in err and "pixel_decoder.level_embed" in err and "(2, 32)" in err
    assert not (out / "qground_config.json").exists()  # nothing but the report is written
    assert json.loads((out / REPORT_NAME).read_text())["wrong_shapes"]


def test_unknown_extra_module_is_one_line_naming_file_and_key(sources, tmp_path, capsys):
    src = _copy(sources, tmp_path)
    key = "model.extra_adapter.proj.weight"
    shard = _edit_shard(src, "lm_head.weight", lambda state: state.__setitem__(key, torch.zeros(4, 4)))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"][key] = shard.name
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    code, err = _cli(
        capsys, "pixellm", str(src), "--clip", str(sources["clip"]), "--out", str(tmp_path / "o"), *TINY_ARGS
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert shard.name in err and key in err and "cannot place" in err


def test_bin_needs_allow_bin(sources, tmp_path, capsys):
    out = tmp_path / "o"
    code, err = _cli(capsys, "pixellm", str(sources["bin"]), "--clip", str(sources["clip"]), "--out", str(out))
    assert code == 2 and len(err.splitlines()) == 1
    assert "pytorch_model-00001-of-00002.bin (holding " in err and "--allow-bin" in err
    code, _ = _cli(
        capsys,
        "pixellm",
        str(sources["bin"]),
        "--clip",
        str(sources["clip"]),
        "--out",
        str(out),
        "--allow-bin",
        *TINY_ARGS,
    )
    assert code == 0 and (out / "qground_config.json").exists()


def test_output_folder_with_other_files_is_refused(sources, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="not empty"):
        convert("pixellm", sources["safetensors"], sources["clip"], out, hardcoded=TINY_HARDCODED)
    assert (out / "notes.txt").read_text() == "keep me"


def test_qground_release_stops_at_its_undocumented_projector(sources, tmp_path, capsys):
    """Q-Ground's φv reads three CLIP layers by a module whose keys are not public (docs/pixellm.md): the converter
    maps everything else and names every key it cannot place."""
    src = _copy(sources, tmp_path)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"mm_vision_select_layer": [1, -3, -2]}))
    key = "model.mm_projector.queries"
    _edit_shard(src, "lm_head.weight", lambda state: state.__setitem__(key, torch.zeros(256, 64)))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"][key] = index["weight_map"]["lm_head.weight"]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "o"
    code, err = _cli(capsys, "qground", str(src), "--clip", str(sources["clip"]), "--out", str(out), *TINY_ARGS)
    assert code == 2 and len(err.splitlines()) == 1 and "φv" in err and "model.mm_projector" in err
    report = json.loads((out / REPORT_NAME).read_text())
    assert sorted(report["unplaced"]) == sorted(
        [key, *(k for k in layout.pixellm_shapes(layout.TINY) if k.startswith("model.mm_projector."))]
    )
    assert report["missing"] and all(
        k.startswith(("projector.", "model.multi_modal_projector.")) for k in report["missing"]
    )
    assert not report["wrong_shapes"]  # the rest (LLM, seg head, decoder, tower) maps
    assert not (out / "qground_config.json").exists()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub: ``snapshot_download`` serves folders written here (PixelLM-7B's layout: pickled shards under
    ``hf_model/``, PixelLM's hard-coded decoder: 8 heads, hidden states −2 and −11), and counts its calls."""
    s = dataclasses.replace(layout.TINY, vision_layers=11, dec_heads=8, proj_layer=10, dec_layers=(10, 1))
    repos = {
        "maverickrzw/PixelLM-7B": tmp_path / "hub" / "pixellm",
        "openai/clip-vit-large-patch14-336": tmp_path / "hub" / "clip",
    }
    layout.write_pixellm(repos["maverickrzw/PixelLM-7B"] / "hf_model", s, fmt="bin")
    layout.write_clip(repos["openai/clip-vit-large-patch14-336"], s)
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, tuple(allow_patterns or ())))
        return str(repos[repo_id])

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("QGROUND_CACHE", str(tmp_path / "cache"))
    return calls


def test_release_named_as_model_is_converted_once_and_served(hub, tmp_path):
    folder = resolve("maverickrzw/PixelLM-7B")
    assert folder == tmp_path / "cache" / "converted" / "maverickrzw--PixelLM-7B@main"
    assert [c[0] for c in hub] == [*["maverickrzw/PixelLM-7B"] * 2, "openai/clip-vit-large-patch14-336"]
    assert [any(p.endswith(".bin") for p in c[2]) for c in hub] == [False, True, False]  # its CLIP has safetensors
    card = (folder / "README.md").read_text()
    assert "maverickrzw/PixelLM-7B" in card and "apache-2.0" in card
    engine = load_engine("maverickrzw/PixelLM-7B")
    assert len(hub) == 3  # the second time it comes from the cache
    result = engine.ground(Image.new("RGB", (30, 50), (10, 120, 200)))
    assert result.token_ids


def test_pixellm_folder_given_as_model_says_how_to_convert(sources):
    from qground.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="python -m qground convert pixellm"):
        resolve(str(sources["safetensors"]))


def _bigram_machine(state: dict[str, torch.Tensor], chain: list[int], gain: float = 30.0) -> None:
    """Make a PixelLM LLM (in place) whose greedy answer is ``chain[1:]`` after ``chain[0]``: its layers add nothing
    to the residual stream (zero output projections), so the last state is the current token's normalized
    embedding, and ``lm_head`` row ``chain[k + 1]`` is ``gain`` × the embedding of ``chain[k]``."""
    for key in state:
        if key.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            state[key] = torch.zeros_like(state[key])
    embed = state["model.embed_tokens.weight"]
    for current, following in zip(chain, chain[1:]):
        state["lm_head.weight"][following] = gain * embed[current] / embed[current].norm()


def test_app_serves_a_converted_checkpoint_end_to_end(sources, tmp_path):
    """A converted checkpoint whose LLM is set to answer "noise [SEG0] … [SEG5]" is served by the app: /ground
    returns the answer, a noise mask at the photo's size and the zip, as for our own models."""
    import io
    import zipfile

    from gradio_client import Client, handle_file

    from conftest import served_app
    from qground.inference import GROUNDING_QUESTION
    from qground.prompts import Turn

    src = tmp_path / "src"
    tokenizer = layout.tiny_tokenizer()
    state = layout.write_pixellm(src, layout.TINY)
    first = convert("pixellm", src, sources["clip"], tmp_path / "probe", hardcoded=TINY_HARDCODED)
    probe = load_engine(str(first.folder))
    prompt = probe.processor([Image.new("RGB", (8, 8))], [Turn(GROUNDING_QUESTION)])["input_ids"].tolist()
    noise = tokenizer("noise", add_special_tokens=False).input_ids
    chain = [prompt[-1], *noise, *tokenizer.convert_tokens_to_ids(list(layout.SEG_TOKENS)), tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain)
    _bigram_machine(state, chain)
    for old in src.glob("model*.safetensors*"):
        old.unlink()
    layout.write_shards(src, state, "safetensors", 2)
    converted = convert("pixellm", src, sources["clip"], tmp_path / "served", hardcoded=TINY_HARDCODED)
    engine = load_engine(str(converted.folder))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (50, 30), (200, 180, 40)).save(photo)
    with served_app(engine, tmp_path / "gradio") as url:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        annotated, answer, table, archive = client.predict(handle_file(str(photo)), "", api_name="/ground")
    assert "noise" in answer.lower()
    assert [a["label"] for a in annotated["annotations"]] == ["noise"]
    assert table["data"][0][0] == "Noise"
    with zipfile.ZipFile(archive) as zf:
        assert "noise.png" in zf.namelist()
        assert Image.open(io.BytesIO(zf.read("noise.png"))).size == (50, 30)


def test_llama_tokenizer_keeps_the_legacy_reading_pixellm_had(sources, tmp_path):
    """PixelLM's transformers 4.31 read a LLaMA tokenizer without a ``legacy`` key as legacy; transformers 5 reads it
    as not legacy (and drops the key when saving): the converted folder states it."""
    from transformers import AutoTokenizer, LlamaTokenizer

    from qground.tokenizer import is_legacy

    LlamaTokenizer(vocab={"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}).save_pretrained(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    tokenizer.add_tokens(list(layout.SEG_TOKENS))
    tokenizer.add_tokens([layout.IM_START, layout.IM_END], special_tokens=True)
    assert not is_legacy(tokenizer)  # how transformers 5 reads the folder
    s = dataclasses.replace(layout.TINY, vocab=len(tokenizer))
    layout.write_pixellm(tmp_path / "src", s, tokenizer=tokenizer)
    assert "legacy" not in json.loads((tmp_path / "src" / "tokenizer_config.json").read_text())
    out = convert("pixellm", tmp_path / "src", sources["clip"], tmp_path / "out", hardcoded=TINY_HARDCODED).folder
    assert json.loads((out / "tokenizer_config.json").read_text())["legacy"] is True
    assert is_legacy(AutoTokenizer.from_pretrained(out))


def test_convert_command_reads_a_hub_release(hub, tmp_path, capsys):
    """SRC as a Hub repo id: the release's subfolder (hf_model/) and pickled shards, its CLIP, a model card naming
    the source, revision and licence."""
    out = tmp_path / "pixellm-7b"
    args = ["pixellm", "maverickrzw/PixelLM-7B", "--revision", "v1", "--out", str(out), "--allow-bin"]
    code, err = _cli(capsys, *args)
    assert code == 0, err
    assert [(c[0], c[1]) for c in hub] == [
        ("maverickrzw/PixelLM-7B", "v1"),
        ("maverickrzw/PixelLM-7B", "v1"),
        ("openai/clip-vit-large-patch14-336", None),
    ]
    card = (out / "README.md").read_text()
    assert "maverickrzw/PixelLM-7B" in card and "`v1`" in card and "apache-2.0" in card


def test_shards_are_read_one_at_a_time(sources, tmp_path, monkeypatch):
    """Conversion holds one source shard (and what a target still waits for), not the whole checkpoint: when a shard
    is read, the tensors of the shards before it are gone unless a target still needs them."""
    import gc
    import weakref

    from qground.convert import PREFIX_SOURCES, SourceFiles

    alive: list[tuple[str, weakref.ref]] = []
    seen: list[list[str]] = []
    read = SourceFiles.read

    def tracking(self, file):
        gc.collect()
        seen.append([key for key, ref in alive if ref() is not None])
        tensors = read(self, file)
        alive.extend((key, weakref.ref(t)) for key, t in tensors.items())
        return tensors

    monkeypatch.setattr(SourceFiles, "read", tracking)
    convert("pixellm", sources["safetensors"], sources["clip"], tmp_path / "o", hardcoded=TINY_HARDCODED)
    assert len(seen) == 3  # two source shards, then CLIP
    assert all(set(still) <= set(PREFIX_SOURCES) for still in seen), seen


def test_pickles_are_fetched_and_read_only_when_allowed(sources, hub, tmp_path, monkeypatch):
    """Without ``--allow-bin`` no ``.bin`` is downloaded or unpickled; with it, only where a repo has no safetensors,
    and only with ``torch.load(weights_only=True)``."""
    from qground.convert import fetch

    fetch("openai/clip-vit-large-patch14-336", None, allow_bin=True)  # has safetensors: no .bin fetched
    fetch("maverickrzw/PixelLM-7B", None, "hf_model")  # .bin only, not allowed
    assert not any(p.endswith(".bin") for _, _, patterns in hub for p in patterns)
    loads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or original(*a, **k))
    with pytest.raises(ConversionError, match="--allow-bin"):
        convert("pixellm", sources["bin"], sources["clip"], tmp_path / "refused", hardcoded=TINY_HARDCODED)
    assert loads == []
    convert("pixellm", sources["bin"], sources["clip"], tmp_path / "o", allow_bin=True, hardcoded=TINY_HARDCODED)
    assert loads and all(k.get("weights_only") is True for k in loads)
