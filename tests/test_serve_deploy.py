"""The Dockerfile and the Kubernetes manifest agree with the server: port, probes, environment, command."""
import dataclasses
import re
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from nanovlm.cli import build_parser
from nanovlm.serve.app import ServeConfig, create_app

from serve_util import model, model_dir, serve_config  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)                    # continuation lines -> one line
    env = dict(re.findall(r"(NANOVLM_\w+)=(\S+)", " ".join(l for l in joined.splitlines() if l.startswith("ENV"))))
    expose = [int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", joined, re.M)]
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])", joined, re.M).group(1)
    healthcheck = re.search(r"^HEALTHCHECK.*", joined, re.M).group(0)
    return env, expose, yaml.safe_load(entrypoint), healthcheck


def _manifest():
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    return docs


def _fields():
    return {f"NANOVLM_{f.name.upper()}" for f in dataclasses.fields(ServeConfig)}


def test_dockerfile_matches_the_server():
    env, expose, entrypoint, healthcheck = _dockerfile()
    assert set(env) <= _fields(), set(env) - _fields()
    cfg = ServeConfig.from_env(env)                      # the image's settings parse as server settings
    assert expose == [cfg.port] and cfg.host == "0.0.0.0"
    assert entrypoint == ["nanovlm", "serve"]
    assert build_parser().parse_args(entrypoint[1:] + ["--model", "m"]).func.__name__ == "run_serve"
    assert f"127.0.0.1:{cfg.port}/health" in healthcheck
    assert "torch==2.13.0" in (ROOT / "Dockerfile").read_text() and "whl/cpu" in (ROOT / "Dockerfile").read_text()


def test_kubernetes_manifest_matches_the_server_and_the_image(model, model_dir):
    docs = _manifest()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= _fields(), set(env) - _fields()
    cfg = ServeConfig.from_env(env)
    docker_env, expose, _, _ = _dockerfile()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": cfg.port} and expose == [cfg.port]
    assert cfg.host == "0.0.0.0" and env["NANOVLM_MODEL"] == docker_env["NANOVLM_MODEL"]
    assert env["NANOVLM_KEYS_FILE"] == docker_env["NANOVLM_KEYS_FILE"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert all(any(env[name].startswith(m + "/") for m in mounts) for name in ("NANOVLM_MODEL", "NANOVLM_KEYS_FILE"))
    # SIGTERM -> the server finishes its requests within graceful_shutdown_s, before Kubernetes kills it
    assert pod["spec"]["terminationGracePeriodSeconds"] > cfg.graceful_shutdown_s

    # both probes ask the server's health route, on the port it listens on, and it answers 200 when ready
    probes = [container["readinessProbe"], container["livenessProbe"]]
    with TestClient(create_app(model, serve_config(model_dir))) as client:
        for probe in probes:
            assert probe["httpGet"]["port"] in ("http", cfg.port)
            assert client.get(probe["httpGet"]["path"]).status_code == 200

    # the Service reaches these pods on that port; the HPA scales this Deployment
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert all(p["targetPort"] in ("http", cfg.port) for p in service["spec"]["ports"])
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert "requests" in container["resources"] and "cpu" in container["resources"]["requests"]   # HPA needs it
