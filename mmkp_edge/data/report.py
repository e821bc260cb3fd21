"""JSON reports written next to every output, so a dataset carries how it was made.

`posts.jsonl` gets `posts.report.json`; an output folder gets `<command>.report.json` inside it.
Each report names the command, the package version and the time, plus the command's own figures.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .. import __version__


def report_path(output: str | os.PathLike, command: str) -> Path:
    """Where the report for `output` goes: beside a file (suffix replaced), inside a folder."""
    output = Path(output)
    if output.is_dir():
        return output / f"{command}.report.json"
    return output.with_name(output.stem + ".report.json")


def write_report(path: str | os.PathLike, command: str, body: dict) -> Path:
    """Write `body` (plus provenance) as pretty JSON; returns the path."""
    path = Path(path)
    record = {"command": f"mmkp-data {command}", "mmkp_edge_version": __version__,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **body}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
