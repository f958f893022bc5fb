"""pytest plugins: session fixtures over `tollgate_dev.servers` and `tollgate_dev.controlplane`
(registered by the repository's conftest.py)."""
