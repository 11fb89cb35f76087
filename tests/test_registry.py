import subprocess
import sys

from qground.builder import build_from_registry


def test_7b_builds_on_meta_with_paper_size():
    model, tokenizer = build_from_registry("qground-7b", device="meta")
    assert tokenizer is None
    llava = sum(p.numel() for p in model.llava.parameters())
    heads = sum(p.numel() for m in (model.seg_head, model.pixel_decoder) for p in m.parameters())
    assert 7.05e9 < llava < 7.09e9  # LLaVA-1.5-7B is 7.06 B; our φv reads 3 layers (+8 M)
    assert 1e7 < heads < 5e7
    assert all(p.device.type == "meta" for p in model.parameters())


def test_tiny_and_nano_build_on_meta_with_their_offline_tokenizer():
    """Their BPE tokenizer is trained offline and fixes the special-token ids, so it is built even on meta."""
    for name in ("qground-tiny", "qground-nano"):
        model, tokenizer = build_from_registry(name, device="meta")
        assert tokenizer is not None and model.config.token_ids.image == tokenizer.convert_tokens_to_ids("<image>")
        assert all(p.device.type == "meta" for p in model.parameters())


def test_info_command():
    out = subprocess.run(
        [sys.executable, "-m", "qground", "info", "qground-7b"], capture_output=True, text=True, check=True
    ).stdout
    assert "llava-hf/llava-1.5-7b-hf" in out and "256 tokens/image" in out and "total" in out
