"""The `demo` teacher: a stand-in for a real teacher (GPT-4o in the paper) in the one-command demo.

The synthetic demo generator (train.demo_data) knows why every keyphrase is right — which words of the
text name it, which shape and colour in the image imply it — and writes that down in
`evidence.jsonl`. This teacher turns that ground truth into a rationale in the real teacher's
output format, `<think>…</think><answer>…</answer>`, so the demo exercises the same `cot-data`
command, filter and records as a real run, with no network and no cost.

To keep the answer filter honest it makes mistakes on purpose: with probability `error_rate`
(decided by a hash of the post id, so runs are reproducible) it drops the post's last keyphrase,
which the default `--keep exact` filter must reject.

Options (`--set options.KEY=VALUE`): `evidence` (path; default: evidence.jsonl beside the posts
file) and `error_rate` (default 0.1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmkp_edge.errors import InputError
from mmkp_edge.prompt import reasoning_target

from ..demo_data.evidence import Evidence, read_evidence
from .teachers import TeacherReply, TeacherRequest, Usage


def _unit_hash(key: str) -> float:
    """A reproducible number in [0, 1) for a post id."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16 ** 8


class DemoTeacher:
    name = "demo"
    model = "demo-ground-truth"
    max_in_flight = 64

    def __init__(self, evidence: dict[str, Evidence], error_rate: float) -> None:
        self.evidence = evidence
        self.error_rate = error_rate

    def reply_text(self, post_id: str) -> str:
        ev = self.evidence[post_id]
        gold = list(ev.gold)
        if len(gold) > 1 and _unit_hash(post_id) < self.error_rate:
            gold = gold[:-1]                      # a deliberate mistake for the filter to catch
        return reasoning_target(ev.rationale(), gold)

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        if request.post.id not in self.evidence:
            return TeacherReply(None, error=f"no demo evidence for post {request.post.id!r}")
        text = self.reply_text(request.post.id)
        return TeacherReply(text, Usage(0, len(text.split())))

    async def aclose(self) -> None:
        return None


def build(config) -> DemoTeacher:
    path = Path(config.options.get("evidence") or Path(config.posts).parent / "evidence.jsonl")
    if not path.is_file():
        raise InputError(f"demo teacher: evidence file not found: {path} "
                         "(set options.evidence=PATH; it is written by the demo data generator)")
    rate = float(config.options.get("error_rate", 0.1))
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"demo teacher: options.error_rate must be in [0, 1], got {rate}")
    return DemoTeacher(read_evidence(path), rate)
