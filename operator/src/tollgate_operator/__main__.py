"""``tollgate-operator`` / ``python -m tollgate_operator``: run the operator.

Refuses to start without a key pepper outside dev mode, and unless the database schema is
at the Alembic head of tollgate-schema (run the migrations first). With leader election on
(the default), waits for the Lease before handling anything, serving the liveness endpoint
meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import kopf
from aiohttp import web

from tollgate_operator import metrics, tracing
from tollgate_operator.db import Database
from tollgate_operator.k8s import Kube
from tollgate_operator.leader import LeaderElector
from tollgate_operator.settings import Settings, get_settings
from tollgate_schema import db as schema

logger = logging.getLogger("tollgate_operator")

EXIT_SETTINGS = 2
EXIT_SCHEMA = 3
EXIT_LOST_LEADERSHIP = 4


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tollgate-operator",
        description="Reconcile ApiKey, ModelAlias and OllamaPool resources (kopf).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; also TOLLGATE_NAMESPACES, comma-separated)",
    )
    parser.add_argument(
        "--liveness",
        default=None,
        help="liveness endpoint URL (default TOLLGATE_LIVENESS_ENDPOINT, e.g. http://0.0.0.0:8080/healthz)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    return parser.parse_args(argv)


class QuietSuccesses(logging.Filter):
    """kopf logs every timer run and Pod event at INFO; those successes are routine (every
    few seconds per object), so they go to DEBUG. Failures and changes stay."""

    ROUTINE = re.compile(
        r"^(Timer|Daemon) '[^']+' succeeded\.$|^Handler 'pool_pod_event' succeeded\.$"
    )

    # kopf's API client logs every retried request at ERROR, e.g. the 429 "storage is
    # (re)initializing" a starting API server answers to the first list of each kind: on a
    # normal start that is not an error. Retries are warnings; giving up stays an error.
    RETRY = re.compile(r"^Request attempt #\d+/\d+ failed; will retry")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and self.ROUTINE.match(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        if record.levelno == logging.ERROR and self.RETRY.match(record.getMessage()):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(settings: Settings, verbose: bool) -> None:
    fmt = kopf.LogFormat.JSON if settings.log_json else kopf.LogFormat.FULL
    kopf.configure(verbose=verbose, log_format=fmt)
    if not verbose:
        logging.getLogger().setLevel(settings.log_level.upper())
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietSuccesses())
    # The client logs response bodies at debug level, Secrets included: never.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)
    # One line per liveness probe says nothing.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def wait_for_schema(settings: Settings) -> bool:
    """True once the schema is at head; False (after a clear log line) when it is not."""
    db = Database.connect(settings.postgres_dsn, settings.postgres_connect_timeout_seconds)
    try:
        # Waits for Postgres a while; a schema that is behind refuses at once.
        await schema.wait_for_schema(
            db.engine,
            settings.startup_db_timeout_seconds,
            wait_for_migration=False,
            logger=logger,
        )
        return True
    except schema.SchemaNotAtHead as exc:
        logger.error("refusing to start: %s", exc)
        return False
    except Exception as exc:
        logger.error("refusing to start: Postgres is unreachable (%s)", type(exc).__name__)
        return False
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def standby_liveness(endpoint: str | None):  # type: ignore[no-untyped-def]
    """Answer the liveness probe while waiting for the Lease (kopf serves it afterwards)."""
    if not endpoint:
        yield
        return
    url = urlsplit(endpoint)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"standby": get_settings().identity})

    app = web.Application()
    app.router.add_get(url.path or "/", alive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 80)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def run(settings: Settings, namespaces: list[str], liveness: str | None) -> int:
    metrics.serve(settings.metrics_port, settings.metrics_host)
    if not await wait_for_schema(settings):
        return EXIT_SCHEMA
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    elector: LeaderElector | None = None
    kube: Kube | None = None
    holding: asyncio.Task[None] | None = None
    try:
        if settings.leader_election:
            kube = await Kube.connect()
            elector = LeaderElector(
                kube,
                settings.lease_namespace,
                settings.lease_name,
                settings.identity,
                settings.lease_duration_seconds,
            )
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with standby_liveness(liveness):
                leading = await elector.acquire(stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if not leading:
                return 0
            holding = asyncio.create_task(elector.hold(stop.set))
        else:
            metrics.LEADER.set(1)

        import tollgate_operator.handlers  # noqa: F401  (registers the handlers)

        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=True,
            stop_flag=stop,
            memo=kopf.Memo(namespaces=list(namespaces)),  # for the orphan sweep
        )
    finally:
        if holding is not None:
            holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holding
        if elector is not None:
            await elector.release()
        if kube is not None:
            await kube.close()
    return EXIT_LOST_LEADERSHIP if elector is not None and elector.lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings, args.verbose)
    reasons = settings.insecure_reasons()
    if reasons and not settings.dev_mode:
        for reason in reasons:
            logger.error("refusing to start: %s", reason)
        logger.error("Set it, or TOLLGATE_DEV_MODE=true for local development only.")
        return EXIT_SETTINGS
    namespaces = list(args.namespace)
    if not namespaces and not args.all_namespaces:
        namespaces = [n for n in os.environ.get("TOLLGATE_NAMESPACES", "").split(",") if n]
    liveness = args.liveness if args.liveness is not None else settings.liveness_endpoint
    logger.info(
        "tollgate-operator %s, watching %s",
        settings.identity,
        ", ".join(namespaces) if namespaces else "all namespaces",
    )
    tracing.setup(settings.otlp_endpoint, settings.trace_sample_ratio, settings.otel_service_name)
    try:
        return asyncio.run(run(settings, namespaces, liveness or None))
    except KeyboardInterrupt:
        return 130
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    sys.exit(main())
