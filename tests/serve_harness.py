"""Real mmkp-serve servers for the serve tests (not a test module): in a thread or a subprocess.

Both run the production path — `mmkp_edge.serve.server.build_server` (uvicorn on a socket bound to
a free loopback port) — plus a `Gate` on the scheduler's worker, so a test can hold decoding still
while it builds up a queue, let exactly N steps through, and only then look: synchronisation by
events and observed state, never by sleeping. The subprocess form (`python serve_harness.py BUNDLE
[k=v ...]`) is for signals; its gate is driven by lines on stdin (hold / open / allow N), each
answered "ok" on stdout, and its port is read from the startup line on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from mmkp_edge.serve.config import ServeConfig
from mmkp_edge.serve.server import build_server, serve

HERE = Path(__file__).resolve().parent


class Gate:
    """Called by the worker before every step: passes while open, else waits for `allow()`."""

    def __init__(self):
        self._cv = threading.Condition()
        self._open = True
        self._budget = 0
        self.passed = 0              # steps let through
        self.waiting = False         # the worker is held here right now
        self.idle = lambda: False    # the scheduler has no work (so the worker will not come back)

    def __call__(self) -> None:
        with self._cv:
            while not self._open and self._budget == 0:
                self.waiting = True
                self._cv.notify_all()
                if not self._cv.wait(timeout=60):
                    raise RuntimeError("gate held the worker for 60 s")
            self.waiting = False
            if not self._open:
                self._budget -= 1
            self.passed += 1
            self._cv.notify_all()

    def hold(self) -> None:
        with self._cv:
            self._open, self._budget = False, 0

    def open(self) -> None:
        with self._cv:
            self._open = True
            self._cv.notify_all()

    def allow(self, steps: int) -> None:
        """Let `steps` more steps through; return once the worker is held again — or has run out
        of work (every post finished), in which case the unused steps are withdrawn."""
        end = time.monotonic() + 60
        with self._cv:
            target = self.passed + steps
            self._budget += steps
            self._cv.notify_all()
            while not (self.passed >= target and self.waiting):
                if self.idle() and not self.waiting:
                    self._budget = 0
                    return
                if time.monotonic() > end:
                    raise RuntimeError("the worker did not come back to the gate")
                self._cv.wait(timeout=0.005)


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll observed state (a queue depth, a counter) until it holds; fail after `timeout`."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class ThreadServer:
    """A served bundle in this process; `.service` gives the tests the scheduler and metrics."""

    def __init__(self, bundle, predictor=None, **changes):
        self.gate = Gate()
        started = threading.Event()
        cfg = ServeConfig(bundle=str(bundle), port=0, **changes)
        self.server, sock = build_server(cfg, predictor=predictor, before_step=self.gate,
                                         say=lambda line: started.set())
        self.url = "http://%s:%d" % sock.getsockname()[:2]
        self.service = self.server.config.app.state.service
        sched = self.service.scheduler
        self.gate.idle = lambda: sched.queue_depth == 0 and sched.running_rows == 0
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        if not started.wait(30):
            raise RuntimeError("server did not start")

    def close(self) -> None:
        self.gate.open()
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ProcessServer:
    """`serve()` in a child process (for SIGTERM); `.send("hold")` drives its gate."""

    def __init__(self, bundle, **changes):
        args = [f"{k}={json.dumps(v)}" for k, v in changes.items()]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE),
                                                             os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "serve_harness.py"), str(bundle), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.stderr: list[str] = []
        line = self.read_stderr_until("listening on ")
        self.url = line.split("listening on ")[1].split()[0]

    def read_stderr_until(self, marker: str) -> str:
        """Read stderr lines until one contains `marker` (EOF fails with what was said)."""
        for line in self.proc.stderr:
            self.stderr.append(line)
            if marker in line:
                return line
        raise AssertionError(f"server ended without {marker!r}: {''.join(self.stderr)}")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def metric(url: str, name: str, **labels) -> float:
    """One sample of /metrics, parsed with prometheus_client's parser (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def _main(argv: list[str]) -> int:
    bundle, *pairs = argv
    changes = {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}
    gate = Gate()

    def commands():
        for line in sys.stdin:
            word, *rest = line.split()
            if word == "hold":
                gate.hold()
            elif word == "open":
                gate.open()
            elif word == "allow":
                gate.allow(int(rest[0]))
            print("ok", flush=True)

    threading.Thread(target=commands, daemon=True).start()
    return serve(ServeConfig(bundle=bundle, port=0, **changes), before_step=gate)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
