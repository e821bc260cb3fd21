"""Request bodies → posts to predict, checked field by field before anything reaches the model.

Every refusal is an `ApiError` carrying the HTTP status and the field it is about (`param`, e.g.
`posts[2].image`), so a client learns what to fix from one reply and the server never answers bad
input with a 500 or logs a traceback for it. Images arrive only as bytes — base64 or a data URI in
JSON, a file in a multipart form — because a server must never open a path or fetch a URL that a
client names. The limits (characters, pixels, posts, max_new_tokens) are checked here, and the
image is decoded here too (in the handler's worker thread), so an unreadable picture is a 400
naming `image` rather than an item error deep in generation.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from dataclasses import dataclass

from PIL import Image

from .. import prompt
from ..images import open_image
from ..predictor import KeyphrasePredictor, PredictConfig, Prediction, _Prepared
from ..query import Query, clean_text

POST_FIELDS = ("id", "text", "ocr", "image", "think", "max_new_tokens")
BATCH_FIELDS = ("posts", "think", "max_new_tokens")
_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


class ApiError(Exception):
    """An answer other than 200: HTTP `status`, a one-line `message`, the offending field as
    `param` (client mistakes), `kind` for the errors metric, extra `headers` (Retry-After)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str = "invalid_request", kind: str = "bad_request",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        """OpenAI's error shape (openai clients and train/cot/openai_teacher.py read `message`)."""
        kind = ("overloaded_error" if self.status in (429, 503) else
                "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    max_image_pixels: int
    max_posts: int
    max_new_tokens: int          # the most a post may ask for
    default_new_tokens: int      # what a post gets when it asks for none
    think: str                   # default think mode


@dataclass(frozen=True)
class PostRequest:
    """One post as the client sent it, types checked; the image still encoded."""
    where: str                   # field path for errors found later ("posts[1]", "" for a lone post)
    text: str
    ocr: str
    id: str | None
    image: bytes | None
    think: str
    max_new_tokens: int

    def field(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name


def parse_json(body: bytes):
    if not body.strip():
        raise ApiError("the request body is empty; send a JSON object", code="empty_body")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else "not UTF-8"
        raise ApiError(f"the request body is not valid JSON ({detail})", code="invalid_json") from None
    except RecursionError:
        raise ApiError("the request body is nested too deeply", code="invalid_json") from None


def _string(value, param: str, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise ApiError(f"{param}: must be a string, got {type(value).__name__}", param)
    if limit is not None and len(value) > limit:
        raise ApiError(f"{param}: {len(value)} characters; this server takes at most {limit}",
                       param, code="text_too_long")
    return clean_text(value)


def think_mode(value, param: str) -> str:
    if value not in prompt.THINK_MODES:
        raise ApiError(f"{param}: must be one of {', '.join(prompt.THINK_MODES)}; got {value!r}", param)
    return value


def new_tokens(value, param: str, limits: Limits) -> int:
    if isinstance(value, str) and value.strip().isdigit():       # multipart fields are strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{param}: must be an integer", param)
    if not 1 <= value <= limits.max_new_tokens:
        raise ApiError(f"{param}: must be within 1..{limits.max_new_tokens}; got {value}", param)
    return value


def image_bytes(value, param: str) -> bytes | None:
    """A base64 string or a `data:image/…;base64,` URI → bytes (None for null / "")."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(f"{param}: must be a base64 string or a data: URI", param)
    match = _DATA_URI.match(value)
    if not match and _SCHEME.match(value):         # a URL (':' is not in base64's alphabet)
        raise ApiError(f"{param}: send the image itself (base64 or data:image/...;base64,...); "
                       f"this server fetches no URLs", param, code="invalid_image")
    try:
        return base64.b64decode(value[match.end():] if match else value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"{param}: not valid base64 (send the image's bytes base64-encoded; this "
                       f"server opens no paths)", param, code="invalid_image") from None


def decode_image(data: bytes, param: str, limits: Limits) -> Image.Image:
    """Bytes → RGB image, refusing what is not an image or has too many pixels (before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
        w, h = header.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(f"{param}: not a readable image ({str(exc).splitlines()[0]})", param,
                       code="invalid_image") from None
    if w * h > limits.max_image_pixels:
        raise ApiError(f"{param}: {w}x{h} = {w * h} pixels; this server takes at most "
                       f"{limits.max_image_pixels}", param, code="image_too_large")
    loaded = open_image(data)
    if loaded.image is None:
        raise ApiError(f"{param}: {loaded.problem}", param, code="invalid_image")
    return loaded.image


def post_from_fields(obj: dict, where: str, limits: Limits, think: str, budget: int) -> PostRequest:
    """One post object (JSON, or a multipart form's fields) → PostRequest."""
    at = (lambda name: f"{where}.{name}") if where else (lambda name: name)
    unknown = sorted(set(obj) - set(POST_FIELDS))
    if unknown:
        raise ApiError(f"{at(unknown[0])}: unknown field (a post has {', '.join(POST_FIELDS)})",
                       at(unknown[0]), code="unknown_field")
    post_id = obj.get("id")
    if post_id is not None and (isinstance(post_id, bool) or not isinstance(post_id, (str, int))):
        raise ApiError(f"{at('id')}: must be a string or an integer", at("id"))
    text = _string(obj.get("text", ""), at("text"), limits.max_text_chars)
    ocr = _string(obj.get("ocr", "") or "", at("ocr"), limits.max_text_chars)
    image = obj.get("image")
    if not isinstance(image, bytes):
        image = image_bytes(image, at("image"))
    if not text and not image:
        raise ApiError(f"{where or 'the post'}: give a text, an image or both", at("text"),
                       code="empty_post")
    return PostRequest(where=where, text=text, ocr=ocr, image=image or None,
                       id=None if post_id is None else str(post_id),
                       think=think_mode(obj.get("think", think), at("think")),
                       max_new_tokens=new_tokens(obj.get("max_new_tokens", budget),
                                                 at("max_new_tokens"), limits))


def native_posts(obj, limits: Limits) -> list[PostRequest]:
    """`POST /v1/keyphrases` JSON: one post object, or {"posts": [...], "think", "max_new_tokens"}."""
    if not isinstance(obj, dict):
        raise ApiError(f"the body must be a JSON object (one post, or {{\"posts\": [...]}}), "
                       f"got {type(obj).__name__}")
    if "posts" not in obj:
        return [post_from_fields(obj, "", limits, limits.think, limits.default_new_tokens)]
    unknown = sorted(set(obj) - set(BATCH_FIELDS))
    if unknown:
        raise ApiError(f"{unknown[0]}: unknown field next to 'posts' (per-post fields go inside "
                       f"each post)", unknown[0], code="unknown_field")
    posts = obj["posts"]
    if not isinstance(posts, list) or not posts:
        raise ApiError("posts: must be a non-empty list of post objects", "posts")
    if len(posts) > limits.max_posts:
        raise ApiError(f"posts: {len(posts)} posts; this server takes at most {limits.max_posts} "
                       f"per request", "posts", code="too_many_posts")
    think = think_mode(obj.get("think", limits.think), "think")
    budget = new_tokens(obj.get("max_new_tokens", limits.default_new_tokens), "max_new_tokens", limits)
    out = []
    for i, post in enumerate(posts):
        if not isinstance(post, dict):
            raise ApiError(f"posts[{i}]: must be an object, got {type(post).__name__}", f"posts[{i}]")
        out.append(post_from_fields(post, f"posts[{i}]", limits, think, budget))
    return out


def prepare(predictor: KeyphrasePredictor, post: PostRequest, limits: Limits) -> _Prepared:
    """Decode the image and build the generation request (KeyphrasePredictor._prepare: the same
    preprocessing, prompt and token budget as mmkp-predict); a refusal names the field."""
    image = None if post.image is None else decode_image(post.image, post.field("image"), limits)
    cfg = PredictConfig(think=post.think, max_new_tokens=post.max_new_tokens)
    prepared = predictor._prepare(Query(text=post.text, image=image, ocr=post.ocr, id=post.id), cfg)
    if isinstance(prepared, Prediction):      # what the runtime refuses is about the text
        raise ApiError(f"{post.field('text')}: {prepared.error}", post.field("text"),
                       code="invalid_text")
    return prepared
