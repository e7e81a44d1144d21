"""`ServeConfig`: the settings of `dmlm serve`; its fields are the verb's flags (help from the docstrings).

Design decisions:
- Every limit is a field with a default that fits a loopback demo on a laptop and is named in
  the error a request gets when it passes the limit (`--max-audio-seconds` ...), so the
  person who sees the error knows which flag to raise.
- This module imports nothing heavy: `dmlm --help` builds the parser from it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind (loopback by default; another address exposes the model to the network)."""
    port: int = 8000
    """TCP port (0: any free port, printed at start)."""
    api_key: str = ""
    """Every /v1 route needs `Authorization: Bearer KEY` (default: $DMLM_API_KEY, else no key)."""
    model_name: str = "dmlm"
    """The model id that GET /v1/models lists (any `model` value is accepted: the server holds one model)."""
    device: str = "cpu"
    """Torch device of the model, e.g. cpu or cuda."""
    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest request body (bytes): larger uploads get 413 before they are read."""
    max_audio_seconds: float = 60.0
    """Longest audio clip accepted for transcription or translation."""
    max_audio_samples: int = 24_000_000
    """Most samples an audio upload may decode to (rate x channels x seconds, checked from its header before
    decoding): 60 s of 192 kHz stereo, or of 48 kHz in 8 channels."""
    max_text_chars: int = 1000
    """Longest text accepted for speech synthesis."""
    max_image_pixels: int = 4096 * 4096
    """Largest image (width x height) accepted for captioning."""
    max_rerank: int = 8
    """Most T2S candidates a request may ask for (`rerank`)."""
    max_batch: int = 8
    """Most concurrent requests of one task gathered into one model call."""
    max_wait_ms: float = 10.0
    """How long the first request of a batch waits for others to join (milliseconds)."""
    max_pending: int = 256
    """Requests queued for the model at once; more get 503 (busy) instead of an ever longer wait."""
    max_connections: int = 256
    """Open connections at once; a connection past it is answered 503 and closed at once."""
    receive_seconds: float = 30.0
    """Longest a client may take to send a request's headers, and again its body: a slower one gets 408 and its
    connection is closed (a stalled upload cannot hold a connection open)."""
    allowed_hosts: str = ""
    """More host names the server answers to, comma-separated (a Host header naming another is refused, against
    DNS rebinding); always allowed: IP addresses, localhost, this machine's name and --host. `*`: any."""
    shutdown_seconds: float = 30.0
    """On SIGTERM/SIGINT, how long requests in flight may take to finish before the server stops."""
    log_level: str = "info"
    """uvicorn's log level (critical, error, warning, info, debug)."""

    def __post_init__(self) -> None:
        from dmlm.util.errors import UserError

        for f in ("max_upload_bytes", "max_audio_seconds", "max_audio_samples", "max_text_chars", "max_image_pixels",
                  "max_batch", "max_pending", "max_connections", "receive_seconds"):
            if getattr(self, f) <= 0:
                raise UserError(f"serve: --{f.replace('_', '-')} must be > 0, got {getattr(self, f)}")
        for f in ("max_rerank", "max_wait_ms", "shutdown_seconds", "port"):
            if getattr(self, f) < 0:
                raise UserError(f"serve: --{f.replace('_', '-')} must be >= 0, got {getattr(self, f)}")

    def host_names(self) -> set[str] | None:
        """The names a request's Host header may give (IP addresses are always allowed); None: any."""
        import socket

        extra = {h.strip().lower().rstrip(".") for h in self.allowed_hosts.split(",") if h.strip()}
        if "*" in extra:
            return None
        return {"localhost", socket.gethostname().lower(), self.host.lower().strip("[]"), *extra}

    def limits(self) -> dict:
        """The request limits, as /health reports them (the web page shows them)."""
        return {f: getattr(self, f) for f in ("max_upload_bytes", "max_audio_seconds", "max_audio_samples",
                                              "max_text_chars", "max_image_pixels", "max_rerank")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `ServeConfig` field (`--max-audio-seconds` ...), help text from the field's docstring."""
    from dmlm.util.config import field_docs

    docs = field_docs(ServeConfig)
    for f in fields(ServeConfig):
        default = os.environ.get("DMLM_API_KEY", "") if f.name == "api_key" else f.default
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=default, dest=f"serve_{f.name}",
                            metavar=f.name.upper(), help=f"{docs.get(f.name, '')} (default: "
                            f"{'none' if f.name == 'api_key' else f.default})")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(**{f.name: getattr(args, f"serve_{f.name}") for f in fields(ServeConfig)})
