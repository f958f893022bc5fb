"""The real Ollama server, a tiny model for it, and a local registry to pull from.

``hack/build-ollama.sh`` builds Ollama and CNCF distribution's ``registry`` from
source into ``$TOLLGATE_CACHE/ollama/`` at the versions pinned in
``hack/ollama-versions.env``; this module finds them there, starts them on
loopback, makes a tiny random-weight llama model as GGUF, creates it in a
running Ollama and pushes it to the local registry, so that an ``/api/pull`` of
``127.0.0.1:PORT/library/tiny:latest`` from another Ollama is a real pull.

Everything stays on this machine: Ollama is started with ``OLLAMA_NO_CLOUD=1``
(otherwise it calls its vendor's cloud at start-up) and with a private ``HOME``
and models folder. Pull only names that carry a local registry's address: a
bare name such as ``tiny`` makes Ollama contact the public registry.

Making the model needs the ``gguf`` package (and numpy, which it requires); it
is imported only by :func:`write_tiny_gguf`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tollgate_dev.proc import (
    Running,
    ServiceError,
    cache_root,
    free_port,
    read_env_file,
    repo_root,
    stop_process,
    wait_http,
)

VERSIONS_FILE = Path("hack") / "ollama-versions.env"
BUILD_SCRIPT = Path("hack") / "build-ollama.sh"

TINY_MODEL = "tiny"
TINY_TEMPLATE = (
    "{{- if .System }}<|system|>{{ .System }}\n{{ end }}"
    "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}\n{{ end }}<|assistant|>"
)
"""A chat template for the tiny model (its GGUF carries none)."""

TINY_WORDS = (
    *("the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with"),
    *("as", "was", "at", "by", "be", "this", "from", "or", "are", "not", "have", "but"),
    *("you", "he", "she", "we", "they", "I", "hello", "world", "token", "tiny", "model"),
    *("llama", "test", "ok", "yes", "no"),
)


class RealOllamaMissingError(RuntimeError):
    """Raised when the pinned Ollama or registry binary has not been built."""


@dataclass(frozen=True)
class OllamaVersions:
    """The pinned versions from ``hack/ollama-versions.env``."""

    ollama: str
    distribution: str

    @classmethod
    def load(cls, path: Path | None = None) -> OllamaVersions:
        """Parse ``KEY=value`` lines; ``#`` starts a comment."""
        path = path or repo_root() / VERSIONS_FILE
        values = read_env_file(path)
        try:
            return cls(ollama=values["OLLAMA_VERSION"], distribution=values["DISTRIBUTION_VERSION"])
        except KeyError as exc:
            msg = f"{path}: missing {exc.args[0]}"
            raise ValueError(msg) from exc


def ollama_binary(versions: OllamaVersions | None = None, cache: Path | None = None) -> Path:
    """Where the pinned ``ollama`` is (or will be once built); nothing is checked."""
    versions = versions or OllamaVersions.load()
    return (cache or cache_root()) / "ollama" / f"ollama-{versions.ollama}" / "ollama"


def registry_binary(versions: OllamaVersions | None = None, cache: Path | None = None) -> Path:
    """Where the pinned ``registry`` is (or will be once built); nothing is checked."""
    versions = versions or OllamaVersions.load()
    return (cache or cache_root()) / "ollama" / f"registry-{versions.distribution}" / "registry"


def _require(path: Path, what: str) -> Path:
    if not (path.is_file() and os.access(path, os.X_OK)):
        msg = f"missing {what} ({path}); build it with `{BUILD_SCRIPT}`"
        raise RealOllamaMissingError(msg)
    return path


def require_binaries(versions: OllamaVersions | None = None) -> tuple[Path, Path]:
    """``(ollama, registry)``, raising :class:`RealOllamaMissingError` if either is missing."""
    versions = versions or OllamaVersions.load()
    return (
        _require(ollama_binary(versions), "the Ollama binary"),
        _require(registry_binary(versions), "the registry binary"),
    )


def build_binaries(env: Mapping[str, str] | None = None) -> None:
    """Run ``hack/build-ollama.sh`` (quiet and quick when everything is cached)."""
    subprocess.run(
        ["bash", str(repo_root() / BUILD_SCRIPT)],
        check=True,
        env={**os.environ, **(env or {})},
    )


# --- the tiny model ---------------------------------------------------------------------------


def tiny_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style tokens, scores and token types for the tiny model.

    ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens (so any text can be encoded),
    then ``▁``, single letters, digits, some punctuation and ``▁word`` pieces.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]  # unknown, control, control
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(6)  # byte
    pieces = ["\u2581"]
    pieces += list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'")
    pieces += ["\u2581" + word for word in TINY_WORDS]
    seen = set(tokens)
    scores = [0.0] * len(tokens)
    for rank, piece in enumerate(pieces):
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(1)  # normal
        scores.append(-float(rank))
    return tokens, scores, types


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 0,
    embedding: int = 64,
    layers: int = 2,
    heads: int = 4,
    feed_forward: int = 128,
    context: int = 128,
) -> Path:
    """Write a tiny llama-architecture GGUF with random f32 weights to ``path``.

    About 0.5 MB and 130k parameters: it loads in well under a second and makes
    meaningless but real tokens. Its weights are shaped so that the sampled
    pieces are almost always printable word pieces (one embedding dimension is
    held large and the byte and control tokens' output rows point away from
    it); ``</s>`` is rare, so cap answers with ``num_predict``.
    """
    # Optional dependencies, only needed here (so importing this module never needs them).
    import gguf  # type: ignore[import-not-found,unused-ignore]
    import numpy as np  # type: ignore[import-not-found,unused-ignore]

    tokens, scores, types = tiny_vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def weights(rows: int, cols: int, scale: float) -> Any:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(TINY_MODEL)
    writer.add_context_length(context)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    token_embd = weights(vocab, embedding, 0.1)
    token_embd[:, 0] = 8.0  # survives the small layers, dominates after the final norm
    writer.add_tensor("token_embd.weight", token_embd)
    ones = np.ones(embedding, dtype=np.float32)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(embedding, embedding, 0.02))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(feed_forward, embedding, 0.02))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(feed_forward, embedding, 0.02))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(embedding, feed_forward, 0.02))
    writer.add_tensor("output_norm.weight", ones)
    output = weights(vocab, embedding, 1.0)
    output[:, 0] = 0.0
    output[:259, 0] = -3.0  # control and byte tokens: practically never sampled
    output[2, 0] = -0.6  # </s>: rarely
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_modelfile(gguf_path: Path, num_predict: int = 16, num_ctx: int = 128) -> str:
    """A Modelfile for the tiny model: its GGUF, a chat template, short answers by default."""
    return (
        f"FROM {gguf_path}\n"
        f'TEMPLATE """{TINY_TEMPLATE}"""\n'
        f"PARAMETER num_predict {num_predict}\n"
        f"PARAMETER num_ctx {num_ctx}\n"
    )


# --- Ollama -----------------------------------------------------------------------------------


@dataclass
class RealOllama(Running):
    """``ollama serve`` on ``host:port`` with its own models folder and ``HOME``.

    ``root`` holds ``models/``, ``home/`` and ``ollama.log``; a temporary folder
    (removed on :meth:`stop`) when not given. ``env`` adds or overrides
    variables such as ``OLLAMA_NUM_PARALLEL`` or ``OLLAMA_KEEP_ALIVE``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    binary: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _own_root: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self._root() / "models"

    @property
    def log_path(self) -> Path:
        return self._root() / "ollama.log"

    def _root(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="tollgate-ollama-"))
            self._own_root = True
        return self.root

    def environment(self) -> dict[str, str]:
        """The variables ``ollama serve`` and ``ollama`` commands run with."""
        home = self._root() / "home"
        base = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        return {
            **base,
            "HOME": str(home),
            "OLLAMA_HOST": f"{self.host}:{self.port}",
            "OLLAMA_MODELS": str(self.models_dir),
            "OLLAMA_NO_CLOUD": "1",
            "GIN_MODE": "release",
            **self.env,
        }

    def start(self, timeout: float = 60) -> str:
        binary = _require(self.binary or ollama_binary(), "the Ollama binary")
        if self.port == 0:
            self.port = free_port(self.host)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        (self._root() / "home").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve"],
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_http(self.url + "/api/version", timeout, self.proc)
        except ServiceError as exc:
            tail = self.log_tail()
            self.stop()
            raise ServiceError(f"{exc}\n{tail}") from exc
        return self.url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self._own_root = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ollama ARGS`` against this server; raises on a non-zero exit."""
        binary = _require(self.binary or ollama_binary(), "the Ollama binary")
        return subprocess.run(
            [str(binary), *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def create(self, name: str, modelfile: str, workdir: Path | None = None) -> None:
        """``ollama create NAME -f Modelfile`` (relative ``FROM`` paths resolve in ``workdir``)."""
        folder = workdir or self._root()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"Modelfile.{name.replace('/', '_').replace(':', '_')}"
        path.write_text(modelfile)
        self.cli("create", name, "-f", str(path))

    def create_tiny(self, name: str = TINY_MODEL, seed: int = 0) -> str:
        """Make the tiny GGUF (in this server's folder) and create it as ``name``."""
        gguf_path = write_tiny_gguf(self._root() / f"tiny-{seed}.gguf", seed=seed)
        self.create(name, tiny_modelfile(gguf_path))
        return name

    def stream(self, path: str, body: Mapping[str, Any], timeout: float = 120) -> list[Any]:
        """POST ``body`` to ``path`` and return every NDJSON line, decoded."""
        with httpx.stream("POST", self.url + path, json=body, timeout=timeout) as response:
            return [json.loads(line) for line in response.iter_lines() if line.strip()]

    def copy(self, source: str, destination: str) -> None:
        response = httpx.post(
            self.url + "/api/copy",
            json={"source": source, "destination": destination},
            timeout=60,
        )
        response.raise_for_status()

    def push(self, name: str, insecure: bool = True) -> list[Any]:
        """``/api/push`` (what ``ollama push --insecure`` does); the progress lines."""
        return self.stream("/api/push", {"model": name, "insecure": insecure})

    def pull(self, name: str, insecure: bool = True) -> list[Any]:
        """``/api/pull``; the progress lines (the last is ``success`` or an ``error``)."""
        return self.stream("/api/pull", {"model": name, "insecure": insecure})


# --- the registry -----------------------------------------------------------------------------


class _BlobHandler(SimpleHTTPRequestHandler):
    """Static files with single ``Range: bytes=a-b`` support (Ollama asks for ranges)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        range_header = self.headers.get("Range", "")
        if not range_header.startswith("bytes="):
            return super().send_head()
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        size = path.stat().st_size
        first, _, last = range_header.removeprefix("bytes=").split(",")[0].partition("-")
        try:
            if first:
                start, end = int(first), int(last) if last else size - 1
            else:
                start, end = max(0, size - int(last)), size - 1
        except ValueError:
            return super().send_head()
        end = min(end, size - 1)
        if start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining: int | None = getattr(self, "_remaining", None)
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        while remaining > 0:
            chunk = source.read(min(remaining, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)


@dataclass
class LocalRegistry(Running):
    """CNCF distribution's ``registry`` on ``host:port``, storing under ``root``.

    Ollama downloads a GGUF layer only after the registry *redirects* the blob
    request to another host (as its public registry does to a CDN); it fails
    with ``http: no Location header in response`` when the registry answers the
    blob itself. So the registry redirects blob reads to ``blob_host`` (a
    different name for this machine, ``localhost`` by default) where a small
    threaded file server, part of this object, serves the storage folder.
    """

    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    blob_host: str = "localhost"
    binary: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    blob_port: int = field(default=0, init=False)
    _blob_server: ThreadingHTTPServer | None = field(default=None, init=False)
    _own_root: bool = field(default=False, init=False)

    @property
    def address(self) -> str:
        """``host:port``, the prefix of model names in this registry."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def model_name(self, name: str = TINY_MODEL, tag: str = "latest") -> str:
        """``host:port/library/NAME:TAG``."""
        return f"{self.address}/library/{name}:{tag}"

    def _root(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="tollgate-registry-"))
            self._own_root = True
        return self.root

    def config(self) -> str:
        storage = self._root() / "data"
        return (
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {json.dumps(str(storage))}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {json.dumps(self.address)}\n  secret: tollgate-local-registry\n"
            "middleware:\n  storage:\n    - name: redirect\n      options:\n"
            f"        baseurl: http://{self.blob_host}:{self.blob_port}/\n"
        )

    def start(self, timeout: float = 30) -> str:
        binary = _require(self.binary or registry_binary(), "the registry binary")
        storage = self._root() / "data"
        storage.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        handler = _blob_handler_for(storage)
        self._blob_server = ThreadingHTTPServer((self.host, 0), handler)
        self.blob_port = int(self._blob_server.server_address[1])
        threading.Thread(
            target=self._blob_server.serve_forever, name="registry-blobs", daemon=True
        ).start()
        config_path = self._root() / "config.yml"
        config_path.write_text(self.config())
        env = {
            **os.environ,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_SDK_DISABLED": "true",
        }
        with (self._root() / "registry.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve", str(config_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_http(self.url + "/v2/", timeout, self.proc)
        except ServiceError:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._blob_server is not None:
            self._blob_server.shutdown()
            self._blob_server.server_close()
            self._blob_server = None
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self._own_root = False

    def push_from(self, ollama: RealOllama, source: str, name: str | None = None) -> list[Any]:
        """Copy ``source`` in ``ollama`` to this registry's name for it and push it.

        Returns the push's progress lines; raises if the last one is not ``success``.
        """
        target = self.model_name(name or source.split(":", 1)[0])
        ollama.copy(source, target)
        lines = ollama.push(target)
        if not lines or lines[-1].get("status") != "success":
            msg = f"push of {target} failed: {lines[-1:] or 'no answer'}"
            raise ServiceError(msg)
        return lines


def _blob_handler_for(directory: Path) -> type[_BlobHandler]:
    class Handler(_BlobHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

    return Handler


def publish_tiny(registry: LocalRegistry, seed: int = 0) -> str:
    """Create the tiny model in a throw-away Ollama and push it to ``registry``.

    Returns its name there (``host:port/library/tiny:latest``), ready to pull.
    """
    with RealOllama() as source:
        source.create_tiny(TINY_MODEL, seed=seed)
        registry.push_from(source, TINY_MODEL)
    return registry.model_name(TINY_MODEL)


def progress_statuses(lines: list[Any]) -> Iterator[str]:
    """The distinct ``status`` values of progress lines, in order (for assertions)."""
    last = None
    for line in lines:
        status = line.get("status") if isinstance(line, dict) else None
        if status is not None and status != last:
            last = status
            yield status
