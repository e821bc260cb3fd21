"""mmkp-serve: the KeyphrasePredictor behind an HTTP API (DESIGN.md §6b).

A subpackage because it is the only part of mmkp_edge that needs the `serve` extra (starlette,
uvicorn, python-multipart, prometheus-client); `mmkp-predict` and the library work without it,
and `mmkp-serve` without it fails with one line naming the install command.

    config.py     ServeConfig: every flag, validated before the bundle loads
    inputs.py     native request bodies (JSON, multipart) → checked posts; BadRequest names the field
    chat_api.py   the OpenAI-compatible chat-completions body and reply
    scheduler.py  continuous batching: one worker thread owns the ORT sessions (Generator.add)
    telemetry.py  Prometheus metrics
    app.py        the Starlette app: routes, limits, errors, disconnects, timeouts
    server.py     uvicorn on a bound socket: startup line, SIGTERM drain
"""
