"""The chart rendered under each scenario of charts/tollgate/ci/: what every object must have,
and what each feature renders."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_helpers import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    Manifest,
    Render,
    containers,
    env_of,
    find,
    leaf_paths,
    load_values,
    one,
    pod_spec,
    run_helm,
    template_args,
)

from tollgate_gateway.config import Settings as GatewaySettings
from tollgate_operator.settings import Settings as OperatorSettings

CI = {path.stem: path for path in CI_VALUES}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
GATEWAY = "tollgate-gateway"
OPERATOR = "tollgate-operator"
MIGRATE = "tollgate-migrate"


def test_the_ci_scenarios_are_there() -> None:
    assert set(CI) >= {
        "defaults",
        "production-external-db",
        "monitoring-on",
        "bundled-db-default-pool",
        "ingress-tls",
        "dev-values",
    }


@pytest.fixture(scope="module", params=sorted(CI), ids=str)
def scenario(request: pytest.FixtureRequest, render: Render) -> list[Manifest]:
    manifests: list[Manifest] = render(CI[request.param])
    return manifests


# --- what every object of every scenario must have -------------------------------------


def test_objects_carry_the_standard_labels_and_namespace(scenario: list[Manifest]) -> None:
    for m in scenario:
        meta = m["metadata"]
        labels = meta.get("labels", {})
        where = f"{m['kind']}/{meta['name']}"
        assert labels.get("app.kubernetes.io/name") == "tollgate", where
        assert labels.get("app.kubernetes.io/instance") == "tollgate", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("helm.sh/chart", "").startswith("tollgate-"), where
        assert labels.get("app.kubernetes.io/component"), where
        if m["kind"] not in CLUSTER_SCOPED:
            assert meta.get("namespace") == NAMESPACE, where


def selectors(m: Manifest) -> list[dict[str, str]]:
    spec = m.get("spec", {})
    found = []
    if m["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"):
        found.append(spec["selector"]["matchLabels"])
    if m["kind"] == "Service":
        found.append(spec["selector"])
    if m["kind"] == "NetworkPolicy":
        found.append(spec["podSelector"]["matchLabels"])
    return found


def test_selectors_never_name_the_chart_version(scenario: list[Manifest]) -> None:
    for m in scenario:
        for selector in selectors(m):
            assert "helm.sh/chart" not in selector, m["metadata"]["name"]
            assert "app.kubernetes.io/version" not in selector, m["metadata"]["name"]
            assert set(selector) == {
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            }, m["metadata"]["name"]


def test_selectors_select_pods_of_this_release(scenario: list[Manifest]) -> None:
    pod_labels = [
        m["spec"]["template"]["metadata"]["labels"] for m in scenario if m["kind"] in WORKLOADS
    ]
    for m in scenario:
        if m["kind"] in ("Deployment", "StatefulSet"):
            labels = m["spec"]["template"]["metadata"]["labels"]
            assert m["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for selector in selectors(m):
            assert any(selector.items() <= labels.items() for labels in pod_labels), (
                f"{m['kind']}/{m['metadata']['name']} selects no pod of the chart"
            )


def test_pods_run_locked_down(scenario: list[Manifest]) -> None:
    for m in scenario:
        if m["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(m)
        where = f"{m['kind']}/{m['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec.get("enableServiceLinks") is False, where
        mounts_tmp = {"/tmp"}
        for c in containers(m):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}"
            assert "add" not in sc["capabilities"], f"{where}/{c['name']}"
            paths = {v["mountPath"] for v in c.get("volumeMounts", [])}
            if c["name"] != "valkey":  # Valkey writes only to /data
                assert mounts_tmp <= paths, f"{where}/{c['name']} has no writable /tmp"


def test_only_the_operator_gets_an_api_token(scenario: list[Manifest]) -> None:
    for m in scenario:
        if m["kind"] not in WORKLOADS:
            continue
        token = pod_spec(m).get("automountServiceAccountToken", True)
        assert token is (m["metadata"]["name"] == OPERATOR), m["metadata"]["name"]


def test_images_are_pinned_to_a_tag_or_digest(scenario: list[Manifest]) -> None:
    for m in scenario:
        if m["kind"] in WORKLOADS:
            for c in containers(m):
                image = c["image"]
                assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, image
                assert not image.endswith(":latest"), image


def test_resources_are_empty_by_default(render: Render) -> None:
    for m in render(CI["defaults"]):
        if m["kind"] in WORKLOADS:
            assert all("resources" not in c for c in containers(m)), m["metadata"]["name"]


# --- the gateway ------------------------------------------------------------------------


def gateway_env_names() -> set[str]:
    names = {"PROMETHEUS_MULTIPROC_DIR"}
    for name, field in GatewaySettings.model_fields.items():
        alias = field.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
        else:
            names.add(f"TOLLGATE_{name.upper()}")
    return names


def operator_env_names() -> set[str]:
    # TOLLGATE_NAMESPACES is read by the operator's command line, not its Settings.
    names = {"POD_NAME", "POD_NAMESPACE", "TOLLGATE_NAMESPACES", "WAIT_SECONDS"}
    for name, field in OperatorSettings.model_fields.items():
        alias = field.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
        else:
            names.add(f"TOLLGATE_{name.upper()}")
    return names


@pytest.mark.parametrize("name", sorted(CI))
def test_every_variable_the_chart_sets_is_a_real_setting(render: Render, name: str) -> None:
    manifests = render(CI[name])
    known_gateway = gateway_env_names() | {"WAIT_SECONDS"}
    for m in manifests:
        if m["kind"] in WORKLOADS and m["metadata"]["name"] in (GATEWAY, MIGRATE):
            for c in containers(m):
                unknown = set(env_of(c)) - known_gateway
                assert not unknown, f"{c['name']}: {unknown} are not gateway settings"
        if m["metadata"]["name"] == OPERATOR and m["kind"] == "Deployment":
            for c in containers(m):
                unknown = set(env_of(c)) - operator_env_names()
                assert not unknown, f"operator: {unknown} are not operator settings"


def test_gateway_probes_survive_slow_flushes_and_pods_drain(render: Render) -> None:
    deployment = one(render(CI["defaults"]), "Deployment", GATEWAY)
    spec = pod_spec(deployment)
    gateway = spec["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert gateway[probe]["timeoutSeconds"] >= 5
        assert gateway[probe]["failureThreshold"] >= 3
    assert spec["terminationGracePeriodSeconds"] >= 35
    assert gateway["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert gateway["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    env = env_of(gateway)
    assert env["TOLLGATE_HOST"] == "0.0.0.0"
    assert env["TOLLGATE_PORT"] == "8000"
    assert env["TOLLGATE_USAGE_SPOOL_DIR"] == "/var/lib/tollgate/usage-spool"
    mounts = {v["mountPath"]: v["name"] for v in gateway["volumeMounts"]}
    assert mounts["/var/lib/tollgate/usage-spool"] == "usage-spool"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["usage-spool"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in env  # one worker


def test_several_workers_share_metrics_through_an_emptydir(render: Render) -> None:
    spec = pod_spec(one(render(CI["production-external-db"]), "Deployment", GATEWAY))
    gateway = spec["containers"][0]
    env = env_of(gateway)
    assert env["TOLLGATE_WORKERS"] == "2"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/var/run/tollgate/metrics"
    mounts = {v["mountPath"]: v["name"] for v in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/var/run/tollgate/metrics"]]["emptyDir"]["medium"] == "Memory"


def test_gateway_reads_its_secrets_from_one_secret(render: Render) -> None:
    gateway = pod_spec(one(render(CI["defaults"]), "Deployment", GATEWAY))["containers"][0]
    env = env_of(gateway)
    for name in (
        "POSTGRES_DSN",
        "REDIS_URL",
        "JWT_SECRET",
        "ADMIN_PASSWORD",
        "TOLLGATE_KEY_PEPPER",
    ):
        ref = env[name]["secretKeyRef"]
        assert ref["name"] == "tollgate-secrets"
        assert ref["key"] == name
        # The pepper is required: no Pod starts without it (nor would the gateway).
        assert ref.get("optional", False) is (name == "ADMIN_PASSWORD")


def test_gateway_waits_for_the_schema_before_it_starts(render: Render) -> None:
    spec = pod_spec(one(render(CI["defaults"]), "Deployment", GATEWAY))
    (init,) = spec["initContainers"]
    assert init["name"] == "wait-for-schema"
    # The shared package's command, the one the operator's init container runs too.
    assert init["command"] == ["tollgate-schema", "wait-for-schema"]
    assert set(env_of(init)) == {"WAIT_SECONDS", "POSTGRES_DSN"}


def test_autoscaling_replaces_the_replica_count(render: Render) -> None:
    defaults = render(CI["defaults"])
    assert not find(defaults, "HorizontalPodAutoscaler")
    assert one(defaults, "Deployment", GATEWAY)["spec"]["replicas"] == 2
    production = render(CI["production-external-db"])
    hpa = one(production, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": GATEWAY,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    metrics = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert metrics["cpu"]["averageUtilization"] == 65
    assert metrics["memory"]["averageUtilization"] == 80
    assert "replicas" not in one(production, "Deployment", GATEWAY)["spec"]


def test_pdb_and_service(render: Render) -> None:
    manifests = render(CI["defaults"])
    pdb = one(manifests, "PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["maxUnavailable"] == 1
    service = one(manifests, "Service", GATEWAY)
    # A numeric target port: the Caddy ingress controller does not resolve named ones.
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": 8000, "protocol": "TCP"}
    ]


# --- the migration Job ------------------------------------------------------------------


def test_migration_job_is_a_hook_that_fails_loudly(render: Render) -> None:
    job = one(render(CI["defaults"]), "Job", MIGRATE)
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert 0 <= job["spec"]["backoffLimit"] <= 2
    assert job["spec"]["activeDeadlineSeconds"] > 0
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "Never"
    # A pre-install hook runs before the chart's ServiceAccounts exist.
    assert "serviceAccountName" not in spec
    (wait,) = spec["initContainers"]
    assert wait["name"] == "wait-for-database"
    assert wait["command"] == ["tollgate-schema", "wait-for-database"]
    assert env_of(wait)["WAIT_SECONDS"] == "300"
    (migrate,) = spec["containers"]
    assert "command" not in migrate  # the image's entrypoint, tollgate-gateway, exits non-zero
    assert migrate["args"] == ["migrate"]
    gateway = pod_spec(one(render(CI["defaults"]), "Deployment", GATEWAY))["containers"][0]
    assert migrate["image"] == gateway["image"]


def test_first_install_migrates_after_the_objects_it_needs_exist(render: Render) -> None:
    """With the bundled Postgres or a chart-made Secret, the Job must run after install."""
    job = one(render(CI["bundled-db-default-pool"]), "Job", MIGRATE)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"


def test_migration_can_be_turned_off(render: Render) -> None:
    assert not find(render(sets={"migration.enabled": "false"}), "Job")


# --- secrets and bundled databases ------------------------------------------------------


def test_no_secret_is_rendered_unless_asked(render: Render) -> None:
    for name in ("defaults", "production-external-db", "monitoring-on", "ingress-tls"):
        assert not find(render(CI[name]), "Secret"), name


def test_bundled_databases_and_the_generated_secret(render: Render) -> None:
    manifests = render(CI["bundled-db-default-pool"])
    secret = one(manifests, "Secret", "tollgate-secrets")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) == {
        "POSTGRES_DSN",
        "POSTGRES_PASSWORD",
        "REDIS_URL",
        "REDIS_PASSWORD",
        "JWT_SECRET",
        "ADMIN_PASSWORD",
        "TOLLGATE_KEY_PEPPER",
    }
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["POSTGRES_DSN"] == (
        f"postgresql://tollgate:{data['POSTGRES_PASSWORD']}"
        "@tollgate-postgresql.tollgate.svc:5432/tollgate"
    )
    assert data["REDIS_URL"] == (
        f"redis://:{data['REDIS_PASSWORD']}@tollgate-redis.tollgate.svc:6379/0"
    )
    assert len(data["JWT_SECRET"]) >= 32
    assert len(data["ADMIN_PASSWORD"]) >= 12
    settings = GatewaySettings(
        jwt_secret=data["JWT_SECRET"],
        admin_password=data["ADMIN_PASSWORD"],
        key_pepper=data["TOLLGATE_KEY_PEPPER"],
    )
    assert settings.insecure_reasons() == []  # the gateway accepts what the chart generates
    assert OperatorSettings(key_pepper=data["TOLLGATE_KEY_PEPPER"]).insecure_reasons() == []

    postgres = one(manifests, "StatefulSet", "tollgate-postgresql")
    assert postgres["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pg = pod_spec(postgres)["containers"][0]
    assert env_of(pg)["POSTGRES_PASSWORD"]["secretKeyRef"]["key"] == "POSTGRES_PASSWORD"
    assert pg["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    redis = one(manifests, "StatefulSet", "tollgate-redis")
    valkey = pod_spec(redis)["containers"][0]
    assert "$(REDIS_PASSWORD)" in valkey["args"]
    assert one(manifests, "Service", "tollgate-postgresql")["spec"]["ports"][0]["port"] == 5432
    assert one(manifests, "Service", "tollgate-redis")["spec"]["ports"][0]["port"] == 6379


def test_given_secret_values_are_used_verbatim(render: Render) -> None:
    manifests = render(
        sets={
            "secrets.create": "true",
            "secrets.postgresDsn": "postgresql://u:p@db:5432/t",
            "secrets.redisUrl": "redis://r:6379/1",
            "secrets.jwtSecret": "j" * 40,
            "secrets.keyPepper": "pepper-" + "p" * 16,
            "secrets.adminPassword": "a" * 16,
            "secrets.keepOnUninstall": "false",
        }
    )
    secret = one(manifests, "Secret", "tollgate-secrets")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "POSTGRES_DSN": "postgresql://u:p@db:5432/t",
        "REDIS_URL": "redis://r:6379/1",
        "JWT_SECRET": "j" * 40,
        "TOLLGATE_KEY_PEPPER": "pepper-" + "p" * 16,
        "ADMIN_PASSWORD": "a" * 16,
    }
    assert "annotations" not in secret["metadata"]
    assert not find(manifests, "StatefulSet")


# --- the operator ------------------------------------------------------------------------


def rules_of(role: Manifest) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


CUSTOM = ("apikeys", "modelaliases", "ollamapools")
# Exactly the verbs the operator uses, per resource: children are server-side applied (patch,
# authorized as create too for a new object) and garbage-collected through owner references;
# nothing is updated, deleted, listed or watched that it does not need to.
OPERATOR_VERBS: dict[tuple[str, str], set[str]] = {
    **{("tollgate.dev", k): {"get", "list", "watch", "patch"} for k in CUSTOM},
    **{("tollgate.dev", f"{k}/status"): {"patch"} for k in CUSTOM},
    **{("tollgate.dev", f"{k}/finalizers"): {"update"} for k in CUSTOM},
    ("", "secrets"): {"get", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("", "serviceaccounts"): {"create", "patch"},
    # get: the replicas a StatefulSet has (a manual scale of an autoscaled pool is reverted
    # with an Event); scale: the autoscaler changes nothing else.
    ("apps", "statefulsets"): {"get", "create", "patch"},
    ("apps", "statefulsets/scale"): {"patch"},
    ("policy", "poddisruptionbudgets"): {"create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"create", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
}


def test_operator_rbac_is_exactly_the_verbs_it_uses(render: Render) -> None:
    manifests = render(CI["defaults"])
    cluster_roles = find(manifests, "ClusterRole")
    assert [r["metadata"]["name"] for r in cluster_roles] == [f"{NAMESPACE}-{OPERATOR}"]
    assert rules_of(cluster_roles[0]) == OPERATOR_VERBS
    leases = rules_of(one(manifests, "Role", f"{OPERATOR}-leader-election"))
    assert leases == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    binding = one(manifests, "ClusterRoleBinding", f"{NAMESPACE}-{OPERATOR}")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == f"{NAMESPACE}-{OPERATOR}"


def test_operator_watching_namespaces_gets_roles_there(render: Render) -> None:
    manifests = render(sets={"operator.watchNamespaces": "{team-a,team-b}"})
    # Nothing cluster-wide at all: not even reading CRDs or namespaces.
    assert not find(manifests, "ClusterRole")
    assert not find(manifests, "ClusterRoleBinding")
    roles = find(manifests, "Role", OPERATOR)
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_of(role) == OPERATOR_VERBS
    bindings = find(manifests, "RoleBinding", OPERATOR)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": OPERATOR,
        }
    env = env_of(pod_spec(one(manifests, "Deployment", OPERATOR))["containers"][0])
    assert env["TOLLGATE_NAMESPACES"] == "team-a,team-b"


def test_operator_settings(render: Render) -> None:
    spec = pod_spec(one(render(CI["defaults"]), "Deployment", OPERATOR))
    operator = spec["containers"][0]
    (init,) = spec["initContainers"]
    assert init["name"] == "wait-for-schema"
    assert init["image"] == operator["image"]
    env = env_of(operator)
    assert env["TOLLGATE_GATEWAY_URL"] == "http://tollgate-gateway.tollgate.svc.cluster.local:8000"
    assert env["TOLLGATE_LEASE_NAMESPACE"] == NAMESPACE
    assert env["TOLLGATE_LEADER_ELECTION"] == "true"
    assert env["TOLLGATE_METRICS_PORT"] == "9090"
    assert env["TOLLGATE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TOLLGATE_KEY_PEPPER"]["secretKeyRef"] == {
        "name": "tollgate-secrets",
        "key": "TOLLGATE_KEY_PEPPER",
    }
    # The gateways' Redis, where they publish each pool's demand (autoscaling).
    assert env["TOLLGATE_REDIS_URL"]["secretKeyRef"] == {
        "name": "tollgate-secrets",
        "key": "REDIS_URL",
    }
    # Pools admit this release's gateway and operator Pods, by their selector labels.
    assert env["TOLLGATE_POOL_NETWORK_POLICY"] == "true"
    gateway_labels = one(render(CI["defaults"]), "Deployment", GATEWAY)["spec"]["selector"]
    assert (
        dict(pair.split("=") for pair in env["TOLLGATE_GATEWAY_POD_SELECTOR"].split(","))
        == gateway_labels["matchLabels"]
    )
    assert env["TOLLGATE_GATEWAY_NAMESPACE"] == NAMESPACE
    operator_labels = one(render(CI["defaults"]), "Deployment", OPERATOR)["spec"]["selector"]
    assert (
        dict(pair.split("=") for pair in env["TOLLGATE_OPERATOR_POD_SELECTOR"].split(","))
        == operator_labels["matchLabels"]
    )
    assert env["TOLLGATE_OPERATOR_NAMESPACE"] == NAMESPACE
    assert "TOLLGATE_ALLOWED_IMAGES" not in env  # the operator's default: the official image
    assert env["TOLLGATE_ALLOW_ENV_FROM_SECRETS"] == "false"
    assert env["TOLLGATE_ALLOW_ENV_FROM_CONFIG_MAPS"] == "false"
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_pool_rules_and_a_gateway_elsewhere(render: Render) -> None:
    manifests = render(
        sets={
            "operator.pools.gatewayPodSelector.app": "edge-gateway",
            "operator.pools.gatewayNamespace": "*",
            "operator.pools.allowedImages": "{registry.internal/ml/*,ghcr.io/acme/ollama}",
            "operator.pools.allowEnvFromSecrets": "true",
            "operator.pools.networkPolicy": "false",
        }
    )
    env = env_of(pod_spec(one(manifests, "Deployment", OPERATOR))["containers"][0])
    assert env["TOLLGATE_GATEWAY_POD_SELECTOR"] == "app=edge-gateway"
    assert env["TOLLGATE_GATEWAY_NAMESPACE"] == "*"
    assert env["TOLLGATE_ALLOWED_IMAGES"] == "registry.internal/ml/*,ghcr.io/acme/ollama"
    assert env["TOLLGATE_ALLOW_ENV_FROM_SECRETS"] == "true"
    assert env["TOLLGATE_POOL_NETWORK_POLICY"] == "false"
    settings = OperatorSettings.model_validate(
        {k.removeprefix("TOLLGATE_").lower(): v for k, v in env.items() if isinstance(v, str)}
    )
    assert settings.allowed_image_list == ["registry.internal/ml/*", "ghcr.io/acme/ollama"]


def test_operator_can_be_turned_off(render: Render) -> None:
    manifests = render(sets={"operator.enabled": "false"})
    assert not [
        m for m in manifests if m["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]


# --- pools and aliases -------------------------------------------------------------------


def test_default_pool_and_aliases(render: Render) -> None:
    manifests = render(CI["bundled-db-default-pool"])
    pool = one(manifests, "OllamaPool", "default")
    assert pool["apiVersion"] == "tollgate.dev/v1alpha1"
    assert pool["spec"]["gpus"] == 1
    aliases = find(manifests, "ModelAlias")
    assert {a["metadata"]["name"]: a["spec"]["alias"] for a in aliases} == {
        "llama3-8b": "llama3:8b",
        "gpt-4o-mini": "gpt-4o-mini",
    }
    env = env_of(pod_spec(one(manifests, "Deployment", GATEWAY))["containers"][0])
    assert env["OLLAMA_BASE_URL"] == "http://default.tollgate.svc:11434"


def test_pool_and_alias_specs_satisfy_the_crds(render: Render) -> None:
    """The structural part of each CRD's schema, checked offline (CEL rules: in the cluster)."""
    crds = {}
    for path in (CHART / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for m in render(CI["bundled-db-default-pool"]):
        if m["kind"] in crds:
            jsonschema.validate(m["spec"], crds[m["kind"]]["properties"]["spec"])


# --- ingress, network policies, monitoring ----------------------------------------------


def test_ingress_for_caddy_with_tls(render: Render) -> None:
    assert not find(render(CI["defaults"]), "Ingress")
    ingress = one(render(CI["ingress-tls"]), "Ingress", GATEWAY)
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "caddy"
    assert spec["tls"] == [{"secretName": "llm-example-com-tls", "hosts": ["llm.example.com"]}]
    (rule,) = spec["rules"]
    assert rule["host"] == "llm.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/v1", "/api"]
    for path in rule["http"]["paths"]:
        assert path["pathType"] == "Prefix"
        assert path["backend"]["service"] == {"name": GATEWAY, "port": {"number": 8000}}
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"


def test_network_policies(render: Render) -> None:
    assert not find(render(CI["defaults"]), "NetworkPolicy")
    manifests = render(CI["production-external-db"])
    gateway = one(manifests, "NetworkPolicy", GATEWAY)["spec"]
    assert gateway["policyTypes"] == ["Ingress", "Egress"]
    ingress, scrape = gateway["ingress"]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    peers = json.dumps(ingress["from"])
    assert "caddy-ingress-controller" in peers and "prometheus" not in peers
    assert scrape["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert "prometheus" in json.dumps(scrape["from"])
    egress_ports = {p["port"] for rule in gateway["egress"] for p in rule.get("ports", [])}
    assert egress_ports == {53, 5432, 6432, 6379, 6380, 11434}
    operator = one(manifests, "NetworkPolicy", OPERATOR)["spec"]
    egress_ports = {p["port"] for rule in operator["egress"] for p in rule.get("ports", [])}
    # Redis too: the demand the gateways publish per pool (autoscaling).
    assert egress_ports == {53, 443, 6443, 5432, 6432, 6379, 6380, 11434}
    assert operator["ingress"][0]["ports"] == [{"port": 9090, "protocol": "TCP"}]

    bundled = render(CI["bundled-db-default-pool"], sets={"networkPolicy.enabled": "true"})
    postgres = one(bundled, "NetworkPolicy", "tollgate-postgresql")["spec"]
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in postgres["ingress"][0]["from"]
    }
    assert components == {"gateway", "migration", "operator"}
    redis = one(bundled, "NetworkPolicy", "tollgate-redis")["spec"]
    assert {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in redis["ingress"][0]["from"]
    } == {"gateway", "operator"}
    gateway_egress = one(bundled, "NetworkPolicy", GATEWAY)["spec"]["egress"]
    to_postgres = [
        r for r in gateway_egress if r.get("ports") == [{"port": 5432, "protocol": "TCP"}]
    ]
    assert to_postgres[0]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "postgresql"
    )


def test_monitoring_objects_are_off_by_default_and_on_with_one_value_each(render: Render) -> None:
    kinds = ("ServiceMonitor", "PrometheusRule", "ConfigMap")
    defaults = render(CI["defaults"])
    assert not [m for m in defaults if m["kind"] in kinds]
    for value, kind, count in (
        ("metrics.serviceMonitor.enabled", "ServiceMonitor", 2),
        ("metrics.prometheusRule.enabled", "PrometheusRule", 1),
        ("metrics.dashboards.enabled", "ConfigMap", 3),
    ):
        manifests = render(sets={value: "true"})
        assert len(find(manifests, kind)) == count, value
        assert len([m for m in manifests if m["kind"] in kinds]) == count, value


def test_service_monitors_scrape_the_services(render: Render) -> None:
    manifests = render(CI["monitoring-on"])
    for name, service_name in ((GATEWAY, GATEWAY + "-metrics"), (OPERATOR, OPERATOR + "-metrics")):
        monitor = one(manifests, "ServiceMonitor", name)
        service = one(manifests, "Service", service_name)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")


def test_metrics_are_on_their_own_port_not_on_the_serving_service(render: Render) -> None:
    manifests = render(CI["monitoring-on"])
    serving = one(manifests, "Service", GATEWAY)
    assert [p["name"] for p in serving["spec"]["ports"]] == ["http"]
    monitor = one(manifests, "ServiceMonitor", GATEWAY)
    (endpoint,) = monitor["spec"]["endpoints"]
    # the serving Service has no port of that name, so Prometheus never scrapes the serving port
    assert endpoint["port"] == "metrics"
    assert endpoint["port"] not in {p["name"] for p in serving["spec"]["ports"]}
    (container,) = one(manifests, "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["metrics"] == int(env["TOLLGATE_METRICS_PORT"]) != ports["http"]
    metrics_service = one(manifests, "Service", GATEWAY + "-metrics")
    assert metrics_service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_http_server_limits_are_set_from_values(render: Render) -> None:
    manifests = render(sets={"gateway.server.maxConnections": "77"})
    (container,) = one(manifests, "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOLLGATE_MAX_CONNECTIONS"] == "77"
    for name in (
        "TOLLGATE_MAX_HEADER_BYTES",
        "TOLLGATE_MAX_HEADERS",
        "TOLLGATE_HEADER_TIMEOUT_SECONDS",
        "TOLLGATE_BODY_TIMEOUT_SECONDS",
        "TOLLGATE_KEEP_ALIVE_TIMEOUT_SECONDS",
    ):
        assert float(env[name]) > 0, name


def test_dashboards_are_configmaps_for_the_grafana_sidecar(render: Render) -> None:
    manifests = render(CI["monitoring-on"])
    maps = find(manifests, "ConfigMap")
    assert len(maps) == len(list((CHART / "dashboards").glob("*.json")))
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Tollgate"}
        ((filename, text),) = cm["data"].items()
        assert text == (CHART / "dashboards" / filename).read_text().rstrip("\n")
        board = json.loads(text)
        assert board["uid"] and board["title"].startswith("Tollgate")
    other = render(
        sets={"metrics.dashboards.enabled": "true", "metrics.dashboards.namespace": "grafana"}
    )
    assert {cm["metadata"]["namespace"] for cm in find(other, "ConfigMap")} == {"grafana"}


def test_prometheus_rule_is_scoped_to_the_release(render: Render) -> None:
    rule = one(render(CI["monitoring-on"]), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert 'namespace="tollgate"' in r["expr"], r["alert"]
            assert r["labels"]["team"] == "platform"
            assert r["labels"]["severity"] in {"critical", "warning", "info"}


# --- every value has an effect ----------------------------------------------------------

# A base where every feature is on, with fixed secrets so that renders are comparable.
ALL_ON: dict[str, str] = {
    "secrets.create": "true",
    "secrets.jwtSecret": "j" * 40,
    "secrets.adminPassword": "a" * 16,
    "secrets.keyPepper": "pepper-" + "p" * 16,
    "postgresql.enabled": "true",
    "postgresql.password": "pg-password",
    "redis.enabled": "true",
    "redis.password": "redis-password",
    "gateway.autoscaling.enabled": "true",
    "ingress.enabled": "true",
    "networkPolicy.enabled": "true",
    "metrics.serviceMonitor.enabled": "true",
    "metrics.prometheusRule.enabled": "true",
    "metrics.dashboards.enabled": "true",
    "defaultPool.enabled": "true",
    "keda.enabled": "true",
    "keda.scaledObjects": "[{pool: default, maxReplicas: 2}]",
    # Used only once a bundled database is off (see BASE_FOR).
    "secrets.postgresDsn": "postgresql://base:base@db:5432/tollgate",
    "secrets.redisUrl": "redis://base:6379/0",
}
# Values whose effect needs another base than ALL_ON.
BASE_FOR: dict[str, dict[str, str]] = {
    "secrets.postgresDsn": {"postgresql.enabled": "false"},
    "secrets.redisUrl": {"redis.enabled": "false"},
    "networkPolicy.postgresPorts": {"postgresql.enabled": "false"},
    "networkPolicy.redisPorts": {"redis.enabled": "false"},
    "gateway.replicaCount": {"gateway.autoscaling.enabled": "false"},
    "gateway.ollamaBaseUrl": {},
    "secrets.name": {},
}
# Values with no effect on the rendered objects, and why.
NO_RENDER_EFFECT = {
    # Looks the Secret up in the cluster at install; `helm template` has none
    # (test_cluster_install covers it).
    "secrets.verifyExisting",
}
# Replacement values where "something else of the same type" is not a valid value.
CHANGE: dict[str, Any] = {
    "gateway.image.tag": "9.9.9",
    "gateway.image.digest": "sha256:" + "a" * 64,
    "operator.image.tag": "9.9.9",
    "operator.image.digest": "sha256:" + "b" * 64,
    "postgresql.image.tag": "18",
    "postgresql.image.digest": "sha256:" + "c" * 64,
    "redis.image.tag": "9",
    "redis.image.digest": "sha256:" + "d" * 64,
    "gateway.image.registry": "mirror.example:5000",
    "operator.image.registry": "mirror.example:5000",
    "postgresql.image.registry": "mirror.example:5000",
    "redis.image.registry": "mirror.example:5000",
    "gateway.image.pullPolicy": "Always",
    "operator.image.pullPolicy": "Always",
    "postgresql.image.pullPolicy": "Always",
    "redis.image.pullPolicy": "Always",
    "gateway.logLevel": "debug",
    "operator.logLevel": "debug",
    "gateway.redisFailurePolicy": "closed",
    "gateway.service.type": "LoadBalancer",
    "gateway.ollamaBaseUrl": "http://ollama.example:11434",
    "gateway.adminEmail": "someone@example.com",
    "gateway.usageSpoolSizeLimit": "2Gi",
    "gateway.podDisruptionBudget.maxUnavailable": "50%",
    "operator.gatewayUrl": "https://llm.example.com",
    "operator.ollamaImage": "ollama/ollama:0.1.0",
    "operator.watchNamespaces": ["team-a"],
    "operator.pools.allowedImages": ["registry.internal/*"],
    "operator.pools.gatewayNamespace": "gateways",
    "postgresql.persistence.size": "20Gi",
    "postgresql.persistence.storageClass": "fast",
    "postgresql.persistence.accessModes": ["ReadWriteOncePod"],
    "postgresql.database": "other",
    "postgresql.username": "other",
    "ingress.className": "other",
    "ingress.hosts": [{"host": "other.example.com", "paths": ["/v1"]}],
    "ingress.tls": [{"secretName": "tls", "hosts": ["tollgate.example.com"]}],
    "secrets.name": "other-secret",
    "secrets.postgresDsn": "postgresql://u:p@db:5432/t",
    "secrets.redisUrl": "redis://r:6379/1",
    "secrets.jwtSecret": "k" * 40,
    "secrets.adminPassword": "b" * 16,
    "metrics.serviceMonitor.interval": "1m",
    "metrics.serviceMonitor.scrapeTimeout": "20s",
    "metrics.dashboards.namespace": "grafana",
    "metrics.prometheusRule.errorRatio": 0.1,
    "defaultPool.name": "gpus",
    "nameOverride": "tg",
    "fullnameOverride": "tg",
    "operator.metricsPort": 9091,
    "operator.healthPort": 8081,
    "modelAliases": [
        {"name": "a", "spec": {"alias": "a", "model": "llama3:8b", "poolRef": {"name": "p"}}}
    ],
    "imagePullSecrets": [{"name": "regcred"}],
    "gateway.image.repository": "registry.example.com/gateway",
    "operator.image.repository": "registry.example.com/operator",
    "postgresql.image.repository": "registry.example.com/postgres",
    "redis.image.repository": "registry.example.com/valkey",
    "gateway.serviceAccount.name": "gateway-sa",
    "operator.serviceAccount.name": "operator-sa",
    "gateway.priorityClassName": "high",
    "operator.priorityClassName": "high",
    "postgresql.password": "other-password",
    "redis.password": "other-password",
    "secrets.keyPepper": "other-pepper-" + "p" * 16,
    "keda.prometheusAddress": "http://prometheus.example:9090",
}


_BASE_RENDERS: dict[str, str] = {}


def value_paths() -> list[tuple[str, Any]]:
    values = load_values()
    out = []
    for path in sorted(leaf_paths()):
        node: Any = values
        for key in path.split("."):
            node = node[key]
        out.append((path, node))
    return out


def changed(path: str, value: Any) -> Any:
    if path in CHANGE:
        return CHANGE[path]
    # Maps merge with the defaults in Helm, so a change adds a key rather than removing one.
    if path.endswith(".resources"):
        return {"requests": {"cpu": "100m"}}
    if path.endswith(".podSecurityContext"):
        return {"supplementalGroups": [4242]}
    if path.endswith(".securityContext"):
        return {"runAsUser": 4242}
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, dict):
        key = "TOLLGATE_EXAMPLE" if path.endswith("settings") else "example.com/key"
        return {**value, key: "1"}
    if isinstance(value, list):
        if value and isinstance(value[0], int):
            return [*value, 65000]
        return (
            [{"name": "EXAMPLE", "value": "1"}]
            if path.endswith("extraEnv")
            else ([{"key": "example", "operator": "Exists"}] if not value else [])
        )
    raise AssertionError(f"no replacement for {path} = {value!r}: add one to CHANGE")


@pytest.mark.parametrize(
    ("path", "value"),
    [pytest.param(p, v, id=p) for p, v in value_paths() if p not in NO_RENDER_EFFECT],
)
def test_every_value_changes_the_output(helm: Path, tmp_path: Path, path: str, value: Any) -> None:
    def nested(flat: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for dotted, v in flat.items():
            node = out
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = v
        return out

    def as_yaml(flat: dict[str, str]) -> dict[str, Any]:
        return {k: yaml.safe_load(v) for k, v in flat.items()}

    base = {**as_yaml(ALL_ON), **as_yaml(BASE_FOR.get(path, {}))}
    current = base.get(path, value)
    before_file, after_file = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before_file.write_text(yaml.safe_dump(nested(base)))
    after_file.write_text(yaml.safe_dump(nested({**base, path: changed(path, current)})))
    key = before_file.read_text()
    if key not in _BASE_RENDERS:
        _BASE_RENDERS[key] = run_helm(helm, *template_args([before_file])).stdout
    before = _BASE_RENDERS[key]
    after = run_helm(helm, *template_args([after_file])).stdout
    assert before != after, f"changing {path} changed nothing"


def test_keda_scaled_objects_are_off_by_default_and_scale_the_pool(render: Render) -> None:
    assert not find(render(CI["defaults"]), "ScaledObject")
    manifests = render(
        sets={
            "keda.enabled": "true",
            "keda.scaledObjects[0].pool": "small",
            "keda.scaledObjects[0].maxReplicas": "4",
            "keda.scaledObjects[1].pool": "big",
            "keda.scaledObjects[1].namespace": "team-a",
            "keda.scaledObjects[1].minReplicas": "1",
            "keda.scaledObjects[1].maxReplicas": "2",
            "keda.scaledObjects[1].target": "3",
        }
    )
    small = one(manifests, "ScaledObject", "small-ollamapool")
    assert small["metadata"]["namespace"] == NAMESPACE
    # KEDA scales the OllamaPool (its scale subresource, spec.replicas); the operator applies it.
    assert small["spec"]["scaleTargetRef"] == {
        "apiVersion": "tollgate.dev/v1alpha1",
        "kind": "OllamaPool",
        "name": "small",
    }
    assert (small["spec"]["minReplicaCount"], small["spec"]["maxReplicaCount"]) == (0, 4)
    (trigger,) = small["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"] == (
        f'sum(tollgate_replica_in_flight_requests{{pool="{NAMESPACE}/small"}}) or vector(0)'
    )
    assert trigger["metadata"]["threshold"] == "1"
    big = one(manifests, "ScaledObject", "big-ollamapool")
    assert big["metadata"]["namespace"] == "team-a"
    assert (big["spec"]["minReplicaCount"], big["spec"]["maxReplicaCount"]) == (1, 2)
    assert big["spec"]["triggers"][0]["metadata"]["threshold"] == "3"
    assert 'pool="team-a/big"' in big["spec"]["triggers"][0]["metadata"]["query"]
