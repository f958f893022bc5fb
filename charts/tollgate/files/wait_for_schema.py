"""Wait until the database schema is at this image's Alembic head; exit 1 after WAIT_SECONDS.

Run by gateway pods as an init container (`python -c`), so that a gateway never starts
against a schema the migration Job has not brought up to date yet.
"""

import asyncio
import os
import sys
import time

from tollgate_gateway.config import Settings
from tollgate_gateway.storage.db import check_schema, create_engine


async def main() -> int:
    limit = float(os.environ.get("WAIT_SECONDS", "600"))
    deadline = time.monotonic() + limit
    engine = create_engine(Settings().sqlalchemy_dsn, pool_size=1)
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                await check_schema(engine)
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                if time.monotonic() >= deadline:
                    print(f"schema not ready after {limit:.0f}s: {reason}", file=sys.stderr)
                    return 1
                if attempt % 10 == 1:
                    print(f"waiting for the migration: {reason}", file=sys.stderr)
                await asyncio.sleep(2)
            else:
                print("database schema is at head", file=sys.stderr)
                return 0
    finally:
        await engine.dispose()


sys.exit(asyncio.run(main()))
