"""Running the app: load the bundle, bind the socket, hand both to uvicorn, drain on SIGTERM.

The socket is bound here, before uvicorn starts, so `--port 0` works (the kernel picks a free port)
and the startup line — printed once uvicorn is serving — names the real address; tests and the load
test read that line instead of guessing a port or sleeping. On SIGTERM (or Ctrl-C) uvicorn stops
accepting connections and waits up to `drain_timeout_s` for the requests in flight, which the
scheduler keeps decoding; the lifespan shutdown then stops the worker. A clean drain exits 0; one
that had to abandon posts exits 1.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Callable

import uvicorn

from ..errors import InputError
from ..predictor import KeyphrasePredictor
from .app import build_app
from .config import ServeConfig


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn.Server that says when it is serving and when it starts draining."""

    def __init__(self, config: uvicorn.Config, service, address: str, say: Callable[[str], None]):
        super().__init__(config)
        self.service, self.address, self.say = service, address, say

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            cfg = self.service.cfg
            self.say(f"listening on {self.address} (model {self.service.model!r}, max batch "
                     f"{cfg.max_batch}, queue {cfg.max_queue}, think {cfg.think})")

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:       # stop accepting first, then say so
            server.close()
        self.say(f"shutting down: finishing {self.service.in_flight} requests in flight "
                 f"(up to {self.service.cfg.drain_timeout_s:g}s)")
        await super().shutdown(sockets=sockets)


def _say(line: str) -> None:
    print(f"mmkp-serve: {line}", file=sys.stderr, flush=True)


def build_server(cfg: ServeConfig, *, predictor: KeyphrasePredictor | None = None,
                 before_step: Callable[[], None] | None = None, say: Callable[[str], None] = _say
                 ) -> tuple[uvicorn.Server, socket.socket]:
    """The uvicorn server for `cfg` and its bound socket: `server.run(sockets=[sock])` serves
    (in any thread; signals are handled only in the main one). The tests' harness uses this too."""
    cfg.validate()
    if predictor is None:
        predictor = KeyphrasePredictor.from_bundle(cfg.bundle, threads=cfg.threads or None,
                                                   providers=cfg.providers, verify=cfg.verify)
    app = build_app(predictor, cfg, before_step=before_step)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    address = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    config = uvicorn.Config(app, log_level=cfg.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=cfg.drain_timeout_s)
    return _Server(config, app.state.service, address, say), sock


def serve(cfg: ServeConfig, *, before_step: Callable[[], None] | None = None,
          say: Callable[[str], None] = _say) -> int:
    """Serve until SIGTERM / SIGINT; returns the exit code (0 clean drain, 1 posts abandoned)."""
    server, sock = build_server(cfg, before_step=before_step, say=say)
    # uvicorn re-raises the signal it shut down for once it is done; ignoring SIGTERM by then
    # lets a drained server exit with our code instead of being killed by that re-raise.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if main else None
    try:
        server.run(sockets=[sock])
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
    if not server.started:
        raise InputError("the server did not start (see the lines above)")
    return 1 if server.config.app.state.abandoned else 0
