"""Reading prediction files to score them against gold posts.

Two shapes are accepted, so CMKP baselines and our own outputs score the same way:
- plain lines, one post each, `kp1;kp2` (CMKP's format), aligned with the gold file;
- JSONL records with `id` and either `keyphrases` (a list, or a `;`-separated string) or raw model
  `text`, which goes through `mmkp_edge.parser` exactly as the runtime would read it.
Alignment errors name the first mismatch: a scorer that silently shifts lines reports nonsense.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .parser import keyphrases_from_answer, parse
from .posts import SEP, is_jsonl, json_lines, read_lines, split_keyphrases


def _record_keyphrases(obj: dict, where: str) -> list[str]:
    kps = obj.get("keyphrases")
    if isinstance(kps, str):
        return keyphrases_from_answer(kps)
    if isinstance(kps, list) and all(isinstance(k, str) for k in kps):
        return list(kps)
    if kps is None and isinstance(obj.get("text"), str):
        return parse(obj["text"]).keyphrases
    raise InputError(f"{where}: needs 'keyphrases' (list or 'a;b' string) or raw model 'text'")


def _read_jsonl(path: Path, ids: Sequence[str]) -> list[list[str]]:
    by_id: dict[str, list[str]] = {}
    for _, where, obj in json_lines(path):
        if not isinstance(obj, dict) or "id" not in obj:
            raise InputError(f"{where}: expected a JSON object with an 'id'")
        key = str(obj["id"])
        if key in by_id:
            raise InputError(f"{where}: duplicate id {key!r}")
        by_id[key] = _record_keyphrases(obj, where)
    for key in ids:
        if key not in by_id:
            raise InputError(f"{path}: no prediction for gold post id {key!r}")
    extra = next((k for k in by_id if k not in set(ids)), None)
    if extra is not None:
        raise InputError(f"{path}: prediction id {extra!r} is not a gold post id")
    return [by_id[key] for key in ids]


def read_predictions(path: str | os.PathLike, ids: Sequence[str]) -> list[list[str]]:
    """Predicted keyphrases aligned with the gold post `ids` (see the module docstring)."""
    path = Path(path)
    if is_jsonl(path):
        return _read_jsonl(path, ids)
    lines = read_lines(path)
    if len(lines) != len(ids):
        raise InputError(f"{path}: {len(lines)} prediction lines but the gold file has {len(ids)} "
                         f"posts (first unmatched: line {min(len(lines), len(ids)) + 1})")
    for number, line in enumerate(lines, start=1):
        if SEP in line:
            raise InputError(f"{path}:{number}: contains '{SEP}': this looks like a gold file, "
                             "not predictions")
    return [list(split_keyphrases(line)) for line in lines]
