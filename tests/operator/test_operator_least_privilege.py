"""The operator under exactly the chart's RBAC (its ServiceAccount's token, not the admin's),
through the whole sample lifecycle: apply, Ready, keys in use, delete, keys revoked. Then
no key material anywhere it does not belong: operator and gateway logs, Events, the
resources, the admin API's answers hold neither a key nor more of it than the display prefix.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    PLURALS,
    SAMPLES,
    FakeCluster,
    Kube,
    OperatorProcess,
    operator_env,
    wait_for,
)

from tollgate_dev.controlplane.binaries import Binaries
from tollgate_dev.plugins.cluster import ClusterHandle
from tollgate_dev.plugins.services import Admin
from tollgate_dev.proc import repo_root
from tollgate_dev.servers.programs import GatewayProcess

pytestmark = pytest.mark.cluster

CHART = repo_root() / "charts" / "tollgate"
DEMO = "tollgate-demo"
RELEASE_NAMESPACE = "tollgate-rbac"
OPERATOR_SA = "tollgate-operator"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
# What is shown of a generated key (tg- and 8 characters); of a supplied key, nothing.
GENERATED_SHOWN = 11


def documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(SAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def operator_rbac(namespaced: bool) -> list[dict[str, Any]]:
    """The operator's ServiceAccount and RBAC objects, as the chart renders them."""
    helm = Binaries.resolve().helm
    if not helm.is_file():
        pytest.fail(f"helm is not built ({helm}); run `make k8s-binaries`", pytrace=False)
    args = [str(helm), "template", "tollgate", str(CHART), "--namespace", RELEASE_NAMESPACE]
    if namespaced:
        args += ["--set", f"operator.watchNamespaces={{{DEMO}}}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    return [
        doc
        for doc in yaml.safe_load_all(out)
        if doc
        and doc["kind"] in RBAC_KINDS
        and doc["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]


def token_kubeconfig(k8s_cluster: ClusterHandle, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster, with the ServiceAccount's token as the only user."""
    admin = yaml.safe_load(k8s_cluster.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": "operator",
                        "context": {"cluster": cluster["name"], "user": "operator"},
                    }
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def as_operator(
    k8s_cluster: ClusterHandle, kubeconfig: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(k8s_cluster.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def namespace_gone(kube: Kube, name: str) -> bool:
    try:
        kube.core.read_namespace(name)
    except ApiException as exc:
        return exc.status == 404
    return False


@pytest.fixture
def cluster_admin_operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """The session's operator (cluster-admin) steps aside, and comes back afterwards."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()
        wait_for("the session operator to lead again", operator.leading)


def works(gateway: GatewayProcess, key: str) -> bool:
    response = httpx.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    return response.status_code == 200


def leaks(text: str, key: str, shown: int) -> list[str]:
    """Every piece of `key` longer than what may be shown of it that occurs in `text`."""
    width = shown + 1
    return [key[i : i + width] for i in range(len(key) - width + 1) if key[i : i + width] in text]


@pytest.mark.parametrize("namespaced", [True, False], ids=["namespaced-roles", "cluster-role"])
def test_sample_lifecycle_under_the_charts_rbac_leaves_no_key_material(
    namespaced: bool,
    cluster_admin_operator_paused: None,
    fake_cluster: FakeCluster,
    op_gateway: GatewayProcess,
    kube: Kube,
    k8s_cluster: ClusterHandle,
    migrated_dsn: str,
    service_dir: Path,
    tmp_path: Path,
) -> None:
    wait_for(
        f"namespace {DEMO} from an earlier test to be gone", lambda: namespace_gone(kube, DEMO)
    )
    rbac = operator_rbac(namespaced)
    kinds = sorted({d["kind"] for d in rbac})
    assert kinds == (
        ["Role", "RoleBinding", "ServiceAccount"]
        if namespaced
        else ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]
    )
    k8s_cluster.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    k8s_cluster.kubectl("apply", "-f", str(SAMPLES / "00-namespace.yaml"))
    rbac_file = tmp_path / "rbac.yaml"
    rbac_file.write_text(yaml.safe_dump_all(rbac))
    proc: OperatorProcess | None = None
    try:
        k8s_cluster.kubectl("apply", "-f", str(rbac_file))
        token = k8s_cluster.kubectl(
            "create", "token", OPERATOR_SA, "-n", RELEASE_NAMESPACE, "--duration=2h"
        ).stdout.strip()
        kubeconfig = token_kubeconfig(k8s_cluster, token, tmp_path / "operator.kubeconfig")
        # The token is the ServiceAccount's, and it is not an admin.
        whoami = as_operator(k8s_cluster, kubeconfig, "auth", "whoami", "-o", "json")
        assert f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_SA}" in whoami.stdout
        for verb, resource in (("list", "secrets"), ("delete", "statefulsets"), ("create", "pods")):
            can = as_operator(k8s_cluster, kubeconfig, "auth", "can-i", verb, resource, "-n", DEMO)
            assert can.stdout.strip() == "no", (verb, resource)

        env = {
            **operator_env(k8s_cluster, migrated_dsn, op_gateway.url),
            "KUBECONFIG": str(kubeconfig),
            "TOLLGATE_LEASE_NAMESPACE": RELEASE_NAMESPACE,
            "TOLLGATE_LEASE_NAME": OPERATOR_SA,
        }
        log = service_dir / f"operator-rbac-{'ns' if namespaced else 'cluster'}.log"
        log.unlink(missing_ok=True)
        proc = OperatorProcess(
            env,
            log_path=log,
            identity="rbac-operator",
            scope=("--namespace", DEMO) if namespaced else ("--all-namespaces",),
        )
        proc.start()
        wait_for("the operator under its own role to lead", proc.leading)

        user_key = secrets.token_hex(24)
        kube.core.create_namespaced_secret(
            DEMO,
            {"metadata": {"name": "legacy-client-key"}, "stringData": {"token": user_key}},
        )
        k8s_cluster.kubectl("apply", "-f", str(SAMPLES))
        resources = [d for d in documents() if d["kind"] in PLURALS]
        for doc in resources:
            plural, name = PLURALS[doc["kind"]], doc["metadata"]["name"]
            wait_for(
                f"{doc['kind']} {name} to be Ready under the trimmed role",
                lambda p=plural, n=name: kube.ready(p, DEMO, n),
                timeout=90,
            )
        generated = [
            (kube.secret(DEMO, s) or {})["api-key"]
            for s in ("demo-app-api-key", "batch-jobs-openai")
        ]
        assert all(k.startswith("tg-") for k in generated)
        assert (kube.secret(DEMO, "legacy-client-api-key") or {})["api-key"] == user_key
        for key in (*generated, user_key):
            assert works(op_gateway, key)
        chat = openai.OpenAI(base_url=op_gateway.url + "/v1", api_key=user_key, max_retries=0)
        chat.chat.completions.create(
            model="chat-small", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )

        # What people and programs read back: the admin API, status, Events.
        admin = Admin(op_gateway.url)
        answers = [admin.http.get(path).text for path in ("/admin/keys", "/admin/models")]
        ours = [
            k
            for k in admin.http.get("/admin/keys").json()
            if k["name"].startswith(DEMO + "/") and k["revoked_at"] is None
        ]
        assert len(ours) == 3
        for key in ours:
            answers.append(admin.http.get(f"/admin/keys/{key['id']}").text)
        wait_for(
            "the chat's usage",
            lambda: "chat-small" in admin.http.get("/admin/usage?group_by=alias").text,
        )
        answers.append(admin.http.get("/admin/usage?group_by=key").text)
        shown = {k["name"]: k["key_prefix"] for k in ours}
        assert shown[f"{DEMO}/legacy-client"].startswith("fp-")
        assert shown[f"{DEMO}/demo-app"] == generated[0][:GENERATED_SHOWN]

        # The lifecycle's end: every resource deleted, its keys stop working.
        for doc in resources:
            kube.delete(PLURALS[doc["kind"]], DEMO, doc["metadata"]["name"])
        for doc in resources:
            plural, name = PLURALS[doc["kind"]], doc["metadata"]["name"]
            wait_for(
                f"{doc['kind']} {name} to be gone", lambda p=plural, n=name: kube.gone(p, DEMO, n)
            )
        for key in (*generated, user_key):
            assert not works(op_gateway, key)

        operator_log = log.read_text(errors="replace")
        # Nothing it tried was forbidden: the role is enough.
        assert "Forbidden" not in operator_log and '"status":403' not in operator_log

        events = [
            f"{e.reason} {e.message}" for e in kube.core.list_event_for_all_namespaces().items
        ]
        objects = [
            str(obj)
            for plural in PLURALS.values()
            for obj in kube.objects.list_cluster_custom_object("tollgate.dev", "v1alpha1", plural)[
                "items"
            ]
        ]
        assert any(e.startswith("KeyImported Registered fp-") for e in events)
        places = {
            "the operator's log": operator_log,
            "the gateway's log": (op_gateway.log_path or Path("/dev/null")).read_text(
                errors="replace"
            ),
            "Events": "\n".join(events),
            "custom resources": "\n".join(objects),
            "admin API answers": "\n".join(answers),
        }
        # The scan sees what the old display (11 characters of any key) would have shown.
        assert leaks(f"Registered {user_key[:GENERATED_SHOWN]}…", user_key, GENERATED_SHOWN - 1)
        for where, text in places.items():
            for key in generated:
                assert not leaks(text, key, GENERATED_SHOWN), f"{where} holds a generated key"
            # Of a supplied key not one run longer than the old 11-character prefix.
            assert not leaks(text, user_key, GENERATED_SHOWN - 1), f"{where} holds the user key"
    finally:
        if proc is not None:
            proc.stop()
        with contextlib.suppress(ApiException):
            kube.core.delete_namespace(DEMO)
        k8s_cluster.kubectl("delete", "-f", str(rbac_file), "--ignore-not-found", check=False)
