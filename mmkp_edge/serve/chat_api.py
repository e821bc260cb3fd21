"""`POST /v1/chat/completions`, compatible enough for OpenAI clients (and train/cot/openai_teacher.py).

The student answers one post, so a chat body is read as one: the LAST user message's text parts are
the post text and its one `image_url` part (a `data:image/…;base64,` URI) the image; system and
earlier messages are ignored, because the student was trained on its own fixed instruction
(mmkp_edge.prompt). Decoding is greedy, so `temperature`/`top_p`/`seed` are accepted and ignored;
what cannot be honoured (`n` > 1, `stream`, a remote image URL, a second image) is a 400 naming the
field. `max_tokens` (or `max_completion_tokens`) is max_new_tokens; `think` (off|on|auto) is an
extension. The reply is the assistant message with the model's text (`<answer>kp1; kp2</answer>`,
after `<think>…</think>` when it reasoned), `usage`, and the full prediction under `mmkp`.
"""

from __future__ import annotations

import time
import uuid

from ..predictor import Prediction
from .inputs import ApiError, Limits, PostRequest, image_bytes, new_tokens, think_mode

_FINISH = {"stop": "stop", "length": "length"}


def _content(content, param: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Message content → (text pieces, [(image field, url)])."""
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise ApiError(f"{param}: must be a string or a list of content parts", param)
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(f"{at}.text: must be a string", f"{at}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append((f"{at}.image_url.url", url))
        else:
            raise ApiError(f"{at}: a content part must be {{\"type\": \"text\"}} or "
                           f"{{\"type\": \"image_url\"}}", at)
    return texts, images


def chat_post(body, limits: Limits, served_model: str) -> PostRequest:
    """A chat-completions body → the one post it asks about."""
    if not isinstance(body, dict):
        raise ApiError(f"the body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model not in (None, "", served_model):
        raise ApiError(f"model {model!r} is not served here (this server serves {served_model!r})",
                       "model", status=404, code="model_not_found", kind="unknown_model")
    if body.get("stream"):
        raise ApiError("stream: streaming is not supported; send stream=false", "stream")
    if body.get("n", 1) != 1:
        raise ApiError("n: only one choice is generated (greedy decoding)", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages: must be a non-empty list", "messages")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ApiError("messages: no message with role 'user'", "messages")
    last = users[-1]
    texts, images = _content(messages[last].get("content"), f"messages[{last}].content")
    if len(images) > 1:
        raise ApiError(f"{images[1][0]}: one image per request (the post's image)", images[1][0])
    image = image_bytes(images[0][1], images[0][0]) if images else None
    text = "\n".join(t for t in texts if t.strip())
    param = f"messages[{last}].content"
    if len(text) > limits.max_text_chars:
        raise ApiError(f"{param}: {len(text)} characters; this server takes at most "
                       f"{limits.max_text_chars}", param, code="text_too_long")
    if not text and image is None:
        raise ApiError(f"{param}: give a text, an image or both", param, code="empty_post")
    budget_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    budget = body.get(budget_key)
    budget = limits.default_new_tokens if budget is None else new_tokens(budget, budget_key, limits)
    think = think_mode(body.get("think", limits.think), "think")
    return PostRequest(where="", text=text, ocr="", id=None, image=image, think=think,
                       max_new_tokens=budget)


def completion(prediction: Prediction, prompt_tokens: int, model: str) -> dict:
    """The chat.completion reply for one prediction."""
    completion_tokens = prediction.generated_tokens
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": _FINISH.get(prediction.finish, "stop"),
                         "message": {"role": "assistant", "content": prediction.text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "mmkp": prediction.to_json()}


def models(model: str, created: int) -> dict:
    """`GET /v1/models`: the one served model."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created,
                                        "owned_by": "mmkp-edge"}]}
