"""``tollgate-schema``: wait for the database, or for its schema, before a program starts.

* ``tollgate-schema wait-for-database``: until Postgres accepts connections (the migration
  Job's init container, before ``tollgate-gateway migrate``);
* ``tollgate-schema wait-for-schema``: until the schema is at this package's Alembic head
  (the gateway and operator Pods' init containers: neither starts against a schema the
  migration Job has not brought up to date yet).

Both exit 1 after ``--timeout`` seconds (default ``WAIT_SECONDS``). The database comes from
``POSTGRES_DSN`` (or ``TOLLGATE_POSTGRES_DSN``), as for the gateway and the operator. The
gateway and the operator wait through the same `tollgate_schema.db.wait_for_schema`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from tollgate_schema.db import create_engine, wait_for_schema
from tollgate_schema.dsn import to_sqlalchemy_dsn

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/tollgate"
log = logging.getLogger("tollgate_schema")

# command: (default timeout, what it reports when done, what it says when it gives up)
COMMANDS = {
    "wait-for-database": (300.0, "database accepts connections", "database not reachable"),
    "wait-for-schema": (600.0, "database schema is at head", "schema not ready"),
}


def _dsn() -> str:
    return os.environ.get("POSTGRES_DSN") or os.environ.get("TOLLGATE_POSTGRES_DSN") or DEFAULT_DSN


async def wait(command: str, seconds: float, interval: float) -> int:
    _, done, failed = COMMANDS[command]
    engine = create_engine(to_sqlalchemy_dsn(_dsn()), pool_size=1, connect_timeout=5)
    try:
        await wait_for_schema(
            engine, seconds, schema=command == "wait-for-schema", interval=interval, logger=log
        )
    except Exception as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        print(f"{failed} after {seconds:.0f}s: {reason}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(done, file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tollgate-schema", description="Wait for the database or for its schema."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (default, done, _) in COMMANDS.items():
        sub = commands.add_parser(name, help=f"wait until: {done}")
        sub.add_argument(
            "--timeout",
            type=float,
            default=float(os.environ.get("WAIT_SECONDS") or default),
            help=f"seconds before giving up (WAIT_SECONDS, default {default:.0f})",
        )
        sub.add_argument("--interval", type=float, default=2.0, help="seconds between attempts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return asyncio.run(wait(args.command, args.timeout, args.interval))


if __name__ == "__main__":
    sys.exit(main())
