"""KeyphrasePredictor: the public runtime API — posts in, keyphrases out, torch-free.

    predictor = KeyphrasePredictor.from_bundle("bundle/", threads=4)
    [p.keyphrases for p in predictor.predict([Query("storm tonight", "storm.jpg")], think="off")]

Each input yields exactly one `Prediction`, in input order. A bad item (unreadable or missing image
under `bad_image="error"`, a line that was not valid JSON) yields a Prediction with `error` set and
never fails the batch. A post too long for the model's context is answered from its beginning
(mmkp_edge.truncation, the rule training uses too) and flagged `truncated`. Valid items are
prepared one by one (image opened through mmkp_edge.images, preprocessed, prompt encoded and cut
to fit), then generated together in batches of
`batch_size`; think mode `off` also masks `<think>`/`</think>` so no reasoning tokens can appear.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import prompt
from .bundle import Bundle
from .chat import PromptEncoder
from .decoding import rules_for_manifest
from .errors import InputError
from .generate import Generator, Request
from .images import BadImage, check_policy, post_image
from .parser import parse
from .posts import Post
from .query import BadInput, Query, clean_text
from .truncation import Fitted, fit, prompt_limit

Item = Query | Post | BadInput | str


@dataclass(frozen=True)
class PredictConfig:
    think: str = "auto"            # off | on | auto (mmkp_edge.prompt.THINK_MODES)
    batch_size: int = 8            # posts generated together
    max_new_tokens: int = 96       # per post (also capped by the model's context)
    bad_image: str = "error"       # missing / unreadable image: "error" the item, or answer it
                                   # "text-only" with a warning (mmkp_edge.images.BAD_IMAGE_POLICIES)

    def validate(self) -> "PredictConfig":
        if self.think not in prompt.THINK_MODES:
            raise InputError(f"think must be one of {', '.join(prompt.THINK_MODES)}; got {self.think!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise InputError("batch_size and max_new_tokens must be at least 1")
        check_policy(self.bad_image)
        return self


@dataclass(frozen=True)
class Prediction:
    id: str | None                      # the input's id, if it had one
    keyphrases: list[str] = field(default_factory=list)   # parsed, most important first
    rationale: str | None = None        # the <think> span, None if the model did not think
    thought: bool = False               # the output opened a <think> span
    text: str = ""                      # prime + generated text (special tokens dropped, tags kept)
    token_ids: tuple[int, ...] = ()     # generated ids, the stop id included
    finish: str | None = None           # "stop" (</answer> or eos) | "length"
    timings: dict = field(default_factory=dict)   # seconds: preprocess (this item); vision, prefill,
                                                  # decode (its batch); batch_size
    error: str | None = None            # why there is no answer (one line)
    warning: str | None = None          # answered, but something was off (e.g. image ignored)
    truncated: bool = False             # the post text / OCR was cut to fit the model's context

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict:
        return {"id": self.id, "keyphrases": self.keyphrases, "rationale": self.rationale,
                "thought": self.thought, "text": self.text, "generated_tokens": self.generated_tokens,
                "finish": self.finish, "timings": {k: round(v, 6) for k, v in self.timings.items()},
                "error": self.error, "warning": self.warning, "truncated": self.truncated}


@dataclass
class _Prepared:
    id: str | None
    request: Request
    budget: int
    preprocess_s: float
    warning: str | None
    truncated: bool


def _as_query(item: Item) -> Query | BadInput:
    if isinstance(item, (Query, BadInput)):
        return item
    if isinstance(item, Post):
        return Query(text=item.text, image=item.image, ocr=item.ocr, id=item.id,
                     missing_image=item.missing_image)
    if isinstance(item, str):
        return Query(text=item)
    return BadInput("?", f"cannot predict for a {type(item).__name__}; pass a Query, Post or str")


def fit_query(encoder: PromptEncoder, max_context: int, query: Query,
              grid: tuple[int, ...] | None, max_new_tokens: int) -> Fitted:
    """The query's text and OCR, cleaned and cut from the end so that its prompt leaves
    `max_new_tokens` of the context (mmkp_edge.truncation: the rule training uses too)."""
    return fit(clean_text(query.text), clean_text(query.ocr),
               lambda text, ocr: len(encoder.encode(text, ocr, grid, "auto")),
               prompt_limit(max_context, max_new_tokens))


def text_prompt(encoder: PromptEncoder, max_context: int, item: Item, think: str = "auto",
                max_new_tokens: int = 96) -> str:
    """The prompt text the runtime renders for `item` answered from its text alone (an image is
    ignored): chat template, user text cut to fit, think prime. For engines that tokenize text
    themselves (bench's llama.cpp variant); a bad item raises InputError."""
    query = _as_query(item)
    if isinstance(query, BadInput):
        raise InputError(query.error)
    fitted = fit_query(encoder, max_context, query, None, max_new_tokens)
    return encoder.text(fitted.text, fitted.ocr, None, think)


class KeyphrasePredictor:
    """Loaded bundle + batched greedy generation; see the module docstring."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.manifest = bundle.manifest
        st = self.manifest.special_tokens
        self.tags = {st.think_open: prompt.THINK_OPEN, st.think_close: prompt.THINK_CLOSE,
                     st.answer_open: prompt.ANSWER_OPEN, st.answer_close: prompt.ANSWER_CLOSE}
        self._prefix: np.ndarray | None = None    # the shared prompt prefix's ids, once needed

    @classmethod
    def from_bundle(cls, path: str | os.PathLike | None = None, *, threads: int | None = None,
                    providers: str | Sequence[str] | None = None, verify: bool = True
                    ) -> "KeyphrasePredictor":
        """Load a bundle folder (default $MMKP_BUNDLE) on the given providers ('cpu', 'cuda')."""
        return cls(Bundle.load(path, threads=threads, providers=providers, verify=verify))

    # ------------------------------------------------------------ one item

    def _prepare(self, query: Query, cfg: PredictConfig) -> _Prepared | Prediction:
        t0 = time.perf_counter()
        warning = None
        pixels, grid, family = None, None, self.bundle.family
        try:
            loaded = post_image(query.image, query.missing_image, cfg.bad_image)
        except BadImage as exc:
            return Prediction(query.id, error=str(exc))
        if loaded.problem is not None:
            warning = f"{loaded.problem}; answered from the text only"
        if loaded.image is not None:
            prepared = family.preprocess(loaded.image)
            pixels, grid = prepared.pixel_values, prepared.grid
        encoder = self.bundle.encoder
        fitted = fit_query(encoder, self.manifest.model.max_context, query, grid, cfg.max_new_tokens)
        ids = encoder.encode(fitted.text, fitted.ocr, grid, cfg.think)
        expected = 0 if grid is None else family.image_tokens(grid)
        if int((ids == self.manifest.special_tokens.image).sum()) != expected:
            return Prediction(query.id, error=f"the post text contains the image placeholder "
                                              f"{self.manifest.image.image_token!r}; remove it")
        room = self.manifest.model.max_context - len(ids)
        if room < 1:
            return Prediction(query.id, error=f"the prompt is {len(ids)} tokens without its text "
                                              f"(chat and image tokens); this model's context is "
                                              f"{self.manifest.model.max_context}")
        request = Request(ids, pixels, () if grid is None else (grid,))
        return _Prepared(query.id, request, min(cfg.max_new_tokens, room),
                         time.perf_counter() - t0, warning, fitted.truncated)

    def _finish(self, item: _Prepared, tokens: list[int], finish: str, times: dict,
                think: str) -> Prediction:
        text = prompt.prime(think) + self.bundle.encoder.decode(tokens, self.tags)
        parsed = parse(text)
        return Prediction(item.id, keyphrases=parsed.keyphrases, rationale=parsed.rationale,
                          thought=parsed.thought, text=text, token_ids=tuple(tokens), finish=finish,
                          timings={"preprocess_s": item.preprocess_s, **times}, warning=item.warning,
                          truncated=item.truncated)

    # ------------------------------------------------------------ batches

    def request(self, item: Item, think: str = "auto", max_new_tokens: int = 96) -> Request:
        """The generation request for one post (benchmarks and parity checks drive
        `generator()` / `Generator.step()` with these); a bad item raises InputError. A long post
        is cut to leave `max_new_tokens` of the context, as predict() does."""
        cfg = PredictConfig(think=think, max_new_tokens=max_new_tokens).validate()
        prepared = self._prepare(_as_query(item), cfg)
        if isinstance(prepared, Prediction):
            raise InputError(prepared.error)
        return prepared.request

    def generator(self, requests: Sequence[Request], think: str = "auto",
                  max_new_tokens: int | Sequence[int] = 96, *, stops: bool = True,
                  reuse_prefix: bool = True, **options) -> Generator:
        """A Generator wired with this bundle's token ids and the think mode's suppression.
        `stops=False` ignores the stop ids: every row runs its whole budget (benchmarks force the
        same token count on every engine this way). `reuse_prefix=False` prefills every prompt
        whole instead of reusing the shared prompt prefix's K/V (mmkp_edge.generate)."""
        st = self.manifest.special_tokens
        rules = rules_for_manifest(st, think)
        if reuse_prefix and self._prefix is None:
            self._prefix = self.bundle.encoder.prefix_ids()
        return Generator(self.bundle.graphs, requests, image_token_id=st.image, pad_id=st.pad,
                         stop_ids=rules.stop_ids if stops else (), max_new_tokens=max_new_tokens,
                         suppress_ids=rules.suppress_ids, positions=self.bundle.family,
                         prefix=self._prefix if reuse_prefix else (), **options)

    def _generate(self, batch: list[_Prepared], cfg: PredictConfig) -> list[Prediction]:
        gen = self.generator([p.request for p in batch], cfg.think, [p.budget for p in batch])
        outputs = gen.run()
        times = {"vision_s": gen.times.vision_s, "prefill_s": gen.times.prefill_s,
                 "decode_s": gen.times.decode_s, "batch_size": float(len(batch))}
        return [self._finish(p, o.tokens, o.finish, times, cfg.think) for p, o in zip(batch, outputs)]

    def stream(self, items: Iterable[Item], **options) -> Iterator[Prediction]:
        """Predictions in input order, yielded batch by batch (for long inputs / JSONL)."""
        cfg = PredictConfig(**options).validate()
        pending: list[Prediction | _Prepared] = []

        def flush() -> Iterator[Prediction]:
            ready = [p for p in pending if isinstance(p, _Prepared)]
            done = iter(self._generate(ready, cfg) if ready else [])
            for p in pending:
                yield next(done) if isinstance(p, _Prepared) else p
            pending.clear()

        for item in items:
            query = _as_query(item)
            if isinstance(query, BadInput):
                pending.append(Prediction(query.id, error=query.error))
            else:
                pending.append(self._prepare(query, cfg))
            if sum(isinstance(p, _Prepared) for p in pending) >= cfg.batch_size:
                yield from flush()
        yield from flush()

    def predict(self, items: Iterable[Item], *, think: str = "auto", batch_size: int = 8,
                max_new_tokens: int = 96, bad_image: str = "error") -> list[Prediction]:
        """One Prediction per item, in order. Items: Query, Post, str (text only) or BadInput."""
        return list(self.stream(items, think=think, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, bad_image=bad_image))

    def predict_one(self, text: str = "", image=None, *, think: str = "auto", ocr: str = "",
                    max_new_tokens: int = 96) -> Prediction:
        """Sugar for one post; `image` may be a path, bytes, a PIL image or None."""
        return self.predict([Query(text=text, image=image, ocr=ocr)], think=think,
                            max_new_tokens=max_new_tokens)[0]
