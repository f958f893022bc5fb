"""kind-config.yaml and skaffold.yaml agree with the chart and the Dockerfiles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from chart_helpers import ROOT, Render, load_values, one

SKAFFOLD: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
KIND: dict[str, Any] = yaml.safe_load((ROOT / "kind-config.yaml").read_text())


def test_kind_cluster_maps_the_ingress_ports_to_an_ingress_ready_node() -> None:
    assert KIND["kind"] == "Cluster"
    (node,) = KIND["nodes"]
    ports = {(m["containerPort"], m["hostPort"]) for m in node["extraPortMappings"]}
    assert ports == {(80, 80), (443, 443)}
    assert 'node-labels: "ingress-ready=true"' in node["kubeadmConfigPatches"][0]


def test_skaffold_builds_both_images_from_their_dockerfiles() -> None:
    artifacts = {a["image"]: a for a in SKAFFOLD["build"]["artifacts"]}
    assert set(artifacts) == {"tollgate-gateway", "tollgate-operator"}
    for name, artifact in artifacts.items():
        dockerfile = ROOT / artifact["context"] / artifact["docker"]["dockerfile"]
        assert dockerfile.is_file()
        assert dockerfile.parent.name == name.removeprefix("tollgate-")


def test_skaffold_deploys_the_chart_with_dev_values(render: Render) -> None:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    values_files = [ROOT / f for f in release["valuesFiles"]]
    assert all(f.is_file() for f in values_files)
    values = load_values()
    templates = release["setValueTemplates"]
    for path, template in templates.items():
        node: Any = values
        for key in path.split("."):
            assert key in node, f"{path} is not a chart value"
            node = node[key]
        # Skaffold's variables: IMAGE_<REPO|TAG>_<artifact with - and / as _>.
        match = re.fullmatch(r"\{\{\.IMAGE_(REPO|TAG)_(\w+)\}\}", template)
        assert match, template
        artifact = match.group(2).replace("_", "-")
        assert artifact in {a["image"] for a in SKAFFOLD["build"]["artifacts"]}
    sets = {path: "tollgate-x" if path.endswith("repository") else "abc123" for path in templates}
    manifests = render(*values_files, sets=sets)
    gateway = one(manifests, "Deployment", "tollgate-gateway")
    assert gateway["spec"]["template"]["spec"]["containers"][0]["image"] == "tollgate-x:abc123"
    (forward,) = SKAFFOLD["portForward"]
    assert forward["namespace"] == release["namespace"]
    service = one(manifests, "Service", forward["resourceName"])
    assert service["spec"]["ports"][0]["port"] == forward["port"] == 8000
    assert release["name"] == "tollgate"


def test_dev_values_are_a_ci_scenario() -> None:
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert Path(release["valuesFiles"][0]).parent.as_posix() == "charts/tollgate/ci"
