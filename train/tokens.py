"""The prompt contract's tags on any checkpoint, and the token rows training must update.

A real checkpoint (SmolVLM-256M-Instruct, or a student composed from SmolLM2) has no `<think>`,
`</think>`, `<answer>`, `</answer>` tokens. `ensure_contract_tokens` adds them as ordinary (not
"special") added tokens — decoding with `skip_special_tokens=True` keeps them for the parser — and
grows the embedding (and an untied lm_head) to match. A new row starts as the mean of the rows of
the tag's own text pieces (`<answer>` → `<`, `answer`, `>` under the original vocabulary), so the
tag begins near what the model already reads for that text instead of at noise.

LoRA alone never moves embedding rows, so a new tag would keep its initial logit forever and the
model could not learn to close `</answer>`. `trainable_token_ids` names the rows to train: the tags,
the end token and the image wrapper tokens; `train.lora.apply_lora` trains them with peft's
trainable tokens (tied lm_head included), and they survive `merge_and_unload` and export.

The init is a pure function of the base weights, so re-adding the tags to the same base (loading a
run dir's adapter on top of its base) gives the same ids and the same starting rows.
"""

from __future__ import annotations

from mmkp_edge import prompt



def tag_id(tokenizer, tag: str) -> int | None:
    """The id of `tag` if it is one token of its own, else None."""
    encoded = tokenizer(tag, add_special_tokens=False)["input_ids"]
    tid = tokenizer.convert_tokens_to_ids(tag)
    if len(encoded) == 1 and tid is not None and encoded[0] == tid and tid != tokenizer.unk_token_id:
        return int(tid)
    return None


def missing_tags(tokenizer) -> list[str]:
    return [t for t in prompt.SPECIAL_TOKENS if tag_id(tokenizer, t) is None]


def text_pieces(tokenizer, token: str) -> list[int]:
    """Ids of `token`'s text under the vocabulary *without* it: encoding the text in two parts
    keeps an added token of the same name from matching."""
    head, tail = token[:-1], token[-1:]
    ids = []
    for part in (head, tail):
        if part:
            ids += tokenizer(part, add_special_tokens=False)["input_ids"]
    return ids


def _matrices(model) -> list:
    """The input embedding, and the lm_head weight when it is not tied to it."""
    rows = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != rows[0].data_ptr():
        rows.append(out.weight)
    return rows


def _init_rows(model, tokenizer, tokens: list[str]) -> None:
    """Row of each token := mean of its text pieces' rows, in the embedding and an untied lm_head."""
    import torch

    with torch.no_grad():
        for matrix in _matrices(model):
            for token in tokens:
                tid = tokenizer.convert_tokens_to_ids(token)
                pieces = [p for p in text_pieces(tokenizer, token) if p < matrix.shape[0] and p != tid]
                if pieces:
                    matrix[tid] = matrix[pieces].mean(dim=0)


def _grow(model, size: int) -> None:
    if size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(size, mean_resizing=False)


def add_tokens(model, tokenizer, tokens: list[str], special: bool = False) -> list[str]:
    """Add the `tokens` the tokenizer lacks, grow the model's embedding (and an untied lm_head)
    when needed, and initialise the new rows from their text pieces. Returns the tokens added."""
    from tokenizers import AddedToken

    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if not new:
        return []
    added = [AddedToken(t, special=special, normalized=False) for t in new]
    if special:
        tokenizer.add_special_tokens({"extra_special_tokens": added},
                                     replace_extra_special_tokens=False)
    else:
        tokenizer.add_tokens(added)
    _grow(model, len(tokenizer))
    _init_rows(model, tokenizer, new)
    return new


def ensure_contract_tokens(model, processor) -> list[str]:
    """Give the checkpoint the prompt's tags (see module docstring); returns the tags added.

    Also grows the model when the processor's tokenizer (e.g. one saved beside an adapter) already
    has more tokens than the model has rows: those rows are initialised the same way."""
    tok = processor.tokenizer
    added = add_tokens(model, tok, missing_tags(tok))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:                                # tokenizer saved with tags, base without
        _grow(model, len(tok))
        _init_rows(model, tok, [t for t, i in tok.get_vocab().items() if i >= rows])
    return added


def trainable_token_ids(tokenizer, image_wrappers: tuple[str, ...] = ()) -> list[int]:
    """Rows trained beside LoRA: the contract's tags, the end token, and the family's image
    wrapper tokens (`StudentFamily.image_wrapper_tokens`: new rows on a text-only backbone)."""
    ids = {tag_id(tokenizer, t) for t in prompt.SPECIAL_TOKENS}
    ids.add(tokenizer.eos_token_id)
    ids |= {tokenizer.convert_tokens_to_ids(t) for t in image_wrappers if t in tokenizer.get_vocab()}
    return sorted(int(i) for i in ids if i is not None)


def end_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos first, then the generation config's."""
    ids = [int(tokenizer.eos_token_id)]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in extra if isinstance(extra, list) else [extra]:
        if e is not None and int(e) not in ids:
            ids.append(int(e))
    return ids


def decoding_rules(model, tokenizer, think: str):
    """`mmkp_edge.decoding.DecodingRules` for a torch student (the same rules the bundle gets)."""
    from mmkp_edge.decoding import DecodingRules

    tags = {t: tag_id(tokenizer, t) for t in prompt.SPECIAL_TOKENS}
    if None in tags.values():
        raise ValueError(f"tokenizer lacks the prompt's tags {missing_tags(tokenizer)}")
    return DecodingRules.build(think, eos_ids=end_ids(model, tokenizer),
                               think_open=tags[prompt.THINK_OPEN], think_close=tags[prompt.THINK_CLOSE],
                               answer_close=tags[prompt.ANSWER_CLOSE])
