"""NetworkPolicy semantics, evaluated over objects: which Pods a policy selects, and
whether it admits a connection. The local control plane has no CNI to enforce policies,
so tests ask these questions of the objects instead, by the rules of the
networking.k8s.io/v1 API (ingress only; ipBlock peers are not evaluated and admit nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions, all of them (empty selects all)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op}")
    return True


@dataclass(frozen=True)
class PodRef:
    """A Pod as a policy sees it: its namespace, that namespace's labels, its own labels."""

    namespace: str
    labels: Mapping[str, str]
    namespace_labels: Mapping[str, str] | None = None

    @property
    def ns_labels(self) -> Mapping[str, str]:
        # Every namespace carries its name as a label (set by the API server).
        return {NAMESPACE_NAME_LABEL: self.namespace, **(self.namespace_labels or {})}

    @classmethod
    def of(
        cls, pod: Mapping[str, Any], namespace_labels: Mapping[str, str] | None = None
    ) -> PodRef:
        meta = pod["metadata"]
        return cls(meta["namespace"], dict(meta.get("labels") or {}), namespace_labels)


def selects(policy: Mapping[str, Any], pod: PodRef) -> bool:
    """The policy applies to the Pod: same namespace and its podSelector matches."""
    return policy["metadata"]["namespace"] == pod.namespace and selector_matches(
        policy["spec"].get("podSelector") or {}, pod.labels
    )


def _peer_admits(peer: Mapping[str, Any], policy_ns: str, source: PodRef) -> bool:
    if "ipBlock" in peer:
        return False
    pod_sel = peer.get("podSelector")
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:  # podSelector alone: Pods of the policy's namespace
        return source.namespace == policy_ns and selector_matches(pod_sel or {}, source.labels)
    if not selector_matches(ns_sel, source.ns_labels):
        return False
    return pod_sel is None or selector_matches(pod_sel, source.labels)


def _port_admits(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        low = entry["port"]
        if not isinstance(low, int):
            continue  # a named port: not evaluated here
        high = entry.get("endPort", low)
        if low <= port <= high:
            return True
    return False


def ingress_allowed(
    policies: Iterable[Mapping[str, Any]],
    source: PodRef,
    target: PodRef,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `source` may open `port` on `target` under these policies: allowed when no
    policy isolates the target for ingress, else when one of those policies admits it."""
    isolating = [
        p
        for p in policies
        if selects(p, target) and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])
    ]
    if not isolating:
        return True
    for policy in isolating:
        ns = policy["metadata"]["namespace"]
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            from_ok = not peers or any(_peer_admits(peer, ns, source) for peer in peers)
            if from_ok and _port_admits(rule.get("ports"), port, protocol):
                return True
    return False
