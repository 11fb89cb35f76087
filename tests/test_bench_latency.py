"""``bench.latency`` in small: the shipped nano on two held-out images, each alternative timed beside the default."""

from PIL import Image

from bench.latency import main
from training.data import synth


def test_latency_bench_times_the_default_and_each_alternative(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for i in range(2):
        Image.fromarray(synth.generate(i, "eval", seed=0).image).save(tmp_path / f"eval_{i}.png")
    main(["--data", str(tmp_path), "--limit", "2", "--one-view", "--no-refine"])
    out = capsys.readouterr().out
    assert "qground-nano on 2 images" in out and "ground latency: median" in out
    assert "one view (interleaved): median" in out and "default / one view = " in out
    assert "masks not refined (interleaved): median" in out and "default / masks not refined = " in out
