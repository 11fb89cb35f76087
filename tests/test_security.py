"""Security properties, checked on the source and on the running app.

Source (parsed with ``ast``, so comments and docstrings do not count): nothing is unpickled (no pickle-family import,
every ``torch.load`` passes ``weights_only=True``), ``trust_remote_code`` is never switched on, Hub snapshots are
limited to safetensors + text files; base weights are read from safetensors only. Running app: uploads reach the
handlers inside Gradio's temp dir, which is swept (``qground.service.Scratch``); no file outside the allowed dirs can be
fetched; the ``HF_TOKEN`` value appears in no log, message or page; analytics are off unless asked for.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file
from safetensors.torch import load_file

from conftest import photo
from qground import sam as annot
from qground import service as svc
from qground.__main__ import main
from qground.builder import build_from_registry
from qground.checkpoint import FULL_WEIGHTS, CheckpointError, load_model, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "qground").rglob("*.py"), *(ROOT / "training").rglob("*.py"), ROOT / "app.py"])
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack")
FAKE_TOKEN = "hf_qgroundFAKEtokenDoNotLeak0123456789"
REPO = "someorg/qground-private"
CONVERTER = "qground/convert.py"  # the one module that may fetch pickled weights (released PixelLM checkpoints)


# -- the source --------------------------------------------------------------------------------------------------------
def aliases(tree: ast.Module) -> dict[str, str]:
    """Local name → what it was imported as (``import torch as t`` → t: torch, ``from torch import load`` → load:
    torch.load)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0] for a in node.names
            }
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
    return names


def qualified(func: ast.expr, names: dict[str, str]) -> str:
    """``torch.load`` for ``t.load(...)`` after ``import torch as t``; "" for calls on computed values."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ""
    return ".".join([names.get(func.id, func.id), *reversed(parts)])


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_constant(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def violations(source: str, where: str) -> Iterator[str]:
    """Every unsafe loading pattern in ``source``, as "where:line: what"."""
    tree = ast.parse(source)
    names = aliases(tree)
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            yield from (f"{line}: imports {m}" for m in modules if m.split(".")[0] in PICKLERS)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and not is_constant(value, False):
                    yield f"{line}: trust_remote_code is not False"
        elif isinstance(node, ast.Call):
            name = qualified(node.func, names)
            if name in ("torch.load", "torch.serialization.load") and not is_constant(
                keyword(node, "weights_only"), True
            ):
                yield f"{line}: {name} without weights_only=True"
            allow_pickle = keyword(node, "allow_pickle")
            if name == "numpy.load" and allow_pickle is not None and not is_constant(allow_pickle, False):
                yield f"{line}: numpy.load with allow_pickle"
            remote = keyword(node, "trust_remote_code")
            if remote is not None and not is_constant(remote, False):
                yield f"{line}: trust_remote_code is not False"
            if name.endswith("snapshot_download"):
                yield from (f"{line}: {p}" for p in snapshot_problems(node, pickles_allowed=where == CONVERTER))


def snapshot_problems(call: ast.Call, pickles_allowed: bool = False) -> Iterator[str]:
    """A snapshot must list what it fetches: literal patterns, none of them everything, and none of them pickled
    weights unless ``pickles_allowed`` (the converter of released checkpoints, behind ``--allow-bin``:
    ``tests/test_convert.py::test_pickles_are_fetched_and_read_only_when_allowed``)."""
    patterns = keyword(call, "allow_patterns")
    if not isinstance(patterns, ast.List) or not all(isinstance(p, ast.Constant) for p in patterns.elts):
        yield "snapshot_download without a literal allow_patterns list"
        return
    for pattern in (p.value for p in patterns.elts):
        if pattern in ("*", "*.*") or (pattern.endswith(PICKLED_WEIGHTS) and not pickles_allowed):
            yield f"snapshot_download allows {pattern!r}"


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from joblib import load",
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "from torch import load as read\nread(path, weights_only=flag)",
        "import torch as t\nt.serialization.load(path)",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
        "AutoModel.from_pretrained(name, trust_remote_code=True)",
        "AutoTokenizer.from_pretrained(name, trust_remote_code=remote)",
        "kwargs = {'trust_remote_code': True}",
        "from huggingface_hub import snapshot_download\nsnapshot_download(repo)",
        "from huggingface_hub import snapshot_download\nsnapshot_download(repo, allow_patterns=['*.json', '*.bin'])",
        "import huggingface_hub as hub\nhub.snapshot_download(repo, allow_patterns=['*'])",
        "from huggingface_hub import snapshot_download\nsnapshot_download(repo, allow_patterns=patterns)",
    ],
)
def test_the_scanner_catches_unsafe_loading(snippet):
    assert list(violations(snippet, "snippet")), snippet


def test_the_scanner_accepts_safe_loading():
    safe = (
        "import torch\nimport numpy as np\nfrom huggingface_hub import snapshot_download\n"
        "torch.load(path, map_location='cpu', weights_only=True)\nnp.load(path)\n"
        "AutoModel.from_pretrained(name, trust_remote_code=False)\n"
        "snapshot_download(repo, allow_patterns=['*.json', '*.safetensors'])\n"
        "# torch.load(path) in a comment\ndoc = 'import pickle; torch.load(x)'\n"
    )
    assert list(violations(safe, "safe")) == []


def called(source: str) -> list[str]:
    """The qualified name of every call in ``source``."""
    tree = ast.parse(source)
    names = aliases(tree)
    return [qualified(node.func, names) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def test_no_unsafe_loading_in_qground_training_and_the_app():
    sources = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in SOURCES}
    assert [v for where, source in sources.items() for v in violations(source, where)] == []
    calls = [name for source in sources.values() for name in called(source)]
    assert "torch.load" in calls and "huggingface_hub.snapshot_download" in calls  # the SAM reader, the Hub download


def test_base_weights_are_read_from_safetensors_only(tmp_path, monkeypatch):
    """A checkpoint whose base LLaVA folder holds only a pickled ``pytorch_model.bin`` is refused, unread."""
    model, tokenizer = build_from_registry("qground-tiny")
    base = tmp_path / "base"
    model.llava.save_pretrained(base)
    torch.save(load_file(base / FULL_WEIGHTS), base / "pytorch_model.bin")
    (base / FULL_WEIGHTS).unlink()
    model.config = dataclasses.replace(model.config, base_model_id=str(base))
    folder = save_checkpoint(model, tokenizer, tmp_path / "heads-only", include_base=False)
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: unpickled.append(args))
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert f"cannot load the base model {base}" in str(info.value) and FULL_WEIGHTS in str(info.value)
    assert unpickled == []


# -- the running app ---------------------------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_hub(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """Hub snapshot downloads go to a loopback port nothing listens on, with the fake HF_TOKEN set."""
    mp.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    mp.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    mp.setenv("HF_TOKEN", FAKE_TOKEN)


@dataclass
class Served:
    url: str
    demo: object
    temp: Path
    handed: list[str]  # paths the handlers received
    analytics: list[str]  # analytics calls made
    analytics_env: str | None  # GRADIO_ANALYTICS_ENABLED right after importing the app
    logs: io.StringIO
    notice: str


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """The app as ``python app.py`` would serve it when the requested Hub model cannot be fetched: imported afresh
    without GRADIO_ANALYTICS_ENABLED, with HF_TOKEN set, every log record captured at DEBUG."""
    temp = tmp_path_factory.mktemp("gradio")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    root = logging.getLogger()
    level = root.level
    with pytest.MonkeyPatch.context() as mp:
        unreachable_hub(mp, tmp_path_factory.mktemp("hub-cache"))
        mp.setenv("GRADIO_TEMP_DIR", str(temp))
        mp.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
        analytics: list[str] = []
        mp.setattr("gradio.analytics.version_check", lambda: analytics.append("version_check"))
        mp.setattr("gradio.analytics.launched_analytics", lambda *args: analytics.append("launched"))
        handed: list[str] = []
        load_photo = svc.load_photo

        def recording_load_photo(path, what="photo"):
            handed.append(path)
            return load_photo(path, what)

        compare_photos = svc.compare_photos

        def recording_compare_photos(paths):  # a comparison hands the engine its slots' paths
            handed.extend(path for path in paths if path)
            return compare_photos(paths)

        mp.setattr(svc, "load_photo", recording_load_photo)
        mp.setattr(svc, "compare_photos", recording_compare_photos)
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            app = importlib.reload(importlib.import_module("qground.app"))
            analytics_env = os.environ.get("GRADIO_ANALYTICS_ENABLED")
            engine, model = svc.load_engine_from_env(REPO, None, "none", env={})
            demo = app.build_demo(engine, served=model)
            _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
            try:
                yield Served(url, demo, temp, handed, analytics, analytics_env, logs, model.notice)
            finally:
                demo.close()
        finally:
            root.removeHandler(handler)
            root.setLevel(level)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory) -> Client:
    return Client(served.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("upload") / "street.png"
    photo(24, 40, 0).save(path)
    return str(path)


def test_uploads_reach_the_handlers_inside_gradios_temp_dir_which_is_cleaned(served, client, upload):
    client.predict(handle_file(upload), "Is it sharp?", api_name="/describe")
    client.predict([handle_file(upload)] * 2, "Which is sharper?", api_name="/compare")
    assert len(served.handed) == 3
    assert all(Path(p).resolve().is_relative_to(served.temp.resolve()) for p in served.handed), served.handed
    # the app sweeps that folder itself (Gradio's cleanup stops under load): tests/test_hardening.py


def test_files_outside_the_allowed_dirs_cannot_be_fetched(served, client, upload):
    client.predict(handle_file(upload), "", api_name="/describe")
    inside = served.handed[-1]
    assert httpx.get(f"{served.url}gradio_api/file={inside}").status_code == 200  # the route works for uploads
    temp = served.temp.resolve()
    for target in (
        "/etc/passwd",
        f"{temp}/../../../../../etc/passwd",
        f"{temp}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        str(ROOT / "app.py"),
        str(Path(inside).parent / ".." / ".." / ".." / "etc" / "passwd"),
    ):
        response = httpx.get(f"{served.url}gradio_api/file={target}")
        assert response.status_code in (403, 404) and "root:" not in response.text, (target, response.status_code)


def test_the_hf_token_never_shows(served, client, upload, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    unreachable_hub(monkeypatch, tmp_path / "hub-cache")
    assert served.notice.startswith(f"{REPO!r} could not be loaded ({REPO}@main is not in the local cache")
    photo(8, 8, 0).save(tmp_path / "x.png")
    assert main(["ground", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--model", REPO]) == 2
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    sam, sam_message = annot.SamAnnotator.from_env({annot.SAM_ENV: "someorg/sam-weights:sam_vit_b.pth"})
    assert sam is None and "is not cached and the Hub cannot be reached" in sam_message
    printed = capsys.readouterr()
    page = httpx.get(served.url).text + httpx.get(f"{served.url}config").text
    assert f"cannot load the model {REPO!r}" in printed.err and "could not be loaded" in page  # what is checked
    for text in (served.logs.getvalue(), caplog.text, printed.out, printed.err, sam_message, page):
        assert FAKE_TOKEN not in text


def test_analytics_are_off_unless_asked_for(served):
    assert served.analytics_env == "False" and served.demo.analytics_enabled is False
    assert served.analytics == []
