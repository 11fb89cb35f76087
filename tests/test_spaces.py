"""The Hugging Face Space: README.md's front matter is a valid Spaces configuration that preloads nothing, the README
documents the GPU variant, and ``app.py`` starts with the environment a Space sets (listening on 0.0.0.0, no share
link) while serving the offline ``qground-nano``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The keys of Hugging Face's Spaces configuration reference (https://huggingface.co/docs/hub/spaces-config-reference,
# docs/hub/spaces-config-reference.md in huggingface/hub-docs), plus `license`, which every Hub repo card accepts.
SPACES_KEYS = {
    "title",
    "emoji",
    "colorFrom",
    "colorTo",
    "sdk",
    "sdk_version",
    "python_version",
    "app_file",
    "app_build_command",
    "app_port",
    "base_path",
    "fullWidth",
    "header",
    "short_description",
    "models",
    "datasets",
    "tags",
    "thumbnail",
    "pinned",
    "hf_oauth",
    "hf_oauth_scopes",
    "hf_oauth_expiration_minutes",
    "hf_oauth_authorized_org",
    "disable_embedding",
    "startup_duration_timeout",
    "custom_headers",
    "preload_from_hub",
    "license",
    "suggested_hardware",
    "suggested_storage",
}
# The thumbnail gradient colors the same reference allows for colorFrom and colorTo.
SPACES_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
MAX_SHORT_DESCRIPTION = 60  # the Hub refuses a longer short_description
# What a Space sets (SYSTEM=spaces and SPACE_ID are what gradio.utils.get_space reads to detect a Space).
SPACE_ENV = {"GRADIO_SERVER_NAME": "0.0.0.0", "SPACE_ID": "someone/qground", "SYSTEM": "spaces"}
# The variables and secret a GPU Space sets (qground/app.py main, qground/service.py load_engine_from_env,
# qground/sam.py SAM_ENV, huggingface_hub for gated or private repos).
GPU_SPACE_VARIABLES = ["QGROUND_MODEL", "QGROUND_REVISION", "QGROUND_QUANT", "QGROUND_DTYPE", "QGROUND_SAM", "HF_TOKEN"]
# Launches app.py as a Space runs it (``python app.py``), printing what launch() decided before serving.
SPY = """
import json, runpy, sys
import gradio as gr

launch = gr.Blocks.launch

def spy(self, *args, **kwargs):
    out = launch(self, *args, **{**kwargs, "prevent_thread_lock": True})
    seen = {key: getattr(self, key) for key in ("share", "share_url", "server_name", "space_id")}
    print("LAUNCHED " + json.dumps(seen), flush=True)
    self.block_thread()
    return out

gr.Blocks.launch = spy
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
"""
# Off Spaces the `spaces` package is missing, so gradio's Spaces hot-reload watcher thread fails; the app still serves.
HOT_RELOAD_ERROR = "`spaces` package is required to run hot-reloading in Spaces"


def front_matter() -> dict:
    """README.md's YAML front matter: the block between the first two ``---`` lines."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "---", "README.md must start with the Spaces front matter"
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end]))


def spaces_section() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^### On Hugging Face Spaces\n(.*?)(?=^#)", text, flags=re.S | re.M)
    assert match, "README.md lacks its '### On Hugging Face Spaces' section"
    return match.group(1)


def pinned(package: str) -> str:
    match = re.search(rf"^{package}==(\S+)", (ROOT / "requirements.txt").read_text(encoding="utf-8"), flags=re.M)
    assert match, f"requirements.txt does not pin {package}"
    return match.group(1)


# -- the front matter --------------------------------------------------------------------------------------------------
def test_the_front_matter_uses_only_spaces_configuration_keys():
    config = front_matter()
    assert set(config) <= SPACES_KEYS, f"not Spaces configuration keys: {sorted(set(config) - SPACES_KEYS)}"


def test_the_space_runs_the_pinned_gradio_app():
    config = front_matter()
    assert config["sdk"] == "gradio"
    assert str(config["sdk_version"]) == pinned("gradio")
    assert (ROOT / config["app_file"]).is_file()
    assert isinstance(config["python_version"], str)  # unquoted, 3.10 would read as the float 3.1


def test_the_thumbnail_fields_are_valid():
    config = front_matter()
    assert config["colorFrom"] in SPACES_COLORS and config["colorTo"] in SPACES_COLORS
    assert 0 < len(config["short_description"]) <= MAX_SHORT_DESCRIPTION


def test_nothing_is_preloaded_by_default():
    """The default Space serves the in-repo qground-nano: a build should not download gigabytes it never reads."""
    assert "preload_from_hub" not in front_matter()


def test_the_readme_documents_the_gpu_space():
    section = spaces_section()
    for name in GPU_SPACE_VARIABLES:
        assert f"`{name}" in section, f"the Spaces section does not name {name}"
    block = re.search(r"```yaml\n(.*?)\n```", section, flags=re.S)
    assert block, "the Spaces section lacks the preload_from_hub lines to add"
    items = yaml.safe_load(block.group(1))["preload_from_hub"]
    # "repo_id", "repo_id file1,file2" or "repo_id file1,file2 commit" (the reference's item format)
    assert items and all(re.fullmatch(r"[\w.-]+/[\w.-]+( \S+( [0-9a-f]{40})?)?", item) for item in items), items


# -- the app starts as on a Space --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def listening(pid: int, port: int) -> list[str]:
    """The addresses that process ``pid`` listens on at TCP ``port``."""
    import psutil

    process = psutil.Process(pid)
    connections = process.net_connections(kind="tcp") if hasattr(process, "net_connections") else process.connections()
    return [c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


@pytest.mark.slow  # 15–27 s while the CPU is shared
def test_app_py_starts_with_the_environment_of_a_space(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGROUND_", "GRADIO_", "SPACE", "SYSTEM"))}
    env.update(SPACE_ENV)
    env.update(
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        HF_HUB_OFFLINE="1",  # qground-nano ships in the repository: starting must not need the network
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="2",
    )
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        app = subprocess.Popen([sys.executable, "-c", SPY], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # the offline qground-nano loads in seconds; the CPU may be shared
        status = None
        while time.monotonic() < deadline and app.poll() is None:
            try:
                status, _ = get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.5)
        output = log.read_text(encoding="utf-8", errors="replace")
        assert status == 200, f"the app did not answer on port {port} (exit code {app.poll()}):\n{output}"

        assert listening(app.pid, port) == ["0.0.0.0"]  # every interface: the Spaces proxy reaches it from outside
        _, body = get(f"http://127.0.0.1:{port}/config")
        assert json.loads(body)["space_id"] == SPACE_ENV["SPACE_ID"]  # gradio knows it runs on a Space

        launched = None  # launch() prints after the server answers: wait for it, as for the server
        while launched is None and time.monotonic() < deadline and app.poll() is None:
            output = log.read_text(encoding="utf-8", errors="replace")
            launched = re.search(r"^LAUNCHED (\{.*\})$", output, flags=re.M)
            time.sleep(0.0 if launched else 0.2)
        assert launched, output
        assert json.loads(launched.group(1)) == {
            "share": False,
            "share_url": None,
            "server_name": "0.0.0.0",
            "space_id": SPACE_ENV["SPACE_ID"],
        }
        assert "gradio.live" not in output and "public URL" not in output
        assert "serving ServedModel(name='qground-nano'" in output and "could not load" not in output
        assert output.count("Traceback") == output.count(HOT_RELOAD_ERROR), output
    finally:
        app.terminate()
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
