"""Tollgate's test bed.

* `tollgate_dev.proc`: the one process helper (repository and cache folders, ports,
  spawning, waiting, stopping) every part below starts its processes with;
* `tollgate_dev.servers`: real servers as processes (PostgreSQL, Valkey, the gateway and
  the stand-in, real Ollama and its registry, Caddy, Prometheus, Jaeger, container images);
* `tollgate_dev.controlplane`: the local Kubernetes control plane;
* `tollgate_dev.cli`: `make run`;
* `tollgate_dev.plugins`: pytest plugins, thin fixtures over the above.

The Ollama stand-in is a distribution of its own (`tollgate_standin`, hack/standin).
"""
