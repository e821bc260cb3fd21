"""The `local` teacher: a Hugging Face VLM of a registered student family (by hub id, checkpoint
folder or run dir), generating greedily in batches on the local device.

For teams without an API budget, or to distil from a larger open model. Models load through
`train.student.load_student`, so any family the student supports (SmolVLM / Idefics3 today) can
teach, with the same loading rules and no remote code. The pipeline calls `complete()` for one post
at a time with up to `batch_size` calls outstanding; this teacher gathers them into one padded
batch (`train.collate`) and answers them together, so the pipeline needs no special case.
Decoding is greedy (the samples/temperature options of the HTTP teacher do not apply).
"""

from __future__ import annotations

import asyncio

from mmkp_edge.errors import InputError

from .teachers import TeacherReply, TeacherRequest, Usage


def chat_text(processor, request: TeacherRequest) -> str:
    """The teacher prompt in the model's chat template (system text folded into the user turn,
    since not every VLM template accepts a system role)."""
    content = [{"type": "image"}] if request.image is not None else []
    content.append({"type": "text", "text": f"{request.system}\n\n{request.prompt}"})
    return processor.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)


def generate_replies(student, requests: list[TeacherRequest],
                     max_new_tokens: int) -> list[TeacherReply]:
    """Greedy-decode one left-padded batch; one reply (with token usage) per request, in order."""
    import torch

    from ..collate import encode, pad_batch
    from ..student import Rendered

    model, processor = student.model, student.processor
    tok = processor.tokenizer
    items = [encode(processor, Rendered(post_id=r.post.id, prompt=chat_text(processor, r),
                                        prime="", target=None, image=r.image))
             for r in requests]
    batch = pad_batch(items, tok.pad_token_id, "left", labels=False)
    param = next(model.parameters())
    batch = {k: v.to(param.device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(param.dtype)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)                     # (B, T + new)
    new = out[:, batch["input_ids"].shape[1]:].tolist()                         # (B, new)
    prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()                # (B,)
    replies = []
    for row, n_prompt in zip(new, prompt_lengths):
        ids = row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        replies.append(TeacherReply(text=tok.decode(ids, skip_special_tokens=True),
                                    usage=Usage(int(n_prompt), len(ids))))
    return replies


class LocalTeacher:
    name = "local"

    def __init__(self, student, model: str, batch_size: int, max_tokens: int):
        self.student, self.model = student, model
        self.max_in_flight = batch_size
        self._max_tokens = max_tokens
        self._waiting: list[tuple[TeacherRequest, asyncio.Future]] = []
        self._pending_flush: asyncio.Handle | None = None

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if len(self._waiting) >= self.max_in_flight:
            self._flush()
        elif self._pending_flush is None:
            # Everything the other workers enqueue in this loop iteration joins the batch.
            self._pending_flush = asyncio.get_running_loop().call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._pending_flush is not None:
            self._pending_flush.cancel()
            self._pending_flush = None
        batch, self._waiting = self._waiting, []
        batch = [(r, f) for r, f in batch if not f.done()]   # cancelled callers drop out
        if not batch:
            return
        try:
            replies = generate_replies(self.student, [r for r, _ in batch], self._max_tokens)
        except (RuntimeError, ValueError) as exc:   # e.g. out of memory on one long batch
            replies = [TeacherReply(text=None, error=f"generation failed: {exc}")] * len(batch)
        for (_, future), reply in zip(batch, replies):
            future.set_result(reply)

    async def aclose(self) -> None:
        self.student = None


def _device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--set device={name}: CUDA is not available on this machine")
    return name


def build(config) -> LocalTeacher:
    if config.samples > 1 or config.temperature > 0:
        raise InputError("the local teacher decodes greedily: use --samples 1 and temperature 0")
    import torch

    from ..student import load_student

    device = _device(config.device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    student = load_student(config.model, dtype=dtype, device=device)
    return LocalTeacher(student, config.model, config.batch_size, config.max_tokens)
