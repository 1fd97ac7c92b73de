#!/usr/bin/env python3
"""Offline validation of the Kubernetes training-job examples in deploy/examples.

No API server can be had where Cairn is built, so this does what `kubectl
apply --dry-run=server` would, from files alone:

1. load every YAML document under deploy/examples (duplicate keys are
   errors), expand each example's kustomization (resources, bases and
   configMapGenerator, whose files must exist under the kustomization's
   root), compare the result with `kubectl kustomize` when kubectl is there
   (object for object, in order), check that no manifest is left out of
   every kustomization, and that each job is applied after the queue,
   runtime, claims and ConfigMap it uses (sortOptions fifo);
2. built-in kinds (PersistentVolumeClaim, ConfigMap, ...) against the
   Kubernetes 1.32 API schemas of the PyPI package kubernetes-validate,
   strict (unknown fields are errors);
3. custom kinds against the upstream CRDs in $CAIRN_K8S_CRDS (default
   <repo>/../shared/k8s-crds; never copied into the repository): the
   version named by the document's apiVersion, its openAPIV3Schema made
   strict (objects with `properties` and no
   x-kubernetes-preserve-unknown-fields are closed with
   additionalProperties: false, int-or-string becomes anyOf
   integer/string), with jsonschema; metadata checked for shape. The pod
   and Job templates embedded in the jobs and runtimes are validated
   again as built-in PodTemplate / Job objects. CEL rules
   (x-kubernetes-validations) are not evaluated; the few that matter here
   are re-implemented among the cross checks;
4. cross checks the schemas cannot make: every claim a job mounts is a
   ReadWriteMany PVC of the same example on a Cairn StorageClass; mounts,
   ConfigMaps and the script path resolve; Volcano's queue exists,
   minAvailable fits the tasks, plugins and policies pass Volcano's
   webhook rules; TFJob/PyTorchJob replica types and
   container names are the ones the training operator accepts; a TrainJob's
   runtime, initializers and runtimePatches obey the Trainer's webhook
   rules (checked on the runtime merged with the patches, as the Trainer
   merges them);
5. negative self-tests: broken copies of the examples (a misspelt field, a
   string where an integer belongs, a missing queue, a ReadWriteOnce
   claim, ...) must each be rejected, so a PASS above means something;
6. runs train.py (with python3): self-test, two runs in a temporary
   directory where the second resumes from the first's checkpoint and ends
   where one uninterrupted run ends, a damaged checkpoint and a leftover
   .tmp after a crash, a non-writer rank, SIGTERM, an empty dataset.

Prints PASS/FAIL per check and ends with "validate-examples: N passed,
M failed"; exits 1 when anything failed. Needs PyYAML, jsonschema and
kubernetes-validate (deploy/tests/validate-examples installs them through
deploy/tests/tools.sh and runs this with that venv's python).
"""

import argparse
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - environment problem
    print(f"FAIL  setup: {e}: run deploy/tests/validate-examples (it installs "
          "PyYAML, jsonschema and kubernetes-validate), or pip install them")
    print("validate-examples: 0 passed, 1 failed")
    sys.exit(1)

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32.0"
CAIRN_CLASSES = ("distributed-file-ai", "distributed-file-ai-high-performance",
                 "distributed-file-ai-standard")
JOB_KINDS = {("kubeflow.org", "TFJob"), ("kubeflow.org", "PyTorchJob"),
             ("batch.volcano.sh", "Job"), ("trainer.kubeflow.org", "TrainJob")}
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class Fail(Exception):
    """A check failed; args[0] is a message or a list of messages."""

    def lines(self):
        v = self.args[0] if self.args else "failed"
        return list(v) if isinstance(v, (list, tuple)) else [str(v)]


# ------------------------------------------------------------------ report


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.timings = []

    def check(self, name, fn, *args, **kwargs):
        """Run fn; it returns a detail string (or None) or raises Fail."""
        t0 = time.monotonic()
        try:
            detail = fn(*args, **kwargs)
            ok, lines = True, []
        except Fail as e:
            ok, detail, lines = False, None, e.lines()
        except Exception as e:  # a bug or an unexpected input: report, go on
            ok, detail, lines = False, None, [f"{type(e).__name__}: {e}"]
        dt = time.monotonic() - t0
        self.timings.append((name, dt))
        if ok:
            self.passed += 1
            print(f"PASS  {name}" + (f": {detail}" if detail else "") + f" ({dt:.2f}s)", flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {name} ({dt:.2f}s)", flush=True)
            for line in lines[:25]:
                print(f"        {line}", flush=True)
            if len(lines) > 25:
                print(f"        ... and {len(lines) - 25} more", flush=True)
        return ok

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP  {name}: {why}", flush=True)


# --------------------------------------------------------------- YAML loading


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (the API server's
    decoder does too; PyYAML would silently keep the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_docs(path, loader=StrictLoader):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=loader) if d is not None]


# The upstream CRDs are large and trusted: parse them with libyaml when it is there.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Obj:
    """One Kubernetes object and where it came from."""

    def __init__(self, doc, source):
        self.doc = doc
        self.source = source

    @property
    def kind(self):
        return self.doc.get("kind", "")

    @property
    def group(self):
        api = self.doc.get("apiVersion", "")
        return api.split("/")[0] if "/" in api else ""

    @property
    def version(self):
        return self.doc.get("apiVersion", "").split("/")[-1]

    @property
    def name(self):
        return (self.doc.get("metadata") or {}).get("name", "")

    def ref(self):
        return f"{self.kind}/{self.name}"


# ------------------------------------------------------------ kustomizations


def find_kustomization(d):
    for n in KUSTOMIZATION_NAMES:
        if (d / n).is_file():
            return d / n
    return None


class Kustomize:
    """Expands the parts of kustomize the examples use; refuses the rest."""

    KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions", "sortOptions"}
    GEN_KEYS = {"name", "files", "literals", "options", "behavior"}
    OPT_KEYS = {"disableNameSuffixHash", "labels", "annotations"}

    def __init__(self):
        self.files_used = set()  # manifest files some kustomization lists
        self.bases = set()  # kustomization dirs listed by another one
        self.order = {}  # kustomization dir -> sortOptions.order ("legacy" when unset)

    def expand(self, kdir, stack=()):
        kdir = kdir.resolve()
        if kdir in stack:
            raise Fail(f"kustomization cycle: {' -> '.join(map(str, stack + (kdir,)))}")
        kfile = find_kustomization(kdir)
        if kfile is None:
            raise Fail(f"{kdir}: no kustomization.yaml")
        self.files_used.add(kfile)
        docs = load_docs(kfile)
        if len(docs) != 1 or not isinstance(docs[0], dict):
            raise Fail(f"{kfile}: expected one mapping")
        k = docs[0]
        errors = [f"{kfile}: field {key!r} is not understood by this validator (extend it)"
                  for key in k if key not in self.KEYS]
        self.order[kdir] = (k.get("sortOptions") or {}).get("order", "legacy")
        if self.order[kdir] not in ("legacy", "fifo"):
            errors.append(f"{kfile}: sortOptions.order {self.order[kdir]!r}")
        if k.get("kind", "Kustomization") != "Kustomization":
            errors.append(f"{kfile}: kind {k.get('kind')!r}, expected Kustomization")
        objs = []
        for r in k.get("resources") or []:
            p = (kdir / r).resolve()
            if p.is_dir():
                self.bases.add(p)
                objs += self.expand(p, stack + (kdir,))
            elif p.is_file():
                self.files_used.add(p)
                for i, d in enumerate(load_docs(p)):
                    objs.append(Obj(d, f"{rel(p)}#{i}"))
            else:
                errors.append(f"{kfile}: resource {r!r} does not exist")
        gopts = k.get("generatorOptions") or {}
        errors += [f"{kfile}: generatorOptions.{key} is not understood by this validator"
                   for key in gopts if key not in self.OPT_KEYS]
        for g in k.get("configMapGenerator") or []:
            try:
                objs.append(self.config_map(kdir, kfile, g, gopts))
            except Fail as e:
                errors += e.lines()
        if errors:
            raise Fail(errors)
        return objs

    def config_map(self, kdir, kfile, g, gopts):
        errors = [f"{kfile}: configMapGenerator field {key!r} is not understood"
                  for key in g if key not in self.GEN_KEYS]
        name = g.get("name")
        if not name:
            errors.append(f"{kfile}: a configMapGenerator has no name")
        opts = dict(gopts, **(g.get("options") or {}))
        if not opts.get("disableNameSuffixHash"):
            errors.append(
                f"{kfile}: ConfigMap {name}: without disableNameSuffixHash kustomize appends a "
                "content hash to the name and rewrites references in built-in kinds only; the "
                "pod templates inside TFJob/PyTorchJob/Volcano Job/TrainingRuntime would keep "
                "the bare name")
        data = {}
        for entry in g.get("files") or []:
            key, _, path = entry.rpartition("=")
            p = (kdir / path).resolve()
            key = key or Path(path).name
            if kdir != p and kdir not in p.parents:
                errors.append(f"{kfile}: configMapGenerator file {path!r} is outside the "
                              f"kustomization root {rel(kdir)}: kustomize refuses it (load "
                              "restrictor); list a base that generates it under resources:")
                continue
            if not p.is_file():
                errors.append(f"{kfile}: configMapGenerator file {path!r} does not exist")
                continue
            self.files_used.add(p)
            data[key] = p.read_text(encoding="utf-8")
        for lit in g.get("literals") or []:
            key, sep, value = lit.partition("=")
            if not sep:
                errors.append(f"{kfile}: literal {lit!r} has no '='")
            data[key] = value
        if errors:
            raise Fail(errors)
        meta = {"name": name}
        if opts.get("labels"):
            meta["labels"] = dict(opts["labels"])
        if opts.get("annotations"):
            meta["annotations"] = dict(opts["annotations"])
        return Obj({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data},
                   f"generated by {rel(kfile)}")


def rel(p):
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------ schemas


DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"

METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
        "labels": {"type": "object", "propertyNames": {"pattern": QUALIFIED_NAME, "maxLength": 317},
                   "additionalProperties": {"type": "string", "pattern": LABEL_VALUE}},
        "annotations": {"type": "object", "propertyNames": {"pattern": QUALIFIED_NAME},
                        "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "generateName": {"type": "string"},
    },
    "additionalProperties": False,
}

SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs", "dependentSchemas")
SCHEMA_ONE = ("items", "additionalProperties", "not", "additionalItems", "contains", "propertyNames",
              "if", "then", "else")
SCHEMA_LIST = ("anyOf", "allOf", "oneOf", "prefixItems")


def strict_schema(node):
    """A CRD structural schema as a strict JSON schema."""
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in SCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: strict_schema(sub) for name, sub in v.items()}
        elif k in SCHEMA_ONE:
            out[k] = strict_schema(v)
        elif k in SCHEMA_LIST and isinstance(v, list):
            out[k] = [strict_schema(sub) for sub in v]
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if ("properties" in out and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out):
        out["additionalProperties"] = False
    return out


class CRDs:
    def __init__(self, directory):
        self.dir = Path(directory)
        self.by_kind = {}  # (group, kind) -> (file, crd)
        self.schemas = {}

    def load(self):
        if not self.dir.is_dir():
            raise Fail([
                f"the CRD directory {self.dir} does not exist.",
                "Custom resources cannot be validated without the upstream CRDs; they are "
                "not kept in this repository. Set CAIRN_K8S_CRDS to a directory holding them:",
                "  kubeflow.org_tfjobs.yaml, kubeflow.org_pytorchjobs.yaml "
                "(kubeflow/trainer tag v1.9.4, manifests/base/crds),",
                "  trainer.kubeflow.org_*.yaml (kubeflow/trainer, manifests/base/crds),",
                "  batch.volcano.sh_jobs.yaml, scheduling.volcano.sh_queues.yaml "
                "(volcano-sh/volcano, config/crd/volcano/bases);",
                "the shared/k8s-crds directory beside the repository has them (see its SOURCES.md).",
            ])
        files = sorted(self.dir.glob("*.yaml")) + sorted(self.dir.glob("*.yml"))
        for f in files:
            for d in load_docs(f, FAST_LOADER):
                if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition":
                    spec = d["spec"]
                    self.by_kind[(spec["group"], spec["names"]["kind"])] = (f, d)
        if not self.by_kind:
            raise Fail(f"no CustomResourceDefinition in {self.dir}: set CAIRN_K8S_CRDS to the "
                       "directory of the upstream CRDs (see shared/k8s-crds/SOURCES.md)")
        return f"{len(self.by_kind)} CRDs from {self.dir}"

    def find(self, obj):
        return self.by_kind.get((obj.group, obj.kind))

    def validator(self, obj):
        f, crd = self.find(obj)
        key = (obj.group, obj.kind, obj.version)
        if key not in self.schemas:
            ver = next((v for v in crd["spec"]["versions"] if v["name"] == obj.version), None)
            if ver is None:
                raise Fail(f"{obj.ref()}: {f.name} has no version {obj.version} "
                           f"(has {[v['name'] for v in crd['spec']['versions']]})")
            if not ver.get("served", False):
                raise Fail(f"{obj.ref()}: version {obj.version} of {f.name} is not served")
            schema = strict_schema(ver["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})["metadata"] = METADATA_SCHEMA
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            jsonschema.Draft202012Validator.check_schema(schema)
            self.schemas[key] = (jsonschema.Draft202012Validator(schema), crd["spec"]["scope"], f.name)
        return self.schemas[key]


def path_of(error):
    p = ".".join(str(x) for x in error.absolute_path)
    return p or "<root>"


def crd_errors(crds, obj):
    validator, scope, fname = crds.validator(obj)
    errors = [f"{obj.ref()} at {path_of(e)}: {e.message}"
              for e in sorted(validator.iter_errors(obj.doc), key=lambda e: list(map(str, e.absolute_path)))]
    if scope == "Cluster" and (obj.doc.get("metadata") or {}).get("namespace"):
        errors.append(f"{obj.ref()}: {obj.kind} is cluster-scoped but sets metadata.namespace")
    return errors, fname


METADATA_VALIDATOR = jsonschema.Draft202012Validator(METADATA_SCHEMA)


def metadata_errors(doc):
    """The API schemas leave label keys and values unchecked: check them here."""
    ref = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    return [f"{ref} at metadata.{path_of(e)}: {e.message}"
            for e in METADATA_VALIDATOR.iter_errors(doc.get("metadata"))]


def builtin_errors(doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        return metadata_errors(doc)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{doc.get('kind')} {doc.get('apiVersion')}: no such built-in kind in Kubernetes "
                f"{K8S_VERSION} (and no CRD for it)"]
    except kubernetes_validate.ValidationError as e:
        cause = getattr(e, "caught", None) or e
        where = ".".join(str(x) for x in getattr(cause, "absolute_path", [])) or "<root>"
        return [f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')} at {where}: "
                f"{getattr(cause, 'message', str(cause))}"]


# ------------------------------------------------------- pod specs of a job


MERGE_KEYS = {"replicatedJobs": "name", "containers": "name", "initContainers": "name",
              "volumes": "name", "volumeMounts": "mountPath", "env": "name", "ports": "containerPort",
              "imagePullSecrets": "name"}


def strategic_merge(base, patch):
    """Enough of Kubernetes' strategic merge patch for pod and JobSet specs:
    maps merge, the lists above merge by their key, other lists replace."""
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif k in MERGE_KEYS and isinstance(v, list) and isinstance(out.get(k), list):
            key = MERGE_KEYS[k]
            merged = out[k]
            for item in v:
                i = next((i for i, b in enumerate(merged)
                          if isinstance(b, dict) and isinstance(item, dict) and b.get(key) == item.get(key)), None)
                if i is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[i] = strategic_merge(merged[i], item)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = strategic_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def find_runtime(trainjob, objs):
    ref = trainjob.doc.get("spec", {}).get("runtimeRef", {}) or {}
    kind = ref.get("kind") or "ClusterTrainingRuntime"
    return next((o for o in objs if o.kind == kind and o.group == "trainer.kubeflow.org"
                 and o.name == ref.get("name")), None)


def merged_runtime(trainjob, runtime):
    """The JobSet spec the Trainer would build: the runtime's template with
    the TrainJob's runtimePatches merged in order, then spec.trainer applied
    to the `node` container."""
    spec = copy.deepcopy(runtime.doc["spec"]["template"]["spec"])
    tj = trainjob.doc.get("spec", {})
    for p in tj.get("runtimePatches") or []:
        patch = (((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec"))
        if patch:
            spec = strategic_merge(spec, patch)
    trainer = tj.get("trainer") or {}
    for rj in spec.get("replicatedJobs") or []:
        labels = ((rj.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if labels.get("trainer.kubeflow.org/trainjob-ancestor-step") != "trainer":
            continue
        pod = rj["template"]["spec"]["template"]["spec"]
        for c in pod.get("containers") or []:
            if c.get("name") != "node":
                continue
            for f in ("image", "command", "args"):
                if trainer.get(f):
                    c[f] = copy.deepcopy(trainer[f])
            if trainer.get("env"):
                c["env"] = strategic_merge({"env": c.get("env") or []}, {"env": trainer["env"]})["env"]
            if trainer.get("resourcesPerNode"):
                c["resources"] = strategic_merge(c.get("resources") or {}, trainer["resourcesPerNode"])
    return spec


def pod_specs(obj, objs):
    """[(label, pod template)] of a job; for a TrainJob, from its runtime
    merged with its patches (empty when the runtime is not in the example)."""
    spec = obj.doc.get("spec") or {}
    out = []
    if obj.kind in ("TFJob", "PyTorchJob"):
        field = "tfReplicaSpecs" if obj.kind == "TFJob" else "pytorchReplicaSpecs"
        for rtype, rs in (spec.get(field) or {}).items():
            out.append((f"{obj.ref()} {rtype}", (rs or {}).get("template") or {}))
    elif obj.kind == "Job" and obj.group == "batch.volcano.sh":
        for t in spec.get("tasks") or []:
            out.append((f"{obj.ref()} task {t.get('name')}", t.get("template") or {}))
    elif obj.kind == "TrainJob":
        runtime = find_runtime(obj, objs)
        if runtime is not None:
            for rj in merged_runtime(obj, runtime).get("replicatedJobs") or []:
                out.append((f"{obj.ref()} (merged with {runtime.ref()}) job {rj.get('name')}",
                            ((rj.get("template") or {}).get("spec") or {}).get("template") or {}))
    return out


def containers(pod):
    spec = pod.get("spec") or {}
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def embedded_templates(obj, objs):
    """Built-in objects to validate for the templates inside a custom one."""
    out = []
    if obj.kind in ("TFJob", "PyTorchJob", "TrainJob") or (obj.kind == "Job" and obj.group == "batch.volcano.sh"):
        for label, tmpl in pod_specs(obj, objs):
            name = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")[:63].strip("-")
            out.append((label, {"apiVersion": "v1", "kind": "PodTemplate",
                                "metadata": {"name": name}, "template": tmpl}))
    elif obj.kind in RUNTIME_KINDS:
        for rj in (((obj.doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []:
            t = rj.get("template") or {}
            meta = {"name": f"{obj.name}-{rj.get('name')}"[:63]}
            if (t.get("metadata") or {}).get("labels"):
                meta["labels"] = t["metadata"]["labels"]
            out.append((f"{obj.ref()} job {rj.get('name')}",
                        {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": t.get("spec") or {}}))
    return out


# -------------------------------------------------------------- cross checks


def under(path, mount):
    mount = mount.rstrip("/") or "/"
    return path == mount or path.startswith(mount + "/") or mount == "/"


def check_claims_and_mounts(objs):
    """Claims, mounts, ConfigMaps and paths of every job of one example."""
    errors = []
    pvcs = {o.name: o for o in objs if o.kind == "PersistentVolumeClaim"}
    cms = {o.name: o for o in objs if o.kind == "ConfigMap"}
    used = set()
    jobs = [o for o in objs if (o.group, o.kind) in JOB_KINDS]
    if not jobs:
        errors.append("the example has no TFJob, PyTorchJob, Volcano Job or TrainJob")
    for job in jobs:
        specs = pod_specs(job, objs)
        if job.kind == "TrainJob" and not specs:
            errors.append(f"{job.ref()}: its runtime is not in the example, so its pods cannot be checked")
        claim_names = [v.get("volumeClaimName") for v in (job.doc.get("spec") or {}).get("volumes") or []
                       if v.get("volumeClaimName")]
        rw_checkpoint_claims, checkpoint_claims = set(), set()
        for label, tmpl in specs:
            spec = tmpl.get("spec") or {}
            vols = {v.get("name"): v for v in spec.get("volumes") or []}
            for v in vols.values():
                claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
                if claim:
                    claim_names.append(claim)
                cm = (v.get("configMap") or {}).get("name")
                if cm and cm not in cms:
                    errors.append(f"{label}: volume {v['name']} uses ConfigMap {cm}, which the example does not define")
                for item in (v.get("configMap") or {}).get("items") or []:
                    if cm in cms and item.get("key") not in (cms[cm].doc.get("data") or {}):
                        errors.append(f"{label}: ConfigMap {cm} has no key {item.get('key')}")
            for c in containers(tmpl):
                mounts = c.get("volumeMounts") or []
                for m in mounts:
                    if m.get("name") not in vols:
                        errors.append(f"{label} container {c.get('name')}: volumeMount {m.get('name')} "
                                      f"({m.get('mountPath')}) names no volume of the pod")

                def mount_for(path):
                    best = None
                    for m in mounts:
                        if under(path, m.get("mountPath", "")) and (
                                best is None or len(m["mountPath"]) > len(best["mountPath"])):
                            best = m
                    return best

                for tok in (c.get("command") or []) + (c.get("args") or []):
                    if isinstance(tok, str) and tok.startswith("/") and tok.endswith(".py"):
                        m = mount_for(tok)
                        vol = vols.get(m.get("name")) if m else None
                        cm = ((vol or {}).get("configMap") or {}).get("name")
                        if m is None:
                            errors.append(f"{label} container {c.get('name')}: runs {tok}, which no volumeMount provides")
                        elif cm in cms:
                            key = os.path.relpath(tok, m["mountPath"])
                            if key not in (cms[cm].doc.get("data") or {}):
                                errors.append(f"{label} container {c.get('name')}: runs {tok}, but ConfigMap {cm} has no key {key}")
                env = {e.get("name"): e.get("value") for e in c.get("env") or []}
                for var in ("DATA_DIR", "CHECKPOINT_DIR", "MODEL_DIR"):
                    path = env.get(var)
                    if not path:
                        continue
                    m = mount_for(path)
                    vol = vols.get(m.get("name")) if m else None
                    claim = ((vol or {}).get("persistentVolumeClaim") or {}).get("claimName")
                    if claim is None:
                        errors.append(f"{label} container {c.get('name')}: {var}={path} is on no mounted claim")
                    elif var == "CHECKPOINT_DIR":
                        checkpoint_claims.add(claim)
                        if not m.get("readOnly"):
                            rw_checkpoint_claims.add(claim)
        for claim in checkpoint_claims - rw_checkpoint_claims:
            errors.append(f"{job.ref()}: no container mounts the checkpoint claim {claim} read-write")
        for claim in claim_names:
            used.add(claim)
            pvc = pvcs.get(claim)
            if pvc is None:
                errors.append(f"{job.ref()}: claim {claim} is no PersistentVolumeClaim of the example")
                continue
            spec = pvc.doc.get("spec") or {}
            if "ReadWriteMany" not in (spec.get("accessModes") or []):
                errors.append(f"{job.ref()}: claim {claim} is {spec.get('accessModes')}, not ReadWriteMany: "
                              "pods on several nodes mount it at once")
            if spec.get("storageClassName") not in CAIRN_CLASSES:
                errors.append(f"{job.ref()}: claim {claim} has storageClassName {spec.get('storageClassName')!r}, "
                              f"not one of Cairn's {', '.join(CAIRN_CLASSES)}")
    for name in sorted(set(pvcs) - used):
        errors.append(f"PersistentVolumeClaim {name} is used by no job of the example")
    if errors:
        raise Fail(errors)
    return f"{len(used)} claims of {len(jobs)} job(s) resolve to ReadWriteMany Cairn PVCs"


VOLCANO_PLUGINS = {"ssh", "env", "svc", "tensorflow", "mpi", "pytorch", "hcclrank", "ray"}
VOLCANO_EVENTS = {"*", "PodFailed", "PodEvicted", "PodPending", "Unknown", "TaskCompleted", "TaskFailed", "JobUpdated"}
VOLCANO_ACTIONS = {"AbortJob", "RestartJob", "RestartTask", "RestartPod", "RestartPartition", "TerminateJob",
                   "CompleteJob", "ResumeJob"}


def volcano_policy_errors(where, policies):
    """Volcano's admission webhook rules for lifecycle policies (validatePolicies)."""
    errors, seen_events, seen_codes = [], set(), set()
    for p in policies or []:
        events = list(dict.fromkeys((p.get("events") or []) + ([p["event"]] if p.get("event") else [])))
        if events and p.get("exitCode") is not None:
            errors.append(f"{where}: a policy sets both event(s) and exitCode")
        elif not events and p.get("exitCode") is None:
            errors.append(f"{where}: a policy sets neither event(s) nor exitCode")
        elif events:
            if p.get("action") not in VOLCANO_ACTIONS:
                errors.append(f"{where}: policy action {p.get('action')!r} is not one of {sorted(VOLCANO_ACTIONS)}")
            for ev in events:
                if ev not in VOLCANO_EVENTS:
                    errors.append(f"{where}: policy event {ev!r} may not be used (valid: {sorted(VOLCANO_EVENTS)})")
                elif ev in seen_events:
                    errors.append(f"{where}: event {ev} appears in two policies")
                seen_events.add(ev)
        else:
            if p["exitCode"] == 0 or p["exitCode"] in seen_codes:
                errors.append(f"{where}: exitCode {p['exitCode']} is 0 or repeated")
            seen_codes.add(p["exitCode"])
    if "*" in seen_events and len(seen_events) > 1:
        errors.append(f"{where}: with the event '*' no other event may be given")
    return errors


def check_volcano(objs):
    """The Volcano admission webhook's rules for a Job, with the example's queues."""
    errors = []
    queues = {o.name for o in objs if o.kind == "Queue" and o.group == "scheduling.volcano.sh"}
    jobs = [o for o in objs if o.kind == "Job" and o.group == "batch.volcano.sh"]
    for job in jobs:
        spec = job.doc.get("spec") or {}
        queue = spec.get("queue") or "default"
        if queue not in queues:
            errors.append(f"{job.ref()}: queue {queue!r} is not defined in the example (has {sorted(queues)})")
        if queue == "root":
            errors.append(f"{job.ref()}: jobs cannot be submitted to the root queue")
        tasks = spec.get("tasks") or []
        if not tasks:
            errors.append(f"{job.ref()}: no task")
        total = sum(t.get("replicas", 0) for t in tasks if isinstance(t.get("replicas", 0), int))
        min_avail = spec.get("minAvailable", 0)
        if not isinstance(min_avail, int) or min_avail > total or min_avail < 0:
            errors.append(f"{job.ref()}: minAvailable {min_avail!r} exceeds the {total} replicas of its tasks: "
                          "the gang could never be scheduled")
        names = [t.get("name") for t in tasks]
        if len(set(names)) != len(names):
            errors.append(f"{job.ref()}: task names repeat: {names}")
        for t in tasks:
            if not re.match(DNS1123_LABEL, str(t.get("name", ""))):
                errors.append(f"{job.ref()}: task name {t.get('name')!r} is not a DNS label")
            if isinstance(t.get("minAvailable"), int) and t["minAvailable"] > t.get("replicas", 0):
                errors.append(f"{job.ref()}: task {t.get('name')} minAvailable exceeds its replicas")
            errors += volcano_policy_errors(f"{job.ref()} task {t.get('name')}", t.get("policies"))
        errors += volcano_policy_errors(job.ref(), spec.get("policies"))
        for plugin in spec.get("plugins") or {}:
            if plugin not in VOLCANO_PLUGINS:
                errors.append(f"{job.ref()}: unknown job plugin {plugin!r} (known: {sorted(VOLCANO_PLUGINS)})")
        if spec.get("schedulerName", "volcano") != "volcano":
            errors.append(f"{job.ref()}: schedulerName {spec.get('schedulerName')!r}: gang scheduling needs volcano")
    if errors:
        raise Fail(errors)
    return f"{len(jobs)} job(s): queue exists, minAvailable fits, plugins and policies as Volcano's webhook wants"


def check_kubeflow_v1(objs):
    """The training operator's (v1.9.4) webhook rules for TFJob and PyTorchJob."""
    errors = []
    n = 0
    queues = {o.name for o in objs if o.kind == "Queue"}
    for job in objs:
        if job.group != "kubeflow.org" or job.kind not in ("TFJob", "PyTorchJob"):
            continue
        n += 1
        spec = job.doc.get("spec") or {}
        if job.kind == "TFJob":
            field, allowed, container = "tfReplicaSpecs", {"Chief", "Master", "PS", "Worker", "Evaluator"}, "tensorflow"
        else:
            field, allowed, container = "pytorchReplicaSpecs", {"Master", "Worker"}, "pytorch"
        specs = spec.get(field) or {}
        total = 0
        for rtype, rs in specs.items():
            rs = rs or {}
            if rtype not in allowed:
                errors.append(f"{job.ref()}: replica type {rtype!r} is not one of {sorted(allowed)}")
            replicas = rs.get("replicas", 1)
            total += replicas if isinstance(replicas, int) else 0
            conts = ((rs.get("template") or {}).get("spec") or {}).get("containers") or []
            if not conts:
                errors.append(f"{job.ref()} {rtype}: no containers")
            for c in conts:
                if not c.get("image"):
                    errors.append(f"{job.ref()} {rtype} container {c.get('name')}: image is required")
            names = [c.get("name") for c in conts]
            if container not in names:
                errors.append(f"{job.ref()} {rtype}: no container named {container!r} (has {names}); "
                              "the operator finds the training container by that name")
            if job.kind == "PyTorchJob" and rtype == "Master" and rs.get("replicas") != 1:
                errors.append(f"{job.ref()}: the Master must say replicas: 1")
            elif isinstance(rs.get("replicas"), int) and rs["replicas"] < 1 and job.kind == "PyTorchJob":
                errors.append(f"{job.ref()} {rtype}: replicas must be at least 1")
        if job.kind == "TFJob" and len({"Chief", "Master"} & set(specs)) > 1:
            errors.append(f"{job.ref()}: more than one Chief or Master role")
        sp = (spec.get("runPolicy") or {}).get("schedulingPolicy") or {}
        if isinstance(sp.get("minAvailable"), int) and sp["minAvailable"] > total:
            errors.append(f"{job.ref()}: schedulingPolicy.minAvailable {sp['minAvailable']} exceeds {total} replicas")
        if sp.get("queue") and sp["queue"] not in queues:
            errors.append(f"{job.ref()}: schedulingPolicy.queue {sp['queue']!r} is not defined in the example")
    if errors:
        raise Fail(errors)
    return f"{n} job(s): replica types, images and container names as the operator's webhook wants"


DOMAIN_PREFIXED_PATH = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")
TORCH_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"


def check_trainjob(objs):
    """The Trainer's webhook rules (and the CEL name rule) at the CRD's commit."""
    errors = []
    jobs = [o for o in objs if o.kind == "TrainJob" and o.group == "trainer.kubeflow.org"]
    for rt in (o for o in objs if o.kind in RUNTIME_KINDS):
        for rj in (((rt.doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []:
            ancestor = (((rj.get("template") or {}).get("metadata") or {}).get("labels") or {}).get(ANCESTOR_LABEL)
            if ancestor in ("dataset-initializer", "model-initializer", "trainer"):
                if rj.get("replicas", 1) != 1:
                    errors.append(f"{rt.ref()} job {rj.get('name')}: replicas must be 1 for ancestor {ancestor}")
                want = "node" if ancestor == "trainer" else ancestor
                names = [c.get("name") for c in containers(((rj.get("template") or {}).get("spec") or {}).get("template") or {})]
                if want not in names:
                    errors.append(f"{rt.ref()} job {rj.get('name')}: ancestor {ancestor} needs a container named {want}")
    for tj in jobs:
        spec = tj.doc.get("spec") or {}
        if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", tj.name) or len(tj.name) > 63:
            errors.append(f"{tj.ref()}: metadata.name must be an RFC 1035 label of at most 63 characters")
        ref = spec.get("runtimeRef") or {}
        if ref.get("apiGroup", "trainer.kubeflow.org") != "trainer.kubeflow.org":
            errors.append(f"{tj.ref()}: runtimeRef.apiGroup {ref.get('apiGroup')!r}")
        runtime = find_runtime(tj, objs)
        if runtime is None:
            errors.append(f"{tj.ref()}: runtime {ref.get('kind') or 'ClusterTrainingRuntime'}/{ref.get('name')} "
                          "is not in the example")
            continue
        merged = merged_runtime(tj, runtime)
        jobs_by_name = {rj.get("name"): rj for rj in merged.get("replicatedJobs") or []}
        names_by_job = {n: {c.get("name"): c for c in containers(((rj.get("template") or {}).get("spec") or {}).get("template") or {})}
                        for n, rj in jobs_by_name.items()}
        for what in ("dataset", "model"):
            if not (spec.get("initializer") or {}).get(what):
                continue
            job = f"{what}-initializer"
            if job not in jobs_by_name:
                errors.append(f"{tj.ref()}: initializer.{what} is set, but {runtime.ref()} has no {job} job")
            elif job not in names_by_job[job]:
                errors.append(f"{tj.ref()}: {runtime.ref()} job {job} has no container {job}")
            elif not any(m.get("name") == "initializer" for m in names_by_job[job][job].get("volumeMounts") or []):
                errors.append(f"{tj.ref()}: container {job} does not mount the volume `initializer`")
        for p in spec.get("runtimePatches") or []:
            if not DOMAIN_PREFIXED_PATH.match(str(p.get("manager", ""))):
                errors.append(f"{tj.ref()}: runtimePatches manager {p.get('manager')!r} is not a domain-prefixed path")
            pspec = (((p.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {})
            rt_jobs = {rj.get("name"): rj for rj in ((runtime.doc["spec"]["template"].get("spec") or {}).get("replicatedJobs") or [])}
            for rjp in pspec.get("replicatedJobs") or []:
                if rjp.get("name") not in rt_jobs:
                    errors.append(f"{tj.ref()}: runtimePatches patch job {rjp.get('name')!r}, which {runtime.ref()} lacks")
                    continue
                have = set(names_by_job.get(rjp["name"], {}))
                pod = ((((rjp.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
                rt_pod = ((rt_jobs[rjp["name"]].get("template") or {}).get("spec") or {}).get("template") or {}
                rt_names = {c.get("name") for c in containers(rt_pod)}
                for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                    if c.get("name") not in rt_names:
                        errors.append(f"{tj.ref()}: runtimePatches patch container {c.get('name')!r} "
                                      f"that job {rjp['name']} of {runtime.ref()} lacks (has {sorted(have)})")
                    elif c.get("env") and c.get("name") in ("node", "dataset-initializer", "model-initializer"):
                        errors.append(f"{tj.ref()}: runtimePatches may not set env of container {c['name']}: "
                                      "use spec.trainer.env / spec.initializer.*.env")
        reserved = {e.get("name") for e in (spec.get("trainer") or {}).get("env") or []} & TORCH_RESERVED_ENV
        if reserved and "torch" in ((runtime.doc.get("spec") or {}).get("mlPolicy") or {}):
            errors.append(f"{tj.ref()}: trainer.env sets the torchrun-reserved {sorted(reserved)}")
    if errors:
        raise Fail(errors)
    return f"{len(jobs)} TrainJob(s): runtime, initializers and runtimePatches as the Trainer's webhook wants"


# ------------------------------------------------------------ the example set


class Example:
    def __init__(self, directory, objs, order="fifo"):
        self.dir = directory
        self.name = directory.name
        self.objs = objs  # in the order `kubectl apply -k` applies them when order is fifo
        self.order = order


def check_apply_order(example):
    """kubectl apply -k creates the objects in the order kustomize renders
    them. The Volcano webhook rejects a Job whose queue does not exist yet,
    and the Trainer's a TrainJob whose runtime does not; so everything a job
    uses must come before it, which only sortOptions fifo guarantees (the
    legacy order sorts TrainJob before TrainingRuntime, Job before Queue)."""
    if example.order != "fifo":
        raise Fail(f"{rel(example.dir)}/kustomization.yaml: set `sortOptions: {{order: fifo}}` and list what "
                   "a job uses before the job; kustomize's legacy order applies TrainJob before "
                   "TrainingRuntime and a Volcano Job before its Queue")
    errors = []
    position = {}
    for i, o in enumerate(example.objs):
        position.setdefault((o.kind, o.name), i)
    for i, o in enumerate(example.objs):
        if (o.group, o.kind) not in JOB_KINDS:
            continue
        needs = [("Queue", (o.doc.get("spec") or {}).get("queue"))] if o.group == "batch.volcano.sh" else []
        if o.kind == "TrainJob":
            ref = (o.doc.get("spec") or {}).get("runtimeRef") or {}
            needs.append((ref.get("kind") or "ClusterTrainingRuntime", ref.get("name")))
        for _, tmpl in pod_specs(o, example.objs):
            for v in (tmpl.get("spec") or {}).get("volumes") or []:
                if (v.get("persistentVolumeClaim") or {}).get("claimName"):
                    needs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
                if (v.get("configMap") or {}).get("name"):
                    needs.append(("ConfigMap", v["configMap"]["name"]))
        for need in dict.fromkeys(needs):
            if need in position and position[need] > i:
                errors.append(f"{o.ref()} is applied before the {need[0]}/{need[1]} it needs")
    if errors:
        raise Fail(errors)
    return " -> ".join(o.ref() for o in example.objs)


def validate_objects(crds, example):
    """Schema errors of every object of an example and of its templates."""
    errors, lines = [], []
    for o in example.objs:
        if crds.find(o) is not None:
            errs, fname = crd_errors(crds, o)
            errors += errs
            lines.append(f"{o.ref()} against {fname} {o.version}")
            for label, tmpl in embedded_templates(o, example.objs):
                errors += [f"{label} (as a built-in {tmpl['kind']}): {e}" for e in builtin_errors(tmpl)]
        elif "." in o.group and not o.group.endswith(".k8s.io"):
            errors.append(f"{o.ref()} ({o.doc.get('apiVersion')}) from {o.source}: no CRD for it in {crds.dir}")
        else:
            errors += builtin_errors(o.doc)
            lines.append(f"{o.ref()} against Kubernetes {K8S_VERSION}")
    return errors, lines


def check_example_schemas(crds, example):
    errors, lines = validate_objects(crds, example)
    if errors:
        raise Fail(errors)
    n_tmpl = sum(len(embedded_templates(o, example.objs)) for o in example.objs if crds.find(o))
    return f"{len(lines)} objects, {n_tmpl} embedded pod/Job templates valid"


def check_kubectl_kustomize(kubectl, example):
    r = subprocess.run([kubectl, "kustomize", str(example.dir)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise Fail(f"kubectl kustomize {rel(example.dir)} failed: {r.stderr.strip()}")
    theirs = [json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(r.stdout) if d]
    ours = [json.dumps(o.doc, sort_keys=True) for o in example.objs]
    if example.order != "fifo":  # the legacy order is kustomize's own: compare as sets
        theirs, ours = sorted(theirs), sorted(ours)
    if theirs != ours:
        t = {(d["kind"], d["metadata"]["name"]) for d in map(json.loads, theirs)}
        o = {(d["kind"], d["metadata"]["name"]) for d in map(json.loads, ours)}
        raise Fail(["kubectl kustomize renders something else than this validator expands:",
                    f"only kubectl: {sorted(t - o)}", f"only here: {sorted(o - t)}",
                    "(or the same objects with different content or order)"])
    return f"renders the same {len(ours)} objects" + (" in the same order" if example.order == "fifo" else "")


# ---------------------------------------------------------- negative tests


def get_obj(examples, example, kind, group=None):
    ex = next(e for e in examples if e.name == example)
    o = next(o for o in ex.objs if o.kind == kind and (group is None or o.group == group))
    return ex, o


def mutated(examples, example, kind, group, mutate):
    """A deep copy of the example with one object changed by mutate(doc)."""
    ex, target = get_obj(examples, example, kind, group)
    objs = []
    for o in ex.objs:
        doc = copy.deepcopy(o.doc)
        if o is target:
            mutate(doc)
        objs.append(Obj(doc, o.source))
    return Example(ex.dir, objs, ex.order)


def rename_key(d, old, new):
    d[new] = d.pop(old)


def negative_cases():
    def tfjob_replicas_string(doc):
        doc["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "2"

    def tfjob_container_typo(doc):
        c = doc["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
        rename_key(c, "image", "imagee")

    def pvc_rwo(doc):
        doc["spec"]["accessModes"] = ["ReadWriteOnce"]

    def pvc_class(doc):
        doc["spec"]["storageClassName"] = "standard"

    def pvc_typo(doc):
        rename_key(doc["spec"], "storageClassName", "storageClass")

    def queue_quantity(doc):
        doc["spec"]["capability"]["cpu"] = "lots"

    def volcano_min_available_over(doc):
        doc["spec"]["minAvailable"] = 4

    def trainjob_drop_node_volume(doc):
        node = next(j for j in doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
                    if j["name"] == "node")
        node["template"]["spec"]["template"]["spec"]["volumes"] = [
            v for v in node["template"]["spec"]["template"]["spec"]["volumes"] if v["name"] != "checkpoints"]

    def trainjob_patch_env(doc):
        node = next(j for j in doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
                    if j["name"] == "node")
        node["template"]["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": "1"}]

    def trainjob_no_dataset_job(doc):
        doc["spec"]["template"]["spec"]["replicatedJobs"] = [
            j for j in doc["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] != "dataset-initializer"]
        for j in doc["spec"]["template"]["spec"]["replicatedJobs"]:
            j.get("dependsOn", []).sort(key=lambda d: d["name"])
            if "dependsOn" in j:
                j["dependsOn"] = [d for d in j["dependsOn"] if d["name"] != "dataset-initializer"]

    # (title, example, kind, group, mutation, which validation must reject it)
    return [
        ("TFJob with tfReplicaSpecs misspelt tfReplicaSpec", "tfjob", "TFJob", "kubeflow.org",
         lambda d: rename_key(d["spec"], "tfReplicaSpecs", "tfReplicaSpec"), "schema"),
        ("TFJob with replicas as a string", "tfjob", "TFJob", "kubeflow.org", tfjob_replicas_string, "schema"),
        ("TFJob with a container field misspelt (image -> imagee)", "tfjob", "TFJob", "kubeflow.org",
         tfjob_container_typo, "schema"),
        ("PyTorchJob with replica type Chief", "pytorchjob", "PyTorchJob", "kubeflow.org",
         lambda d: rename_key(d["spec"]["pytorchReplicaSpecs"], "Worker", "Chief"), "kubeflow"),
        ("Volcano Job with minAvailable misspelt minAvailble", "volcano", "Job", "batch.volcano.sh",
         lambda d: rename_key(d["spec"], "minAvailable", "minAvailble"), "schema"),
        ("Volcano Job in a queue that does not exist", "volcano", "Job", "batch.volcano.sh",
         lambda d: d["spec"].__setitem__("queue", "no-such-queue"), "volcano"),
        ("Volcano Job with minAvailable 4 > 3 replicas", "volcano", "Job", "batch.volcano.sh",
         volcano_min_available_over, "volcano"),
        ("Volcano Job with an unknown plugin sshh", "volcano", "Job", "batch.volcano.sh",
         lambda d: rename_key(d["spec"]["plugins"], "ssh", "sshh"), "volcano"),
        ("Volcano Job with a policy action Restart", "volcano", "Job", "batch.volcano.sh",
         lambda d: d["spec"]["policies"][0].__setitem__("action", "Restart"), "volcano"),
        ("Volcano Queue with capability cpu 'lots'", "volcano", "Queue", "scheduling.volcano.sh",
         queue_quantity, "schema"),
        ("a ReadWriteOnce data claim", "tfjob", "PersistentVolumeClaim", None, pvc_rwo, "claims"),
        ("a claim on a non-Cairn StorageClass", "pytorchjob", "PersistentVolumeClaim", None, pvc_class, "claims"),
        ("a PVC with storageClassName misspelt storageClass", "tfjob", "PersistentVolumeClaim", None,
         pvc_typo, "schema"),
        ("TrainJob with the older API's podTemplateOverrides", "trainjob", "TrainJob", "trainer.kubeflow.org",
         lambda d: rename_key(d["spec"], "runtimePatches", "podTemplateOverrides"), "schema"),
        ("TrainJob mounting a volume its patches do not define", "trainjob", "TrainJob", "trainer.kubeflow.org",
         trainjob_drop_node_volume, "claims"),
        ("TrainJob patching the node container's env", "trainjob", "TrainJob", "trainer.kubeflow.org",
         trainjob_patch_env, "trainjob"),
        ("TrainJob with initializer.dataset on a runtime without dataset-initializer", "trainjob",
         "TrainingRuntime", "trainer.kubeflow.org", trainjob_no_dataset_job, "trainjob"),
        ("TrainJob applied before its TrainingRuntime (kustomize's legacy order)", "trainjob", None, None,
         lambda ex: ex.objs.sort(key=lambda o: (o.kind, o.name)), "order"),
        ("an example without sortOptions fifo", "volcano", None, None,
         lambda ex: setattr(ex, "order", "legacy"), "order"),
        ("TFJob named with an upper-case letter", "tfjob", "TFJob", "kubeflow.org",
         lambda d: d["metadata"].__setitem__("name", "MNIST"), "schema"),
    ]


def run_validation(kind, crds, example):
    """Errors the named validation finds in an example."""
    if kind == "schema":
        return validate_objects(crds, example)[0]
    if kind == "order":
        try:
            check_apply_order(example)
            return []
        except Fail as e:
            return e.lines()
    fn = {"claims": check_claims_and_mounts, "volcano": check_volcano,
          "kubeflow": check_kubeflow_v1, "trainjob": check_trainjob}[kind]
    try:
        fn(example.objs)
        return []
    except Fail as e:
        return e.lines()


def check_negative(crds, examples, case):
    title, example, kind, group, mutate, validation = case
    original = next(e for e in examples if e.name == example)
    before = run_validation(validation, crds, original)
    if before:
        raise Fail([f"the unmodified example already fails the {validation} check:"] + before)
    if kind is None:  # the mutation changes the example itself
        changed = Example(original.dir, list(original.objs), original.order)
        mutate(changed)
    else:
        changed = mutated(examples, example, kind, group, mutate)
    errors = run_validation(validation, crds, changed)
    if not errors:
        raise Fail(f"the {validation} check accepted it")
    return f"rejected by the {validation} check: {errors[0][:150]}"


# ------------------------------------------------------------------ train.py


CKPT_MAGIC = b"CAIRN-TOY-CKPT 1\n"


def read_ckpt(path):
    """Parse a checkpoint independently of train.py (the format is the contract)."""
    blob = Path(path).read_bytes()
    if not blob.startswith(CKPT_MAGIC):
        raise Fail(f"{path}: no magic line")
    body, _, trailer = blob[len(CKPT_MAGIC):].rpartition(b"\ncrc32=")
    if int(trailer.strip(), 16) != zlib.crc32(body):
        raise Fail(f"{path}: CRC mismatch")
    return json.loads(body)


class TrainRunner:
    def __init__(self, script, python):
        self.script = str(script)
        self.python = python

    def env(self, tmp, **kw):
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "TF_CONFIG", "PET_NODE_RANK", "CHECKPOINT_WRITER", "MODEL_DIR",
                            "STEPS", "SAVE_EVERY", "KEEP_CHECKPOINTS", "STEP_SECONDS", "DATA_WAIT_SECONDS")}
        env.update(DATA_DIR=str(tmp / "data"), CHECKPOINT_DIR=str(tmp / "ckpt"))
        env.update({k: str(v) for k, v in kw.items()})
        return env

    def run(self, tmp, *args, expect=0, **env):
        r = subprocess.run([self.python, self.script, *args], env=self.env(tmp, **env),
                           capture_output=True, text=True, timeout=300)
        if r.returncode != expect:
            raise Fail([f"train.py {' '.join(args)} exited {r.returncode}, expected {expect}:"]
                       + (r.stdout + r.stderr).strip().splitlines()[-15:])
        return r.stdout + r.stderr


def ckpt_names(d):
    return sorted(os.listdir(d), key=lambda n: (len(n), n))


def check_train_selftest(runner):
    with tempfile.TemporaryDirectory(prefix="cairn-validate-") as t:
        out = runner.run(Path(t), "--self-test")
    if "self-test: PASS" not in out:
        raise Fail(out.strip().splitlines()[-5:])
    return out.strip().splitlines()[-1]


def check_train_resume(runner):
    with tempfile.TemporaryDirectory(prefix="cairn-validate-") as t:
        tmp = Path(t)
        out = runner.run(tmp, "--seed-dataset", "--seed-files", "5", "--seed-bytes", "3000")
        files = sorted(os.listdir(tmp / "data"))
        if len(files) != 5:
            raise Fail(f"--seed-dataset made {files}")
        if [n for n in os.listdir(tmp) if n.startswith(".")]:
            raise Fail(f"--seed-dataset left {os.listdir(tmp)}")
        out = runner.run(tmp, "--seed-dataset")
        if "dataset present" not in out:
            raise Fail(["a second --seed-dataset did not leave the dataset alone:", out])

        # run 1: 10 steps, a checkpoint every 4, keep 2 -> ckpt-8 and ckpt-10
        out1 = runner.run(tmp, "--steps", "10", "--save-every", "4", "--keep", "2")
        names = ckpt_names(tmp / "ckpt")
        if names != ["ckpt-8.pt", "ckpt-10.pt"]:
            raise Fail(f"after run 1 the checkpoint directory holds {names}, expected ckpt-8.pt and ckpt-10.pt")
        if "resumed" in out1:
            raise Fail("run 1 claims to resume from nothing")
        first = read_ckpt(tmp / "ckpt" / "ckpt-10.pt")
        if first["step"] != 10:
            raise Fail(f"ckpt-10.pt holds step {first['step']}")

        # run 2: continue to 20 -> resumes at 10, ends with ckpt-16 and ckpt-20
        out2 = runner.run(tmp, "--steps", "20", "--save-every", "4", "--keep", "2")
        if not re.search(r"resumed from \S*ckpt-10\.pt at step 10\b", out2):
            raise Fail(["run 2 did not resume from run 1's ckpt-10.pt:"] + out2.splitlines()[:4])
        if re.search(r"^\[train\] step [1-9]/", out2, re.M) or "step 11/20" not in out2:
            raise Fail("run 2 did not continue at step 11")
        names = ckpt_names(tmp / "ckpt")
        if names != ["ckpt-16.pt", "ckpt-20.pt"]:
            raise Fail(f"after run 2 the checkpoint directory holds {names}")
        resumed = read_ckpt(tmp / "ckpt" / "ckpt-20.pt")

        # the same 20 steps in one run end in the same state
        runner.run(tmp, "--steps", "20", CHECKPOINT_DIR=tmp / "straight")
        straight = read_ckpt(tmp / "straight" / "ckpt-20.pt")
        for k in ("step", "weights", "crc32", "bytes_seen", "loss", "dataset"):
            if resumed[k] != straight[k]:
                raise Fail(f"10 + 10 steps differ from 20 steps in {k!r}: the resume lost state")
    return "run 2 resumed at step 10 from run 1's ckpt-10.pt; 10+10 steps == 20 steps bit for bit; kept newest 2"


def check_train_crash_leftovers(runner):
    with tempfile.TemporaryDirectory(prefix="cairn-validate-") as t:
        tmp = Path(t)
        runner.run(tmp, "--seed-dataset", "--seed-files", "3", "--seed-bytes", "2000")
        runner.run(tmp, "--steps", "6", "--save-every", "3")
        ck = tmp / "ckpt"
        good = (ck / "ckpt-6.pt").read_bytes()
        (ck / "ckpt-9.pt").write_bytes(good[: len(good) // 2])  # torn write, renamed anyway
        (ck / "ckpt-12.pt").write_bytes(good.replace(b'"step": 6', b'"step": 7'))  # CRC no longer matches
        (ck / "ckpt-15.tmp").write_bytes(b"half a checkpoint")  # writer died before rename
        out = runner.run(tmp, "--steps", "8", "--save-every", "3")
        if "resumed from" not in out or "at step 6" not in out:
            raise Fail(["did not fall back to the newest complete checkpoint ckpt-6.pt:"] + out.splitlines()[:8])
        if out.count("skipping damaged checkpoint") != 2:
            raise Fail("did not warn about both damaged checkpoints")
        if (ck / "ckpt-15.tmp").exists():
            raise Fail("the leftover ckpt-15.tmp was not removed")
        if read_ckpt(ck / "ckpt-8.pt")["step"] != 8:
            raise Fail("ckpt-8.pt is wrong")
    return "skipped a torn and a CRC-failing checkpoint, resumed from ckpt-6.pt, removed the leftover .tmp"


def check_train_roles(runner):
    with tempfile.TemporaryDirectory(prefix="cairn-validate-") as t:
        tmp = Path(t)
        runner.run(tmp, "--seed-dataset", "--seed-files", "2", "--seed-bytes", "1000")
        runner.run(tmp, "--steps", "4", "--save-every", "2", RANK=0)
        cases = [({"RANK": "1"}, False), ({"PET_NODE_RANK": "1"}, False),
                 ({"TF_CONFIG": json.dumps({"cluster": {"chief": ["c:2222"], "worker": ["w:2222"]},
                                            "task": {"type": "worker", "index": 0}})}, False),
                 ({"TF_CONFIG": json.dumps({"cluster": {"chief": ["c:2222"], "worker": ["w:2222"]},
                                            "task": {"type": "chief", "index": 0}})}, True),
                 ({"CHECKPOINT_WRITER": "false", "RANK": "0"}, False)]
        steps = 4
        for env, writes in cases:
            steps += 2
            out = runner.run(tmp, "--steps", str(steps), "--save-every", "2", **env)
            wrote = (tmp / "ckpt" / f"ckpt-{steps}.pt").exists()
            if wrote != writes or "resumed from" not in out:
                raise Fail(f"with {env}: wrote a checkpoint: {wrote}, expected {writes}; output: {out.splitlines()[:3]}")
            if not writes:
                steps -= 2  # nothing saved: the next run resumes from the same checkpoint
    return "rank 0 / the TFJob chief write; RANK=1, PET_NODE_RANK=1, a TFJob worker, CHECKPOINT_WRITER=false only read"


def check_train_sigterm(runner):
    with tempfile.TemporaryDirectory(prefix="cairn-validate-") as t:
        tmp = Path(t)
        runner.run(tmp, "--seed-dataset", "--seed-files", "2", "--seed-bytes", "1000")
        p = subprocess.Popen([runner.python, runner.script, "--steps", "100000", "--save-every", "1000",
                              "--step-seconds", "0.02"], env=runner.env(tmp), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            lines = []
            for line in p.stdout:
                lines.append(line)
                if line.startswith("[train] step 5/"):
                    break
            p.send_signal(signal.SIGTERM)
            rest, _ = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        lines += rest.splitlines()
        if p.returncode != 143:
            raise Fail(f"exit status {p.returncode} after SIGTERM, expected 143")
        saved = [n for n in os.listdir(tmp / "ckpt") if n.endswith(".pt")]
        if len(saved) != 1:
            raise Fail(f"after SIGTERM the checkpoints are {saved}")
        step = read_ckpt(tmp / "ckpt" / saved[0])["step"]
        if step < 5:
            raise Fail(f"saved step {step}, before the signal")
    return f"saved {saved[0]} and exited 143"


def check_train_empty(runner):
    with tempfile.TemporaryDirectory(prefix="cairn-validate-") as t:
        tmp = Path(t)
        (tmp / "data").mkdir()
        out = runner.run(tmp, "--steps", "3", expect=2)
        if "no file under" not in out:
            raise Fail(out)
    return "an empty dataset exits 2 with a message"


# -------------------------------------------------------------------- main


def version_of(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


def fail_now(msg):
    raise Fail(msg)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=Path, default=REPO / "deploy" / "examples")
    ap.add_argument("--crds", type=Path,
                    default=Path(os.environ.get("CAIRN_K8S_CRDS") or (REPO.parent / "shared" / "k8s-crds")))
    ap.add_argument("--kubectl", default=os.environ.get("KUBECTL") or shutil.which("kubectl"),
                    help="kubectl for `kubectl kustomize` (default $KUBECTL, then PATH)")
    ap.add_argument("--python", default=shutil.which("python3") or sys.executable,
                    help="interpreter that runs train.py (default python3 on PATH)")
    ap.add_argument("--no-train", action="store_true", help="skip running train.py")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    rep = Report()
    print(f"validate-examples: examples {rel(args.examples)}, CRDs {args.crds}, Kubernetes {K8S_VERSION}, "
          f"jsonschema {version_of('jsonschema')}, kubernetes-validate {version_of('kubernetes-validate')}",
          flush=True)

    # 1. load
    state = {}

    def load_all():
        files = sorted(p for p in args.examples.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise Fail(f"no YAML under {args.examples}")
        errors, ndocs = [], 0
        for f in files:
            try:
                docs = load_docs(f)
            except yaml.YAMLError as e:
                errors.append(f"{rel(f)}: {e}")
                continue
            for i, d in enumerate(docs):
                ndocs += 1
                if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind"):
                    errors.append(f"{rel(f)}#{i}: not a Kubernetes object (no apiVersion/kind)")
        state["files"] = files
        if errors:
            raise Fail(errors)
        return f"{len(files)} YAML files, {ndocs} documents parse (no duplicate keys)"

    rep.check("load: every YAML document under deploy/examples", load_all)

    kz = Kustomize()
    examples = []
    kdirs = sorted(p.parent for p in args.examples.rglob("*")
                   if p.name in KUSTOMIZATION_NAMES and p.parent != args.examples)
    for d in kdirs:
        def expand(d=d):
            objs = kz.expand(d)
            examples.append(Example(d.resolve(), objs, kz.order.get(d.resolve(), "legacy")))
            return f"{len(objs)} objects: " + ", ".join(o.ref() for o in objs)
        rep.check(f"kustomize: {rel(d)}", expand)
    # directories other kustomizations list are bases (train/), not examples
    examples = [e for e in examples if e.dir not in kz.bases]

    def orphans():
        left = [rel(f) for f in state.get("files", []) if f.resolve() not in kz.files_used]
        if left:
            raise Fail([f"{f} is in no kustomization: `kubectl apply -k` would not apply it" for f in left])
        return f"all {len(state.get('files', []))} YAML files belong to a kustomization"

    rep.check("kustomize: no manifest left out", orphans)
    names = sorted(e.name for e in examples)
    wanted = {"tfjob", "pytorchjob", "volcano", "trainjob"}
    rep.check("examples: tfjob, pytorchjob, volcano, trainjob present",
              lambda: ", ".join(names) if wanted <= set(names) else fail_now(f"examples found: {names}"))
    if args.kubectl:
        for e in examples:
            rep.check(f"kubectl kustomize {rel(e.dir)} (kustomize of {args.kubectl})",
                      check_kubectl_kustomize, args.kubectl, e)
    else:
        rep.skip("kubectl kustomize", "no kubectl ($KUBECTL or PATH): the expansion here was not compared")

    # 2+3. schemas
    crds = CRDs(args.crds)
    crds_ok = rep.check("CRDs: load the upstream CustomResourceDefinitions", crds.load)
    for e in examples:
        if crds_ok:
            rep.check(f"schema: {e.name}", check_example_schemas, crds, e)
        else:
            rep.check(f"schema: {e.name}", fail_now, "custom resources not validated: no CRDs (see above)")

    # 4. cross checks
    for e in examples:
        rep.check(f"apply order: {e.name}", check_apply_order, e)
        rep.check(f"claims & mounts: {e.name}", check_claims_and_mounts, e.objs)
        if any(o.group == "batch.volcano.sh" for o in e.objs):
            rep.check(f"volcano: {e.name}", check_volcano, e.objs)
        if any(o.group == "kubeflow.org" for o in e.objs):
            rep.check(f"training-operator rules: {e.name}", check_kubeflow_v1, e.objs)
        if any(o.kind == "TrainJob" for o in e.objs):
            rep.check(f"trainer webhook rules: {e.name}", check_trainjob, e.objs)

    # 5. negative self-tests
    if crds_ok and names:
        for case in negative_cases():
            if case[1] in names:
                rep.check(f"negative: {case[0]}", check_negative, crds, examples, case)

    # 6. train.py
    script = args.examples / "train" / "train.py"
    if args.no_train:
        rep.skip("train.py", "--no-train")
    elif not script.is_file():
        rep.check("train.py", fail_now, f"{rel(script)} is missing")
    else:
        runner = TrainRunner(script, args.python)
        rep.check(f"train.py --self-test ({args.python})", check_train_selftest, runner)
        rep.check("train.py: a second run resumes from the first's checkpoint", check_train_resume, runner)
        rep.check("train.py: damaged checkpoints and a leftover .tmp", check_train_crash_leftovers, runner)
        rep.check("train.py: only the writer rank saves", check_train_roles, runner)
        rep.check("train.py: SIGTERM saves and exits 143", check_train_sigterm, runner)
        rep.check("train.py: an empty dataset fails clearly", check_train_empty, runner)

    print(f"validate-examples: {time.monotonic() - t0:.1f}s in all"
          + (f", {rep.skipped} skipped" if rep.skipped else ""), flush=True)
    print(f"validate-examples: {rep.passed} passed, {rep.failed} failed", flush=True)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
