"""Command line: ``python -m tollgate_standin`` (console script ``ollama-standin``).

Runs the Ollama stand-in, a test double that is **not Ollama**.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from .config import DEFAULT_MODELS, DEFAULT_REGISTRY, StandinConfig
from .server import serve_forever


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    defaults = StandinConfig()
    parser = argparse.ArgumentParser(
        prog="ollama-standin",
        description="Ollama stand-in (not Ollama): a protocol-faithful test double.",
    )
    add = parser.add_argument
    add("--host", default=defaults.host, help="address to bind (any local IP)")
    add("--port", type=int, default=defaults.port, help="port; 0 picks a free one")
    add("--models", type=_names, default=DEFAULT_MODELS, help="comma-separated local models")
    add("--version", default=defaults.version, help="version /api/version reports")
    add("--ttft-ms", type=float, default=0.0, help="time to first token (prompt eval)")
    add("--tokens-per-second", type=float, default=0.0, help="stream pace; 0 = unpaced")
    add("--load-ms", type=float, default=0.0, help="first-use model load time")
    add("--completion-tokens", type=int, default=defaults.completion_tokens)
    add("--embedding-dim", type=int, default=defaults.embedding_dim)
    add("--parallel", type=int, default=defaults.parallel, help="OLLAMA_NUM_PARALLEL")
    add("--max-queue", type=int, default=defaults.max_queue, help="OLLAMA_MAX_QUEUE")
    add(
        "--max-loaded-models",
        type=int,
        default=defaults.max_loaded_models,
        help="OLLAMA_MAX_LOADED_MODELS: loading one more evicts the idle one; 0 = no limit",
    )
    add(
        "--prefill-ms-per-token",
        type=float,
        default=defaults.prefill_ms_per_token,
        help="extra time to first token per prompt token not in the prompt cache",
    )
    add("--pull-delay-ms", type=float, default=0.0, help="duration of a model pull")
    add("--registry", type=_names, default=DEFAULT_REGISTRY, help="pullable names; * = any")
    add("--keep-alive", default=defaults.keep_alive, help="OLLAMA_KEEP_ALIVE")
    add("--context-length", type=int, default=defaults.context_length, help="default num_ctx")
    add("--cpu", action="store_true", help="no GPU: /api/ps shows size_vram 0")
    add("--strict-host", action="store_true", help="403 unexpected Host headers on loopback")
    add("--access-log", action="store_true", help="log every request")
    add("--request-log-size", type=int, default=defaults.request_log_size)
    add("--log-level", default="INFO")
    return parser


def config_from_args(args: argparse.Namespace) -> StandinConfig:
    return StandinConfig(
        host=args.host,
        port=args.port,
        models=args.models,
        version=args.version,
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tokens_per_second,
        load_ms=args.load_ms,
        completion_tokens=args.completion_tokens,
        embedding_dim=args.embedding_dim,
        parallel=args.parallel,
        max_queue=args.max_queue,
        max_loaded_models=args.max_loaded_models,
        prefill_ms_per_token=args.prefill_ms_per_token,
        pull_delay_ms=args.pull_delay_ms,
        registry=args.registry,
        keep_alive=args.keep_alive,
        context_length=args.context_length,
        cpu=args.cpu,
        strict_host=args.strict_host,
        access_log=args.access_log,
        request_log_size=args.request_log_size,
    )


async def _serve(config: StandinConfig) -> None:
    task = asyncio.create_task(serve_forever(config))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
