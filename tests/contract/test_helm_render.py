"""The Helm chart through Helm's own engine (`helm lint`, `helm template` via the
helm-python-sdk wheel): values documented and mapped onto contract env names; pods locked
down, probed on /healthz and /readyz, configured only with AMPGATE_* names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.settings import ENV_PREFIX, ConfigError, load_settings
from tests.conftest import server_unavailable
from tests.contract.deploy_contract import (
    CHART,
    CHART_AHEAD,
    COMPONENTS,
    ENV_NAMES,
    RULES,
    values,
)

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def camel_env(path: list[str]) -> str:
    """['cache', 'defaultTtlS'] -> AMPGATE_CACHE__DEFAULT_TTL_S (the chart's rule)."""
    snake = [re.sub(r"(?<!^)(?=[A-Z])", "_", p).upper() for p in path]
    return ENV_PREFIX + "__".join(snake)


def tree_env(tree: dict[str, Any], path: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            out |= tree_env(value, [*(path or []), key])
        else:
            out[camel_env([*(path or []), key])] = value
    return out


def documented_paths() -> set[str]:
    """Dotted paths of values.yaml keys whose comment block starts with the path."""
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    documented: set[str] = set()
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        m = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if m:
            indent, key = len(m.group(1)), m.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([*(k for _, k in stack), key])
            stack.append((indent, key))
            if comment and re.match(rf"# {re.escape(path)} -- \S", comment[0]):
                documented.add(path)
        comment = []
    return documented


def test_every_value_is_documented_camel_case_and_maps_not_lists() -> None:
    documented = documented_paths()
    undocumented: list[str] = []
    # Kubernetes structures passed through as they are (their parent is documented).
    k8s_lists = {"tolerations", "topologySpreadConstraints", "drop", "scopes", "events",
                 "accessModes"}

    def walk(node: Any, path: str) -> None:
        key = path.rsplit(".", 1)[-1]
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{path}: not camelCase"
        if isinstance(node, list):
            assert key in k8s_lists, f"{path}: a list; use a map keyed by name"
        if path in documented:
            return
        if isinstance(node, dict) and node:
            for child, sub in node.items():
                walk(sub, f"{path}.{child}")
        else:
            undocumented.append(path)

    for key, node in values().items():
        walk(node, key)
    assert not undocumented, f"values without a '# <path> -- ...' comment: {undocumented}"


def test_values_settings_trees_map_onto_contract_env_names() -> None:
    v = values()
    trees = [v["config"]] + [v[c]["config"] for c in COMPONENTS]
    for tree in trees:
        names = set(tree_env(tree))
        assert not names - ENV_NAMES, f"no such setting: {sorted(names - ENV_NAMES)}"
    # names the templates spell out (secret keys, fixed env)
    spelled = set(re.findall(r"AMPGATE_[A-Z0-9_]+", " ".join(
        p.read_text() for p in (CHART / "templates").iterdir())))
    assert spelled and not spelled - ENV_NAMES, sorted(spelled - ENV_NAMES)
    for case in CI_VALUES:
        doc = yaml.safe_load(case.read_text()) or {}
        for tree in [doc.get("config", {})] + [doc.get(c, {}).get("config", {}) for c in COMPONENTS]:
            assert not set(tree_env(tree)) - ENV_NAMES, case.name
        for c in COMPONENTS:
            extra = set(doc.get(c, {}).get("extraEnv", {}))
            assert not extra - ENV_NAMES, case.name


_HELM = r"""
import json, sys
import helm_python as helm
chart, cases, out = sys.argv[1], json.load(sys.stdin), {}
for name, vals in cases.items():
    try:
        lint = helm.lint(chart, vals, strict=True, namespace="ampgate")
        with helm.Chart.load(chart) as c:
            rendered = c.render(vals, name="rel", namespace="ampgate")
    except helm.HelmError as exc:
        out[name] = {"error": str(exc)}
        continue
    out[name] = {"lint": lint, "manifests": rendered}
print(json.dumps(out))
"""


# Cases beyond ci/: what the persistence defaults decide, and names at their length limit.
INLINE_CASES: dict[str, dict[str, Any]] = {
    "history-postgres": {"secrets": {"historyDatabaseUrl": "postgresql://a:b@pg:5432/ampgate"}},
    "history-pinned-on": {"existingSecret": "theirs", "history": {"persistence": {"enabled": True}},
                          "webhooks": {"persistence": {"enabled": False}}},
    "long-names": {"fullnameOverride": "a" * 63},
}


# Cases the chart must refuse (name -> values, the error's words).
REFUSED_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "history-sqlite-replicas": ({"history": {"replicaCount": 2}}, "historyDatabaseUrl"),
}


def with_required(vals: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """vals over ci/default-values.yaml: the settings the chart refuses to render without."""
    out = dict(yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text()) if base is None
               else base)
    for key, value in vals.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = with_required(value, out[key]) if both else value
    return out


@pytest.fixture(scope="module")
def rendered_all() -> dict[str, dict[str, Any]]:
    """case name -> {lint, docs (parsed manifests), values} or {error}. Helm runs in a child
    process: its Go runtime stays out of the test process."""
    try:
        import helm_python  # noqa: F401
    except ImportError as exc:
        server_unavailable("helm (helm-python-sdk)", str(exc))
    cases = {p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) or {}
             for p in CI_VALUES}
    cases |= {name: with_required(vals) for name, vals in INLINE_CASES.items()}
    cases |= {name: vals for name, (vals, _) in REFUSED_CASES.items()}
    done = subprocess.run([sys.executable, "-c", _HELM, str(CHART)], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out: dict[str, dict[str, Any]] = {}
    for name, result in json.loads(done.stdout).items():
        if "error" in result:
            out[name] = result
            continue
        docs = [d for path, text in result["manifests"].items() if path.endswith(".yaml")
                for d in yaml.safe_load_all(text) if d]
        out[name] = {"lint": result["lint"], "docs": docs, "values": cases[name],
                     "notes": result["manifests"].get("ampgate/templates/NOTES.txt", "")}
    return out


@pytest.fixture(scope="module")
def rendered(rendered_all: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every case the chart renders."""
    return {name: r for name, r in rendered_all.items() if name not in REFUSED_CASES}


def kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments and StatefulSets by name (names are unique across both)."""
    return kinds(docs, "Deployment") | kinds(docs, "StatefulSet")


def by_component(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in kinds(docs, kind).values()}


def state_volume(workload: dict[str, Any]) -> dict[str, Any]:
    """What the container mounts at AMPGATE_STATE_DIR: {"emptyDir": ...} from the pod's
    volumes or {"claim": <PVC spec>} from the StatefulSet's claim templates."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["AMPGATE_STATE_DIR"]]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"]: c for c in workload["spec"].get("volumeClaimTemplates", [])}
    assert (mount["name"] in volumes) != (mount["name"] in claims), "one source for the state dir"
    if mount["name"] in claims:
        return {"claim": claims[mount["name"]]["spec"]}
    return volumes[mount["name"]]


def test_ci_cases_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "full-values.yaml",
                                          "existing-secret-values.yaml", "ephemeral-values.yaml"}


def test_helm_lint_is_clean_for_every_case(rendered: dict[str, dict[str, Any]]) -> None:
    for case, result in rendered.items():
        lint = result["lint"]
        problems = [m for m in lint["messages"] if m["severity"] >= 2]
        assert not lint["errors"] and not problems, f"{case}: {lint}"


def test_pods_are_restricted_probed_and_configured_by_contract_names(
        rendered: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    for case, result in rendered.items():
        docs = result["docs"]
        config = {k: v for cm in kinds(docs, "ConfigMap").values() for k, v in cm["data"].items()}
        secrets = {k: v for s in kinds(docs, "Secret").values()
                   for k, v in s.get("stringData", {}).items()}
        assert not (set(config) | set(secrets)) - ENV_NAMES, case
        assert workloads(docs), case
        for name, dep in workloads(docs).items():
            where = f"{case}/{name}"
            assert len(name) <= 63
            pod = dep["spec"]["template"]
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            assert component in COMPONENTS, where
            assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
            spec = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            # The image's uid/gid (Dockerfile): a fresh volume becomes writable for it.
            assert spec["securityContext"]["fsGroup"] == 10001, where
            assert spec["automountServiceAccountToken"] is False, where
            (container,) = spec["containers"]
            assert container["args"] == [component], where
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, where
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert not set(env) - ENV_NAMES, f"{where}: {set(env) - ENV_NAMES}"
            (port,) = container["ports"]
            assert port["name"] == "http" and env["AMPGATE_HTTP__PORT"] == str(port["containerPort"])
            assert env["AMPGATE_HTTP__HOST"] == "0.0.0.0", where
            # A StatefulSet's state is its own claim, a Deployment's an emptyDir.
            state = state_volume(dep)
            assert ("claim" in state) == (dep["kind"] == "StatefulSet"), where
            assert "claim" in state or "emptyDir" in state, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
                    if "valueFrom" in e}
            # Optional, except the cluster's Redis URL: replicas without it must not start.
            assert all(e["valueFrom"]["secretKeyRef"]["optional"] is True
                       for e in container["env"]
                       if "valueFrom" in e and e["name"] != "AMPGATE_CLUSTER__REDIS_URL")
            if component != "gateway":  # least privilege: workers never see upstream secrets
                assert not refs & {"AMPGATE_PASSPORT__CLIENT_SECRET", "AMPGATE_CPO__CLIENT_SECRET",
                                   "AMPGATE_PRICING__API_TOKEN"}, where
            # The environment the pod gets is one the service accepts at start-up.
            full = config | {k: v for k, v in env.items() if v is not None}
            full |= {k: secrets[k] for k in refs if k in secrets}
            if result["values"].get("existingSecret"):
                full |= existing_secret_stand_in(refs, full)
            # TLS files from a Secret volume (kafka.tls, cluster.tls) must exist: stand-ins.
            tls_dirs = [m["mountPath"] for m in container["volumeMounts"]
                        if "secret" in volumes.get(m["name"], {})]
            for key, value in full.items():
                if any(value.startswith(f"{d}/") for d in tls_dirs):
                    full[key] = str(tmp_path / where / value.lstrip("/"))
                    Path(full[key]).parent.mkdir(parents=True, exist_ok=True)
                    Path(full[key]).touch()
            for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
                monkeypatch.delenv(key)
            for key, value in full.items():
                if key not in CHART_AHEAD:  # the code does not read them yet
                    monkeypatch.setenv(key, value)
            try:
                load_settings()
            except ConfigError as exc:
                pytest.fail(f"{where}: the service would refuse this configuration: {exc}")


def existing_secret_stand_in(refs: set[str], env: dict[str, str]) -> dict[str, str]:
    """What a user's existingSecret holds: a secret for every upstream group the pod
    configures, JSON lists for the list settings."""
    out: dict[str, str] = {}
    for key in refs:
        group = key.split("__")[0] + "__"
        if "__" not in key or key == "AMPGATE_WEBHOOKS__SUBSCRIPTIONS":
            out[key] = "[]"
        elif any(k.startswith(group) for k in env):
            out[key] = "stand-in"
    return out


def test_services_select_their_component_pods(rendered: dict[str, dict[str, Any]]) -> None:
    for case, result in rendered.items():
        pods = [d["spec"]["template"]["metadata"]["labels"]
                for d in workloads(result["docs"]).values()]
        for name, svc in kinds(result["docs"], "Service").items():
            assert len(name) <= 63, f"{case}/{name}"
            matching = [p for p in pods if svc["spec"]["selector"].items() <= p.items()]
            assert len(matching) == 1, f"{case}/{name} selects {len(matching)} workloads"
            assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_statefulsets_have_a_headless_service_and_a_claim_per_replica(
        rendered: dict[str, dict[str, Any]]) -> None:
    for case, result in rendered.items():
        services = kinds(result["docs"], "Service")
        for name, sts in kinds(result["docs"], "StatefulSet").items():
            where = f"{case}/{name}"
            # The controller-revision-hash label is "<name>-<10 chars>", within 63.
            assert len(name) <= 52, where
            headless = services[sts["spec"]["serviceName"]]
            assert headless["spec"]["clusterIP"] == "None", where
            assert headless["spec"]["selector"].items() <= (
                sts["spec"]["template"]["metadata"]["labels"].items())
            (claim,) = sts["spec"]["volumeClaimTemplates"]
            assert claim["spec"]["resources"]["requests"]["storage"], where
            assert claim["spec"]["accessModes"], where
            # Claim templates are immutable: no labels that change with an upgrade.
            assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(
                claim["metadata"].get("labels", {})), where
            # A replaced pod is gone before its successor mounts the same claim.
            assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate", where


def test_gateway_keeps_its_outbox_on_a_claim_by_default_and_on_an_emptydir_without_persistence(
        rendered: dict[str, dict[str, Any]]) -> None:
    default, ephemeral = rendered["default"]["docs"], rendered["ephemeral"]["docs"]
    gateway = by_component(default, "StatefulSet")["gateway"]
    assert "gateway" not in by_component(default, "Deployment")
    claim = state_volume(gateway)["claim"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim  # the cluster's default class
    # One replica by default: more need cluster mode (test_helm_chart.py).
    assert not kinds(default, "HorizontalPodAutoscaler") and gateway["spec"]["replicas"] == 1

    gateway = by_component(ephemeral, "Deployment")["gateway"]
    assert not kinds(ephemeral, "StatefulSet")
    assert state_volume(gateway)["emptyDir"]["sizeLimit"] == "512Mi"
    assert "volumeClaimTemplates" not in gateway["spec"]
    assert not [s for s in kinds(ephemeral, "Service").values()
                if s["spec"].get("clusterIP") == "None"]  # no StatefulSet, no headless Service
    (hpa,) = kinds(ephemeral, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    (pdb,) = kinds(ephemeral, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        gateway["spec"]["template"]["metadata"]["labels"].items())
    notes = rendered["ephemeral"]["notes"]
    assert "gateway.persistence.enabled=false" in notes and "lost" in notes


def test_persistence_defaults_follow_where_each_component_keeps_its_state(
        rendered: dict[str, dict[str, Any]]) -> None:
    def modes(case: str) -> dict[str, str]:
        return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d["kind"]
                for d in workloads(rendered[case]["docs"]).values()}

    # No database URL: the history worker's SQLite file needs a claim too.
    assert modes("default") == dict.fromkeys(COMPONENTS, "StatefulSet")
    # PostgreSQL holds the history: nothing of the history worker's to keep.
    assert modes("history-postgres") == {"gateway": "StatefulSet", "history": "Deployment",
                                         "webhooks": "StatefulSet"}
    # An existingSecret may hold the URL; pinned on, the claim is there anyway.
    assert modes("history-pinned-on") == {"gateway": "StatefulSet", "history": "StatefulSet",
                                          "webhooks": "Deployment"}
    assert modes("ephemeral") == dict.fromkeys(COMPONENTS, "Deployment")

    full = rendered["full"]["docs"]
    assert modes("full")["history"] == "Deployment"
    gateway = by_component(full, "StatefulSet")["gateway"]
    assert state_volume(gateway)["claim"] | {"resources": None} == {
        "accessModes": ["ReadWriteOncePod"], "storageClassName": "fast-ssd", "resources": None}
    assert state_volume(gateway)["claim"]["resources"]["requests"]["storage"] == "5Gi"
    webhooks = by_component(full, "StatefulSet")["webhooks"]
    assert webhooks["spec"]["replicas"] == 2  # two replicas, two queues (claims), never one
    # storageClass "-": an empty storageClassName, so only pre-provisioned volumes bind.
    existing = by_component(rendered["existing-secret"]["docs"], "StatefulSet")["gateway"]
    assert state_volume(existing)["claim"]["storageClassName"] == ""
    # Names at their limit: the StatefulSet stops at 52, its headless Service at 63.
    long = [d for d in rendered["long-names"]["docs"] if d["kind"] == "StatefulSet"]
    assert len({sts["metadata"]["name"] for sts in long}) == len(COMPONENTS)  # still distinct
    assert len({sts["spec"]["serviceName"] for sts in long}) == len(COMPONENTS)
    for sts in long:
        assert len(sts["metadata"]["name"]) <= 52 and len(sts["spec"]["serviceName"]) <= 63


def test_chart_refuses_sqlite_history_on_several_replicas(
        rendered_all: dict[str, dict[str, Any]]) -> None:
    for name, (_, words) in REFUSED_CASES.items():
        assert words in rendered_all[name].get("error", ""), name


def test_service_monitor_scrapes_each_pod_once(rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["full"]["docs"]
    (monitor,) = kinds(docs, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]

    def selects(svc: dict[str, Any]) -> bool:
        labels = svc["metadata"]["labels"]
        if not selector["matchLabels"].items() <= labels.items():
            return False
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "DoesNotExist"  # the only one used
            if expr["key"] in labels:
                return False
        return True

    scraped = [s["spec"]["selector"]["app.kubernetes.io/component"]
               for s in kinds(docs, "Service").values() if selects(s)]
    assert sorted(scraped) == sorted(COMPONENTS)  # headless Services front the same pods


def test_default_case_follows_app_version_and_wires_gateway_to_history(
        rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["default"]["docs"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    sets = workloads(docs)
    assert set(sets) == {f"rel-ampgate-{c}" for c in COMPONENTS}
    for dep in sets.values():
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(":" + chart["appVersion"])
    gateway = sets["rel-ampgate-gateway"]
    env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    history_svc = kinds(docs, "Service")["rel-ampgate-history"]
    assert env["AMPGATE_HISTORY__URL"] == (
        f"http://rel-ampgate-history:{history_svc['spec']['ports'][0]['port']}")
    # One replica, no HPA by default: more need cluster mode (test_helm_chart.py).
    assert gateway["spec"]["replicas"] == 1 and not kinds(docs, "HorizontalPodAutoscaler")
    (pdb,) = kinds(docs, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert not kinds(docs, "ServiceMonitor") and not kinds(docs, "PrometheusRule")
    (secret,) = kinds(docs, "Secret").values()
    # Only what was set (the required upstream secrets), nothing else (no half upstreams).
    assert set(secret["stringData"]) == {"AMPGATE_PASSPORT__CLIENT_SECRET",
                                         "AMPGATE_CPO__CLIENT_SECRET", "AMPGATE_PRICING__API_TOKEN"}


def test_full_case_renders_secrets_as_contract_json_and_monitoring(
        rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["full"]["docs"]
    (secret,) = kinds(docs, "Secret").values()
    data = secret["stringData"]
    clients = json.loads(data["AMPGATE_CLIENTS"])
    assert {c["name"] for c in clients} == {"billing", "ops"}
    assert json.loads(data["AMPGATE_TARIFF_CONTEXTS"])[0] == {"name": "fleet",
                                                              "emaid": "DE-ABC-123456789"}
    hooks = json.loads(data["AMPGATE_WEBHOOKS__SUBSCRIPTIONS"])
    assert hooks[0]["entity_ids"] == ["BP-1", "BP-2"]
    sets = workloads(docs)
    image = sets["rel-ampgate-gateway"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":1.2.3@sha256:" + "0" * 64)
    env = {e["name"]: e.get("value") for e in
           sets["rel-ampgate-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AMPGATE_CACHE__DEFAULT_TTL_S"] == "12.5"
    assert env["AMPGATE_CACHE__MAX_BYTES"] == "67108864"  # no 6.7108864e+07
    assert env["AMPGATE_POLL__PRICES_INTERVAL_S"] == "900"
    (rule,) = kinds(docs, "PrometheusRule").values()
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    (monitor,) = kinds(docs, "ServiceMonitor").values()
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The history service checks the callers' keys itself (DESIGN.md §11): it reads the clients.
    history_env = sets["rel-ampgate-history"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "AMPGATE_CLIENTS" in {e["valueFrom"]["secretKeyRef"]["key"] for e in history_env
                                 if "valueFrom" in e}


def test_existing_secret_case_renders_no_secret_and_reads_the_given_one(
        rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["existing-secret"]["docs"]
    assert not kinds(docs, "Secret") and not kinds(docs, "HorizontalPodAutoscaler")
    assert not kinds(docs, "ServiceAccount")
    (gateway,) = workloads(docs).values()
    assert gateway["metadata"]["name"] == "ampgate-gateway" and gateway["spec"]["replicas"] == 3
    spec = gateway["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "ampgate-runner"
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in spec["containers"][0]["env"]
            if "valueFrom" in e}
    assert refs == {"ampgate-secrets"}
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert "AMPGATE_HISTORY__URL" not in env  # history is off
