"""Inference: KV-cached decoding that keeps the seg-token hidden states, answer parsing, masks at original size, and
(models with a choice head) the image each generated ``[CHOICE]`` points at, shown as its place word.

``QGroundEngine`` is the stateful predictor the CLI, the app and the benches use (model + processor, no UI). Decoding
records, for every generated token, the last hidden state that predicted it — exactly the state the seg head reads — so
masks need no second pass over the sequence (PixelLM re-runs the whole sequence with ``use_cache=False``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache

from qground.answers import TokenConstraint, asked_classes, comparison_grammar, single_image_grammar
from qground.lexicon import Lexicon
from qground.masks import ground_masks
from qground.modeling.qground import ImageFeatures, QGroundModel
from qground.naming import question_options
from qground.policy import MAX_STRICTNESS, InferencePolicy, readout_thresholds
from qground.processor import ImageMeta, QGroundProcessor
from qground.prompts import Turn, ordinal
from qground.questions import GROUNDING_QUESTION
from qground.taxonomy import CLASS_NAMES, match_class
from qground.tokens import SegTokens
from qground.visualize import area_percent, region_location

# The note a result carries when the engine's time budget stopped its answer (QGroundEngine.time_budget).
BUDGET_NOTE = "stopped after {seconds:g} s, this server's time limit per answer: the answer is incomplete"
_SEPARATORS = re.compile(r"[,;:\n]|\band\b|\bare\b|\bis\b")


@dataclass(frozen=True)
class GenerationSettings:
    """``temperature`` 0 means greedy; ``min_new_tokens`` suppresses end-of-sequence before that many tokens.
    ``strictness`` (models with a distortion readout, such as qground-nano): how sure the readout must be of a
    distortion for the model to see it (``qground.policy.readout_thresholds``; 0: as trained; None: the engine's
    policy's ``default_strictness``); higher means fewer false alarms on clean photos and fewer distortions found. It
    applies to prompts with one image: comparisons rank images by their evidence as read."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    seed: int = 0
    use_cache: bool = True
    strictness: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max new tokens must be between 1 and 4096, got {self.max_new_tokens}")
        if not (0.0 <= self.temperature <= 5.0) or self.temperature != self.temperature:
            raise ValueError(f"temperature must be between 0 (greedy) and 5, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min new tokens must be between 0 and max new tokens")
        if self.strictness is not None and not 0.0 <= self.strictness <= MAX_STRICTNESS:  # also refuses NaN
            raise ValueError(f"strictness must be between 0 and {MAX_STRICTNESS:g}, got {self.strictness}")

    def check_model(self, readout: bool) -> None:
        """Raise ValueError when a model with (``readout``) or without a distortion readout cannot honour these."""
        if self.strictness and not readout:
            raise ValueError("strictness needs a model with a distortion readout (such as qground-nano)")


@dataclass(frozen=True)
class Region:
    """One class's mask in words: ``area_percent`` of the image's pixels (0..100), ``where`` (``region_location``)."""

    area_percent: float
    where: str


@dataclass(frozen=True)
class Stage:
    """A stage of a request starting (``QGroundEngine.stream(..., stages=True)``): ``"answer"`` (the images are
    read and encoded; the text comes next) or ``"masks"`` (the text is complete; the masks come next)."""

    name: str


@dataclass
class GroundingResult:
    """What the model said and drew for one image.

    ``masks``: class name → bool (H, W) in the original (EXIF-oriented) frame, merged when a class repeats;
    ``scores``: class → mean mask probability inside the mask; ``timings``: seconds per stage; ``strictness``: the
    detection strictness it was made with (``GenerationSettings``; 0 for several images); ``choices``: per
    ``[CHOICE]`` in the answer, the choice head's probability of each image of the prompt (the answer names the most
    probable one).
    """

    text: str
    raw_text: str
    masks: dict[str, np.ndarray]
    scores: dict[str, float]
    image_size: tuple[int, int] | None
    timings: dict[str, float]
    token_ids: list[int]
    warnings: list[str] = field(default_factory=list)
    strictness: float = 0.0
    choices: list[list[float]] = field(default_factory=list)

    @cached_property
    def regions(self) -> dict[str, Region]:
        """Class → its mask's area and place in words, in taxonomy order. Computed once, on first use (a 12 MP mask
        takes ≈ 9 ms), so read it only after the result is complete."""
        areas = area_percent(self.masks)
        return {name: Region(area, region_location(self.masks[name])) for name, area in areas.items()}


def _select(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> int:
    """Next token from (V,) logits: argmax when greedy, else temperature + nucleus sampling."""
    if settings.temperature == 0:
        return int(torch.argmax(logits))
    # Shifted so the top logit is 0 before dividing: a temperature close to 0 then tends to greedy instead of
    # overflowing to inf - inf = NaN probabilities.
    logits = logits.float()
    probs = torch.softmax((logits - logits.max()) / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < settings.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def decode(
    model: QGroundModel,
    input_ids: torch.Tensor,
    features: ImageFeatures | None,
    settings: GenerationSettings,
    constraint: TokenConstraint | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Generate for one prompt (1, L); yields ``(token_id, predicting_state (D,), choice)`` per new token, where
    ``choice`` is the choice head's (n,) logits over the prompt's n images when the token is ``[CHOICE]``, else None.
    ``constraint``: only tokens its grammar allows are generated (``qground.answers``).

    With ``settings.use_cache`` the prompt is prefilled once and every step feeds one token through the KV cache;
    without it every step re-runs the whole sequence (the PixelLM-style reference). Greedy decoding held to a grammar
    feeds a token together with the tokens the grammar then forces (one allowed token each; a grounding answer's seg
    tokens): one pass instead of one per token, the same tokens and states.
    """
    lm, head = model.language_model, model.llava.lm_head
    embed_tokens = model.llava.get_input_embeddings()
    eos = model.config.token_ids.eos
    generator = torch.Generator().manual_seed(settings.seed)
    sampled = model.config.llm.sampled_vocab
    with torch.inference_mode():
        input_ids = input_ids.to(model.device)
        embeds = model.embed(input_ids, features.tokens if features is not None else None)
        mask = model.attention_mask(input_ids, features)  # None unless padded image tokens are left out
        cache = DynamicCache(config=lm.config) if settings.use_cache else None
        hidden = lm(
            inputs_embeds=embeds, attention_mask=mask, past_key_values=cache, use_cache=settings.use_cache
        ).last_hidden_state
        keys = None
        if model.choice_head is not None:
            keys = model.image_keys(input_ids[0].to(hidden.device), hidden[0], features, 0)
    grammar_state = constraint.start() if constraint is not None else None
    choice_id = model.config.token_ids.choice
    step = 0
    # Inference mode is thread-local and a caller (Gradio) may resume this generator on another thread: every step
    # enters it anew, and nothing runs between a yield and the next step's ``with``.
    while step < settings.max_new_tokens:
        with torch.inference_mode():
            state = hidden[0, -1]
            logits = head(state).float()
            if sampled:
                logits[sampled:] = -float("inf")  # rows a conversion added
            if constraint is not None:
                logits[~constraint.mask(grammar_state)[: len(logits)]] = -float("inf")
            if step < settings.min_new_tokens:
                logits[eos] = -float("inf")
            if keys is not None and len(keys) == 0:
                logits[choice_id] = -float("inf")  # nothing to point at
            token = _select(logits, settings, generator)
            pointed = keys is not None and token == choice_id
            choice = model.choice_logits(state, keys) if pointed else None
        yield token, state, choice
        step += 1
        if token == eos:
            return
        run = [token]  # fed at once: the token and those the grammar then forces (greedy only: sampling draws each)
        if constraint is not None:
            grammar_state = constraint.advance(grammar_state, token)
            while settings.temperature == 0 and step + len(run) - 1 < settings.max_new_tokens:
                nxt = constraint.forced(grammar_state)  # the masks above would leave it alone, unless:
                early_end = nxt == eos and step + len(run) - 1 < settings.min_new_tokens
                unpointed = nxt == choice_id and keys is not None and len(keys) == 0
                if nxt is None or (sampled and nxt >= sampled) or early_end or unpointed:
                    break
                run.append(nxt)
                if nxt == eos:
                    break
                grammar_state = constraint.advance(grammar_state, nxt)
        fed = run[:-1] if run[-1] == eos else run
        with torch.inference_mode():
            new = embed_tokens(torch.tensor([fed], device=embeds.device))
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(1, len(fed))], dim=1)
            if settings.use_cache:
                hidden = lm(inputs_embeds=new, attention_mask=mask, past_key_values=cache, use_cache=True)
                hidden = hidden.last_hidden_state
            else:
                embeds = torch.cat([embeds, new], dim=1)
                hidden = lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        for k, forced in enumerate(run[1:]):  # hidden[0, k - len(fed)] has read run[: k + 1]: it predicts run[k + 1]
            with torch.inference_mode():
                state = hidden[0, k - len(fed)]
                choice = model.choice_logits(state, keys) if keys is not None and forced == choice_id else None
            yield forced, state, choice
            step += 1
            if forced == eos:
                return


class QGroundEngine:
    """Model + processor: images and a conversation in, a ``GroundingResult`` out (or a stream of text, then it)."""

    def __init__(
        self,
        model: QGroundModel,
        processor: QGroundProcessor,
        name: str = "qground",
        policy: InferencePolicy | None = None,
        folder: str | os.PathLike | None = None,
        time_budget: float | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        """``policy``: how the model is run (``qground.policy``; the checkpoint's ``inference_policy.json``, loaded by
        ``qground.checkpoint.load_policy``); None: as trained. ``folder``: the checkpoint folder it was loaded from
        (its model card is ``README.md`` there), None when built in memory. ``time_budget``: seconds a request may
        spend generating (None: no limit); at expiry the answer so far is the result, with a note
        (``BUDGET_NOTE``), so one slow request cannot hold a server's worker. ``lexicon``: words the model never
        trained on are read as trained words of the same sense (``qground.lexicon``; the checkpoint's
        ``lexicon.json``); None: questions reach the model as typed."""
        self.model = model.eval()
        self.folder = Path(folder) if folder is not None else None
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.policy = InferencePolicy()
        if time_budget is not None and not time_budget > 0:
            raise ValueError(f"the time budget must be a positive number of seconds, got {time_budget}")
        self.time_budget = time_budget
        self.lexicon = lexicon
        self._constraints: dict[tuple, TokenConstraint] = {}  # by (1 or 2 = several images, classes present)
        self._preparing = ThreadPoolExecutor(1, thread_name_prefix="qground-prepare")  # its thread starts on first use
        self._pending: set[Future] = set()  # preparations queued or running
        self.set_policy(policy or InferencePolicy())

    @property
    def config(self):
        return self.model.config

    def set_policy(self, policy: InferencePolicy) -> None:
        """Run the model by ``policy`` from now on (``ConfigError`` when the model cannot honour it)."""
        policy.check_model(self.model.config)
        self.policy = policy

    def _image_options(self) -> dict:
        """What the policy reads besides pixels: the photo, when masks are refined."""
        return {"keep_photo": bool(self.policy.mask_refine_radius)}

    def prepare(self, image: str | os.PathLike, photo: Image.Image | None = None) -> None:
        """Preprocess the photo at path ``image`` in a background thread as a request about it will, so that the
        request finds it done (a server calls this on upload, while the person picks a question; a request that comes
        sooner waits for it rather than computing it again). Nothing when the processor keeps no images
        (``cache_images`` 0) or as many preparations are already waiting (a flood of uploads queues no more work
        than the cache could keep); a photo that cannot be read is left for the request to report. ``photo``: the
        path's photo already read (``qground.imageio.load_image``: upright RGB), so it is not decoded again."""
        if not self.processor.cache_images or len(self._pending) >= self.processor.cache_images:
            return
        future = self._preparing.submit(self.processor.preprocess_image, image, **self._image_options(), decoded=photo)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def read_question(self, question: str) -> str:
        """``question`` as the model reads it: through the lexicon, if any, else as typed."""
        return question if self.lexicon is None else self.lexicon.rewrite(question)

    def read(self, turns: list[Turn]) -> list[Turn]:
        """``turns`` with every question as the model reads it (``read_question``); answers as given."""
        return [Turn(self.read_question(t.question), t.answer) for t in turns]

    def strictness(self, settings: GenerationSettings, num_images: int) -> float:
        """The detection strictness a request runs at: its own, else the policy's default; 0 with several images."""
        if num_images != 1:
            return 0.0
        return self.policy.default_strictness if settings.strictness is None else settings.strictness

    def encode(self, sample: dict, strictness: float) -> ImageFeatures | None:
        """The vision features of a processed ``sample``'s images under the policy: the readout gated at ``strictness``
        (``qground.policy.readout_thresholds``), a mirrored second view with ``flip_average``, the readout's coverage
        kept when masks blend with it."""
        metas: list[ImageMeta] = sample["metas"]
        if not metas:
            return None
        policy, model = self.policy, self.model
        pixels = sample["pixel_values"]
        gate = readout_thresholds(policy, model.config, strictness, pixels)
        content = [m.resized_size for m in metas]
        sizes = content if policy.flip_average else None
        with torch.inference_mode():
            return model.encode_images(
                pixels, sizes, gate, keep_coverage=bool(policy.readout_mask_weight), image_sizes=content
            )

    def constraint(
        self, num_images: int, present: frozenset[str] | None = None, asked: frozenset[str] | None = None
    ) -> TokenConstraint | None:
        """The answer grammar decoding is held to under the policy (``constrained_answers``): the one-image grammar,
        naming only the ``present`` classes and leading with yes/no only about the ``asked`` ones when given
        (``answers_follow_readout``), or with several images the comparison answer (models with a choice head); None:
        free decoding. Each grammar is compiled once."""
        if not self.policy.constrained_answers or (num_images > 1 and not self.config.choice_head):
            return None
        key = (min(num_images, 2), present, asked) if num_images <= 1 else (2, None, None)
        if key not in self._constraints:
            seg = SegTokens(self.config.seg_levels, self.config.seg_tokens_per_level)
            grammar = single_image_grammar(seg, present, asked) if key[0] <= 1 else comparison_grammar()
            self._constraints[key] = TokenConstraint.for_tokenizer(
                grammar, self.tokenizer, self.config.token_ids, self.config.llm.vocab_size
            )
        return self._constraints[key]

    def stream(
        self,
        images: list,
        turns: list[Turn],
        settings: GenerationSettings | None = None,
        stages: bool = False,
    ) -> Iterator[str | Stage | GroundingResult]:
        """Yield the display text as it grows, then the final ``GroundingResult`` (masks on the first image). With
        ``stages``, also a ``Stage`` when one starts: ``"answer"`` once the images are read and encoded, ``"masks"``
        once the text is complete (for progress displays)."""
        settings = settings or GenerationSettings()
        settings.check_model(self.config.readout)
        t0 = time.perf_counter()
        turns = self.read(turns)
        sample = self.processor(images, turns, **self._image_options())
        metas: list[ImageMeta] = sample["metas"]
        t1 = time.perf_counter()
        strictness = self.strictness(settings, len(metas))
        letters = {image: letter for letter, image in question_options(turns[-1].question, len(metas)).items()}
        features = self.encode(sample, strictness)
        present = asked = None
        if self.policy.answers_follow_readout and len(metas) == 1 and features.present is not None:
            present = frozenset(name for name, on in zip(CLASS_NAMES, features.present[0].tolist(), strict=True) if on)
            asked = asked_classes(turns[-1].question)
        constraint = self.constraint(len(metas), present, asked)
        if stages:
            yield Stage("answer")
        tokens: list[int] = []
        states: list[torch.Tensor] = []
        choices: list[list[float]] = []
        shown = ""
        t_first = None
        out_of_time = False
        for token, state, choice in decode(self.model, sample["input_ids"][None], features, settings, constraint):
            t_first = t_first or time.perf_counter()
            tokens.append(token)
            states.append(state)
            if choice is not None:
                choices.append(torch.softmax(choice, 0).tolist())
            text = self.display_text(tokens, choices, letters)
            if text != shown:
                shown = text
                yield text
            if self.time_budget is not None and time.perf_counter() - t1 > self.time_budget:
                out_of_time = token != self.config.token_ids.eos
                break
        t2 = time.perf_counter()
        if stages:
            yield Stage("masks")
        result = self._finish(tokens, states, features, metas[0] if metas else None, choices, letters)
        result.strictness = strictness
        if out_of_time:
            note = BUDGET_NOTE.format(seconds=self.time_budget)
            result.text = f"{result.text} … ({note})" if result.text else f"({note})"
            result.warnings.append(note)
        t3 = time.perf_counter()
        result.timings = {
            "preprocess": t1 - t0,
            "first_token": (t_first or t2) - t1,
            "generate": t2 - t1,
            "masks": t3 - t2,
            "total": t3 - t0,
            "tokens_per_s": len(tokens) / max(t2 - t1, 1e-9),
        }
        yield result

    def chat(self, images: list, turns: list[Turn], settings: GenerationSettings | None = None) -> GroundingResult:
        """Run ``stream`` to the end."""
        *_, result = self.stream(images, turns, settings)
        return result

    def ground(self, image, question: str = GROUNDING_QUESTION, settings: GenerationSettings | None = None):
        """One image, one question (the grounding request by default)."""
        return self.chat([image], [Turn(question)], settings)

    # -- parsing -----------------------------------------------------------------------------------------------------
    def display_text(
        self, tokens: list[int], choices: list[list[float]] = (), letters: Mapping[int, str] | None = None
    ) -> str:
        """Decoded answer without special tokens, each ``[CHOICE]`` shown as the place word of the image its
        ``choices`` entry (probabilities per image) favours; spaces before punctuation tidied; a finished answer (ended
        by end-of-sequence) that ends in a word, as a grounding answer's list of classes does, gets its full stop.
        ``letters`` (image
        index → option letter of a multiple-choice question): the answer starts with the letter of the option its first
        ``[CHOICE]`` picks, as such questions ask ("B. The first image.")."""
        picks = [max(range(len(probs)), key=probs.__getitem__) for probs in choices]
        pieces, start = [], 0
        for k, p in enumerate(p for p, t in enumerate(tokens) if t == self.config.token_ids.choice):
            pieces += [self.tokenizer.decode(tokens[start:p], skip_special_tokens=True), ordinal(picks[k])]
            start = p + 1
        text = " ".join([*pieces, self.tokenizer.decode(tokens[start:], skip_special_tokens=True)])
        text = re.sub(r"\s+([,.;:!?])", r"\1", text)
        text = re.sub(r"[ \t]+", " ", text).strip()
        if text and text[-1].isalnum() and tokens[-1] == self.config.token_ids.eos:  # a grounding answer's last class
            text += "."
        return f"{letters[picks[0]]}. {text}" if picks and letters and picks[0] in letters else text

    def _finish(
        self,
        tokens: list[int],
        states: list[torch.Tensor],
        features: ImageFeatures | None,
        meta: ImageMeta | None,
        choices: list[list[float]],
        letters: Mapping[int, str] | None = None,
    ) -> GroundingResult:
        model = self.model
        ids = torch.tensor([tokens], dtype=torch.long)
        groups = model.seg_groups(ids, strict=False)
        result = GroundingResult(
            text=self.display_text(tokens, choices, letters),
            raw_text=self.tokenizer.decode(tokens, skip_special_tokens=False).replace(self.tokenizer.eos_token, ""),
            masks={},
            scores={},
            image_size=meta.original_size if meta else None,
            timings={},
            token_ids=tokens,
            choices=choices,
        )
        if not groups:
            return result
        if features is None or meta is None:
            result.warnings.append("the answer contains segmentation tokens but no image was given")
            return result
        names, prev_end = [], 0
        for g in groups:
            phrase = _SEPARATORS.split(
                self.tokenizer.decode(tokens[prev_end : g.positions[0]], skip_special_tokens=True)
            )
            names.append(match_class(phrase[-1]) if phrase else None)
            prev_end = g.positions[-1] + 1
        seg_states = torch.stack([torch.stack([states[p] for p in g.positions]) for g in groups])
        drawn = ground_masks(model, self.policy, seg_states, features, meta, names)
        result.masks, result.scores = drawn.masks, drawn.scores
        result.warnings += ["a mask had no distortion name before it and was left out"] * drawn.unnamed
        return result
