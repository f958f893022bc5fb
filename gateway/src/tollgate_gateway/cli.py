"""`tollgate-gateway`: serve, migrate, create the first admin, check settings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from tollgate_gateway.config import Settings, get_settings
from tollgate_gateway.logs import configure_logging


def _refuse_insecure(settings: Settings) -> None:
    reasons = settings.insecure_reasons()
    if reasons and not settings.dev_mode:
        for reason in reasons:
            print(f"tollgate-gateway: refusing to start: {reason}", file=sys.stderr)
        print(
            "Set strong secrets, or TOLLGATE_DEV_MODE=true for local development only.",
            file=sys.stderr,
        )
        raise SystemExit(2)


def migrate(settings: Settings) -> None:
    from tollgate_schema.db import upgrade

    upgrade(settings.sqlalchemy_dsn)


async def _preflight(settings: Settings) -> None:
    """Refuse an old schema with a clear message; create the first admin if configured."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from tollgate_gateway.admin.service import ensure_admin
    from tollgate_schema.db import create_engine, wait_for_schema

    engine = create_engine(settings.sqlalchemy_dsn, pool_size=1)
    try:
        await wait_for_schema(engine, 0, wait_for_migration=False)
        if not settings.admin_email or settings.admin_password is None:
            return
        async with async_sessionmaker(engine)() as session:
            if await ensure_admin(
                session, settings.admin_email, settings.admin_password.get_secret_value()
            ):
                logging.getLogger("tollgate_gateway").info(
                    "created the first admin %s", settings.admin_email
                )
    finally:
        await engine.dispose()


def _reset_multiprocess_metrics() -> None:
    """Workers share metric files in PROMETHEUS_MULTIPROC_DIR; a new server starts empty."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()


def serve(settings: Settings) -> None:
    import uvicorn

    _refuse_insecure(settings)
    _reset_multiprocess_metrics()
    try:
        asyncio.run(_preflight(settings))
    except Exception as exc:
        print(f"tollgate-gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    if settings.metrics_port:
        from tollgate_gateway import exposition

        metrics_host = settings.metrics_host or settings.host
        try:
            exposition.serve(metrics_host, settings.metrics_port)
        except OSError as exc:
            print(
                f"tollgate-gateway: cannot serve metrics on {metrics_host}:"
                f"{settings.metrics_port}: {exc} (TOLLGATE_METRICS_PORT)",
                file=sys.stderr,
            )
            raise SystemExit(1) from exc
    uvicorn.run(
        "tollgate_gateway.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="tollgate_gateway.server:GuardedHttpToolsProtocol",
        timeout_keep_alive=int(settings.keep_alive_timeout_seconds),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
        log_config=None,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tollgate-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the gateway (default)")
    sub.add_parser("migrate", help="apply database migrations up to head")
    sub.add_parser("create-admin", help="create the admin from ADMIN_EMAIL / ADMIN_PASSWORD")
    sub.add_parser("check", help="validate settings and exit")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_json, settings.log_level)
    command = args.command or "serve"
    if command == "migrate":
        migrate(settings)
    elif command == "create-admin":
        asyncio.run(_preflight(settings))
    elif command == "check":
        _refuse_insecure(settings)
        print("settings ok")
    else:
        serve(settings)


if __name__ == "__main__":
    main()
