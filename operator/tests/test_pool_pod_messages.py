"""What an OllamaPool's status says of a replica that is not ready."""

from __future__ import annotations

from tollgate_operator.services.pools import not_ready_message

UNSCHEDULABLE = {
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: pod has unbound immediate "
                "PersistentVolumeClaims.",
            }
        ],
    }
}


def test_a_pending_pod_names_the_schedulers_reason() -> None:
    assert not_ready_message(UNSCHEDULABLE) == (
        "Pod is Pending, not scheduled: 0/1 nodes are available: pod has unbound immediate "
        "PersistentVolumeClaims."
    )


def test_a_waiting_container_names_its_reason() -> None:
    pod = {
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "ollama",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ],
        }
    }
    assert (
        not_ready_message(pod) == "Pod is Pending, container ollama: ImagePullBackOff (not found)"
    )


def test_otherwise_the_phase() -> None:
    assert not_ready_message({"status": {"phase": "Running"}}) == "Pod is Running, not ready"
    assert not_ready_message({}) == "Pod is Pending, not ready"
