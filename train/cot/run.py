"""The CoT-data pipeline: posts → teacher → answer filter → one durable record per post.

Workers pull posts, ask the teacher (up to `teacher.max_in_flight` at once), judge each reply with
the filter and append the record the moment the post is finished. The output file is the only
state: a re-run reads it, skips every id already there (and, with `retry_failed`, re-asks posts
whose last record is a failed request), so a crash, Ctrl-C or `kill -9` loses at most the posts
in flight and never duplicates one. A teacher failure that would repeat for every post
(TeacherFatal, or `max_consecutive_failures` failed posts in a row — e.g. a server rejecting a
parameter with 400 for every request) stops the run with one line; what was finished stays written.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from mmkp_edge.errors import InputError
from mmkp_edge.images import post_image
from mmkp_edge.posts import Post, read_posts

from .config import CotDataConfig
from .filter import FAILED, NO_GOLD, gold_phrases, judge
from .progress import Progress, Tally
from .records import RecordWriter, exclusive_writer, latest_records
from .teachers import Teacher, TeacherFatal, TeacherRequest, Usage, build_teacher
from .template import SYSTEM, TEMPLATE_VERSION, read_reply, user_prompt


def _record(post: Post, teacher: Teacher, config: CotDataConfig, **fields) -> dict:
    record = {"id": post.id, "rationale": None, "answer": [], "kept": False, "reason": FAILED,
              "detail": "", "teacher": teacher.name, "model": teacher.model,
              "template_version": TEMPLATE_VERSION, "mode": config.mode,
              "usage": Usage().to_json(), "attempts": 0, "samples": 0, "error": None,
              "image_problem": None, "output": None}
    record.update(fields)
    return record


async def process_post(post: Post, teacher: Teacher, config: CotDataConfig) -> dict:
    """Ask the teacher about one post (up to `samples` times) and build its record."""
    loaded = post_image(post.image, post.missing_image)      # the teacher is asked text-only
    base = {"image_problem": loaded.problem}
    if not gold_phrases(post.keyphrases):
        return _record(post, teacher, config, reason=NO_GOLD, detail="not sent: no gold keyphrases",
                       **base)
    prompt = user_prompt(post.text, post.keyphrases, mode=config.mode,
                         has_image=loaded.image is not None, ocr=post.ocr)
    usage, attempts, kept, last = Usage(), 0, [], None
    for sample in range(config.samples):
        reply = await teacher.complete(TeacherRequest(post, SYSTEM, prompt, loaded.image, sample))
        usage, attempts = usage + reply.usage, attempts + reply.attempts
        if reply.error is not None:
            last = {"reason": FAILED, "error": reply.error, "detail": ""}
            break
        answer = read_reply(reply.text)
        verdict = judge(answer.keyphrases, post.keyphrases, rationale=answer.rationale,
                        has_answer=answer.has_answer, keep=config.keep)
        last = {"rationale": answer.rationale or None, "answer": answer.keyphrases,
                "kept": verdict.kept, "reason": verdict.reason, "detail": verdict.detail,
                "output": reply.text}
        if verdict.kept:
            kept.append(last)
            if not config.keep_all_samples:
                break
    fields = dict(kept[0] if kept else last)
    if config.keep_all_samples:
        fields["extra_rationales"] = [k["rationale"] for k in kept[1:]]
    return _record(post, teacher, config, usage=usage.to_json(), attempts=attempts,
                   samples=sample + 1, **base, **fields)


def _todo(posts: list[Post], previous: dict[str, dict], retry_failed: bool) -> list[Post]:
    return [p for p in posts if p.id not in previous
            or (retry_failed and previous[p.id].get("error") is not None)]


def _cost(config: CotDataConfig, tally: Tally) -> float | None:
    if config.price_in is None and config.price_out is None:
        return None
    return ((config.price_in or 0.0) * tally.prompt_tokens
            + (config.price_out or 0.0) * tally.completion_tokens) / 1e6


def summarise(config: CotDataConfig, tally: Tally, *, posts: int, already_done: int,
              stopped: str | None) -> dict:
    """The run's totals (this run) and the file's (all runs), as one JSON-able dict."""
    in_file = latest_records(config.output)
    cost = _cost(config, tally)
    return {"output": config.output, "teacher": config.teacher, "model": config.model,
            "template_version": TEMPLATE_VERSION, "mode": config.mode, "keep": config.keep,
            "posts": posts, "already_done": already_done, "processed": tally.done,
            "kept": tally.kept, "failed": tally.failed,
            "rejected": tally.done - tally.kept - tally.failed,
            "kept_rate": round(tally.kept / tally.done, 4) if tally.done else None,
            "reasons": dict(sorted(tally.reasons.items())),
            "tokens": {"prompt": tally.prompt_tokens, "completion": tally.completion_tokens,
                       "total": tally.tokens},
            "cost_usd": None if cost is None else round(cost, 4),
            "file": {"posts": len(in_file),
                     "kept": sum(bool(r.get("kept")) for r in in_file.values())},
            "stopped": stopped}


def _print_summary(summary: dict, stream: TextIO) -> None:
    rate = "-" if summary["kept_rate"] is None else f"{summary['kept_rate']:.1%}"
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "-"
    cost = "" if summary["cost_usd"] is None else f" · ~${summary['cost_usd']:.4f}"
    stream.write(f"cot-data: {summary['processed']} posts this run ({summary['already_done']} were "
                 f"already done) · kept {summary['kept']} ({rate}) · rejected "
                 f"{summary['rejected']} · failed {summary['failed']}\n"
                 f"cot-data: reasons: {reasons}\n"
                 f"cot-data: tokens {summary['tokens']['prompt']} in + "
                 f"{summary['tokens']['completion']} out{cost}\n"
                 f"cot-data: {summary['output']} holds {summary['file']['posts']} posts, "
                 f"{summary['file']['kept']} kept\n")


async def _generate(config: CotDataConfig, todo: list[Post], tally: Tally, progress: Progress,
                    log: TextIO) -> None:
    teacher = build_teacher(config)
    try:
        with RecordWriter(config.output) as writer:
            if writer.dropped_partial:
                log.write(f"cot-data: cut off a partial last record ({writer.dropped_partial} "
                          "bytes) left by an interrupted run\n")
            pending = iter(todo)
            streak = [0]                      # posts failed in a row, in completion order

            async def worker() -> None:
                for post in pending:
                    record = await process_post(post, teacher, config)
                    writer.write(record)
                    tally.add(record)
                    progress.update(tally)
                    streak[0] = streak[0] + 1 if record["error"] is not None else 0
                    if streak[0] == config.max_consecutive_failures:
                        raise TeacherFatal(f"{streak[0]} posts in a row failed (last: "
                                           f"{record['error']}); fix the cause, then re-run with "
                                           "--retry-failed")

            workers = [asyncio.ensure_future(worker())
                       for _ in range(min(teacher.max_in_flight, len(todo)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
    finally:
        await teacher.aclose()


def run_cot_data(config: CotDataConfig, *, log: TextIO | None = None) -> dict:
    """Run the pipeline for `config`; returns the summary (also printed to `log`, or stderr)."""
    log = log or sys.stderr
    config.validate()
    posts = read_posts(config.posts, image_root=config.image_root)
    if config.limit is not None:
        posts = posts[:config.limit]
    with exclusive_writer(config.output):       # one writer per file, from reading it to the summary
        return _run_locked(config, posts, log)


def _run_locked(config: CotDataConfig, posts: list[Post], log: TextIO) -> dict:
    previous = latest_records(config.output)
    todo = _todo(posts, previous, config.retry_failed)
    already = len(posts) - len(todo)
    sources = {(r.get("teacher"), r.get("model"), r.get("template_version"))
               for r in previous.values()} - {(config.teacher, config.model, TEMPLATE_VERSION)}
    if sources:
        log.write(f"cot-data: note: {config.output} also holds records from "
                  f"{', '.join('/'.join(map(str, s)) for s in sorted(sources, key=str))}\n")
    log.write(f"cot-data: {len(posts)} posts, {already} already in {config.output}, "
              f"{len(todo)} to do ({config.teacher}: {config.model}, {TEMPLATE_VERSION}, "
              f"{config.mode} mode, keep {config.keep})\n")
    tally, progress, stopped = Tally(), Progress(len(todo), log), None
    if todo:
        try:
            asyncio.run(_generate(config, todo, tally, progress, log))
        except TeacherFatal as exc:
            stopped = str(exc)
        progress.update(tally, final=True)
    summary = summarise(config, tally, posts=len(posts), already_done=already, stopped=stopped)
    _print_summary(summary, log)
    if stopped:
        raise InputError(f"teacher stopped: {stopped} ({tally.done} posts were written; re-run "
                         "the same command to continue)")
    return summary


def summary_json(summary: dict) -> str:
    return json.dumps(summary, ensure_ascii=False)
