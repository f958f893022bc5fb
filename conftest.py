"""Fixtures for every test tier: real PostgreSQL, Valkey, Ollama stand-in, gateways."""

pytest_plugins = ["tollgate_dev.pytest_services"]
