"""The operator image, run as the chart runs it, against the local control plane: its init
container finds the schema at head, the operator answers its liveness probe, and a sample
ApiKey becomes Ready with a Secret whose key a real gateway accepts."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from image_helpers import ROOT, Manifest, chart_container, image_values, workload

from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.plugins.services import Gateways
from tollgate_dev.proc import free_port
from tollgate_dev.servers.images import BuiltImages, Container

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

CRDS = ROOT / "crds"
SAMPLE = ROOT / "manifests" / "samples" / "apikey-basic.yaml"
KUBECONFIG = "/var/run/tollgate/kubeconfig"


@pytest.fixture(scope="module")
def chart(images: BuiltImages, render_chart: Callable[..., list[Manifest]]) -> list[Manifest]:
    return render_chart(image_values(images))


def wait_for(what: str, probe: Callable[[], Any], container: Container, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not container.running():
            pytest.fail(f"the operator exited:\n{container.logs()[-3000:]}", pytrace=False)
        if result := probe():
            return result
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n{container.logs()[-3000:]}", pytrace=False)


def get(cluster: ClusterHandle, *args: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def ready(obj: dict[str, Any] | None) -> bool:
    conditions = (obj or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_operator_image_reconciles_a_sample_apikey(
    chart: list[Manifest],
    k8s_cluster: ClusterHandle,
    migrated_dsn: str,
    gateways: Gateways,
    containers: Callable[..., Container],
    tmp_path: Path,
) -> None:
    k8s_cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
    k8s_cluster.wait_established(*k8s_cluster.kubectl("get", "crd", "-o", "name").stdout.split())
    # The Pod's service-account credentials, as one self-contained kubeconfig file.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(k8s_cluster.kubectl("config", "view", "--flatten", "--minify").stdout)
    kubeconfig.chmod(0o644)

    pepper = secrets.token_urlsafe(24)
    gateway = gateways.start(TOLLGATE_KEY_PEPPER=pepper)
    namespace = f"image-test-{secrets.token_hex(3)}"
    deployment = workload(chart, "Deployment", "operator")
    env = {
        "POSTGRES_DSN": migrated_dsn,
        "TOLLGATE_KEY_PEPPER": pepper,
        "KUBECONFIG": KUBECONFIG,
    }
    mount = ["--volume", f"{kubeconfig}:{KUBECONFIG}:ro"]

    check = chart_container(deployment, "wait-for-schema", env)
    result = Container(**check).run(timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    liveness = free_port()
    operator: dict[str, Any] = chart_container(
        deployment,
        "operator",
        {
            **env,
            "POD_NAME": "operator-image-test",  # the downward API's values
            "POD_NAMESPACE": "default",
            "TOLLGATE_LEASE_NAMESPACE": "default",
            "TOLLGATE_LEASE_NAME": f"operator-{namespace}",
            "TOLLGATE_NAMESPACES": namespace,
            "TOLLGATE_GATEWAY_URL": gateway.url,
            "TOLLGATE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{liveness}/healthz",
            "TOLLGATE_METRICS_HOST": "127.0.0.1",
            "TOLLGATE_METRICS_PORT": str(free_port()),
        },
    )
    operator["flags"] = [*operator["flags"], *mount]
    container = containers(**operator)

    def alive() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{liveness}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the operator's liveness endpoint", alive, container, timeout=90)

    sample = yaml.safe_load(SAMPLE.read_text())
    sample["metadata"]["namespace"] = namespace
    manifest = tmp_path / "apikey.yaml"
    manifest.write_text(yaml.safe_dump(sample))
    k8s_cluster.kubectl("create", "namespace", namespace)
    try:
        k8s_cluster.kubectl("apply", "-f", str(manifest))
        name = sample["metadata"]["name"]
        wait_for(
            f"ApiKey {name} to be Ready",
            lambda: ready(get(k8s_cluster, "apikey", name, "-n", namespace)),
            container,
            timeout=90,
        )
        secret = get(k8s_cluster, "secret", f"{name}-api-key", "-n", namespace)
        assert secret, "the operator wrote no Secret"
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["OPENAI_BASE_URL"] == gateway.url + "/v1"
        response = httpx.get(
            gateway.url + "/v1/models",
            headers={"Authorization": f"Bearer {data['OPENAI_API_KEY']}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        logs = container.logs()
        assert data["OPENAI_API_KEY"] not in logs
    finally:
        # While the operator still runs, so that it removes its finalizers.
        k8s_cluster.kubectl("delete", "namespace", namespace, "--timeout=60s", check=False)
