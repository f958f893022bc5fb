"""What one request may cost: a ModelAlias's request policy applied to a request body.

A shared GPU is denied to everyone by one client that asks for a huge context (`num_ctx`),
an unbounded generation, or pins its model in memory forever (`keep_alive: -1`). The policy
of an alias caps or fixes those, per API:

- the output cap (`max_tokens` / `max_completion_tokens` on the OpenAI API, `num_predict`
  on Ollama's, `max_output_tokens` on Responses, `max_tokens` on Messages), with a default
  set when the client sends none;
- `num_ctx` (Ollama's native API only: its OpenAI-compatible, Responses and Messages APIs
  take no `options`, so the pool's own context length applies there): a cap, or a fixed
  value;
- `keep_alive` (native API only, for the same reason: elsewhere the pool's
  `OLLAMA_KEEP_ALIVE` applies and no client can change it): the gateway's value replaces
  the client's, so no client pins or unloads a model;
- an allow-list of Ollama `options` (native API): others are refused or dropped.
  `num_predict` and `num_ctx` are always allowed when the policy bounds or fixes them.

`mode` says what happens to a request that asks for more: ``clamp`` lowers it to the limit
(the response then follows the policy silently, as OpenAI does with `max_tokens` over a
model's maximum), ``reject`` answers 400 naming the field. A fixed `num_ctx` and the
gateway's `keep_alive` replace the client's value in both modes. Pure: no I/O, unit-tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard


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


# A Go duration ("5m", "1h30m", "-1s") or whole seconds ("300", "-1"), as OllamaPool's
# keepAlive and the CRD's requestPolicy.keepAlive accept it.
KEEP_ALIVE = re.compile(r"^(-?[0-9]+|-?([0-9]+(ns|us|ms|s|m|h))+)$")
SECONDS = re.compile(r"-?[0-9]+")
OPTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def wire_keep_alive(value: str | int) -> str | int:
    """`keep_alive` as Ollama's request body takes it: whole seconds as a number (Ollama
    parses a string as a Go duration, and "-1" is none), a duration as it is."""
    if isinstance(value, str) and SECONDS.fullmatch(value):
        return int(value)
    return value


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
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer")
        if (
            self.max_output_tokens is not None
            and self.default_output_tokens is not None
            and self.default_output_tokens > self.max_output_tokens
        ):
            raise ValueError("default_output_tokens must not exceed max_output_tokens")
        if self.num_ctx is not None and self.max_num_ctx is not None:
            raise ValueError("set num_ctx (a fixed value) or max_num_ctx (a cap), not both")
        keep = self.keep_alive
        if keep is not None and (
            isinstance(keep, bool)
            or not isinstance(keep, str | int)
            or (isinstance(keep, str) and not KEEP_ALIVE.fullmatch(keep))
        ):
            raise ValueError("keep_alive must be a duration such as '5m' or whole seconds")
        for name in self.allowed_options or ():
            if not isinstance(name, str) or not OPTION_NAME.fullmatch(name):
                raise ValueError(f"allowed_options: {name!r} is not an option name")

    @property
    def empty(self) -> bool:
        return self == EMPTY

    @property
    def exempt_options(self) -> frozenset[str]:
        """Options the allow-list does not govern: those the policy caps or fixes."""
        exempt: set[str] = set()
        if self.max_output_tokens is not None or self.default_output_tokens is not None:
            exempt.add("num_predict")
        if self.max_num_ctx is not None or self.num_ctx is not None:
            exempt.add("num_ctx")
        return frozenset(exempt)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RequestPolicy:
        """From the alias row / CRD shape (camelCase or snake_case keys); ValueError (or
        TypeError) for a policy that is not valid."""
        if not raw:
            return EMPTY
        get = _getter(raw)
        allowed = get("allowed_options")
        if allowed is not None and not isinstance(allowed, list | tuple | set | frozenset):
            raise ValueError("allowed_options must be a list of option names")
        keep = get("keep_alive")
        return cls(
            max_output_tokens=get("max_output_tokens"),
            default_output_tokens=get("default_output_tokens"),
            max_num_ctx=get("max_num_ctx"),
            num_ctx=get("num_ctx"),
            keep_alive=None if keep is None else wire_keep_alive(keep),
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
    """What the policy changed (for the access log and a response header), and the output
    bound the body now asks for (None: the policy set none, the client's stands)."""

    clamped: list[str] = field(default_factory=list)
    dropped_options: list[str] = field(default_factory=list)
    output_tokens: int | None = None


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
            body[fields[-1]] = applied.output_tokens = default
        return
    cap = policy.max_output_tokens
    if cap is None:
        return
    for name in present:
        asked = body[name]
        if _number(asked) and asked > cap:
            if policy.mode is Mode.REJECT:
                raise PolicyViolation(
                    name, f"'{name}' is {asked}; this model allows at most {cap} output tokens."
                )
            body[name] = cap
            applied.clamped.append(name)
    # the bound the request's own check reads (max_tokens first, as `chat.schemas.parse`)
    bound = next((body[name] for name in reversed(fields) if _number(body.get(name))), None)
    applied.output_tokens = int(bound) if bound is not None else None


def _native(policy: RequestPolicy, api: Api, body: dict[str, Any], applied: Applied) -> None:
    options = body.get("options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return  # the request's own validation answers for a malformed body
    if policy.allowed_options is not None:
        allowed = policy.allowed_options | policy.exempt_options
        for name in sorted(set(options) - allowed):
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
        if policy.max_output_tokens is not None or policy.default_output_tokens is not None:
            asked = options.get("num_predict")
            if _number(asked) and asked >= 1:
                applied.output_tokens = int(asked)
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


def _number(value: Any) -> TypeGuard[int | float]:
    """A JSON number Ollama reads as a count (it takes 8192.0 for 8192)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cap_option(
    policy: RequestPolicy, options: dict[str, Any], name: str, cap: int | None, applied: Applied
) -> None:
    asked = options.get(name)
    if cap is None or not _number(asked):
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
