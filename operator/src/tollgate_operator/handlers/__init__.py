"""kopf handlers: decorators only. Each parses the body, calls one service, reports errors.

Importing this package registers every handler with kopf.
"""

from tollgate_operator.handlers import aliases, apikeys, lifecycle, pools

__all__ = ["aliases", "apikeys", "lifecycle", "pools"]
