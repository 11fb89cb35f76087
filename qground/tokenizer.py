"""Tokenizers: binding our special tokens to any tokenizer, and training a small byte-level BPE offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from qground.config import QGroundConfig, TokenIds
from qground.prompts import VICUNA_V1
from qground.taxonomy import DISTORTIONS
from qground.tokens import IMAGE_END, IMAGE_START, IMAGE_TOKEN, SegTokens, special_tokens


def seg_tokens(config: QGroundConfig) -> SegTokens:
    return SegTokens(levels=config.seg_levels, tokens_per_level=config.seg_tokens_per_level)


def bind_tokenizer(config: QGroundConfig, tokenizer: PreTrainedTokenizerBase) -> QGroundConfig:
    """Add ``<image>``, the seg tokens, (``config.choice_head``) ``[CHOICE]`` and (``config.image_wrap``)
    ``<im_start>``/``<im_end>`` to ``tokenizer`` (in place, if missing) and return ``config`` with their ids.

    Tokens the tokenizer holds keep their ids (PixelLM-7B's: ``[SEG0…5]`` 32000–32005, ``<im_start>``/``<im_end>``
    32006/32007). ``<im_start>``/``<im_end>`` are made special where they are plain added tokens (as transformers 5
    loads PixelLM's from ``added_tokens.json``: its ``special_tokens_map.json`` names neither), so that user text,
    tokenized with special tokens split, cannot produce them.

    Raises if the ids are not distinct (PixelLM once gave every seg token the same id).
    """
    strings = special_tokens(seg_tokens(config), config.choice_head, config.image_wrap)
    tokenizer.add_tokens([s for s in strings if s not in tokenizer.get_vocab()], special_tokens=True)
    if config.image_wrap:
        wrap = [AddedToken(s, special=True, normalized=False) for s in (IMAGE_START, IMAGE_END)]
        tokenizer.add_tokens(wrap, special_tokens=True)  # an existing token keeps its id and becomes special
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    ids = tokenizer.convert_tokens_to_ids(strings)
    if len(set(ids)) != len(ids) or tokenizer.unk_token_id in ids:
        raise ValueError(f"special tokens {strings} did not get distinct ids: {ids}")
    seg_end = 1 + config.seg_count
    image_start, image_end = ids[-2:] if config.image_wrap else (-1, -1)
    token_ids = TokenIds(
        image=ids[0],
        seg=tuple(ids[1:seg_end]),
        choice=ids[seg_end] if config.choice_head else -1,
        pad=tokenizer.pad_token_id,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        image_start=image_start,
        image_end=image_end,
    )
    return dataclasses.replace(config, token_ids=token_ids)


def is_legacy(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` is a ``legacy`` LLaMA tokenizer: transformers 4.31's ``LlamaTokenizer`` then prepends
    "▁" to text that follows an added token (``<im_end>Please`` → ``▁Please``), with ``legacy: false`` it does not
    (→ ``Please``).

    transformers 5's ``LlamaTokenizer(…, legacy=False, add_prefix_space=None, …)`` keeps ``tokenizer_config.json``'s
    ``"legacy"`` as ``tokenizer.legacy`` and as its Metaspace ``prepend_scheme`` ("always" when legacy, else "first").
    A missing key reads as False there (4.31 read it as True), and ``save_pretrained`` does not write the flag back, so
    a tokenizer folder meant for legacy ids must state ``"legacy": true``. A tokenizer without the attribute counts as
    legacy, as transformers' own slow-to-fast converters assume.
    """
    return getattr(tokenizer, "legacy", True)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (no unknown bytes) trained on ``texts``, with ``<s>``, ``</s>``, ``<pad>``, ``<unk>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def basic_corpus() -> list[str]:
    """A small built-in corpus (prompt template + quality vocabulary) for test tokenizers."""
    words = [d.name for d in DISTORTIONS] + [a for d in DISTORTIONS for a in d.aliases]
    lines = [
        VICUNA_V1.system,
        "USER: ASSISTANT: The first image: The second image: The third image: The fourth image:",
        "Please segment out distorted regions in the image. The segmentation results are: ",
        "How is the quality of this image? The image has severe blur in the upper left and mild noise in the "
        "background. The overall quality is poor, fair, good, excellent. Which image is sharper? The first one.",
        " ".join(words),
        IMAGE_TOKEN,
    ]
    return lines * 4
