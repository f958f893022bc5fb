"""Fixtures shared by the gateway's routing tests."""

from __future__ import annotations

import pytest

from tollgate_dev.plugins.services import Gateways
from tollgate_dev.servers.programs import GatewayProcess


@pytest.fixture(scope="session")
def routing_gateway(gateways: Gateways) -> GatewayProcess:
    """A gateway that polls replicas often (tests need not wait long for what they set up)
    and ejects for long (an ejected replica stays out while a test looks)."""
    return gateways.start(TOLLGATE_ROUTING_POLL_SECONDS="0.2", TOLLGATE_ROUTING_EJECT_SECONDS="30")
