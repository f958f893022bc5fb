"""The Ollama image, run as the operator runs a pool's Pod (its user, a read-only root, no
capabilities, the models volume and an emptyDir /tmp): the bootstrap serves the real Ollama
(built from source), pulls a model from the local registry, marks itself ready, serves the
model, and stops cleanly on SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from image_helpers import ROOT

from tollgate_dev.proc import free_port
from tollgate_dev.servers.images import BuiltImages, Container, pod_flags, podman, prepare_volume
from tollgate_operator.builders.pool import DATA_VOLUME, PoolDefaults, build_statefulset
from tollgate_operator.resources import OllamaPoolSpec

pytestmark = pytest.mark.timeout(900)  # the first test builds the images

SAMPLE = ROOT / "manifests" / "samples" / "ollamapool-small.yaml"


def test_ollama_image_pulls_from_the_local_registry_and_serves_the_model(
    ollama_image: BuiltImages,
    registry_tiny: str,
    containers: Callable[..., Container],
    tmp_path: Path,
) -> None:
    sample = yaml.safe_load(SAMPLE.read_text())["spec"]
    spec = OllamaPoolSpec.model_validate({**sample, "image": ollama_image.ref("ollama")})
    statefulset = build_statefulset("small", "images", spec, PoolDefaults(image="unused"))
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    models = prepare_volume(tmp_path / "models", pod)
    port = free_port()
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {
        "OLLAMA_HOST": f"127.0.0.1:{port}",  # the host's network: loopback and a free port
        "OLLAMA_NO_CLOUD": "1",
        "OLLAMA_PULL_MODELS": registry_tiny,
        "OLLAMA_PULL_INSECURE_REGISTRIES": "127.0.0.1:*",
    }
    ollama = containers(
        container["image"],
        container["args"],
        env=env,
        flags=pod_flags(pod, container, {DATA_VOLUME: models}),
    )
    deadline = time.monotonic() + 180
    while ollama.exec("test", "-f", "/tmp/ollama-models-ready").returncode != 0:
        assert ollama.running(), ollama.logs()
        assert time.monotonic() < deadline, f"never ready:\n{ollama.logs()}"
        time.sleep(0.5)

    url = f"http://127.0.0.1:{port}"
    names = {m["name"] for m in httpx.get(url + "/api/tags", timeout=10).json()["models"]}
    assert registry_tiny in names
    answer = httpx.post(
        url + "/api/generate",
        json={"model": registry_tiny, "prompt": "hello", "stream": False,
              "options": {"num_predict": 8}},
        timeout=120,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["eval_count"] > 0 and answer.json()["response"]
    # The model landed on the volume, written by the Pod's user; nothing else was writable.
    blobs = list((models / "models" / "blobs").iterdir())
    assert blobs and {b.stat().st_uid for b in blobs} == {pod["securityContext"]["runAsUser"]}
    logs = ollama.logs()
    assert f"{registry_tiny}: success" in logs and "every model is present" in logs

    # Kubernetes stops the Pod with SIGTERM: the bootstrap hands it to Ollama and exits with it.
    podman("stop", "--time", "30", ollama.name, timeout=60)
    assert ollama.state()["ExitCode"] == 0, ollama.logs()
