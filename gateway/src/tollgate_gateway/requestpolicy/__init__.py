"""Per-alias limits on what one request may cost (output tokens, context, keep-alive,
options): a pure core, see `core`."""

from tollgate_gateway.requestpolicy.core import (
    EMPTY,
    Api,
    Applied,
    Mode,
    PolicyViolation,
    RequestPolicy,
    apply,
    wire_keep_alive,
)

__all__ = [
    "EMPTY",
    "Api",
    "Applied",
    "Mode",
    "PolicyViolation",
    "RequestPolicy",
    "apply",
    "wire_keep_alive",
]
