"""Kubernetes adapter (kubernetes_asyncio): plain dicts in, plain dicts out.

Children are written with server-side apply, so applying an unchanged manifest is a no-op
the API server does not even store, and drift in the fields we own is undone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from tollgate_operator.errors import Unavailable
from tollgate_operator.resources import API_VERSION

FIELD_MANAGER = "tollgate-operator"
REQUEST_TIMEOUT = 30.0

_COLLECTIONS = {
    ("v1", "Secret"): "/api/v1/namespaces/{namespace}/secrets",
    ("v1", "Service"): "/api/v1/namespaces/{namespace}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{namespace}/pods",
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{namespace}/serviceaccounts",
    ("networking.k8s.io/v1", "NetworkPolicy"): (
        "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    ),
    ("apps/v1", "StatefulSet"): "/apis/apps/v1/namespaces/{namespace}/statefulsets",
    ("policy/v1", "PodDisruptionBudget"): (
        "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
    ),
    ("coordination.k8s.io/v1", "Lease"): (
        "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    ),
}


def _collection(api_version: str, kind: str, namespace: str) -> str:
    try:
        return _COLLECTIONS[(api_version, kind)].format(namespace=namespace)
    except KeyError:
        raise ValueError(f"no path known for {api_version} {kind}") from None


def _object_path(manifest: Mapping[str, Any]) -> str:
    meta = manifest["metadata"]
    collection = _collection(manifest["apiVersion"], manifest["kind"], meta["namespace"])
    return f"{collection}/{meta['name']}"


def _custom(plural: str, namespace: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/{plural}"


class Conflict(Exception):
    """The object changed (or appeared) since it was read: read again and retry."""


class Kube:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls) -> Kube:
        """In-cluster service account, else the kubeconfig (KUBECONFIG)."""
        configuration = Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException:
            await config.load_kube_config(client_configuration=configuration)
        return cls(ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            result = await self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{method} {path}: conflict") from exc
            if exc.status in (0, 429) or exc.status >= 500:
                raise Unavailable("kubernetes", f"{method} {path}: HTTP {exc.status}") from exc
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unavailable("kubernetes", f"{method} {path}: {type(exc).__name__}") from exc
        return dict(result or {})

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- built-in kinds ----------------------------------------------------------------------

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        return await self._get_or_none(f"{_collection(api_version, kind, namespace)}/{name}")

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: str = ""
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        result = await self._call("GET", _collection(api_version, kind, namespace), query=query)
        return [dict(item) for item in result.get("items") or []]

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager (taking over conflicting fields)."""
        path = _object_path(manifest)
        return await self._call(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )

    async def scale(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int
    ) -> None:
        """Set the replicas through the scale subresource (what `kubectl scale` and
        autoscalers use): nothing else of the object is touched."""
        await self._call(
            "PATCH",
            f"{_collection(api_version, kind, namespace)}/{name}/scale",
            query=[("fieldManager", FIELD_MANAGER)],
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = _collection(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        return await self._call("POST", path, body=dict(manifest))

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the manifest's resourceVersion: Conflict if someone wrote in between."""
        return await self._call("PUT", _object_path(manifest), body=dict(manifest))

    # -- our custom resources ----------------------------------------------------------------

    async def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"{_custom(plural, namespace)}/{name}")

    async def list_custom(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        result = await self._call("GET", _custom(plural, namespace))
        return [dict(item) for item in result.get("items") or []]

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """A JSON merge patch of .status (None removes a field). A vanished object is fine."""
        try:
            await self._call(
                "PATCH",
                f"{_custom(plural, namespace)}/{name}/status",
                body={"status": dict(status)},
                content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event about a resource (queued; kopf posts it in the background)."""
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
