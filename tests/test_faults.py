"""Faults outside the code: an unreachable Hub, a missing revision, damaged or too-new checkpoints, a training run
killed while saving, and a disk that fills up during an export.

Each checkpoint fault is a ``CheckpointError`` naming the repo or file and what to do, and the app's env loader serves
the embedded default instead, saying why. Training resumes from the last complete state. Exports are atomic and a full
disk is reported as such, with nothing half-written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx2
import numpy as np
import pytest
from huggingface_hub.errors import RevisionNotFoundError
from PIL import Image

import qground.checkpoint
from qground import builder
from qground import sam as annot
from qground import service as svc
from qground.app import _friendly
from qground.builder import build_from_registry
from qground.checkpoint import FULL_WEIGHTS, HEADS_NAME, CheckpointError, load_model, save_checkpoint
from qground.config import CONFIG_NAME, FORMAT_VERSION, QGroundConfig
from qground.inference import GroundingResult
from training.config import load_config
from training.train import LATEST, STATE_DIR, train

REPO = "someorg/qground-private"


class Killed(BaseException):
    """What a kill looks like to the code it interrupts: nothing catches it on the way out."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny model in our checkpoint layout."""
    model, tokenizer = build_from_registry("qground-tiny")
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raising(error: BaseException):
    """A stand-in for a function that fails with ``error``."""

    def fail(*args, **kwargs):
        raise error

    return fail


# -- each fault: how to cause it, and what the error must say ---------------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """What to load (``source`` at ``revision``), the start of the error message (``says``: what is wrong, naming the
    repo or file) and the instruction it must contain (``todo``)."""

    source: str
    revision: str | None
    says: str
    todo: str


GET_IT_AGAIN = "or point QGROUND_MODEL at a local checkpoint folder"


def hub_offline(monkeypatch, tmp_path, saved) -> Fault:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return Fault(REPO, None, f"{REPO}@main is not in the local cache and the Hub cannot be reached", GET_IT_AGAIN)


def hub_unreachable(monkeypatch, tmp_path, saved) -> Fault:
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return Fault(REPO, None, f"{REPO}@main is not in the local cache and the Hub cannot be reached", GET_IT_AGAIN)


def network_down(monkeypatch, tmp_path, saved) -> Fault:
    error = httpx2.ConnectError("[Errno 101] Network is unreachable")  # raised as is by huggingface_hub mid-download
    monkeypatch.setattr("huggingface_hub.snapshot_download", raising(error))
    says = f"{REPO}@v2: the download failed (ConnectError: [Errno 101] Network is unreachable). Check the network"
    return Fault(REPO, "v2", says, GET_IT_AGAIN)


def connection_reset(monkeypatch, tmp_path, saved) -> Fault:
    monkeypatch.setattr("huggingface_hub.snapshot_download", raising(httpx2.ReadError("Connection reset by peer")))
    return Fault(REPO, None, f"{REPO}@main: the download failed (ReadError: Connection reset by peer)", GET_IT_AGAIN)


def proxy_refused(monkeypatch, tmp_path, saved) -> Fault:
    monkeypatch.setattr("huggingface_hub.snapshot_download", raising(httpx2.ProxyError("407 Proxy Authentication")))
    return Fault(REPO, None, f"{REPO}@main: the download failed (ProxyError: 407 Proxy Authentication)", "proxy")


def missing_revision(monkeypatch, tmp_path, saved) -> Fault:
    url = f"https://huggingface.co/api/models/{REPO}/revision/v9"
    error = RevisionNotFoundError(
        "404 Revision Not Found", response=httpx2.Response(404, request=httpx2.Request("GET", url))
    )
    monkeypatch.setattr("huggingface_hub.snapshot_download", raising(error))
    return Fault(REPO, "v9", f"{REPO}@v9: revision 'v9' does not exist", "check QGROUND_REVISION")


def not_our_repo(monkeypatch, tmp_path, saved) -> Fault:
    plain = tmp_path / "snapshot"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *args, **kwargs: str(plain))
    return Fault(REPO, None, f"{plain} is not a qground checkpoint", f"it has no {CONFIG_NAME}")


def damaged_copy(tmp_path: Path, saved: Path) -> Path:
    folder = tmp_path / "damaged"
    shutil.copytree(saved, folder)
    return folder


def half_downloaded_weights(monkeypatch, tmp_path, saved) -> Fault:
    folder = damaged_copy(tmp_path, saved)
    weights = folder / FULL_WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    says = f"{weights} is damaged (Error while deserializing header: incomplete metadata"
    return Fault(str(folder), None, says, "delete it and download or save it again")


def garbage_heads(monkeypatch, tmp_path, saved) -> Fault:
    folder = damaged_copy(tmp_path, saved)
    (folder / HEADS_NAME).write_bytes(os.urandom(64))
    return Fault(str(folder), None, f"{folder / HEADS_NAME} is damaged", "delete the checkpoint and save or download")


def binary_config(monkeypatch, tmp_path, saved) -> Fault:
    folder = damaged_copy(tmp_path, saved)
    (folder / CONFIG_NAME).write_bytes(b"\x89\xff\xfe binary junk \x00")
    return Fault(str(folder), None, f"{folder / CONFIG_NAME} is damaged (not text)", "delete the checkpoint")


def newer_format(monkeypatch, tmp_path, saved) -> Fault:
    folder = damaged_copy(tmp_path, saved)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["format_version"] = FORMAT_VERSION + 1
    config["llm"]["sliding_window"] = 512  # a field this qground does not know yet
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    says = f"{folder / CONFIG_NAME} was written by a newer qground (format {FORMAT_VERSION + 1} > {FORMAT_VERSION})"
    return Fault(str(folder), None, says, "upgrade qground (pip install -U -r requirements.txt) to load it")


FAULTS = [
    hub_offline,
    hub_unreachable,
    network_down,
    connection_reset,
    proxy_refused,
    missing_revision,
    not_our_repo,
    half_downloaded_weights,
    garbage_heads,
    binary_config,
    newer_format,
]


@pytest.mark.parametrize("make", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_checkpoint_faults_are_clear_errors(make, monkeypatch, tmp_path, saved):
    fault = make(monkeypatch, tmp_path, saved)
    with pytest.raises(CheckpointError) as info:
        load_model(fault.source, revision=fault.revision)
    message = str(info.value)
    assert message.startswith(fault.says) and fault.todo in message, message


@pytest.mark.parametrize("make", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_env_loader_serves_the_embedded_default_and_says_why(make, monkeypatch, tmp_path, saved):
    fault = make(monkeypatch, tmp_path, saved)
    nano = builder.REGISTRY[svc.DEFAULT_MODEL]
    monkeypatch.setitem(builder.REGISTRY, svc.DEFAULT_MODEL, builder.RegistryEntry(nano.config, saved, "embedded"))
    env = {"QGROUND_MODEL": fault.source, "QGROUND_REVISION": fault.revision or "", "QGROUND_QUANT": "none"}
    engine, served = svc.load_engine_from_env(env=env)
    assert (served.name, served.revision, served.random) == (svc.DEFAULT_MODEL, None, False)
    assert engine.name == svc.DEFAULT_MODEL and engine.config == QGroundConfig.load(saved)
    assert (
        served.notice.startswith(f"{fault.source!r} could not be loaded ({fault.says}") and fault.todo in served.notice
    )
    assert f"Serving {svc.DEFAULT_MODEL} instead. Set QGROUND_MODEL" in served.notice
    assert served.notice in served.footer()


def test_sam_weights_behind_an_unreachable_hub_say_so(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    spec = "someorg/sam-weights:sam_vit_b.pth"
    sam, message = annot.SamAnnotator.from_env({annot.SAM_ENV: spec})
    assert sam is None and message == (
        f"QGROUND_SAM={spec!r} could not be loaded: {spec} is not cached and the Hub cannot be reached: "
        "download it once, or use a path"
    )


# -- a training run killed while saving --------------------------------------------------------------------------------
def die_in_our_save(monkeypatch, step: int) -> None:
    """``qground.checkpoint.save_file`` dies while writing the heads of the periodic checkpoint of ``step`` (its LLaVA
    weights, config and tokenizer are already in the temporary folder)."""
    real = qground.checkpoint.save_file

    def save_file(tensors, path, *args, **kwargs):
        if Path(path).parent.name.startswith(f".checkpoint-{step:06d}."):
            raise Killed("killed while writing our checkpoint")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr("qground.checkpoint.save_file", save_file)


def die_in_deepspeed_save(monkeypatch, step: int) -> None:
    """DeepSpeed's ``engine.save_checkpoint`` dies after writing part of the state of ``step``."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    real = DeepSpeedEngine.save_checkpoint

    def save_checkpoint(self, save_dir, tag=None, **kwargs):
        if tag == f"step{step:06d}":
            (Path(save_dir) / tag).mkdir(parents=True)
            (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"half of a state")
            raise Killed("killed while DeepSpeed was saving")
        return real(self, save_dir, tag=tag, **kwargs)

    monkeypatch.setattr(DeepSpeedEngine, "save_checkpoint", save_checkpoint)


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "loss.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("die", [die_in_our_save, die_in_deepspeed_save], ids=["ours", "deepspeed"])
def test_training_killed_mid_save_resumes_from_the_last_complete_state(die, monkeypatch, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        "training/configs/tiny_stage1.yaml", [f"output_dir={out}", "save_every=2", "steps_per_epoch=6"]
    )  # saves after steps 2 and 4
    with monkeypatch.context() as mp:
        die(mp, 4)
        with pytest.raises(Killed):
            train(cfg)
    before = losses(out)
    assert sorted(before) == [1, 2, 3, 4] and not (out / "final").exists()
    assert json.loads((out / STATE_DIR / LATEST).read_text())["step"] == 2
    assert sorted(p.name for p in out.glob("*checkpoint-*")) == ["checkpoint-000002"]  # no partial or temporary one
    final = train(cfg)
    after = losses(out)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    assert all(abs(after[s] - before[s]) < 1e-6 for s in (1, 2, 3, 4)), (before, after)  # 3, 4 replayed exactly
    load_model(final)


# -- exports: atomic, and a full disk says so --------------------------------------------------------------------------
@pytest.fixture
def annotation(tmp_path) -> annot.Annotation:
    """A photo with one labelled region (no SAM needed to export it)."""
    path = tmp_path / "street.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(path)
    mask = np.zeros((20, 30), bool)
    mask[2:9, 4:20] = True
    region = annot.Region("blur", (annot.Point(5, 5),), mask)
    return annot.Annotation(str(path), (20, 30), "key", regions=(region,))


def masks_result() -> GroundingResult:
    mask = np.zeros((20, 30), bool)
    mask[:10] = True
    return GroundingResult("noise", "noise", {"noise": mask}, {"noise": 0.9}, (20, 30), {}, [])


EXPORTS = {
    "annotation": lambda ann, path: annot.export_zip(ann, path),
    "masks": lambda ann, path: svc.masks_zip(masks_result(), path, "street.png", "tiny"),
}


def failing_writestr(monkeypatch, error: BaseException) -> None:
    """From the second member on, writing to any zip fails with ``error`` (the first is already in the file)."""
    real = zipfile.ZipFile.writestr
    calls = []

    def writestr(self, name, data, *args, **kwargs):
        calls.append(name)
        if len(calls) >= 2:
            raise error
        return real(self, name, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)


@pytest.mark.parametrize("export", EXPORTS.values(), ids=EXPORTS.keys())
def test_an_export_that_dies_mid_write_leaves_no_partial_zip(export, annotation, monkeypatch, tmp_path):
    folder = tmp_path / "exports"
    failing_writestr(monkeypatch, Killed("killed mid-write"))
    with pytest.raises(Killed):
        export(annotation, folder / "result.zip")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("export", EXPORTS.values(), ids=EXPORTS.keys())
@pytest.mark.parametrize("where", ["writing", "creating"])
def test_a_full_disk_on_export_says_so_and_writes_nothing(export, where, annotation, monkeypatch, tmp_path):
    folder = tmp_path / "exports"
    previous = export(annotation, folder / "result.zip").read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "writing":
        failing_writestr(monkeypatch, full)
    else:
        monkeypatch.setattr("tempfile.mkstemp", raising(full))
    says = "the disk is full: result.zip could not be saved (nothing was written); free some space and try again"
    with pytest.raises(annot.AnnotationError) as info:
        export(annotation, folder / "result.zip")
    assert str(info.value) == says
    assert os.listdir(folder) == ["result.zip"] and (folder / "result.zip").read_bytes() == previous
    with pytest.raises(gr.Error) as shown:  # the app's handlers show it as a toast
        _friendly(export)(annotation, folder / "result.zip")
    assert shown.value.message == says


def test_other_write_errors_are_not_reported_as_a_full_disk(annotation, monkeypatch, tmp_path):
    failing_writestr(monkeypatch, OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):
        annot.export_zip(annotation, tmp_path / "result.zip")
    assert os.listdir(tmp_path) == ["street.png"]
