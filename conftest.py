"""Fixtures for every test tier: real PostgreSQL, Valkey, Ollama stand-in, gateways and the
local Kubernetes control plane."""

pytest_plugins = [
    "tollgate_dev.plugins.services",
    "tollgate_dev.plugins.ollama",
    "tollgate_dev.plugins.cluster",
    "tollgate_dev.plugins.tracing",
]
