"""Posts: the unit of data every stage reads, and its two file formats.

A post is an image (optional), its text and its gold keyphrases, plus what training may attach (a
teacher rationale) and what CMKP ships beside it (OCR words and predicted image attributes).
JSONL is the internal format; CMKP's `text<sep>kp1;kp2<sep>image_url` files are read as they come.
A post whose image is missing is a text-only post (the paper's missing-modality case), never a
crash; malformed input fails with `file:line: reason` (an `InputError`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .images import find_image

SEP = "<sep>"


@dataclass(frozen=True)
class Post:
    id: str                                # unique within a file
    text: str = ""                         # the post text ("" for an image-only post)
    image: str | None = None               # absolute or caller-relative path; None = text-only
    keyphrases: tuple[str, ...] = ()       # gold keyphrases, most important first
    rationale: str | None = None           # teacher rationale for Fine-tune-CoT, if any
    ocr: str = ""                          # words read from the image (CMKP side file)
    attributes: tuple[str, ...] = field(default=())  # predicted image attributes (CMKP side file)
    missing_image: str | None = None       # the image the source named but that was not found
                                           # (the post is text-only; written back as `image`)

    def to_json(self) -> dict:
        """The JSONL record; empty optional fields are left out to keep files small."""
        out = {"id": self.id, "text": self.text, "image": self.image or self.missing_image,
               "keyphrases": list(self.keyphrases)}
        if self.rationale is not None:
            out["rationale"] = self.rationale
        if self.ocr:
            out["ocr"] = self.ocr
        if self.attributes:
            out["attributes"] = list(self.attributes)
        return out

    def replace(self, **changes) -> "Post":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- low-level line reading

def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without newline); refuse binary and non-UTF-8 input."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        any_line = False
        for number, raw in enumerate(fh, start=1):
            any_line = True
            if b"\x00" in raw:
                raise InputError(f"{path}:{number}: binary data (NUL byte); expected a text file")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{number}: not UTF-8 (byte 0x{raw[exc.start]:02x} at "
                                 f"column {exc.start + 1})") from None
            yield number, text.rstrip("\r\n")
        if not any_line:
            raise InputError(f"{path}: empty file")


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 text file (used for line-aligned side and prediction files)."""
    return [line for _, line in _lines(Path(path))]


def _resolve_image(name: str | None, base: Path, image_root: Path | None) -> dict:
    """`{"image": path}` of an existing image file (mmkp_edge.images.find_image, the one lookup),
    else `{"missing_image": name}` when the source named one; `{}` when it named none."""
    if not name:
        return {}
    found = find_image(name, base, image_root)
    return {"image": found} if found else {"missing_image": name}


# ---------------------------------------------------------------- CMKP

def split_keyphrases(field_text: str) -> tuple[str, ...]:
    """CMKP's `kp1;kp2` field (also a prediction line) → stripped, non-empty phrases."""
    return tuple(p.strip() for p in field_text.split(";") if p.strip())


def read_cmkp(path: str | os.PathLike, *, ocr: str | os.PathLike | None = None,
              attributes: str | os.PathLike | None = None,
              image_root: str | os.PathLike | None = None) -> list[Post]:
    """Read a CMKP `*_src.txt` file (+ optional line-aligned OCR / attribute files).

    The image file is the last component of the URL, looked up under `image_root` (or beside the
    file); when absent the post is text-only. Post ids are `<file stem>-<line number>`.
    """
    path = Path(path)
    root = Path(image_root) if image_root else None
    side = {}
    for name, side_path in (("ocr", ocr), ("attributes", attributes)):
        if side_path is not None:
            side[name] = read_lines(side_path)
    posts: list[Post] = []
    for number, line in _lines(path):
        parts = line.split(SEP)
        if len(parts) != 3:
            raise InputError(f"{path}:{number}: expected 3 fields 'text{SEP}kp1;kp2{SEP}image_url', "
                             f"got {len(parts)}")
        text, kps, url = (p.strip() for p in parts)
        keyphrases = split_keyphrases(kps)
        if not keyphrases:
            raise InputError(f"{path}:{number}: no keyphrases")
        image_name = url.rstrip("/").rsplit("/", 1)[-1] if url else None
        posts.append(Post(id=f"{path.stem}-{number}", text=text,
                          **_resolve_image(image_name, path.parent, root),
                          keyphrases=keyphrases))
    for name, lines in side.items():
        if len(lines) != len(posts):
            raise InputError(f"{ocr if name == 'ocr' else attributes}: {len(lines)} lines but "
                             f"{path} has {len(posts)} posts; side files must be line-aligned")
    if "ocr" in side:
        posts = [p.replace(ocr=o.strip()) for p, o in zip(posts, side["ocr"])]
    if "attributes" in side:
        posts = [p.replace(attributes=tuple(a.split())) for p, a in zip(posts, side["attributes"])]
    return posts


def write_cmkp(posts: Iterable[Post], path: str | os.PathLike) -> None:
    """Write posts back as a CMKP src file (image = file name, OCR/attributes are not kept)."""
    with open(path, "w", encoding="utf-8") as fh:
        for p in posts:
            image = Path(p.image).name if p.image else ""
            fh.write(f"{p.text}{SEP}{';'.join(p.keyphrases)}{SEP}{image}\n")


# ---------------------------------------------------------------- JSONL

def _str_list(value, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: '{name}' must be a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def post_from_json(obj, where: str, base: Path, image_root: Path | None) -> Post:
    """One JSONL record → Post; `where` is `file:line` for error messages."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text", "")
    if not isinstance(text, str):
        raise InputError(f"{where}: 'text' must be a string")
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise InputError(f"{where}: 'image' must be a path string or null")
    rationale = obj.get("rationale")
    if rationale is not None and not isinstance(rationale, str):
        raise InputError(f"{where}: 'rationale' must be a string or null")
    ocr = obj.get("ocr") or ""
    if not isinstance(ocr, str):
        raise InputError(f"{where}: 'ocr' must be a string")
    return Post(id=str(obj.get("id", where)), text=text.strip(),
                **_resolve_image(image, base, image_root),
                keyphrases=_str_list(obj.get("keyphrases"), where, "keyphrases"),
                rationale=rationale, ocr=ocr.strip(),
                attributes=_str_list(obj.get("attributes"), where, "attributes"))


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, object]]:
    """Yield (line number, "file:line", parsed value) for each non-blank JSONL line."""
    path = Path(path)
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield number, where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: invalid JSON ({exc.msg})") from None


def read_jsonl(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> list[Post]:
    """Read posts from JSONL; image paths are relative to the file's folder or `image_root`."""
    path = Path(path)
    root = Path(image_root) if image_root else None
    posts: list[Post] = []
    seen: dict[str, int] = {}
    for number, where, obj in json_lines(path):
        post = post_from_json(obj, where, path.parent, root)
        if "id" not in obj:
            post = post.replace(id=f"{path.stem}-{number}")
        if post.id in seen:
            raise InputError(f"{where}: duplicate id {post.id!r} (first on line {seen[post.id]})")
        seen[post.id] = number
        posts.append(post)
    if not posts:
        raise InputError(f"{path}: no posts")
    return posts


def write_jsonl(posts: Iterable[Post], path: str | os.PathLike) -> None:
    """Write posts as JSONL (one object per line, UTF-8, non-ASCII kept)."""
    with open(path, "w", encoding="utf-8") as fh:
        for p in posts:
            fh.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")


def text_only_where_missing(posts: Iterable[Post]) -> list[Post]:
    """The posts with every named-but-absent image forgotten: training's text-only reading of a
    dataset shipped without its images (CMKP), for tools that feed such posts to the runtime,
    whose own default is to report a missing image as the item's error."""
    return [p.replace(missing_image=None) if p.missing_image else p for p in posts]


def is_jsonl(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in (".jsonl", ".json", ".ndjson")


def read_posts(path: str | os.PathLike, *, ocr=None, attributes=None, image_root=None) -> list[Post]:
    """Read posts from JSONL (by suffix) or a CMKP src file."""
    if is_jsonl(path):
        if ocr is not None or attributes is not None:
            raise InputError(f"{path}: --ocr/--attributes apply to CMKP files; JSONL carries them inline")
        return read_jsonl(path, image_root=image_root)
    return read_cmkp(path, ocr=ocr, attributes=attributes, image_root=image_root)
