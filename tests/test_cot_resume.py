"""Crash safety: `kill -9` of the generator mid-run, plus a torn last line, then a re-run of the
same command yields every post exactly once; the record reader and writer handle the leftovers.
One writer per file: a second run while the first holds the lock is refused, naming the holder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cot_server import FakeServer, answer, ok
from mmkp_edge.errors import InputError
from train.cot import load_rationales
from train.cot.command import main
from train.cot.records import RecordWriter, exclusive_writer, lock_path, read_records

REPO = Path(__file__).resolve().parents[1]
N_POSTS = 40


def test_kill_9_then_rerun_gives_every_post_exactly_once(tmp_path):
    posts, out = tmp_path / "posts.jsonl", tmp_path / "r.jsonl"
    with open(posts, "w") as fh:
        for i in range(N_POSTS):
            row = {"id": f"p{i}", "text": f"p{i} words", "keyphrases": ["kp"]}
            fh.write(json.dumps(row) + "\n")
    with FakeServer(delay=0.5) as server:     # ≥ 10 s a run: a loaded machine still sees it mid-run
        server.scripts = {f"p{i}": [ok(answer(f"because {i}", ["kp"]))] for i in range(N_POSTS)}
        args = ["--posts", str(posts), "-o", str(out), "--base-url", server.url,
                "--model", server.model, "--api-key-env", "", "--concurrency", "2"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "train.cot.command", *args], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        server.delay = 0.0                     # the rerun at full speed
        written = len(read_records(out))
        assert 6 <= written < N_POSTS            # really interrupted mid-run
        with open(out, "ab") as fh:              # and, worse, a record torn half-way
            fh.write(b'{"id": "p39", "rationale": "half a rec')
        assert main(args) == 0
    records = read_records(out)
    assert sorted(r["id"] for r in records) == sorted(f"p{i}" for i in range(N_POSTS))
    assert all(r["kept"] for r in records)
    assert load_rationales(out)["p7"] == "because 7"
    assert out.read_bytes().endswith(b"\n")


def test_a_second_writer_is_refused_while_the_first_finishes_intact(tmp_path):
    posts, out = tmp_path / "posts.jsonl", tmp_path / "r.jsonl"
    with open(posts, "w") as fh:
        for i in range(N_POSTS):
            fh.write(json.dumps({"id": f"p{i}", "text": f"p{i} words", "keyphrases": ["kp"]}) + "\n")
    with FakeServer(delay=0.5) as server:     # ≥ 20 s a run: the second starts well inside it
        server.scripts = {f"p{i}": [ok(answer(f"because {i}", ["kp"]))] for i in range(N_POSTS)}
        args = ["--posts", str(posts), "-o", str(out), "--base-url", server.url,
                "--model", server.model, "--api-key-env", "", "--concurrency", "1"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "train.cot.command", *args]
        first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert first.poll() is None, first.stderr.read().decode()   # still writing
        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=60)
        assert first.poll() is None            # the refusal happened while the first held the lock
        server.delay = 0.0                     # then let the first finish quickly
        assert second.returncode == 2 and second.stdout == ""
        err = second.stderr.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert err.startswith("mmkp-train cot-data: error:") and "another cot-data run" in err
        assert f"pid {first.pid} on {socket.gethostname()} since " in err and str(lock_path(out)) in err
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
        first.stderr.close()
    records = read_records(out)
    assert sorted(r["id"] for r in records) == sorted(f"p{i}" for i in range(N_POSTS))   # once each
    assert all(r["kept"] for r in records)
    assert lock_path(out).read_text() == ""    # released and emptied: it names nobody now
    with exclusive_writer(out):                # and free for the next run
        pass


def test_the_lock_is_per_file_and_released_on_error(tmp_path):
    out = tmp_path / "r.jsonl"
    with exclusive_writer(out) as lock:
        assert f"pid {os.getpid()} " in lock.read_text()
        with exclusive_writer(tmp_path / "other.jsonl"):     # another file: its own lock
            pass
        with pytest.raises(InputError, match=f"pid {os.getpid()} on "):
            with exclusive_writer(out):                       # a second holder, same process too
                pass
    with pytest.raises(RuntimeError):
        with exclusive_writer(out):
            raise RuntimeError("teacher crashed")
    with exclusive_writer(out):
        pass


def test_reader_ignores_a_partial_last_line_and_writer_cuts_it(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "rationale": "x", "kept": true}\n{"id": "b", "ratio')
    assert [r["id"] for r in read_records(path)] == ["a"]
    with RecordWriter(path) as writer:
        assert writer.dropped_partial == len('{"id": "b", "ratio')
        writer.write({"id": "b", "rationale": "y", "kept": True})
    assert load_rationales(path) == {"a": "x", "b": "y"}


def test_a_corrupt_complete_line_is_an_input_error_with_its_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(InputError, match=r"r\.jsonl:2: not a rationale record"):
        read_records(path)
    with pytest.raises(InputError, match="rationale file not found"):
        load_rationales(tmp_path / "missing.jsonl")
