"""Fixtures for every test tier: real PostgreSQL, Valkey, Ollama stand-in, gateways and the
local Kubernetes control plane."""

pytest_plugins = [
    "tollgate_dev.pytest_services",
    "tollgate_dev.pytest_ollama",
    "tollgate_dev.pytest_cluster",
    "tollgate_dev.pytest_tracing",
]
