"""What one request may cost: a ModelAlias's request policy applied to a request body.

A shared GPU is denied to everyone by one client that asks for a huge context (`num_ctx`),
an unbounded generation, or pins its model in memory forever (`keep_alive: -1`). The policy
of an alias caps or fixes those, per API:

- the output cap (`max_tokens` / `max_completion_tokens` on the OpenAI API, `num_predict`
  on Ollama's, `max_output_tokens` on Responses, `max_tokens` on Messages), with a default
  set when the client sends none;
- `num_ctx` (Ollama's native API only: its OpenAI-compatible API ignores `options`, so the
  pool's own context length applies there): a cap, or a fixed value;
- `keep_alive` (native API only, ignored by Ollama's OpenAI API for the same reason): the
  gateway's value replaces the client's, so no client pins or unloads a model;
- an allow-list of Ollama `options` (native API): others are refused or dropped.

`mode` says what happens to a request that asks for more: ``clamp`` lowers it to the limit
(the response then follows the policy silently, as OpenAI does with `max_tokens` over a
model's maximum), ``reject`` answers 400 naming the field. Pure: no I/O, unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Api(StrEnum):
    OPENAI = "openai"  # /v1/chat/completions, /v1/completions
    NATIVE = "native"  # /api/chat, /api/generate
    NATIVE_EMBED = "native_embed"  # /api/embed, /api/embeddings: no output, options apply
    RESPONSES = "responses"
    MESSAGES = "messages"


class Mode(StrEnum):
    CLAMP = "clamp"
    REJECT = "reject"


class PolicyViolation(ValueError):
    """The request asks for more than the alias allows (mode ``reject``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    max_output_tokens: int | None = None
    default_output_tokens: int | None = None
    max_num_ctx: int | None = None
    num_ctx: int | None = None  # fixed: replaces the client's
    keep_alive: str | int | None = None  # e.g. "5m", 300, 0
    allowed_options: frozenset[str] | None = None  # None: any option
    mode: Mode = Mode.CLAMP

    def __post_init__(self) -> None:
        for name in ("max_output_tokens", "default_output_tokens", "max_num_ctx", "num_ctx"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer")
        if (
            self.max_output_tokens is not None
            and self.default_output_tokens is not None
            and self.default_output_tokens > self.max_output_tokens
        ):
            raise ValueError("default_output_tokens must not exceed max_output_tokens")
        if self.num_ctx is not None and self.max_num_ctx is not None:
            raise ValueError("set num_ctx (fixed) or max_num_ctx (a cap), not both")

    @property
    def empty(self) -> bool:
        return self == EMPTY

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RequestPolicy:
        """From the alias row / CRD shape (camelCase or snake_case keys)."""
        if not raw:
            return EMPTY
        get = _getter(raw)
        allowed = get("allowed_options")
        return cls(
            max_output_tokens=get("max_output_tokens"),
            default_output_tokens=get("default_output_tokens"),
            max_num_ctx=get("max_num_ctx"),
            num_ctx=get("num_ctx"),
            keep_alive=get("keep_alive"),
            allowed_options=None if allowed is None else frozenset(allowed),
            mode=Mode(get("mode") or Mode.CLAMP),
        )


EMPTY = RequestPolicy()

OUTPUT_FIELDS: dict[Api, tuple[str, ...]] = {
    Api.OPENAI: ("max_completion_tokens", "max_tokens"),
    Api.RESPONSES: ("max_output_tokens",),
    Api.MESSAGES: ("max_tokens",),
}


@dataclass(slots=True)
class Applied:
    """What the policy changed (for the access log and a response header)."""

    clamped: list[str] = field(default_factory=list)
    dropped_options: list[str] = field(default_factory=list)


def apply(policy: RequestPolicy, api: Api, body: dict[str, Any]) -> Applied:
    """Apply `policy` to `body` in place; raises `PolicyViolation` in ``reject`` mode."""
    applied = Applied()
    if policy.empty:
        return applied
    if api is Api.NATIVE or api is Api.NATIVE_EMBED:
        _native(policy, api, body, applied)
    else:
        _output(policy, body, OUTPUT_FIELDS[api], applied)
    return applied


def _output(
    policy: RequestPolicy, body: dict[str, Any], fields: tuple[str, ...], applied: Applied
) -> None:
    present = [name for name in fields if body.get(name) is not None]
    if not present:
        default = policy.default_output_tokens or policy.max_output_tokens
        if default is not None:
            body[fields[-1]] = default
        return
    cap = policy.max_output_tokens
    if cap is None:
        return
    for name in present:
        asked = body[name]
        if isinstance(asked, int) and asked > cap:
            if policy.mode is Mode.REJECT:
                raise PolicyViolation(
                    name, f"'{name}' is {asked}; this model allows at most {cap} output tokens."
                )
            body[name] = cap
            applied.clamped.append(name)


def _native(policy: RequestPolicy, api: Api, body: dict[str, Any], applied: Applied) -> None:
    options = body.get("options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return  # the request's own validation answers for a malformed body
    if policy.allowed_options is not None:
        for name in sorted(set(options) - policy.allowed_options - {"num_ctx", "num_predict"}):
            if policy.mode is Mode.REJECT:
                raise PolicyViolation(
                    f"options.{name}", f"The option '{name}' is not allowed for this model."
                )
            del options[name]
            applied.dropped_options.append(name)
    if api is Api.NATIVE:
        _cap_option(policy, options, "num_predict", policy.max_output_tokens, applied)
        if options.get("num_predict") is None:
            default = policy.default_output_tokens or policy.max_output_tokens
            if default is not None:
                options["num_predict"] = default
    if policy.num_ctx is not None:
        if options.get("num_ctx") not in (None, policy.num_ctx):
            applied.clamped.append("options.num_ctx")
        options["num_ctx"] = policy.num_ctx
    else:
        _cap_option(policy, options, "num_ctx", policy.max_num_ctx, applied)
    if options:
        body["options"] = options
    if policy.keep_alive is not None:
        if "keep_alive" in body and body["keep_alive"] != policy.keep_alive:
            applied.clamped.append("keep_alive")
        body["keep_alive"] = policy.keep_alive


def _cap_option(
    policy: RequestPolicy, options: dict[str, Any], name: str, cap: int | None, applied: Applied
) -> None:
    asked = options.get(name)
    if cap is None or not isinstance(asked, int):
        return
    # num_predict -1 / -2 mean "until the context is full": unbounded, so over any cap
    if asked > cap or (name == "num_predict" and asked < 0):
        if policy.mode is Mode.REJECT:
            raise PolicyViolation(
                f"options.{name}", f"'options.{name}' is {asked}; this model allows at most {cap}."
            )
        options[name] = cap
        applied.clamped.append(f"options.{name}")


def _getter(raw: dict[str, Any]) -> Any:
    def get(name: str) -> Any:
        if name in raw:
            return raw[name]
        head, *rest = name.split("_")
        return raw.get(head + "".join(part.capitalize() for part in rest))

    return get
