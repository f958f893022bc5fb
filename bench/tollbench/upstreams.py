"""The two upstreams every system is put in front of.

fixed    Caddy answering fixed JSON (`static_response`, Go): OpenAI-shaped chat and embedding
         answers with usage, at a cost far below any proxy's; for overhead.
standin  the Ollama stand-in (a protocol-faithful test double) with realistic token timing;
         for streaming.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tollbench.procs import Proc
from tollbench.systems import CHAT_MODEL, EMBED_MODEL, _wait_port, free_port

CHAT_REQUEST = {
    "model": CHAT_MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about foxes."},
    ],
    "max_tokens": 64,
}
EMBED_REQUEST = {"model": EMBED_MODEL, "input": "The quick brown fox jumps over the lazy dog."}
EMBED_DIM = 768  # nomic-embed-text

CHAT_ANSWER = {
    "id": "chatcmpl-425",
    "object": "chat.completion",
    "created": 1764115200,
    "model": CHAT_MODEL,
    "system_fingerprint": "fp_ollama",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Foxes are clever, adaptable animals at home in forests and cities.",
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 27, "completion_tokens": 15, "total_tokens": 42},
}
EMBED_ANSWER = {
    "object": "list",
    "data": [
        {
            "object": "embedding",
            "embedding": [round(math.sin(i * 0.7) * 0.05, 6) for i in range(EMBED_DIM)],
            "index": 0,
        }
    ],
    "model": EMBED_MODEL,
    "usage": {"prompt_tokens": 11, "total_tokens": 11},
}


def write_bodies(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, body in (("chat", CHAT_REQUEST), ("embeddings", EMBED_REQUEST)):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(body))
        paths[name] = path
    return paths


def _static(path: str, body: object) -> dict[str, object]:
    return {
        "match": [{"path": [path], "method": ["POST"]}],
        "handle": [
            {
                "handler": "static_response",
                "status_code": 200,
                "headers": {"Content-Type": ["application/json"]},
                "body": json.dumps(body, separators=(",", ":")),
            }
        ],
    }


def fixed_upstream(caddy: Path, work: Path, cpus: str) -> tuple[Proc, str]:
    port = free_port()
    config = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {
                "servers": {
                    "fixed": {
                        "listen": [f"127.0.0.1:{port}"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            _static("/v1/chat/completions", CHAT_ANSWER),
                            _static("/v1/embeddings", EMBED_ANSWER),
                        ],
                    }
                }
            }
        },
    }
    path = work / "caddy-fixed-upstream.json"
    path.write_text(json.dumps(config, indent=2))
    proc = Proc(
        "upstream-fixed",
        [str(caddy), "run", "--config", str(path)],
        cpus,
        work / "logs" / "upstream-fixed.log",
    ).start()
    _wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def standin(
    work: Path,
    cpus: str,
    ttft_ms: float,
    tokens_per_second: float,
    completion_tokens: int,
    name: str = "upstream-standin",
) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tollgate_standin",
        "--port",
        str(port),
        "--models",
        f"{CHAT_MODEL},{EMBED_MODEL}:latest",
        "--ttft-ms",
        f"{ttft_ms:g}",
        "--tokens-per-second",
        f"{tokens_per_second:g}",
        "--completion-tokens",
        str(completion_tokens),
        "--parallel",
        "4096",
        "--max-queue",
        "8192",
        "--request-log-size",
        "0",
        "--log-level",
        "warning",
    ]
    proc = Proc(name, argv, cpus, work / "logs" / f"{name}.log").start()
    _wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"
