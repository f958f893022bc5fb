"""Settings of the Ollama stand-in (a test double, not Ollama)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODELS: tuple[str, ...] = ("llama3:8b", "nomic-embed-text")
V1_ROLE_ONCE_SINCE = (0, 32, 6)
"""Ollama's ``/v1`` stream sends ``role`` once and finishes with ``delta: {}`` from here on."""

# Names the stand-in's pretend registry can "pull". "*" in the tuple allows any valid name.
DEFAULT_REGISTRY: tuple[str, ...] = (
    "all-minilm",
    "deepseek-r1:1.5b",
    "gemma2:2b",
    "gemma3:1b",
    "llama3",
    "llama3:8b",
    "llama3:70b",
    "llama3.1:8b",
    "llama3.2:1b",
    "llama3.2:3b",
    "mistral:7b",
    "mxbai-embed-large",
    "nomic-embed-text",
    "phi3:mini",
    "qwen2.5:0.5b",
    "qwen2.5:1.5b",
    "qwen2.5:7b",
    "qwen3:0.6b",
    "qwen3:8b",
    "smollm2:135m",
    "tinyllama",
)


@dataclass(frozen=True, slots=True)
class StandinConfig:
    """How the stand-in behaves. Defaults mirror Ollama's own defaults where it has one.

    Times are milliseconds; ``0`` means "no delay at all" (no sleeps are scheduled).
    """

    host: str = "127.0.0.1"
    port: int = 11434
    models: tuple[str, ...] = DEFAULT_MODELS
    version: str = "0.33.0"
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0
    load_ms: float = 0.0
    completion_tokens: int = 12
    embedding_dim: int = 8
    parallel: int = 1
    max_queue: int = 512
    max_loaded_models: int = 0  # OLLAMA_MAX_LOADED_MODELS; 0 = no limit (stand-in default)
    prefill_ms_per_token: float = 0.0  # prompt tokens not in the prompt cache cost this each
    pull_delay_ms: float = 0.0
    registry: tuple[str, ...] = DEFAULT_REGISTRY
    keep_alive: str = "5m"
    context_length: int = 4096
    cpu: bool = False
    strict_host: bool = False
    access_log: bool = False
    request_log_size: int = 256

    def __post_init__(self) -> None:
        _require(self.port >= 0, "port must be >= 0")
        _require(self.ttft_ms >= 0, "ttft_ms must be >= 0")
        _require(self.tokens_per_second >= 0, "tokens_per_second must be >= 0")
        _require(self.load_ms >= 0, "load_ms must be >= 0")
        _require(self.pull_delay_ms >= 0, "pull_delay_ms must be >= 0")
        _require(self.completion_tokens >= 1, "completion_tokens must be >= 1")
        _require(self.embedding_dim >= 1, "embedding_dim must be >= 1")
        _require(self.parallel >= 1, "parallel must be >= 1")
        _require(self.max_queue >= 0, "max_queue must be >= 0")
        _require(self.max_loaded_models >= 0, "max_loaded_models must be >= 0")
        _require(self.prefill_ms_per_token >= 0, "prefill_ms_per_token must be >= 0")
        _require(self.request_log_size >= 0, "request_log_size must be >= 0")
        _require(self.context_length >= 1, "context_length must be >= 1")

    @property
    def v1_role_every_chunk(self) -> bool:
        """``/v1`` streams in the shape of Ollama before 0.32.6 (``role`` in every chunk)."""
        return version_info(self.version) < V1_ROLE_ONCE_SINCE

    @property
    def token_interval(self) -> float:
        """Seconds between streamed tokens (0 when unpaced)."""
        return 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0


def version_info(version: str) -> tuple[int, ...]:
    """``"0.24.0"`` -> ``(0, 24, 0)``; a suffix such as ``-rc1`` is ignored."""
    numbers: list[int] = []
    for part in version.removeprefix("v").split("-", 1)[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
