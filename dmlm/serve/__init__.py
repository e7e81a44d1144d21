"""`dmlm serve`: a trained model over HTTP — dmlm's routes, OpenAI's audio API, a web page.

    dmlm serve runs/demo/model            # http://127.0.0.1:8000/ (the page), /docs (the API)

    from dmlm.serve import ServeConfig, create_app
    app = create_app(dmlm.load("runs/demo/model"), ServeConfig(max_batch=16))

Modules: `config` (the flags), `app` (routes, errors, the page), `guards` (ASGI middlewares: the
Host check, the body's size and time), `openai_routes` (OpenAI-compatible routes), `service`
(checks + batching over the `dmlm.api.DMLM` object), `batching` (the per-task queues), `media`
(uploads in, audio out, request errors), `server` (uvicorn and signals), `connections` (uvicorn's
protocol with bounds on connections), `static/` (the page: plain HTML/JS/CSS, no CDN).

The package sits at the top layer beside `dmlm.cli` and `dmlm.recipes`: it uses `dmlm.api` only.
Names load lazily so that `dmlm --help` does not import FastAPI.
"""

from __future__ import annotations

from dmlm.serve.config import ServeConfig, add_arguments, config_from_args

__all__ = ["ServeConfig", "add_arguments", "config_from_args", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":
        from dmlm.serve.app import create_app

        return create_app
    if name == "serve":
        from dmlm.serve.server import serve

        return serve
    raise AttributeError(f"module 'dmlm.serve' has no attribute {name!r}")
