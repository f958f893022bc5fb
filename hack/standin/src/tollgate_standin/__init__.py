"""An Ollama stand-in for tests and offline demos. It is **not Ollama**.

A small aiohttp server that speaks Ollama's wire protocols (native ``/api`` and the
OpenAI-compatible ``/v1``) with deterministic fake inference, Ollama's admission control
and error texts, and test-only controls under ``/_standin/``.
"""

from .config import DEFAULT_MODELS, DEFAULT_REGISTRY, StandinConfig
from .server import (
    StandinServer,
    create_app,
    run_standin,
    serve_forever,
    standin_in_thread,
    start_standin,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REGISTRY",
    "StandinConfig",
    "StandinServer",
    "create_app",
    "run_standin",
    "serve_forever",
    "standin_in_thread",
    "start_standin",
]
