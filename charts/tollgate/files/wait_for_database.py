"""Wait until Postgres (POSTGRES_DSN) accepts connections; exit 1 after WAIT_SECONDS.

Run by the migration Job before `tollgate-gateway migrate`, as `python -c`.
"""

import os
import sys
import time

import psycopg

from tollgate_gateway.config import Settings

limit = float(os.environ.get("WAIT_SECONDS", "300"))
dsn = Settings().psycopg_dsn
deadline = time.monotonic() + limit
attempt = 0
while True:
    attempt += 1
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() >= deadline:
            print(f"database not reachable after {limit:.0f}s: {reason}", file=sys.stderr)
            sys.exit(1)
        if attempt % 5 == 1:
            print(f"waiting for the database: {reason}", file=sys.stderr)
        time.sleep(2)
    else:
        print("database accepts connections", file=sys.stderr)
        break
