"""`dmlm serve MODEL`: load the model once, run the app under uvicorn until SIGTERM/SIGINT.

Design decisions:
- uvicorn owns the signals: on SIGTERM it stops accepting connections, lets the requests in
  flight finish (up to `shutdown_seconds`), then runs the app's shutdown, which drains the
  batch queues and stops the model thread; the process exits 0. What is still waiting when
  `shutdown_seconds` runs out is cancelled by uvicorn and answered 503 with Retry-After
  (`dmlm.serve.guards.BodyLimit`), not 500.
- uvicorn runs on h11 with bounds on connections (`dmlm.serve.connections`): how many may be
  open, how long one may take to send its headers.
- Binding anything but loopback without `--api-key` is allowed (a lab network may want it)
  but warned about: the routes run a model on the caller's input.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from dmlm.serve.config import ServeConfig

log = logging.getLogger("dmlm.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model_path: str | Path, cfg: ServeConfig) -> None:
    """Serve the checkpoint at `model_path` until the process is told to stop."""
    import uvicorn

    import dmlm
    from dmlm.serve.app import create_app

    model = dmlm.load(model_path, device=cfg.device)
    if not is_loopback(cfg.host) and not cfg.api_key:
        log.warning("binding %s without --api-key: anyone who can reach this address can use the model", cfg.host)
    app = create_app(model, cfg)
    log.info("serving %s (tasks: %s) on http://%s:%d/ (API docs: /docs)", model_path, ", ".join(model.tasks),
             cfg.host, cfg.port)
    from dmlm.serve.connections import bounded_protocol

    uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                  http=bounded_protocol(cfg.max_connections, cfg.receive_seconds),
                                  timeout_graceful_shutdown=cfg.shutdown_seconds or None)).run()
