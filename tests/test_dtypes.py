"""The GPU path on this CPU: every model layout × {fp32, bf16, fp16} × {full precision, NF4 4-bit} loaded through the
app's own loader (a converted PixelLM-format checkpoint among them), then ground / stream / compare and masks at the
original size. A dtype mismatch anywhere fails.

fp16 and NF4 run on CPU kernels here (slow but exact in kind); what a CUDA host adds is speed, not other code paths.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pixellm_layout as layout
from conftest import photo
from qground.builder import build_from_registry, build_model, build_tokenizer, config_7b, config_nano
from qground.checkpoint import (
    DTYPES,
    QUANT_SKIP_MODULES,
    check_cpu_convolutions,
    cpu_4bit_skips,
    default_device_dtype,
    dtype_name,
    parse_dtype,
    quantization_config,
    save_checkpoint,
)
from qground.config import DecoderConfig, LLMConfig, VisionConfig
from qground.convert import Hardcoded, convert
from qground.inference import GROUNDING_QUESTION, GenerationSettings, GroundingResult
from qground.prompts import Turn, grounding_answer
from qground.service import default_quant, load_engine, load_engine_from_env
from qground.tokenizer import seg_tokens
from training.data import synth

ROOT = Path(__file__).resolve().parent.parent
SHORT = GenerationSettings(max_new_tokens=12)
TINY_HARDCODED = Hardcoded(decoder_heads=layout.TINY.dec_heads, decoder_layers=(-2, -3))  # hidden states 3 and 2


def config_7b_layout():
    """``qground-7b``'s layout (448-px input, 14-px patches, 256 image tokens, CLIP layers 6/14/23 into φv, decoder on
    23/14, no readout) with random tiny widths."""
    return dataclasses.replace(
        config_7b(),
        name="qground-7b-layout",
        vision=VisionConfig(hidden_size=32, intermediate_size=64, num_layers=24, num_heads=2, hub_id=None),
        llm=LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=512),
        decoder=DecoderConfig(dim=32, depth=1, num_heads=2, mlp_dim=64),
        base_model_id=None,
        tokenizer_id=None,
    )


@pytest.fixture(scope="module", autouse=True)
def onednn_as_it_was():
    """A half-precision model loaded here may switch oneDNN off (``check_cpu_convolutions``); later modules get it
    back as it was."""
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """Model name → what the app's loader is given: the shipped nano by name, the random ones as saved folders."""
    folder = tmp_path_factory.mktemp("dtype-models")
    tiny, tiny_tok = build_from_registry("qground-tiny")
    tok7, config7 = build_tokenizer(config_7b_layout())
    layout.write_pixellm(folder / "pixellm-source", layout.TINY, dtype="release")
    layout.write_clip(folder / "clip", layout.TINY)
    pixellm = convert(
        "pixellm", folder / "pixellm-source", folder / "clip", folder / "pixellm", hardcoded=TINY_HARDCODED
    )
    return {
        "qground-tiny": str(save_checkpoint(tiny, tiny_tok, folder / "tiny")),
        "qground-7b-layout": str(save_checkpoint(build_model(config7), tok7, folder / "7b-layout")),
        "qground-nano": "qground-nano",
        "pixellm-converted": str(pixellm.folder),
    }


def forced_grounding(engine, image: Image.Image, classes: list[str]) -> GroundingResult:
    """The engine's mask path (``encode`` under its policy, then ``_finish``: ``qground.masks``) on a teacher-forced
    grounding answer naming ``classes``, so random models produce masks too. The answer's states come from one forward
    pass."""
    model, processor = engine.model, engine.processor
    answer = grounding_answer(classes, seg_tokens(model.config).group_text())
    policy = engine.policy
    turns = [Turn(GROUNDING_QUESTION, answer)]
    sample = processor([image], turns, keep_photo=bool(policy.mask_refine_radius))
    ids = sample["input_ids"][None].to(model.device)
    start = int((sample["labels"] == -100).sum())  # the answer tokens + EOS are the only labelled ones, at the end
    features = engine.encode(sample, engine.strictness(GenerationSettings(), 1))
    mask = model.attention_mask(ids, features)  # PixelLM's mask over padded image tokens, for converted models
    with torch.inference_mode():
        hidden = model.language_model(inputs_embeds=model.embed(ids, features.tokens), attention_mask=mask)
        hidden = hidden.last_hidden_state[0]
    tokens = ids[0, start:].tolist()
    states = list(hidden[start - 1 : -1])
    return engine._finish(tokens, states, features, sample["metas"][0], [])


def _check_dtypes(engine, dtype: torch.dtype, quant: str) -> None:
    model = engine.model
    for part in (model.projector, model.seg_head, model.pixel_decoder, model.vision_tower):
        floats = {p.dtype for p in part.parameters() if p.is_floating_point()}
        assert floats == {dtype}, (type(part).__name__, floats)
    q_proj = model.language_model.layers[0].self_attn.q_proj
    assert (type(q_proj).__name__ == "Linear4bit") == (quant == "4bit")


@pytest.mark.parametrize("quant", ["none", "4bit"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", ["qground-tiny", "qground-7b-layout", "qground-nano", "pixellm-converted"])
def test_dtype_matrix(sources, name, dtype, quant):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dtype mismatch that only warns is a failure too
        engine = load_engine(sources[name], quant=quant, dtype=DTYPES[dtype])
        _check_dtypes(engine, DTYPES[dtype], quant)
        image = photo(45, 70, seed=3)

        grounded = engine.ground(image, settings=SHORT)
        assert grounded.token_ids and all(m.shape == (45, 70) for m in grounded.masks.values())

        shown = list(engine.stream([image], [Turn("How is the quality of this image?")], SHORT))
        assert isinstance(shown[-1], GroundingResult) and all(isinstance(s, str) for s in shown[:-1])
        assert shown[-1].text == (shown[-2] if len(shown) > 1 else "")

        compared = engine.chat([image, photo(60, 30, seed=4)], [Turn("Which image is sharper?")], SHORT)
        assert compared.token_ids

        forced = forced_grounding(engine, image, ["blur", "noise"])
        assert set(forced.masks) == {"blur", "noise"}
        for mask in forced.masks.values():
            assert mask.dtype == bool and mask.shape == (45, 70)
        assert all(np.isfinite(s) for s in forced.scores.values())


def held_out_images(count: int) -> list[Image.Image]:
    """The first ``count`` held-out synthetic images with a distortion (eval photos, seed 0)."""
    out = []
    for index in range(200):
        g = synth.generate(index, "eval", seed=0)
        if g.masks:
            out.append(Image.fromarray(g.image))
        if len(out) == count:
            return out
    raise AssertionError("too few held-out images")


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[float]:
    """IoU per class drawn by either result (0 for a class only one draws; 1 when both masks are empty)."""
    out = []
    for name in a.keys() | b.keys():
        m, n = a.get(name), b.get(name)
        union = 0 if m is None or n is None else int((m | n).sum())
        out.append(0.0 if m is None or n is None else float((m & n).sum() / union) if union else 1.0)
    return out


AS_TRAINED = GenerationSettings(strictness=0.0)


@pytest.fixture(scope="module")
def nano_fp32():
    """Held-out images and the fp32 nano's masks on them, as trained (strictness 0: masks on every image)."""
    images = held_out_images(3)
    engine = load_engine("qground-nano", dtype=torch.float32)
    return images, [engine.ground(image, settings=AS_TRAINED).masks for image in images]


@pytest.mark.parametrize(("dtype", "quant"), [("bf16", "none"), ("bf16", "4bit"), ("fp16", "none")])
def test_nano_masks_agree_with_fp32(nano_fp32, dtype, quant):
    """On held-out images every mask the fp32 model draws is drawn in ``dtype`` / ``quant`` too, IoU ≥ 0.9."""
    images, reference = nano_fp32
    engine = load_engine("qground-nano", quant=quant, dtype=DTYPES[dtype])
    drawn = [engine.ground(image, settings=AS_TRAINED).masks for image in images]
    ious = [iou for masks, other in zip(reference, drawn) for iou in agreement(masks, other)]
    assert len(ious) >= 2 and min(ious) >= 0.9, ious  # as trained, at least two of the images get masks


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_host_gets_bf16_where_supported_else_fp16_and_4bit(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert default_device_dtype() == (torch.device("cuda"), expected)
    assert default_quant() == "4bit"


def test_cpu_host_gets_fp32_and_no_quantization(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device_dtype() == (torch.device("cpu"), torch.float32)
    assert default_quant() == "none"


def test_dtype_override_is_served_and_shown(monkeypatch):
    engine, served = load_engine_from_env("qground-tiny", dtype="bf16", env={})
    assert served.dtype == "bf16" and "· bf16" in served.footer()
    assert next(engine.model.llava.parameters()).dtype == torch.bfloat16
    _, served = load_engine_from_env("qground-tiny", env={"QGROUND_DTYPE": "fp16"})
    assert served.dtype == "fp16"
    with pytest.raises(ValueError, match="QGROUND_DTYPE: dtype must be one of auto, fp32, bf16, fp16"):
        load_engine_from_env("qground-tiny", env={"QGROUND_DTYPE": "fp8"})
    assert parse_dtype("auto") is None and dtype_name(torch.bfloat16) == "bf16"


def test_cpu_4bit_keeps_unpackable_projections_unquantized():
    nano = config_nano()  # MLP width 688: not a multiple of 32 (rows) nor of 64 (down_proj's inputs)
    assert cpu_4bit_skips(nano) == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert cpu_4bit_skips(config_7b()) == []  # LLaVA-1.5-7B quantizes whole on CPU as on CUDA
    skip = quantization_config("4bit", torch.bfloat16, cpu_4bit_skips(nano)).llm_int8_skip_modules
    assert skip[: len(QUANT_SKIP_MODULES)] == QUANT_SKIP_MODULES and skip[-1] == "mlp.down_proj"


def test_fresh_app_start_prints_no_warning(tmp_path):
    """``python app.py`` up to "Running on": no warning a user cannot act on (bitsandbytes' kernels notice)."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any("Running on" in line for line in lines):
            line = app.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        app.terminate()
        app.wait(30)
    assert any("Running on" in line for line in lines), lines
    assert not [line for line in lines if "WARNING" in line.upper() or "kernels" in line], lines


class _Conv(torch.nn.Conv2d):
    """A strided convolution computed in fp32 whatever its dtype; with ``wrong``, off while oneDNN is on, as
    oneDNN's AMX kernel is on some CPUs."""

    wrong = False

    def forward(self, x):
        out = F.conv2d(x.float(), self.weight.float(), self.bias.float(), self.stride).to(x.dtype)
        return out.flip(-1) * 2 if self.wrong and torch.backends.mkldnn.enabled else out


def test_a_wrong_half_convolution_switches_onednn_off(monkeypatch, caplog):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    wrong = _Conv(12, 16, 8, 8)
    wrong.wrong = True
    check_cpu_convolutions(torch.nn.Sequential(_Conv(12, 16, 8, 8), torch.nn.Conv2d(16, 16, 3)).to(torch.bfloat16))
    check_cpu_convolutions(wrong)  # fp32: not probed
    assert torch.backends.mkldnn.enabled and not caplog.records
    check_cpu_convolutions(wrong.to(torch.bfloat16))
    assert not torch.backends.mkldnn.enabled
    assert "oneDNN computes a bf16 convolution (12, 16, (8, 8), (8, 8), (0, 0)) wrongly" in caplog.text
