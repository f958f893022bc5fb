"""Per-alias limits on what one request may cost (output tokens, context, keep-alive,
options): a pure core, see `core`."""

from tollgate_gateway.requestpolicy.core import (
    Api,
    Applied,
    Mode,
    PolicyViolation,
    RequestPolicy,
    apply,
)

__all__ = ["Api", "Applied", "Mode", "PolicyViolation", "RequestPolicy", "apply"]
