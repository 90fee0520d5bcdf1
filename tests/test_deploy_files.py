"""Deployment files that cannot run here (no Docker engine, no Kubernetes) checked for what a
machine without them can prove: each against its own schema or linter, and every name, port,
path and variable it refers to against what the tree defines.

- docker-compose.yml: the Compose specification's JSON schema (vendored in tests/fixtures),
  then cross-references (services, volumes, mounted files, ports, nginx's upstream, AGORA_*).
- deploy/k8s/: every object against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
  unknown fields fail), the Kustomization by hand, then cross-references.
- .github/workflows/ci.yml: actionlint. Dockerfile: hadolint.
- deploy/README.md and the other files: every AGORA_* they name is read by agora/config.py.

The validators come from the `test` extras (pyproject.toml): missing, these tests fail, never skip.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agora.config import RATE_RULES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
GUIDE = ROOT / "deploy" / "README.md"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NGINX_UPSTREAM = ROOT / "deploy" / "nginx-upstream.compose.conf"
COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.json"
K8S_VERSION = "1.33"  # the oldest Kubernetes these manifests are checked against

# The bench (README "Benchmarks"), which the node's memory request is sized from.
PLANNED_SESSIONS = 10_000
FEED_PAGE_CACHE_MIB = 64  # AGORA_FEED_PAGE_CACHE's bound (README)
ARGON2_MIB = 64  # per password hash at the default cost
PASSWORD_WORKERS = 2  # AGORA_PASSWORD_WORKERS default


# --- what the configuration reads ---------------------------------------------------------------


def config_variables() -> set[str]:
    """Every AGORA_* variable agora/config.py reads: the literal names in its source, and the
    per-rule AGORA_RATE_LIMIT_<NAME> it builds from RATE_RULES."""
    source = (ROOT / "agora" / "config.py").read_text()
    names = set(re.findall(r"\"(AGORA_[A-Z0-9_]*[A-Z0-9])\"", source))
    assert "AGORA_RATE_LIMIT_{rule.name.upper()}" in source.replace('f"', '"')
    names |= {f"AGORA_RATE_LIMIT_{rule.name.upper()}" for rule in RATE_RULES}
    return names


def harness_variables() -> set[str]:
    """The AGORA_TEST_* variables the test harness reads (tests/support, tests/conftest.py)."""
    files = [ROOT / "tests" / "conftest.py", *(ROOT / "tests" / "support").glob("*.py")]
    return {n for f in files for n in re.findall(r"\"(AGORA_TEST_[A-Z0-9_]+)\"", f.read_text())}


def agora_names_in(text: str) -> set[str]:
    """AGORA_* names in a text; a prefix written for a family (AGORA_MEDIA_S3_*, AGORA_RATE_LIMIT_
    <NAME>) is not a variable and is left out."""
    return {m.group(1) for m in re.finditer(r"(AGORA_[A-Z0-9_]*[A-Z0-9])(?![A-Za-z0-9_<*])", text)}


def test_config_variables_are_found_in_the_source() -> None:
    names = config_variables()
    assert len(names) > 50
    for expected in (
        "AGORA_DATABASE_URL",
        "AGORA_JWT_SECRET",
        "AGORA_TRUSTED_PROXIES",
        "AGORA_SHUTDOWN_TIMEOUT",
        "AGORA_RATE_LIMIT_LOGIN",
        "AGORA_MEDIA_DIR",
    ):
        assert expected in names
    assert "AGORA_NOT_A_SETTING" not in names


@pytest.mark.parametrize(
    "path",
    [
        COMPOSE,
        ROOT / "deploy" / "compose.env.example",
        WORKFLOW,
        GUIDE,
        NGINX_CONF,
        NGINX_UPSTREAM,
        *sorted(K8S.glob("*.yaml")),
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_agora_variable_named_is_read_by_the_config(path: Path) -> None:
    known = config_variables()
    if path == WORKFLOW:  # CI also sets the test harness's own AGORA_TEST_* (tests/support)
        known |= harness_variables()
    unknown = agora_names_in(path.read_text()) - known
    assert not unknown, f"{path.relative_to(ROOT)} names variables agora/config.py never reads"


# --- Compose ------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())  # anchors and `<<` merges resolved
    assert isinstance(doc, dict)
    return doc


def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_matches_the_compose_specification_schema() -> None:
    errors = sorted(compose_validator().iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_schema_check_catches_mistakes() -> None:
    """The validator is not vacuous: typical mistakes in this very file are refused."""
    validator = compose_validator()
    mistakes = []
    doc = compose()
    doc["services"]["node1"]["depends_on"]["postgres"]["condition"] = "service_up"
    mistakes.append(doc)
    doc = compose()
    doc["services"]["node1"]["helthcheck"] = doc["services"]["node1"].pop("healthcheck")
    mistakes.append(doc)
    doc = compose()
    doc["volumes"]["media"] = {"drivr": "local"}
    mistakes.append(doc)
    for doc in mistakes:
        assert not validator.is_valid(doc)


def agora_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if s.get("command", [""])[0] == "agora"}


def serve_port(service: dict[str, Any]) -> int | None:
    """The port of `agora serve --port N`; None for other commands."""
    cmd = service.get("command", [])
    if cmd[:2] != ["agora", "serve"]:
        return None
    return int(cmd[cmd.index("--port") + 1])


def test_compose_has_every_part_of_the_deployment() -> None:
    doc = compose()
    services = doc["services"]
    assert {"postgres", "redis", "rabbitmq", "elasticsearch", "worker", "nginx"} <= set(services)
    nodes = [n for n, s in services.items() if serve_port(s)]
    assert len(nodes) == 2
    workers = [n for n, s in services.items() if s.get("command") == ["agora", "worker"]]
    assert workers == ["worker"]
    for name in nodes:
        env = services[name]["environment"]
        # Workers run the event consumers; nodes must not run them too.
        assert env["AGORA_EVENTS_CONSUMERS"] == "off"
        assert env["AGORA_ENV"] == "production"
    assert len({services[n]["environment"]["AGORA_NODE_ID"] for n in nodes}) == len(nodes)


def test_compose_health_checks_and_depends_on_conditions() -> None:
    services = compose()["services"]
    healthy = {
        n for n, s in services.items() if s.get("healthcheck", {}).get("disable") is not True
    }
    # Every service but the worker (no HTTP to ask) has its own check.
    assert set(services) - healthy == {"worker"}
    for name in healthy:
        check = services[name]["healthcheck"]["test"]
        assert check[0] in ("CMD", "CMD-SHELL"), name
    for name, service in services.items():
        for target, how in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            assert how["condition"] == "service_healthy", f"{name} -> {target}"
            assert target in healthy, f"{name} waits for {target}'s health, which has no check"
    for name in agora_services(compose()):
        assert {"postgres", "redis", "rabbitmq"} <= set(services[name]["depends_on"])
    nodes = [n for n, s in services.items() if serve_port(s)]
    assert set(services["nginx"]["depends_on"]) == set(nodes)
    # The nodes' check asks the port they serve on, and /readyz.
    for name in nodes:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{serve_port(services[name])}/readyz" in test


def test_compose_stop_grace_exceeds_the_drain() -> None:
    services = compose()["services"]
    for name, service in agora_services(compose()).items():
        timeout = float(service["environment"].get("AGORA_SHUTDOWN_TIMEOUT", 8))
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > timeout + 2, name
    assert services


def compose_volumes(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        yield source, target


def test_compose_volumes_are_declared_and_mounted_files_exist() -> None:
    doc = compose()
    declared = set(doc["volumes"])
    used = set()
    for name, service in doc["services"].items():
        for source, target in compose_volumes(service):
            assert target.startswith("/"), (name, target)
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the tree"
            else:
                assert source in declared, f"{name} uses volume {source}, not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    # The data of every stateful service is on a named volume.
    for name, path in (
        ("postgres", "/var/lib/postgresql/data"),
        ("redis", "/data"),
        ("rabbitmq", "/var/lib/rabbitmq"),
        ("elasticsearch", "/usr/share/elasticsearch/data"),
    ):
        assert path in {t for s, t in compose_volumes(doc["services"][name]) if s in declared}


def test_compose_nodes_share_the_media_directory() -> None:
    doc = compose()
    nodes = {n: s for n, s in doc["services"].items() if serve_port(s)}
    mounts = set()
    for name, service in nodes.items():
        media = Path(service["environment"]["AGORA_MEDIA_DIR"])
        volume = [
            (s, t)
            for s, t in compose_volumes(service)
            if s in doc["volumes"] and media.is_relative_to(t)
        ]
        assert len(volume) == 1, f"{name}: AGORA_MEDIA_DIR is on no named volume"
        mounts.add(volume[0])
    assert len(mounts) == 1, "every node must see the same media volume at the same path"


def test_compose_secrets_come_from_the_environment() -> None:
    """No secret in the file: passwords, tokens and credentials in URLs are `${NAME:?...}`
    (Compose refuses to start without them), and compose.env.example lists exactly those."""
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required == {
        "AGORA_JWT_SECRET",
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "AGORA_METRICS_TOKEN",
    }
    example = (ROOT / "deploy" / "compose.env.example").read_text()
    listed = set(re.findall(r"^([A-Z0-9_]+)=$", example, re.MULTILINE))
    assert listed == required
    secretish = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN")
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if secretish.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), (name, key)
            password = urlsplit(value).password if "://" in value else None
            if password is not None:
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", password), (name, key)
    tracked = subprocess.run(
        ["git", "ls-files", ".env", "deploy/.env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not tracked.strip(), ".env holds secrets and must not be committed"


# Where each backing service listens (its image's default port) and which URL variable names it.
SERVICE_PORTS = {"postgres": 5432, "redis": 6379, "rabbitmq": 5672, "elasticsearch": 9200}


def test_compose_urls_name_existing_services_and_their_ports() -> None:
    doc = compose()
    for name, service in agora_services(doc).items():
        env = service["environment"]
        for key in (
            "AGORA_DATABASE_URL",
            "AGORA_REDIS_URL",
            "AGORA_AMQP_URL",
            "AGORA_ELASTICSEARCH_URL",
        ):
            where = urlsplit(re.sub(r"\$\{[^}]*\}", "x", env[key]))
            assert where.hostname in doc["services"], (name, key)
            assert where.port == SERVICE_PORTS[where.hostname], (name, key)
            # ... and both are on a network they share.
            theirs = set(doc["services"][where.hostname]["networks"])
            assert set(service["networks"]) & theirs, (name, where.hostname)
        unknown = set(env) - config_variables()
        assert not unknown, f"{name}: {unknown} are not read by agora/config.py"


def nginx_listen_ports() -> set[int]:
    return {int(p) for p in re.findall(r"^\s*listen\s+(\d+)", NGINX_CONF.read_text(), re.M)}


def nginx_upstream_servers() -> list[tuple[str, int]]:
    text = NGINX_UPSTREAM.read_text()
    return [(h, int(p)) for h, p in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", text, re.M)]


def test_compose_nginx_matches_its_config_and_the_nodes() -> None:
    doc = compose()
    nginx = doc["services"]["nginx"]
    mounts = dict((t, s) for s, t in compose_volumes(nginx))
    assert mounts["/etc/nginx/nginx.conf"] == "./deploy/nginx.conf"
    # The upstream file lands where nginx.conf includes it from (relative: under /etc/nginx).
    conf = NGINX_CONF.read_text()
    upstream = re.search(r"upstream\s+agora_nodes\s*\{(.*?)\}", conf, re.S)
    assert upstream, "deploy/nginx.conf defines no `upstream agora_nodes`"
    included = re.search(r"include\s+(\S+);", upstream.group(1))
    assert included
    target = included.group(1)
    target = target if target.startswith("/") else f"/etc/nginx/{target}"
    assert mounts[target] == "./deploy/nginx-upstream.compose.conf"
    # The published port reaches a port nginx listens on.
    published = [p.rsplit(":", 1) for p in nginx["ports"]]
    assert published and all(int(container) in nginx_listen_ports() for _, container in published)
    # nginx's node list is exactly the Compose services that serve, on the port they serve on.
    nodes = {n: serve_port(s) for n, s in doc["services"].items() if serve_port(s)}
    assert sorted(nginx_upstream_servers()) == sorted(nodes.items())
    for node in nodes:
        assert set(nginx["networks"]) & set(doc["services"][node]["networks"]), node


def test_compose_nodes_trust_nginx_and_nothing_else() -> None:
    doc = compose()
    nginx_networks = doc["services"]["nginx"]["networks"]
    ((network, settings),) = nginx_networks.items()
    address = ipaddress.ip_address(settings["ipv4_address"])
    subnet = ipaddress.ip_network(doc["networks"][network]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    for name, service in doc["services"].items():
        if serve_port(service):
            trusted = [
                ipaddress.ip_network(n.strip())
                for n in service["environment"]["AGORA_TRUSTED_PROXIES"].split(",")
            ]
            assert any(address in n for n in trusted), name
            assert all(n.num_addresses == 1 for n in trusted), f"{name} trusts more than nginx"


def test_compose_node_port_matches_the_image() -> None:
    exposed = set(re.findall(r"^EXPOSE\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M))
    for name, service in compose()["services"].items():
        if serve_port(service):
            assert str(serve_port(service)) in exposed, name


# --- Kubernetes ---------------------------------------------------------------------------------

KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_TEMPLATE = K8S / "secret.template.yaml"


def kustomization() -> dict[str, Any]:
    doc = yaml.safe_load(KUSTOMIZATION.read_text())
    assert isinstance(doc, dict)
    return doc


def k8s_objects(with_template: bool = False) -> list[dict[str, Any]]:
    files = [K8S / r for r in kustomization()["resources"]]
    if with_template:
        files.append(SECRET_TEMPLATE)
    objects = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                objects.append(doc)
    return objects


def by_kind(kind: str, with_template: bool = False) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects(with_template) if o["kind"] == kind}


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert set(k) <= {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    listed = k["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization lists {name}, which does not exist"
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The Secret template is applied apart (filled in outside the repository), never by -k.
    assert set(listed) == manifests - {SECRET_TEMPLATE.name}
    namespaces = by_kind("Namespace")
    assert list(namespaces) == [k["namespace"]]
    assert yaml.safe_load(SECRET_TEMPLATE.read_text())["metadata"]["namespace"] == k["namespace"]
    for obj in k8s_objects():
        assert "namespace" not in obj["metadata"], "the Kustomization sets the namespace"
    # The release is one image name, set by `images:`.
    (image,) = k["images"]
    containers = [
        c
        for d in by_kind("Deployment").values()
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert {c["image"] for c in containers} == {image["name"]}
    assert image["newTag"] and image["newName"]


def test_k8s_objects_match_the_kubernetes_schemas() -> None:
    objects = k8s_objects(with_template=True)
    kinds = {o["kind"] for o in objects}
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "NetworkPolicy",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_k8s_schema_check_catches_mistakes() -> None:
    """Strict validation refuses an unknown field, a wrong type and a missing required field."""
    node = by_kind("Deployment")["agora-node"]
    mistakes = []
    bad = copy.deepcopy(node)
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    mistakes.append(bad)
    bad = copy.deepcopy(node)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    mistakes.append(bad)
    bad = copy.deepcopy(node)
    del bad["spec"]["selector"]
    mistakes.append(bad)
    for obj in mistakes:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def deployments_selected(selector: dict[str, str]) -> list[str]:
    return [
        n
        for n, d in by_kind("Deployment").items()
        if selects(selector, d["spec"]["template"]["metadata"]["labels"])
    ]


def pod(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind("Deployment")[name]["spec"]["template"]["spec"]
    return spec


def test_k8s_selectors_and_targets_exist() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {"agora-node", "agora-worker"}
    for name, d in deployments.items():
        assert selects(
            d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
        )
        # No two Deployments' pods match one selector.
        assert deployments_selected(d["spec"]["selector"]["matchLabels"]) == [name]
    (service,) = by_kind("Service").values()
    assert deployments_selected(service["spec"]["selector"]) == ["agora-node"]
    for hpa in by_kind("HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
        # The HPA owns the count: `replicas` in the manifest would be reset by every apply.
        assert "replicas" not in deployments[ref["name"]]["spec"]
        assert hpa["spec"]["minReplicas"] >= 2  # a rolling node always has a peer
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        target = ref["name"]
        assert "cpu" in pod(target)["containers"][0]["resources"]["requests"]
    pdbs = by_kind("PodDisruptionBudget")
    assert sorted(
        n for p in pdbs.values() for n in deployments_selected(p["spec"]["selector"]["matchLabels"])
    ) == sorted(deployments)
    policies = by_kind("NetworkPolicy")
    assert sorted(
        n
        for p in policies.values()
        for n in deployments_selected(p["spec"]["podSelector"]["matchLabels"])
    ) == sorted(deployments)


def test_k8s_ports_probes_service_and_ingress_agree() -> None:
    (service,) = by_kind("Service").values()
    (node,) = pod("agora-node")["containers"]
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    args = node["args"]
    assert args[:2] == ["agora", "serve"]
    assert ports == {"http": int(args[args.index("--port") + 1])}
    exposed = set(re.findall(r"^EXPOSE\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M))
    assert {str(p) for p in ports.values()} <= exposed
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        get = node[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ports, probe
    (sport,) = service["spec"]["ports"]
    assert sport["targetPort"] in ports
    (ingress,) = by_kind("Ingress").values()
    backends = [
        p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]
    ]
    for backend in backends:
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] == sport["name"]
    # WebSocket timeouts: far above the nodes' 20 s heartbeat, so idle sockets stay open.
    notes = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    policy = by_kind("NetworkPolicy")["agora-node"]
    for rule in policy["spec"]["ingress"]:
        assert {p["port"] for p in rule["ports"]} <= set(ports)
    assert by_kind("NetworkPolicy")["agora-worker"]["spec"]["ingress"] == []
    assert "ports" not in pod("agora-worker")["containers"][0]


def test_k8s_config_and_secret_references_exist() -> None:
    configmaps = by_kind("ConfigMap")
    secrets = by_kind("Secret", with_template=True)
    assert set(secrets) == {"agora-secrets"}
    assert not by_kind("Secret"), "no Secret is applied by -k: the template is filled apart"
    template = secrets["agora-secrets"]
    assert set(template["stringData"].values()) == {""}, "the template holds no secret"
    known = config_variables()
    for cm in configmaps.values():
        assert set(cm["data"]) <= known
    assert set(template["stringData"]) <= known
    assert {"AGORA_JWT_SECRET", "AGORA_DATABASE_URL", "AGORA_REDIS_URL", "AGORA_AMQP_URL"} <= set(
        template["stringData"]
    )
    claims = by_kind("PersistentVolumeClaim")
    for name in ("agora-node", "agora-worker"):
        spec = pod(name)
        (container,) = spec["containers"]
        for source in container["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps
            else:
                assert source["secretRef"]["name"] in secrets
        assert {e["name"] for e in container.get("env", [])} <= known
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert {m["name"] for m in container["volumeMounts"]} == set(volumes)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    node = pod("agora-node")["containers"][0]
    assert {"name": "AGORA_EVENTS_CONSUMERS", "value": "off"} in node["env"]
    assert pod("agora-worker")["containers"][0]["args"] == ["agora", "worker"]
    # The nodes' media directory is the shared (ReadWriteMany) claim.
    media_dir = configmaps["agora-config"]["data"]["AGORA_MEDIA_DIR"]
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    volumes = {v["name"]: v for v in pod("agora-node")["volumes"]}
    claim = volumes[mounts[media_dir]]["persistentVolumeClaim"]["claimName"]
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_k8s_termination_lets_the_drain_finish() -> None:
    config = by_kind("ConfigMap")["agora-config"]["data"]
    drain = float(config["AGORA_SHUTDOWN_TIMEOUT"])
    spec = pod("agora-node")
    (node,) = spec["containers"]
    command = node["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    sleep = float(command[1])
    assert sleep >= 3  # endpoints are removed from the Service and the ingress meanwhile
    assert spec["terminationGracePeriodSeconds"] > sleep + drain + 5
    strategy = by_kind("Deployment")["agora-node"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def dockerfile_uid() -> int:
    text = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", text, re.M)[-1]
    if user.isdigit():
        return int(user)
    m = re.search(rf"useradd\b[^\n]*--uid\s+(\d+)[^\n]*\b{re.escape(user)}\b", text)
    assert m, f"USER {user}: no useradd --uid for it"
    return int(m.group(1))


def test_k8s_pods_run_unprivileged() -> None:
    uid = dockerfile_uid()
    assert uid != 0
    for name in ("agora-node", "agora-worker"):
        spec = pod(name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            resources = container["resources"]
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    raise AssertionError(f"memory quantity {quantity!r}: use Ki, Mi or Gi")


def test_k8s_node_memory_is_sized_from_the_bench() -> None:
    """The request covers PLANNED_SESSIONS idle WebSockets at the README's measured cost per
    connection over the idle node's RSS, plus the feed page cache's bound and the argon2 hashes
    that may run at once; the limit is above the request."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"RSS ([\d.]+) -> ([\d.]+) MiB, \*\*([\d.]+) KiB per connection\*\*", readme)
    assert m, "README's Benchmarks no longer state the memory per connection"
    idle, per_connection_kib = float(m.group(1)), float(m.group(3))
    sockets = PLANNED_SESSIONS * per_connection_kib / 1024
    assert abs(idle + sockets - float(m.group(2))) < 5  # the figures agree with each other
    needed = idle + sockets + FEED_PAGE_CACHE_MIB + PASSWORD_WORKERS * ARGON2_MIB
    (node,) = pod("agora-node")["containers"]
    request = mib(node["resources"]["requests"]["memory"])
    limit = mib(node["resources"]["limits"]["memory"])
    assert needed <= request < needed * 1.25, (needed, request)
    assert limit >= 1.5 * request
    # The comment in the manifest states the same figures.
    text = (K8S / "node-deployment.yaml").read_text()
    assert f"{per_connection_kib} KiB" in text and f"{PLANNED_SESSIONS:,} sessions" in text


# --- CI workflow and Dockerfile -----------------------------------------------------------------


def tool(name: str) -> str:
    """A validator from the `test` extras: next to this interpreter, else on PATH; missing, the
    test fails (a validator that did not run proves nothing)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `pip install -e '.[test]'` installs it")
    return found


def test_ci_workflow_passes_actionlint() -> None:
    done = subprocess.run(
        [tool("actionlint"), "-no-color", str(WORKFLOW)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_mistakes(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    text = WORKFLOW.read_text().replace(
        "runs-on: ubuntu-24.04\n    timeout-minutes: 20",
        "runs-on: ubuntu-24.04\n    timout-minutes: 20",
        1,
    )
    text = text.replace("${{ github.ref }}", "${{ github.reff }}", 1)
    (workflows / "ci.yml").write_text(text)
    done = subprocess.run(
        [tool("actionlint"), "-no-color", str(workflows / "ci.yml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "timout-minutes" in done.stdout and "reff" in done.stdout


def test_ci_workflow_runs_tests_with_services_lint_and_image_build() -> None:
    from tests.support import services as test_services

    doc = yaml.safe_load(WORKFLOW.read_text())
    jobs = doc["jobs"]
    test = jobs["test"]
    # The service containers answer where the tests look for them.
    wanted = {
        "postgres": urlsplit(test_services.DEFAULT_PG).port,
        "redis": urlsplit(test_services.DEFAULT_REDIS).port,
        "rabbitmq": urlsplit(test_services.DEFAULT_AMQP).port,
    }
    for name, port in wanted.items():
        service = test["services"][name]
        assert f"{port}:{port}" in service["ports"], name
        assert "--health-cmd" in service["options"], name
    # The tests log in to the broker as the service container's user (not `guest`, which
    # RabbitMQ admits from loopback only).
    broker = test["services"]["rabbitmq"]["env"]
    (step,) = [s for s in test["steps"] if s.get("run") == ".ci/run"]
    amqp = urlsplit(step["env"]["AGORA_TEST_AMQP"])
    assert (amqp.username, amqp.password) == (
        broker["RABBITMQ_DEFAULT_USER"],
        broker["RABBITMQ_DEFAULT_PASS"],
    )
    assert amqp.port == wanted["rabbitmq"]
    runs = [s.get("run", "") for s in test["steps"]]
    assert ".ci/run" in runs
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci_run and "AGORA_TEST_AMQP_REQUIRED=1" in ci_run
    assert any(s.get("run") == "make lint" for s in jobs["lint"]["steps"])
    build = [s for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/build-push")]
    assert build and build[0]["with"]["context"] == "."
    assert set(jobs["image"]["needs"]) == {"test", "lint"}


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = subprocess.run(
        [tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # `latest`
    assert "DL3008" in done.stdout  # unpinned apt packages


# --- the operators' guide -----------------------------------------------------------------------


def test_operators_guide_is_linked_and_covers_the_paths() -> None:
    assert "deploy/README.md" in (ROOT / "README.md").read_text()
    guide = GUIDE.read_text()
    for heading in (
        "One node",
        "Docker Compose",
        "Kubernetes",
        "Secrets",
        "Scaling",
        "Rolling a release",
        "Backups",
        "What was run here",
    ):
        assert re.search(rf"^##+ .*{heading}", guide, re.M), heading
    # Every secret the deployments need is named in the guide.
    template = yaml.safe_load(SECRET_TEMPLATE.read_text())["stringData"]
    example = (ROOT / "deploy" / "compose.env.example").read_text()
    for name in [*template, *re.findall(r"^([A-Z0-9_]+)=", example, re.M)]:
        assert name in guide, name
    # Files the guide points at exist.
    for path in re.findall(r"`((?:deploy|tests|\.github)/[\w./-]+)`", guide):
        assert (ROOT / path).exists(), path
