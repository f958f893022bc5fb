"""The stand-in's local model store and its "loaded models" table (what ``/api/ps`` shows).

Model metadata (family, size, digest, layers) is derived deterministically from the name:
there are no weights anywhere, only plausible descriptions of them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .names import ModelName, parse_name

EMBEDDING = "embedding"
COMPLETION = "completion"
TOOLS = "tools"
THINKING = "thinking"
CONTEXT_LENGTH = 8192  # what every model was trained for (``model_info``); caps num_ctx
BLOCK_COUNT = 2
VOCAB_SIZE = 256
MAX_GO_DURATION = timedelta(microseconds=(2**63 - 1) // 1000)
"""``keep_alive < 0``: Ollama's session lasts ``math.MaxInt64`` nanoseconds (~292 years)."""


@dataclass(frozen=True, slots=True)
class _Family:
    prefix: str
    family: str
    params: float
    kind: str  # "chat", "embed" or "think"


_FAMILIES: tuple[_Family, ...] = (
    _Family("nomic-embed", "nomic-bert", 137e6, "embed"),
    _Family("mxbai-embed", "bert", 334e6, "embed"),
    _Family("all-minilm", "bert", 23e6, "embed"),
    _Family("snowflake-arctic-embed", "bert", 335e6, "embed"),
    _Family("bge", "bert", 567e6, "embed"),
    _Family("deepseek-r1", "qwen2", 7.6e9, "think"),
    _Family("gpt-oss", "gptoss", 20.9e9, "think"),
    _Family("qwen3", "qwen3", 8.2e9, "think"),
    _Family("qwen", "qwen2", 7.6e9, "chat"),
    _Family("gemma3", "gemma3", 4.3e9, "chat"),
    _Family("gemma", "gemma2", 9.2e9, "chat"),
    _Family("mistral", "llama", 7.2e9, "chat"),
    _Family("phi", "phi3", 3.8e9, "chat"),
    _Family("tinyllama", "llama", 1.1e9, "chat"),
    _Family("smollm", "llama", 1.7e9, "chat"),
    _Family("llama", "llama", 8.0e9, "chat"),
)
_DEFAULT_FAMILY = _Family("", "llama", 8.0e9, "chat")
_SIZE_TAG = re.compile(r"^(\d+(?:\.\d+)?)([bm])", re.IGNORECASE)
_CAPABILITIES = {
    "chat": (COMPLETION, TOOLS),
    "think": (COMPLETION, TOOLS, THINKING),
    "embed": (EMBEDDING,),
}


CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"


@dataclass(frozen=True, slots=True)
class Layer:
    """One blob of a model manifest."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A model present in the stand-in's store."""

    name: ModelName
    digest: str
    size: int
    modified_at: datetime
    family: str
    parameter_count: int
    quantization: str
    capabilities: tuple[str, ...]
    license: bool = True  # False for models made from files: no licence layer

    @property
    def key(self) -> str:
        return self.name.key

    @property
    def display(self) -> str:
        return self.name.display

    @property
    def parameter_size(self) -> str:
        count = self.parameter_count
        return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def layers(self) -> tuple[Layer, ...]:
        small = (
            *(
                Layer(f"application/vnd.ollama.image.{kind}", _sha(self.key, kind), size)
                for kind, size in (("template", 1_429), ("license", 8_433), ("params", 110))
                if self.license or kind != "license"
            ),
            Layer(CONFIG_MEDIA_TYPE, _sha(self.key, "cfg"), 485),
        )
        model_size = max(self.size - sum(layer.size for layer in small), 1)
        model = Layer("application/vnd.ollama.image.model", _sha(self.key, "model"), model_size)
        return (model, *small)

    def renamed(self, name: ModelName, now: datetime) -> ModelRecord:
        return replace(self, name=name, modified_at=now)

    def tensors(self, embedding: int) -> list[dict[str, Any]]:
        """``/api/show``'s tensor list: a small llama-shaped network, ``embedding`` wide."""
        weight = "F16" if EMBEDDING in self.capabilities else self.quantization[:4]
        hidden, vocab = 4 * embedding, VOCAB_SIZE
        out = [{"name": "token_embd.weight", "type": weight, "shape": [embedding, vocab]}]
        for block in range(BLOCK_COUNT):
            shapes = {
                "attn_norm": ("F32", [embedding]),
                "attn_q": (weight, [embedding, embedding]),
                "attn_k": (weight, [embedding, embedding]),
                "attn_v": (weight, [embedding, embedding]),
                "attn_output": (weight, [embedding, embedding]),
                "ffn_norm": ("F32", [embedding]),
                "ffn_gate": (weight, [embedding, hidden]),
                "ffn_up": (weight, [embedding, hidden]),
                "ffn_down": (weight, [hidden, embedding]),
            }
            out += [
                {"name": f"blk.{block}.{part}.weight", "type": kind, "shape": shape}
                for part, (kind, shape) in shapes.items()
            ]
        out.append({"name": "output_norm.weight", "type": "F32", "shape": [embedding]})
        out.append({"name": "output.weight", "type": weight, "shape": [embedding, vocab]})
        return out


def describe(name: ModelName, now: datetime) -> ModelRecord:
    """Invent a deterministic, plausible description of the model called ``name``."""
    family = _family_of(name.model)
    params = _params_from_tag(name.tag) or family.params
    embed = family.kind == "embed"
    size = int(params * (2.0 if embed else 0.59))
    return ModelRecord(
        name=name,
        digest=_sha(name.key, "manifest")[len("sha256:") :],
        size=size,
        modified_at=now,
        family=family.family,
        parameter_count=int(params),
        quantization="F16" if embed else "Q4_K_M",
        capabilities=_CAPABILITIES[family.kind],
    )


def _family_of(model: str) -> _Family:
    lowered = model.lower()
    for family in _FAMILIES:
        if lowered.startswith(family.prefix):
            return family
    return _DEFAULT_FAMILY


def _params_from_tag(tag: str) -> float | None:
    match = _SIZE_TAG.match(tag)
    if match is None:
        return None
    scale = 1e9 if match.group(2).lower() == "b" else 1e6
    return float(match.group(1)) * scale


def _sha(key: str, part: str) -> str:
    return "sha256:" + hashlib.sha256(f"tollgate-standin/{key}/{part}".encode()).hexdigest()


class ModelStore:
    """The models "on disk", keyed case-insensitively."""

    def __init__(self, names: Iterable[str]) -> None:
        self._initial = tuple(names)
        self._records: dict[str, ModelRecord] = {}
        self.reset()

    def reset(self) -> None:
        now = datetime.now(UTC)
        self._records = {}
        for index, raw in enumerate(self._initial):
            name = parse_name(raw)
            if name is None:
                raise ValueError(f"invalid model name in configuration: {raw!r}")
            # Later entries look newer, so /api/tags lists them first, like fresh pulls.
            self.add(describe(name, now + timedelta(microseconds=index)))

    def get(self, name: ModelName) -> ModelRecord | None:
        return self._records.get(name.key)

    def add(self, record: ModelRecord) -> None:
        self._records[record.key] = record

    def remove(self, name: ModelName) -> bool:
        return self._records.pop(name.key, None) is not None

    def newest_first(self) -> list[ModelRecord]:
        return sorted(self._records.values(), key=lambda r: r.modified_at, reverse=True)


@dataclass(slots=True)
class Residency:
    """A model "loaded in memory" until ``expires_at``."""

    record: ModelRecord
    expires_at: datetime
    num_ctx: int
    keep_alive: float = 300.0  # the session duration Ollama sorts eviction candidates by


class LoadedModels:
    """What ``/api/ps`` reports; entries expire lazily."""

    def __init__(self) -> None:
        self._loaded: dict[str, Residency] = {}

    def is_loaded(self, key: str) -> bool:
        residency = self._loaded.get(key)
        return residency is not None and residency.expires_at > datetime.now(UTC)

    def touch(self, record: ModelRecord, keep_alive: float, num_ctx: int) -> None:
        self._loaded[record.key] = Residency(record, _expiry(keep_alive), num_ctx, keep_alive)

    def live_keys(self) -> list[str]:
        now = datetime.now(UTC)
        return [key for key, r in self._loaded.items() if r.expires_at > now]

    def eviction_order(self) -> list[str]:
        """Ollama's ``ByDurationAndName``: shortest keep-alive first, then by name."""
        now = datetime.now(UTC)
        live = [
            (r.keep_alive if r.keep_alive >= 0 else math.inf, key)
            for key, r in self._loaded.items()
            if r.expires_at > now
        ]
        return [key for _, key in sorted(live)]

    def unload(self, key: str) -> None:
        self._loaded.pop(key, None)

    def clear(self) -> None:
        self._loaded.clear()

    def running(self) -> list[Residency]:
        now = datetime.now(UTC)
        live = [r for r in self._loaded.values() if r.expires_at > now]
        return sorted(live, key=lambda r: r.expires_at, reverse=True)


def _expiry(keep_alive: float) -> datetime:
    if math.isinf(keep_alive) or keep_alive < 0:
        return datetime.now(UTC) + MAX_GO_DURATION
    return datetime.now(UTC) + timedelta(seconds=keep_alive)
