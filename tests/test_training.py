"""Stage configs, trainable parameters, the three-stage DeepSpeed ZeRO-2 schedule on CPU, exact resume."""

import json
from pathlib import Path

import pytest
import torch

from qground.builder import build_from_registry
from qground.checkpoint import load_model
from qground.config import ConfigError
from qground.inference import QGroundEngine
from qground.processor import QGroundProcessor
from training.config import load_config
from training.stages import set_trainable
from training.train import train

CONFIGS = sorted(Path("training/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.deepspeed_config(100)["zero_optimization"]["stage"] == 2


def test_7b_configs_carry_the_paper_numbers():
    s1, s2, s3 = (load_config(f"training/configs/stage{i}.yaml") for i in (1, 2, 3))
    assert s1.trainable == ["projector"] and s1.model == "qground-7b"
    assert (s1.optim.lr, s1.micro_batch_size, s1.grad_accum) == (5e-4, 2, 10)
    for s in (s2, s3):
        assert s.trainable == ["lora", "token_rows", "projector", "seg_head", "pixel_decoder"]
        assert (s.optim.lr, s.micro_batch_size, s.grad_accum) == (3e-4, 4, 10)
        assert (s.lora.r, s.lora.alpha) == (64, 16)
        assert (s.epochs, s.steps_per_epoch) == (20, 500)
    assert s2.model == s1.output_dir + "/final" and s3.model == s2.output_dir + "/final"
    assert any(d.format == "qground100k" for d in s3.data)
    for s in (s1, s2, s3):
        assert (s.optim.weight_decay, s.optim.betas, s.optim.warmup_steps) == (0.0, (0.9, 0.95), 100)
        assert s.bf16 and s.zero_stage == 2
        ds = s.deepspeed_config(1000)
        assert ds["scheduler"]["type"] == "WarmupCosineLR" and ds["bf16"]["enabled"]
        assert ds["optimizer"]["type"] == "AdamW"


def test_overrides_and_bad_configs(tmp_path):
    cfg = load_config("training/configs/stage2.yaml", ["optim.lr=1e-4", "output_dir=/x", "data.0.weight=2"])
    assert (cfg.optim.lr, cfg.output_dir, cfg.data[0].weight) == (1e-4, "/x", 2)
    with pytest.raises(ConfigError, match="key=value"):
        load_config("training/configs/stage2.yaml", ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown field"):
        load_config("training/configs/stage2.yaml", ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="trainable groups"):
        load_config("training/configs/stage2.yaml", ["trainable=[vision]"])


def _names(stage: str) -> set[str]:
    model, _ = build_from_registry("qground-tiny")
    cfg = load_config(f"training/configs/{stage}.yaml")
    return set(set_trainable(model, cfg.trainable, cfg.lora))


def test_trainable_parameters_per_stage():
    s1 = _names("tiny_stage1")
    assert s1 == {
        "llava.model.multi_modal_projector.linear_1.weight",
        "llava.model.multi_modal_projector.linear_1.bias",
        "llava.model.multi_modal_projector.linear_2.weight",
        "llava.model.multi_modal_projector.linear_2.bias",
    }
    s2 = _names("tiny_stage2")
    lora = {n for n in s2 if "lora_" in n}
    assert len(lora) == 2 * 4 * 2  # 2 layers × q/k/v/o × A/B
    assert all(".self_attn." in n and n.startswith("llava.model.language_model.layers.") for n in lora)
    assert {n for n in s2 if "trainable_tokens_delta" in n} == {
        "llava.model.language_model.embed_tokens.token_adapter.trainable_tokens_delta.default",
        "llava.lm_head.token_adapter.trainable_tokens_delta.default",
    }
    assert s1 < s2
    assert {n.split(".")[0] for n in s2} == {"llava", "seg_head", "pixel_decoder"}
    assert not any("vision_tower" in n or "base_layer" in n for n in s2)
    assert "seg_head.fusion" in s2


@pytest.mark.slow
def test_three_stages_under_deepspeed_then_engine(tmp_path):
    prev = None
    for i in (1, 2, 3):
        overrides = [f"output_dir={tmp_path}/s{i}"] + ([f"model={prev}"] if prev else [])
        prev = train(load_config(f"training/configs/tiny_stage{i}.yaml", overrides))
        log = [json.loads(line) for line in (tmp_path / f"s{i}" / "loss.jsonl").read_text().splitlines()]
        assert log and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
        assert (tmp_path / f"s{i}" / "loss.png").stat().st_size > 1000
    s1 = {p.name for p in (tmp_path / "s1" / "final").iterdir()}
    s3 = {p.name for p in (tmp_path / "s3" / "final").iterdir()}
    assert "model.safetensors" in s1 and "adapter_model.safetensors" in s3 and "model.safetensors" not in s3
    model, tokenizer = load_model(prev)
    assert model.config.base_model_id == str((tmp_path / "s1" / "final").resolve())
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config))
    result = engine.ground("tests/fixtures/qground100k/images/qg_0001.png")
    assert result.image_size is not None and result.token_ids


@pytest.mark.slow
def test_resume_after_kill_matches_straight_run(tmp_path):
    first = train(load_config("training/configs/tiny_stage1.yaml", [f"output_dir={tmp_path}/s1"]))
    common = [f"model={first}", "save_every=2", "steps_per_epoch=4"]
    train(load_config("training/configs/tiny_stage3.yaml", [*common, f"output_dir={tmp_path}/straight"]))
    killed = load_config("training/configs/tiny_stage3.yaml", [*common, f"output_dir={tmp_path}/resumed"])
    train(killed, stop_after=3)  # dies after step 3; the last complete state is step 2
    assert not (tmp_path / "resumed" / "final").exists()
    train(killed)
    straight = [json.loads(x) for x in (tmp_path / "straight" / "loss.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "resumed" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)


def test_push_writes_card_and_uploads(tmp_path, monkeypatch, trained_tiny):
    from qground.checkpoint import save_checkpoint
    from qground.lexicon import Lexicon
    from training import push

    run = tmp_path / "run"
    folder = save_checkpoint(trained_tiny.model, trained_tiny.tokenizer, run / "final")
    Lexicon(frozenset({"dark"}), {"murky": "dark"}, source="WordNet 3.0").save(folder)
    (run / "train_config.yaml").write_text(Path("training/configs/stage3.yaml").read_text())
    (run / "loss.jsonl").write_text(json.dumps({"step": 7, "loss": 0.25}) + "\n")
    (run / "metrics.json").write_text(json.dumps({"mIoU": 0.61}))
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private, exist_ok)

        def create_branch(self, repo_id, branch, exist_ok):
            calls["branch"] = branch

        def upload_folder(self, folder_path, repo_id, revision, commit_message):
            calls["upload"] = (folder_path, repo_id, revision)
            return "https://hub/commit/1"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert push.main(["--folder", str(folder), "--repo-id", "org/qground-test", "--revision", "v1"]) == 0
    assert calls["create"] == ("org/qground-test", False, True) and calls["branch"] == "v1"
    assert calls["upload"] == (str(folder), "org/qground-test", "v1")
    card = (folder / "README.md").read_text()
    for needle in ("stage3", "lr 0.0003", "qground100k", "0.2500 after 7 steps", "| mIoU | 0.61 |", "org/qground-test"):
        assert needle in card, needle
    assert "| question words | 1 word it never trained on read as trained ones (`lexicon.json`: WordNet 3.0) |" in card
    model, _ = load_model(folder)  # the card does not disturb loading
    assert model.config == trained_tiny.model.config


def test_preprocessed_images_are_shared_across_stages_until_the_file_changes(tiny, tmp_path):
    """Processors with ``cache_images`` (one per training stage) share preprocessed photos; rewriting the file, or
    other image settings, preprocess it anew; inference processors (no cache) never read the cache."""
    import os

    import numpy as np
    from PIL import Image

    model, tokenizer, _ = tiny
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(path)
    first, second = (QGroundProcessor(tokenizer, model.config, cache_images=8) for _ in range(2))
    a, _ = first.preprocess_image(path)
    assert second.preprocess_image(path)[0] is a  # the second stage reads the first one's result
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(0, 1))  # a new modification time
    b, _ = second.preprocess_image(path)
    assert b is not a and b.mean() > a.mean()
    assert QGroundProcessor(tokenizer, model.config).preprocess_image(path)[0] is not b
    # a calibration's sweeps of the refinement radius ask for the photo too: an entry of its own
    with_photo, meta = second.preprocess_image(path, keep_photo=True)
    assert with_photo is not b and meta.photo is not None
    assert second.preprocess_image(path, keep_photo=True)[1] is meta
    assert second.preprocess_image(path)[1].photo is None


def test_a_photo_asked_for_while_it_is_preprocessed_is_waited_for(tiny, tmp_path, monkeypatch):
    """Threads asking a caching processor for the same photo at once share one preprocessing; a failure is not kept
    (the next request reads the file again and gets its own answer)."""
    import threading
    import time
    from collections import OrderedDict

    import numpy as np
    from PIL import Image

    import qground.processor as processor_module

    model, tokenizer, _ = tiny
    monkeypatch.setattr(processor_module, "_IMAGE_CACHE", OrderedDict())
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(path)
    processor = QGroundProcessor(tokenizer, model.config, cache_images=8)
    calls, real = [], processor._preprocess

    def slow(*args, **kwargs):
        calls.append(args[0])
        time.sleep(0.3)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        return real(*args, **kwargs)

    monkeypatch.setattr(processor, "_preprocess", slow)
    with pytest.raises(OSError, match="disk hiccup"):
        processor.preprocess_image(path)
    assert not processor_module._IMAGE_CACHE
    got = []
    threads = [threading.Thread(target=lambda: got.append(processor.preprocess_image(path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2 and len(got) == 3 and all(g[0] is got[0][0] for g in got)
