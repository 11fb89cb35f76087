"""The opt-in preprocessing variants of converted PixelLM / Q-Ground checkpoints (docs/pixellm.md): the bilinear
resize, half-up content sizes, ``<im_start>``/``<im_end>`` around each image and PixelLM's prompt ids (transformers
4.31 strips the whitespace around added tokens; ``legacy`` decides "▁Please" or "Please" after ``<im_end>``)."""

import dataclasses
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

import qground.processor as processor_module
from llama_pieces import PIXELLM_ADDED, REFERENCE, WHITESPACE, pixellm_like_tokenizer
from qground.builder import build_tokenizer, config_7b, config_tiny
from qground.config import IMAGENET_MEAN, IMAGENET_STD, TokenIds
from qground.inference import GROUNDING_QUESTION
from qground.processor import IGNORE_INDEX, QGroundProcessor
from qground.prompts import Turn, grounding_answer
from qground.tokenizer import bind_tokenizer, is_legacy, seg_tokens
from qground.tokens import IMAGE_END, IMAGE_START

US = 3148  # "▁US"
PLEASE = {True: 3529, False: 12148}  # the first piece after <im_end>, by legacy: "▁Please", "Please"
# " segment out distorted regions in the image. ASSISTANT:" in LLaMA ids, as in REFERENCE
QUESTION_TAIL = [10768, 714, 1320, 18054, 12786, 297, 278, 1967, 29889, 319, 1799, 9047, 13566, 29901]


@pytest.fixture(scope="module")
def tiny_wrap():
    """(tokenizer, config_tiny with image_wrap, config_tiny without) bound to one tokenizer."""
    tokenizer, wrap = build_tokenizer(dataclasses.replace(config_tiny(), image_wrap=True))
    return tokenizer, wrap, bind_tokenizer(config_tiny(), tokenizer)


def noise_photo(h: int, w: int, seed: int = 0) -> Image.Image:
    """Random color noise (H, W): full of detail, so resampling filters differ."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def image_processor(tokenizer, cache_images: int = 0, **changes) -> QGroundProcessor:
    """A processor for config_tiny (S = 64) with ``changes``."""
    return QGroundProcessor(tokenizer, dataclasses.replace(config_tiny(), **changes), cache_images=cache_images)


def test_bilinear_is_pils_bilinear_normalized_with_imagenet_stats_and_zero_padded(tiny_wrap):
    tokenizer = tiny_wrap[0]
    stats = {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    img = noise_photo(40, 100)  # S = 64: content (26, 64)
    pixels, meta = image_processor(tokenizer, resample="bilinear", **stats).preprocess_image(img)
    bicubic, _ = image_processor(tokenizer, resample="bicubic", **stats).preprocess_image(img)
    assert meta.resized_size == (26, 64) and pixels.shape == (3, 64, 64)
    resized = np.asarray(img.resize((64, 26), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = torch.zeros(3, 64, 64)
    expected[:, :26, :] = (torch.from_numpy(resized).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)
    assert (bicubic[:, 26:] == 0).all() and (bicubic - pixels).abs().max() > 0.1


@pytest.mark.parametrize(
    ("size", "rounded", "half_up"),
    [
        ((5, 128), (2, 64), (3, 64)),  # s = 0.5: 5·s = 2.5 exactly, to even 2, half up 3
        ((128, 5), (64, 2), (64, 3)),
        ((40, 100), (26, 64), (26, 64)),  # 25.6: alike
        ((2, 1000), (1, 64), (1, 64)),  # 0.128: each side ≥ 1
    ],
)
def test_half_up_rounds_an_exact_half_up_where_round_goes_to_even(tiny_wrap, size, rounded, half_up):
    tokenizer = tiny_wrap[0]
    by_round, by_half_up = image_processor(tokenizer), image_processor(tokenizer, size_rounding="half_up")
    assert by_round.content_size(size) == rounded and by_half_up.content_size(size) == half_up
    h, w = half_up
    pixels, meta = by_half_up.preprocess_image(noise_photo(*size))
    assert meta.resized_size == half_up and (pixels[:, h:] == 0).all() and (pixels[:, :, w:] == 0).all()
    assert (pixels[:, h - 1, :w] != 0).any() and (pixels[:, :h, w - 1] != 0).any()  # the content's last row, column


def wrapped(ids: list[int], labels: list[int], image: int, start: int, end: int) -> tuple[list[int], list[int]]:
    """``ids``/``labels`` with ``start`` before and ``end`` after each run of ``image`` ids (labels -100)."""
    out_ids, out_labels = [], []
    for k, (i, label) in enumerate(zip(ids, labels)):
        if i == image and ids[k - 1] != image:
            out_ids, out_labels = out_ids + [start], out_labels + [IGNORE_INDEX]
        out_ids, out_labels = out_ids + [i], out_labels + [label]
        if i == image and (k + 1 == len(ids) or ids[k + 1] != image):
            out_ids, out_labels = out_ids + [end], out_labels + [IGNORE_INDEX]
    return out_ids, out_labels


def test_image_wrap_puts_each_images_tokens_between_im_start_and_im_end(tiny_wrap):
    tokenizer, wrap, plain = tiny_wrap
    start, end = tokenizer.convert_tokens_to_ids([IMAGE_START, IMAGE_END])
    assert (wrap.token_ids.image_start, wrap.token_ids.image_end) == (start, end)
    assert (plain.token_ids.image_start, plain.token_ids.image_end) == (-1, -1)
    assert dataclasses.replace(wrap.token_ids, image_start=-1, image_end=-1) == plain.token_ids
    answer = grounding_answer(["noise"], seg_tokens(wrap).group_text())
    turns = [Turn("Which is sharper?", answer), Turn(GROUNDING_QUESTION)]
    ids, labels = QGroundProcessor(tokenizer, wrap).encode(turns, 2)
    plain_ids, plain_labels = QGroundProcessor(tokenizer, plain).encode(turns, 2)
    assert (ids, labels) == wrapped(plain_ids, plain_labels, plain.token_ids.image, start, end)
    assert ids.count(start) == ids.count(end) == 2 and ids.count(wrap.token_ids.image) == 2 * wrap.num_image_tokens
    assert [i for i in labels if i != IGNORE_INDEX] == [i for i in plain_labels if i != IGNORE_INDEX]


@pytest.fixture(scope="module", params=[(w, legacy) for w in WHITESPACE for legacy in (True, False)])
def pixellm(request):
    """(processor, legacy) for config_7b with image_wrap bound to the PixelLM stand-in: every whitespace variant with
    either flag (transformers 5's LlamaTokenizer pairs legacy with "always"; the ids depend on the flag only)."""
    whitespace, legacy = request.param
    tokenizer = pixellm_like_tokenizer(whitespace, legacy)
    config = bind_tokenizer(dataclasses.replace(config_7b(), image_wrap=True, token_ids=TokenIds()), tokenizer)
    return QGroundProcessor(tokenizer, config), legacy


def test_pixellm_prompt_ids(pixellm):
    """PixelLM-7B's prompt (docs/pixellm.md): ``… USER: <im_start><image><im_end>\\n{q} ASSISTANT:`` as
    transformers 4.31 tokenizes it: LLaVA's ``▁ <image> ▁ \\n Please`` becomes ``<im_start> <image> <im_end> ▁Please``
    (legacy) or ``… Please``."""
    processor, legacy = pixellm
    config = processor.config
    ids, labels = processor.encode([Turn(GROUNDING_QUESTION)], 1)
    assert (config.token_ids.image_start, config.token_ids.image_end) == (32006, 32007)
    assert config.token_ids.seg == tuple(range(32000, 32006))  # PixelLM's ids kept
    system = REFERENCE[: REFERENCE.index(US) + 3]  # <s> {system} ▁US ER :
    assert system[-4:] == [29889, US, 1001, 29901] and REFERENCE[len(system) :][:5] == [29871, None, 29871, 13, 12148]
    image = [config.token_ids.image] * config.num_image_tokens
    assert ids == [*system, 32006, *image, 32007, PLEASE[legacy], *QUESTION_TAIL]
    assert labels == [IGNORE_INDEX] * len(ids)


def test_typed_im_start_stays_text(pixellm, tiny_wrap):
    processor = pixellm[0]
    question = f"Is {IMAGE_START} here {IMAGE_END}?"
    for processor_ in (processor, QGroundProcessor(tiny_wrap[0], tiny_wrap[1])):
        ids, _ = processor_.encode([Turn(question)], 1)
        token_ids = processor_.config.token_ids
        assert ids.count(token_ids.image_start) == ids.count(token_ids.image_end) == 1  # the image's own
    # PixelLM's tokenizer, as transformers 5 loads it, holds them as plain added tokens: typed text would produce them
    unbound = pixellm_like_tokenizer()
    assert unbound(IMAGE_START, add_special_tokens=False, split_special_tokens=True).input_ids == [32006]
    assert processor.tokenizer(IMAGE_START, add_special_tokens=False, split_special_tokens=False).input_ids == [32006]


def test_cache_key_separates_the_variants(tiny_wrap, tmp_path, monkeypatch):
    monkeypatch.setattr(processor_module, "_IMAGE_CACHE", OrderedDict())
    path = tmp_path / "photo.png"
    noise_photo(10, 256).save(path)  # S = 64: 10·0.25 = 2.5
    variants = [{}, {"resample": "bilinear"}, {"size_rounding": "half_up"}]
    processors = [image_processor(tiny_wrap[0], cache_images=8, **v) for v in variants]
    first = [p.preprocess_image(path) for p in processors]
    assert len(processor_module._IMAGE_CACHE) == 3
    for p, (pixels, meta) in zip(processors, first):
        own, own_meta = p._preprocess(path)
        assert p.preprocess_image(path)[0] is pixels and meta == own_meta and torch.equal(pixels, own)
    assert [meta.resized_size for _, meta in first] == [(2, 64), (2, 64), (3, 64)]
    assert not torch.equal(first[0][0], first[1][0])


def llama_folder(folder, legacy: bool | None):
    """A transformers-5 LlamaTokenizer folder whose tokenizer_config.json says ``"legacy": legacy`` (None: no key)."""
    LlamaTokenizer(vocab={"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if legacy is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))
    return folder


def test_is_legacy_reads_a_llama_tokenizers_legacy_flag(tiny_wrap, tmp_path):
    """transformers 5 keeps tokenizer_config.json's ``legacy`` as ``LlamaTokenizer.legacy`` (False when the key is
    missing, unlike 4.31) and as its Metaspace prepend scheme, and does not save it back; a tokenizer without the
    attribute counts as legacy."""
    for legacy in (True, False, None):
        tokenizer = AutoTokenizer.from_pretrained(llama_folder(tmp_path / str(legacy), legacy))
        scheme = "always" if legacy else "first"
        assert is_legacy(tokenizer) is bool(legacy) and f"prepend_scheme={scheme}" in str(tokenizer.backend_tokenizer)
    AutoTokenizer.from_pretrained(tmp_path / "True").save_pretrained(tmp_path / "resaved")
    assert not is_legacy(AutoTokenizer.from_pretrained(tmp_path / "resaved"))
    assert is_legacy(tiny_wrap[0]) and not hasattr(tiny_wrap[0], "legacy")


def test_a_tokenizer_that_merges_a_newline_with_text_is_refused():
    """Non-legacy ids after ``<im_end>`` are read off "\\n" + text: a piece spanning the newline would corrupt them."""
    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("\nP", -1.0), ("\n", -5.0), ("P", -5.0)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.Unigram(vocab, unk_id=0)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.legacy = False
    config = dataclasses.replace(config_tiny(), image_wrap=True, prompt_tokenization="llava")
    processor = QGroundProcessor(tokenizer, bind_tokenizer(config, tokenizer))
    with pytest.raises(ValueError, match="merges a newline"):
        processor.encode([Turn("P")], 1)


def test_pixellm_stand_in_holds_the_added_tokens_at_pixellm_ids():
    tokenizer = pixellm_like_tokenizer()
    assert tokenizer.convert_tokens_to_ids(list(PIXELLM_ADDED.values())) == list(PIXELLM_ADDED)
    assert tokenizer.legacy and not pixellm_like_tokenizer(legacy=False).legacy
