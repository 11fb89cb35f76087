"""Every ``bench/*.py`` in its ``--quick`` mode (tiny sizes, seconds), so that a bench cannot break unnoticed.

The printed lines are checked for their structure, never for timing values: the speed targets stay printed by the
benches. A new bench needs a ``--quick`` mode and an entry in ``LINES``.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

BENCHES = sorted(p.stem for p in (Path(__file__).parents[1] / "bench").glob("*.py") if p.stem != "__init__")
N = r"(\d+(?:\.\d+)?)"  # a number printed by the bench; every captured one must be positive

# per bench: arguments after --quick, and the lines its output must contain (regular expressions, one per line)
LINES = {
    "app_overhead": (
        [],
        [
            rf"overlay .* 3 masks: visualize\.overlay \d+ ms .* matplotlib figure \d+ ms -> {N}x faster",
            r"engine: .+, strictness [\d.]+; photos: .+",
            r"engine answer 160×120 .+: '.+', masks: \[.*\] \(the same through the app and the floor\)",
            rf"/ground 160×120: app {N} ms, Gradio floor {N} ms, bare engine\.ground {N} ms; .* ratio app/floor {N} "
            r"\(target <= 1\.3\)",
            rf"worst ratio app/floor {N} \(target <= 1\.3\)",
        ],
    ),
    "click_to_overlay": (
        [],
        [
            r"click to overlay: qground-nano, 640×480 JPEG photos .*, Chromium .+",
            r"warm-up .+: \d+ ms \(.+\)",
            rf"coffee-640x480: median {N} ms of \d+ ms; upload before the click {N} ms; images \d+×\d+.*; .+",
            rf"median click to overlay {N} ms over 1 clicks on 1 photos \(target <= 1500 ms\)",
        ],
    ),
    "decode": (
        [],
        [
            r"model [\d.]+ M params, prompt \d+ tokens \(\d+ image\), 16 new tokens",
            rf"cached \(ours\) +{N} tokens/s",
            rf"use_cache=False \(PixelLM-style\) +{N} tokens/s",
            rf"speed-up cached / uncached = {N}x   \(target >= 8x\)",
        ],
    ),
    "latency": (
        ["--no-refine", "--capped-detail"],  # the shipped policy reads one view: --one-view has nothing to compare
        [
            r"qground-nano on 2 images from .*, strictness [\d.]+",
            r"ground latency: median \d+ ms, p90 \d+ ms",
            r"  generate +median \d+ ms",
            rf"masks not refined \(interleaved\): median \d+ ms; default / masks not refined = {N}",
            rf"detail capped \(interleaved\): median \d+ ms; default / detail capped = {N}",
        ],
    ),
    "load": (
        [],
        [
            r"engine: qground-nano",
            r"users: 2, requests done: 4 of 4",
            r"all +4 +0 +0 +0 +[\d.]+ +[\d.]+",
            # the masks tell users apart; the shipped model may give two photos the same words or the same pick
            r"distinct solo references .*: /ground 2/2, /describe [12]/2, /compare [12]/2",
            r"queue: max_size 4: 8 at once → .*; the next request succeeded",
            r"PASS",
        ],
    ),
    "memory": (
        [],
        [
            r"qground-nano: [\d.]+ B parameters, [\d.]+ B in NF4",
            r"fp16 bytes +[\d.]+ GiB",
            rf"ratio NF4 / fp16 = {N}   \(target <= 0\.30\)",
        ],
    ),
    "train_throughput": (
        [],
        [
            rf"machine: fp32 matmul {N} GFLOP/s \(512², median\)",
            r"qground-tiny: [\d.]+ M params \(\d+ trainable tensors\), batch 2",
            r"train step: [\d.]+ GFLOP, median \d+ ms → [\d.]+ samples/s",
            r"MFU = [\d.]+%",
        ],
    ),
}


CHROMIUM = Path("/usr/bin/chromium")
NEEDS_CHROMIUM = {"click_to_overlay"}  # drive the app in headless Debian Chromium (as tests/test_browser.py)
BROWSER_MARKS = (
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
)


@pytest.mark.parametrize("name", [pytest.param(n, marks=BROWSER_MARKS) if n in NEEDS_CHROMIUM else n for n in BENCHES])
def test_bench_runs_quick(name, capsys, monkeypatch):
    assert name in LINES, f"bench/{name}.py: add the lines its --quick output must contain to LINES"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("QGROUND_MODEL", raising=False)  # bench.latency's default model
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    extra, lines = LINES[name]
    assert importlib.import_module(f"bench.{name}").main(["--quick", *extra]) in (None, 0)
    out = capsys.readouterr().out
    for pattern in lines:
        found = re.search(rf"^{pattern}", out, re.MULTILINE)
        assert found, f"bench.{name} --quick printed no line matching {pattern!r}:\n{out}"
        assert all(float(number) > 0 for number in found.groups()), found.group(0)
