"""A stand-in for the LLaMA / Vicuna sentencepiece tokenizer (no ``tokenizer.model`` can be downloaded here).

It holds only the LLaMA pieces the Q-Ground prompt needs, each at its LLaMA id, in a vocabulary of LLaMA's size
(32000: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the byte pieces ``<0x00>`` … ``<0xFF>`` at 3 … 258, unmatchable fillers
elsewhere), and LLaMA's whitespace handling: a ``▁`` prefix per call and spaces as ``▁`` (``WHITESPACE``). A Unigram
model with equal piece scores and byte fallback then segments a text into the fewest known pieces, which for these
texts is LLaMA's segmentation (e.g. "▁polite" is not a LLaMA piece: "▁pol" + "ite"); characters outside these pieces
fall back to their bytes, as in LLaMA for characters it lacks. Texts made of other words do not get LLaMA's ids.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 32000
BYTES_START = 3  # <0x00> … <0xFF> at 3 … 258: "\n" is 13

# LLaMA-1/2 sentencepiece ids of the pieces of LLaVA-1.5's vicuna_v1 prompt and the grounding question.
PIECES = {
    259: "▁▁",
    29871: "▁",
    319: "▁A",
    13563: "▁chat",
    1546: "▁between",
    263: "▁a",
    12758: "▁curious",
    5199: "▁human",
    322: "▁and",
    385: "▁an",
    23116: "▁artificial",
    21082: "▁intelligence",
    20255: "▁assistant",
    29889: ".",
    450: "▁The",
    4076: "▁gives",
    8444: "▁helpful",
    29892: ",",
    13173: "▁detailed",
    1248: "▁pol",
    568: "ite",
    6089: "▁answers",
    304: "▁to",
    278: "▁the",
    29915: "'",
    29879: "s",
    5155: "▁questions",
    3148: "▁US",
    1001: "ER",
    29901: ":",
    12148: "Please",
    3529: "▁Please",
    10768: "▁segment",
    714: "▁out",
    1320: "▁dist",
    18054: "orted",
    12786: "▁regions",
    297: "▁in",
    1967: "▁image",
    1799: "SS",
    9047: "IST",
    13566: "ANT",
}

# "{system} USER: <image>\nPlease segment out distorted regions in the image. ASSISTANT:" as LLaVA-1.5 / Q-Ground
# tokenize it (transformers 4.31 slow LlamaTokenizer, legacy true or false alike); None marks the image slot.
REFERENCE = [
    1, 319, 13563, 1546, 263, 12758, 5199, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444, 29892, 13173,
    29892, 322, 1248, 568, 6089, 304, 278, 5199, 29915, 29879, 5155, 29889, 3148, 1001, 29901, 29871, None, 29871, 13,
    12148, 10768, 714, 1320, 18054, 12786, 297, 278, 1967, 29889, 319, 1799, 9047, 13566, 29901,
]  # fmt: skip


# How a call's text gets its "▁"s: transformers 5's LlamaTokenizer uses the Metaspace pre-tokenizer, prepend_scheme
# "always" (legacy) or "first" (legacy: false); legacy llama tokenizer.json files (transformers 4 fast tokenizers) the
# normalizer Prepend("▁") + Replace(" ", "▁"), which prepends "▁" even to a text that starts with a space.
WHITESPACE = ("always", "first", "normalizer")


def llama_like_tokenizer(whitespace: str = "always") -> PreTrainedTokenizerFast:
    """The stand-in, as a fast tokenizer with ``<s>``/``</s>``/``<unk>``; ``whitespace`` one of ``WHITESPACE``."""
    vocab = [(f"<unused{i}>", -100.0) for i in range(VOCAB_SIZE)]
    vocab[0:3] = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab[BYTES_START : BYTES_START + 256] = [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    for i, piece in PIECES.items():
        vocab[i] = (piece, -1.0)
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    if whitespace == "normalizer":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=whitespace, split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


# PixelLM-7B's added tokens at their ids (its tokenizer re-created with transformers 4.31).
PIXELLM_ADDED = {**{32000 + k: f"[SEG{k}]" for k in range(6)}, 32006: "<im_start>", 32007: "<im_end>"}


def pixellm_like_tokenizer(whitespace: str = "always", legacy: bool = True) -> PreTrainedTokenizerFast:
    """The stand-in with ``PIXELLM_ADDED`` as transformers 5 loads PixelLM's tokenizer folder: plain (not special)
    added tokens from ``added_tokens.json``, whose ``special_tokens_map.json`` names none of them, and
    ``tokenizer_config.json``'s ``legacy`` flag as ``tokenizer.legacy`` (as ``LlamaTokenizer`` keeps it)."""
    tokenizer = llama_like_tokenizer(whitespace)
    tokenizer.add_tokens(list(PIXELLM_ADDED.values()))
    tokenizer.legacy = legacy
    return tokenizer
