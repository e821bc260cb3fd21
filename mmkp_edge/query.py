"""What the runtime is asked: a post to predict for, or a line that could not become one.

Unlike the training readers (mmkp_edge.posts), which refuse a whole file on its first bad line,
serving must answer every good item and report every bad one, in input order. So the JSONL reader
here streams lines and turns each problem — bytes that are not UTF-8, malformed JSON, a field of
the wrong type — into a `BadInput` carrying a one-line reason. Image paths are looked up exactly as
the training readers look them up (mmkp_edge.images.find_image); an image that is not found is kept
as `missing_image`, so the bad-image policy decides (the runtime's default reports it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .images import ImageSource, find_image


@dataclass(frozen=True)
class Query:
    text: str = ""               # post text ("" is allowed)
    image: ImageSource = None    # path, bytes, PIL image or None (text-only)
    ocr: str = ""                # words read from the image, when known
    id: str | None = None        # echoed in the prediction
    missing_image: str | None = None   # an image the input named that was not found


@dataclass(frozen=True)
class BadInput:
    id: str                      # where it came from (`file:line` or the given id)
    error: str                   # one line: what is wrong


def clean_text(text: str) -> str:
    """Strip and drop lone surrogates (JSON allows "\\ud800"; tokenizers do not)."""
    return text.encode("utf-8", "replace").decode("utf-8").strip()


def query_from_json(obj, where: str, base: Path, image_root: Path | None) -> Query | BadInput:
    if not isinstance(obj, dict):
        return BadInput(where, f"{where}: expected a JSON object, got {type(obj).__name__}")
    qid = str(obj["id"]) if "id" in obj else where
    text, image, ocr = obj.get("text", ""), obj.get("image"), obj.get("ocr") or ""
    if not isinstance(text, str):
        return BadInput(qid, f"{where}: 'text' must be a string")
    if image is not None and not isinstance(image, str):
        return BadInput(qid, f"{where}: 'image' must be a path string or null")
    if not isinstance(ocr, str):
        return BadInput(qid, f"{where}: 'ocr' must be a string")
    found = find_image(image, base, image_root)
    return Query(text=clean_text(text), image=found, ocr=clean_text(ocr), id=qid,
                 missing_image=image if image and found is None else None)


def read_queries(path: str | os.PathLike, image_root: str | os.PathLike | None = None
                 ) -> Iterator[Query | BadInput]:
    """Stream a JSONL file of posts (`{"id", "text", "image", "ocr"}`); blank lines are skipped.

    Image paths are relative to the file's folder (or `image_root`). "-" reads stdin.
    """
    root = Path(image_root) if image_root else None
    stdin = str(path) == "-"
    name = "<stdin>" if stdin else str(path)
    base = Path.cwd() if stdin else Path(path).parent
    fh = os.fdopen(os.dup(0), "rb") if stdin else open(path, "rb")
    with fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{name}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadInput(where, f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                      f"{exc.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadInput(where, f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            except RecursionError:
                yield BadInput(where, f"{where}: invalid JSON (nested too deeply)")
                continue
            yield query_from_json(obj, where, base, root)
