"""Reading posts from the formats datasets come in, so every tool (and training) sees one JSONL schema.

Accepted inputs, chosen by `fmt` or detected:
- `cmkp`: CMKP `text<sep>kp1;kp2<sep>image_url` lines (+ line-aligned `--ocr` / `--attributes`);
  detected for any suffix other than .json / .jsonl / .ndjson.
- `jsonl`: one post object per line (mmkp_edge.posts schema), or one LLaVA record per line.
- `llava`: a JSON list (AimKP / LLaVA style) of
  `{"id": str, "image": str, "conversations": [{"from": "human", "value": "<image>\\n…post…"},
  {"from": "gpt", "value": "kp1; kp2"}]}`: the post text is the first human/user turn with the
  `<image>` token removed (or the `text` group of `text_pattern` matched in it); the keyphrases and
  an optional `<think>` rationale are read from the first gpt/assistant turn by mmkp_edge.parser.
- `records`: a JSON list of post objects `{"text", "keyphrases": [..] | "kp1;kp2", "image", "id"?,
  "rationale"?, "ocr"?, "attributes"?}`.
A `.json` file starting with `[` is a JSON list (llava or records by its first element); otherwise
it is read as JSONL. Anything else fails with one line naming the file and the record.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import InputError
from ..parser import parse
from ..posts import Post, json_lines, post_from_json, read_cmkp, read_jsonl, split_keyphrases

FORMATS = ("auto", "cmkp", "jsonl", "llava", "records")
_HUMAN = ("human", "user")
_ASSISTANT = ("gpt", "assistant")
_SHAPES = ("expected a JSON list of LLaVA records {id, image, conversations: [{from: human, value}, "
           "{from: gpt, value: 'kp1; kp2'}]} or of post objects {text, keyphrases, image}")


def _first_char(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(4096).decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")[:1]
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None


def detect_format(path: str | os.PathLike) -> str:
    """`cmkp`, `jsonl` or `json-list` from the suffix and, for .json, the first character."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".ndjson"):
        return "cmkp"
    return "json-list" if suffix == ".json" and _first_char(path) == "[" else "jsonl"


def llava_post(obj, where: str, base: Path, image_root: Path | None,
               text_pattern: re.Pattern | None) -> Post:
    """One LLaVA/AimKP conversation record → Post."""
    if not isinstance(obj, dict) or not isinstance(obj.get("conversations"), list):
        raise InputError(f"{where}: {_SHAPES}")
    turns = obj["conversations"]
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
        raise InputError(f"{where}: every conversation turn must be an object with a string 'value'")
    human = next((t["value"] for t in turns if str(t.get("from", "")).lower() in _HUMAN), None)
    answer = next((t["value"] for t in turns if str(t.get("from", "")).lower() in _ASSISTANT), None)
    if human is None or answer is None:
        raise InputError(f"{where}: needs a human/user turn and a gpt/assistant turn")
    text = human.replace("<image>", " ")
    if text_pattern is not None:
        match = text_pattern.search(human)
        if match is None:
            raise InputError(f"{where}: --text-pattern does not match the human turn")
        text = match.group("text") if "text" in text_pattern.groupindex else match.group(1)
    parsed = parse(answer)
    if not parsed.keyphrases:
        raise InputError(f"{where}: the gpt turn has no keyphrases")
    image = obj.get("image")
    if isinstance(image, list):
        if len(image) > 1:
            raise InputError(f"{where}: {len(image)} images; a post has at most one")
        image = image[0] if image else None
    record = {"text": " ".join(text.split()), "image": image, "keyphrases": parsed.keyphrases,
              "rationale": parsed.rationale or None}
    if "id" in obj:
        record["id"] = obj["id"]
    return post_from_json(record, where, base, image_root)


def _record_post(obj, where: str, base: Path, image_root: Path | None) -> Post:
    if not isinstance(obj, dict) or not ("text" in obj or "keyphrases" in obj):
        raise InputError(f"{where}: {_SHAPES}")
    if isinstance(obj.get("keyphrases"), str):
        obj = {**obj, "keyphrases": list(split_keyphrases(obj["keyphrases"]))}
    return post_from_json(obj, where, base, image_root)


def _unique_ids(posts: list[Post], path: Path) -> list[Post]:
    seen: set[str] = set()
    for p in posts:
        if p.id in seen:
            raise InputError(f"{path}: duplicate id {p.id!r}")
        seen.add(p.id)
    return posts


def _read_json_list(path: Path, fmt: str, image_root: Path | None,
                    text_pattern: re.Pattern | None) -> list[Post]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: {_SHAPES}, got a JSON {type(data).__name__}")
    if not data:
        raise InputError(f"{path}: no posts")
    if fmt == "auto":
        fmt = "llava" if isinstance(data[0], dict) and "conversations" in data[0] else "records"
    posts = []
    for i, obj in enumerate(data):
        where = f"{path}: record {i}"
        post = (llava_post(obj, where, path.parent, image_root, text_pattern) if fmt == "llava"
                else _record_post(obj, where, path.parent, image_root))
        if not (isinstance(obj, dict) and "id" in obj):
            post = post.replace(id=f"{path.stem}-{i}")
        posts.append(post)
    return _unique_ids(posts, path)


def _read_llava_jsonl(path: Path, image_root: Path | None, text_pattern) -> list[Post]:
    posts = []
    for number, where, obj in json_lines(path):
        post = llava_post(obj, where, path.parent, image_root, text_pattern)
        posts.append(post if "id" in obj else post.replace(id=f"{path.stem}-{number}"))
    if not posts:
        raise InputError(f"{path}: no posts")
    return _unique_ids(posts, path)


def _refuse_single_object(path: Path) -> None:
    """A .json file that is one JSON object (not a list, not JSONL) is a shape we do not read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return                                   # several lines of objects: read as JSONL
    raise InputError(f"{path}: {_SHAPES}, got a single JSON {type(data).__name__} "
                     f"(name JSON Lines files .jsonl)")


def load_posts(path: str | os.PathLike, *, fmt: str = "auto", ocr=None, attributes=None,
               image_root=None, text_pattern: str | None = None) -> list[Post]:
    """Read posts from any accepted format (see the module docstring)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    root = Path(image_root) if image_root else None
    pattern = None
    if text_pattern is not None:
        try:
            pattern = re.compile(text_pattern, re.DOTALL)
        except re.error as exc:
            raise InputError(f"--text-pattern: invalid regular expression ({exc})") from None
        if pattern.groups < 1:
            raise InputError("--text-pattern needs a group, e.g. 'Post: (?P<text>.*)'")
    kind = detect_format(path) if fmt == "auto" else fmt
    if (ocr is not None or attributes is not None) and kind != "cmkp":
        raise InputError(f"{path}: --ocr/--attributes apply to CMKP files; JSON carries them inline")
    if kind == "cmkp":
        return read_cmkp(path, ocr=ocr, attributes=attributes, image_root=root)
    if kind in ("json-list", "llava", "records") and _first_char(path) == "[":
        return _read_json_list(path, "auto" if kind == "json-list" else kind, root, pattern)
    if kind in ("llava", "records"):
        raise InputError(f"{path}: {_SHAPES}")
    if path.suffix.lower() == ".json":
        _refuse_single_object(path)
    first = next((ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
                  if ln.strip()), "")
    if '"conversations"' in first:
        return _read_llava_jsonl(path, root, pattern)
    return read_jsonl(path, image_root=root)


def absolute_images(posts: list[Post]) -> list[Post]:
    """Make image paths absolute so the JSONL stays valid wherever it is written."""
    return [p.replace(image=str(Path(p.image).resolve())) if p.image else p for p in posts]
