//! `cairn k8s plan JOB.yaml...`: what a training job will ask of the
//! cluster and of Cairn, before it is admitted.
//!
//! Reads Kubeflow TFJob and PyTorchJob (`kubeflow.org/v1`), Kubeflow
//! Trainer v2 TrainJob (`trainer.kubeflow.org`) and Volcano Job
//! (`batch.volcano.sh`) manifests, with the PersistentVolumeClaims and
//! StorageClasses given beside them, and prints per task: replicas, CPU,
//! memory and GPUs per pod and in total; per claim: size, class, the
//! class's Cairn parameters, who mounts it and how; then the read
//! bandwidth the job needs against what the cluster can deliver.
//!
//! # The bandwidth model (stated, so it can be argued with)
//! * Demand: every pod that mounts a claim read-only (the dataset) reads
//!   it at `--read-per-gpu` per GPU it requests, or `--read-per-pod` when
//!   it requests none. Read-write mounts (checkpoints) are listed, not
//!   counted: their traffic is bursts, not a steady stream.
//! * Caching: on a class with `cache: "true"`, a dataset no larger than
//!   the node cache (`--node-cache`) is read from the cluster in the first
//!   epoch only; later epochs are served by each node's cache. Both figures
//!   are printed.
//! * Supply: the alive chunkservers meta reports (or `--chunkservers N`
//!   without asking) times `--chunkserver-read`, the read bandwidth of one
//!   chunkserver's SSD and NIC. A read is served by one replica, so the
//!   replication factor does not divide it.
//! * Encryption: on a class with `encryption: "true"` every byte read is
//!   decrypted on the client; the plan adds the CPU that costs to each pod
//!   (0.13 CPU-seconds per GiB: ring's AES-256-GCM opening 4 KiB blocks,
//!   copy included, on one 2026 AMD EPYC core with VAES, the cipher
//!   alone. `cairn-bench client --encrypted --beside-plain` measured less
//!   extra client CPU for whole reads, 0.04-0.09 CPU-s per GiB over two
//!   runs, within its noise, so the plan keeps the cipher's figure; it was
//!   0.39 with RustCrypto's `aes-gcm`).
//!
//! The verdict is `OK` when the first-epoch demand fits the supply,
//! `SHORT` otherwise (the job will be I/O-bound until its caches warm).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use cairn_proto::units::parse_size;
use serde_json::{Value, json};

use crate::format::{human_bytes, table};

/// Decryption CPU per GiB read on an encrypted volume (cores × seconds):
/// ring opening 4 KiB blocks at 7.8 GiB/s on one core (see the module
/// docs).
const DECRYPT_CPU_SECONDS_PER_GIB: f64 = 0.13;

/// `cairn k8s` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum K8sCommand {
    /// Estimate what a training job needs: CPU, memory, GPUs, storage and
    /// read bandwidth, against what the Cairn cluster can deliver.
    ///
    /// Reads TFJob, PyTorchJob, TrainJob and Volcano Job manifests (several
    /// documents and files may be given; PersistentVolumeClaims and
    /// StorageClasses among them are used to size the claims). Asks meta
    /// for the alive chunkservers unless --chunkservers is given. See
    /// `--json` for the machine-readable plan.
    Plan(PlanArgs),
}

/// Flags of `cairn k8s plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Manifests: the job, and the claims and StorageClasses it uses.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Dataset read rate each GPU consumes, per second (e.g. "200MiB").
    #[arg(long, default_value = "200MiB", value_parser = parse_size, value_name = "SIZE")]
    pub read_per_gpu: u64,
    /// Dataset read rate of a pod with no GPU, per second.
    #[arg(long, default_value = "50MiB", value_parser = parse_size, value_name = "SIZE")]
    pub read_per_pod: u64,
    /// Read bandwidth one chunkserver delivers, per second.
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE")]
    pub chunkserver_read: u64,
    /// Client cache of each node (memory and SSD tiers together).
    #[arg(long, default_value = "100GiB", value_parser = parse_size, value_name = "SIZE")]
    pub node_cache: u64,
    /// Plan for this many chunkservers instead of asking meta.
    #[arg(long, value_name = "N")]
    pub chunkservers: Option<u32>,
}

/// Cairn's parameters of a StorageClass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParams {
    /// Copies of each chunk.
    pub replication: u32,
    /// Client caching of read data.
    pub cache: bool,
    /// Read-ahead of sequential readers.
    pub prefetch: bool,
    /// Client-side encryption.
    pub encryption: bool,
    /// Client-side compression.
    pub compression: bool,
}

/// The StorageClasses the Cairn chart installs (deploy/helm/cairn), used
/// when the manifests given do not define the class themselves.
fn builtin_class(name: &str) -> Option<ClassParams> {
    let p = |replication, cache, prefetch, encryption| ClassParams {
        replication,
        cache,
        prefetch,
        encryption,
        compression: false,
    };
    match name {
        "distributed-file-ai" => Some(p(3, true, true, true)),
        "distributed-file-ai-high-performance" => Some(p(3, true, true, false)),
        "distributed-file-ai-standard" => Some(p(3, false, false, false)),
        _ => None,
    }
}

fn class_from_manifest(doc: &Value) -> ClassParams {
    let params = &doc["parameters"];
    let flag = |k: &str| params[k].as_str().is_some_and(|v| v == "true");
    ClassParams {
        replication: params["replication"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
        cache: flag("cache"),
        prefetch: flag("prefetch"),
        encryption: flag("encryption"),
        compression: flag("compression"),
    }
}

/// One kind of pod of a job: a replica spec, a task or the trainer nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Job name.
    pub job: String,
    /// Role (Chief, Worker, Master, a Volcano task name, node).
    pub role: String,
    /// Pods of this role.
    pub replicas: u64,
    /// CPU cores requested per pod.
    pub cpu: f64,
    /// Memory bytes requested per pod.
    pub memory: u64,
    /// GPUs requested per pod.
    pub gpus: u64,
    /// (claim name, read-only) mounted by each pod.
    pub claims: Vec<(String, bool)>,
}

/// A claim as the plan sizes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// Requested size, when the claim was among the manifests.
    pub size: Option<u64>,
    /// StorageClass name.
    pub class: Option<String>,
    /// Access modes.
    pub access_modes: Vec<String>,
}

/// Parses a Kubernetes quantity ("500m", "4Gi", "1.5", "2G", "1e3").
///
/// # Errors
/// Not a quantity.
pub fn quantity(v: &Value) -> anyhow::Result<f64> {
    if let Some(n) = v.as_f64() {
        return Ok(n);
    }
    let s = v
        .as_str()
        .ok_or_else(|| anyhow!("{v} is not a quantity"))?
        .trim();
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, mult) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            let n: f64 = n.parse().map_err(|_| anyhow!("{s:?} is not a quantity"))?;
            return Ok(n * mult);
        }
    }
    s.parse().map_err(|_| anyhow!("{s:?} is not a quantity"))
}

/// Sums what the containers of a pod template request: requests, or the
/// limits where a request is missing (Kubernetes defaults the request to
/// the limit). Returns (cpu, memory, gpus).
fn pod_resources(spec: &Value) -> anyhow::Result<(f64, u64, u64)> {
    let (mut cpu, mut mem, mut gpus) = (0.0, 0.0, 0.0);
    for c in spec["containers"].as_array().into_iter().flatten() {
        let r = &c["resources"];
        let get = |k: &str| -> anyhow::Result<f64> {
            let v = if r["requests"][k].is_null() {
                &r["limits"][k]
            } else {
                &r["requests"][k]
            };
            if v.is_null() { Ok(0.0) } else { quantity(v) }
        };
        cpu += get("cpu")?;
        mem += get("memory")?;
        for section in ["limits", "requests"] {
            if let Some(m) = r[section].as_object() {
                let g: f64 = m
                    .iter()
                    .filter(|(k, _)| k.ends_with("/gpu"))
                    .map(|(_, v)| quantity(v))
                    .sum::<anyhow::Result<f64>>()?;
                if g > 0.0 {
                    gpus += g;
                    break;
                }
            }
        }
    }
    Ok((cpu, mem as u64, gpus as u64))
}

/// The claims a pod spec mounts: (claim, read-only) for each volume backed
/// by a PersistentVolumeClaim that some container mounts.
fn pod_claims(spec: &Value) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else {
            continue;
        };
        let name = v["name"].as_str().unwrap_or_default();
        let mounts: Vec<&Value> = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
            .filter(|m| m["name"].as_str() == Some(name))
            .collect();
        if mounts.is_empty() {
            continue;
        }
        let read_only = v["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true)
            || mounts.iter().all(|m| m["readOnly"].as_bool() == Some(true));
        out.push((claim.to_string(), read_only));
    }
    out
}

fn task_from_template(
    job: &str,
    role: &str,
    replicas: u64,
    template: &Value,
) -> anyhow::Result<Task> {
    let spec = &template["spec"];
    let (cpu, memory, gpus) =
        pod_resources(spec).with_context(|| format!("{job}/{role}: resources"))?;
    Ok(Task {
        job: job.to_string(),
        role: role.to_string(),
        replicas,
        cpu,
        memory,
        gpus,
        claims: pod_claims(spec),
    })
}

/// The pod kinds of one job manifest, `None` when `doc` is no job.
///
/// # Errors
/// A job whose resources cannot be read.
pub fn tasks_of(doc: &Value) -> anyhow::Result<Option<Vec<Task>>> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or("(unnamed)");
    let group = api.split('/').next().unwrap_or_default();
    let replica_specs = match (group, kind) {
        ("kubeflow.org", "TFJob") => Some("tfReplicaSpecs"),
        ("kubeflow.org", "PyTorchJob") => Some("pytorchReplicaSpecs"),
        _ => None,
    };
    if let Some(field) = replica_specs {
        let specs = doc["spec"][field]
            .as_object()
            .ok_or_else(|| anyhow!("{kind} {name}: spec.{field} is missing"))?;
        let mut tasks = Vec::new();
        for (role, s) in specs {
            let replicas = s["replicas"].as_u64().unwrap_or(1);
            tasks.push(task_from_template(name, role, replicas, &s["template"])?);
        }
        return Ok(Some(tasks));
    }
    match (group, kind) {
        ("batch.volcano.sh", "Job") => {
            let mut tasks = Vec::new();
            for (i, t) in doc["spec"]["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let role = t["name"]
                    .as_str()
                    .map_or_else(|| format!("task{i}"), String::from);
                let replicas = t["replicas"].as_u64().unwrap_or(1);
                tasks.push(task_from_template(name, &role, replicas, &t["template"])?);
            }
            if tasks.is_empty() {
                bail!("Volcano Job {name}: spec.tasks is empty");
            }
            Ok(Some(tasks))
        }
        ("trainer.kubeflow.org", "TrainJob") => Ok(Some(vec![train_job_nodes(name, doc)?])),
        _ => Ok(None),
    }
}

/// The trainer nodes of a Trainer v2 TrainJob: `spec.trainer.numNodes`
/// pods with `resourcesPerNode`. Their claims come from what the manifest
/// adds to the runtime's `node` job: `spec.runtimePatches` (Trainer
/// v2.1+), or `spec.podTemplateOverrides` (earlier v1alpha1). Volumes the
/// runtime itself declares are not in the manifest and not counted.
fn train_job_nodes(name: &str, doc: &Value) -> anyhow::Result<Task> {
    let trainer = &doc["spec"]["trainer"];
    let replicas = trainer["numNodes"].as_u64().unwrap_or(1);
    let fake_spec = json!({"containers": [{"resources": trainer["resourcesPerNode"]}]});
    let (cpu, memory, gpus) =
        pod_resources(&fake_spec).with_context(|| format!("TrainJob {name}: resourcesPerNode"))?;
    let patched = doc["spec"]["runtimePatches"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|j| j["name"] == "node")
        .map(|j| &j["template"]["spec"]["template"]["spec"]);
    let overridden = doc["spec"]["podTemplateOverrides"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["targetJobs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["name"] == "node")
        })
        .map(|o| &o["spec"]);
    let mut claims: Vec<(String, bool)> = Vec::new();
    for spec in patched.chain(overridden) {
        for (claim, ro) in pod_claims(spec) {
            if !claims.iter().any(|(c, _)| *c == claim) {
                claims.push((claim, ro));
            }
        }
    }
    Ok(Task {
        job: name.to_string(),
        role: "node".into(),
        replicas,
        cpu,
        memory,
        gpus,
        claims,
    })
}

/// Everything read from the manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Pod kinds of every job.
    pub tasks: Vec<Task>,
    /// Claims by name.
    pub claims: BTreeMap<String, Claim>,
    /// StorageClasses defined in the manifests.
    pub classes: BTreeMap<String, ClassParams>,
}

impl Manifests {
    /// Adds the documents of one YAML text.
    ///
    /// # Errors
    /// Not YAML, or a job that cannot be read.
    pub fn add(&mut self, what: &str, text: &str) -> anyhow::Result<()> {
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            let doc: Value = serde::Deserialize::deserialize(de)
                .with_context(|| format!("{what} is not valid YAML"))?;
            if doc.is_null() {
                continue;
            }
            if doc["kind"] == "List" {
                for item in doc["items"].as_array().into_iter().flatten() {
                    self.add_doc(item)?;
                }
            } else {
                self.add_doc(&doc)?;
            }
        }
        Ok(())
    }

    fn add_doc(&mut self, doc: &Value) -> anyhow::Result<()> {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match doc["kind"].as_str().unwrap_or_default() {
            "PersistentVolumeClaim" => {
                let spec = &doc["spec"];
                let size = match &spec["resources"]["requests"]["storage"] {
                    Value::Null => None,
                    v => Some(quantity(v).with_context(|| format!("claim {name}: size"))? as u64),
                };
                self.claims.insert(
                    name,
                    Claim {
                        size,
                        class: spec["storageClassName"].as_str().map(String::from),
                        access_modes: spec["accessModes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|m| m.as_str().map(String::from))
                            .collect(),
                    },
                );
            }
            "StorageClass" => {
                self.classes.insert(name, class_from_manifest(doc));
            }
            _ => {
                if let Some(tasks) = tasks_of(doc)? {
                    self.tasks.extend(tasks);
                }
            }
        }
        Ok(())
    }

    fn class(&self, name: &str) -> Option<ClassParams> {
        self.classes
            .get(name)
            .cloned()
            .or_else(|| builtin_class(name))
    }
}

/// The read demand on one claim.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimDemand {
    /// Claim name.
    pub claim: String,
    /// Pods reading it (read-only mounts).
    pub readers: u64,
    /// Pods writing it (read-write mounts).
    pub writers: u64,
    /// Bytes per second read from the cluster in the first epoch.
    pub first_epoch: f64,
    /// Bytes per second read from the cluster once the caches hold it.
    pub steady: f64,
    /// Decryption cores per reading pod.
    pub decrypt_cores_per_pod: f64,
}

/// Computes the read demand of every claim the tasks mount.
pub fn demand(m: &Manifests, args: &PlanArgs) -> Vec<ClaimDemand> {
    let mut by_claim: BTreeMap<String, ClaimDemand> = BTreeMap::new();
    for t in &m.tasks {
        let per_pod = if t.gpus > 0 {
            t.gpus as f64 * args.read_per_gpu as f64
        } else {
            args.read_per_pod as f64
        };
        for (claim, ro) in &t.claims {
            let d = by_claim
                .entry(claim.clone())
                .or_insert_with(|| ClaimDemand {
                    claim: claim.clone(),
                    readers: 0,
                    writers: 0,
                    first_epoch: 0.0,
                    steady: 0.0,
                    decrypt_cores_per_pod: 0.0,
                });
            if *ro {
                d.readers += t.replicas;
                d.first_epoch += per_pod * t.replicas as f64;
                let class = m
                    .claims
                    .get(claim)
                    .and_then(|c| c.class.as_deref())
                    .and_then(|c| m.class(c));
                if class.as_ref().is_some_and(|c| c.encryption) {
                    let cores = per_pod / f64::from(1u32 << 30) * DECRYPT_CPU_SECONDS_PER_GIB;
                    d.decrypt_cores_per_pod = d.decrypt_cores_per_pod.max(cores);
                }
            } else {
                d.writers += t.replicas;
            }
        }
    }
    for d in by_claim.values_mut() {
        let claim = m.claims.get(&d.claim);
        let cached = claim
            .and_then(|c| c.class.as_deref())
            .and_then(|c| m.class(c))
            .is_some_and(|c| c.cache);
        let fits = claim
            .and_then(|c| c.size)
            .is_some_and(|s| s <= args.node_cache);
        d.steady = if cached && fits { 0.0 } else { d.first_epoch };
    }
    by_claim.into_values().collect()
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec as u64))
}

fn cores(c: f64) -> String {
    if c == 0.0 {
        "0".into()
    } else if c.fract() == 0.0 {
        format!("{c:.0}")
    } else {
        format!("{c:.2}")
    }
}

/// `cairn k8s plan`.
///
/// # Errors
/// Unreadable manifests, no job in them, or meta unreachable without
/// `--chunkservers`.
pub async fn plan(
    meta: &str,
    timeout: std::time::Duration,
    args: &PlanArgs,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut m = Manifests::default();
    for f in &args.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        m.add(&f.display().to_string(), &text)?;
    }
    if m.tasks.is_empty() {
        bail!(
            "no TFJob, PyTorchJob, TrainJob or Volcano Job in {}",
            args.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (chunkservers, source) = match args.chunkservers {
        Some(n) => (n, "--chunkservers"),
        None => {
            let client = crate::connect_meta(meta, timeout).await.context(
                "asking meta for the chunkservers (pass --chunkservers N to plan without a cluster)",
            )?;
            let tables = client
                .get_chains()
                .await
                .map_err(|e| anyhow!("listing chunkservers: {e}"))?;
            let alive = tables.chunkservers.iter().filter(|c| c.alive).count();
            (u32::try_from(alive).unwrap_or(u32::MAX), "meta")
        }
    };
    let supply = f64::from(chunkservers) * args.chunkserver_read as f64;
    let demands = demand(&m, args);
    let first: f64 = demands.iter().map(|d| d.first_epoch).sum();
    let steady: f64 = demands.iter().map(|d| d.steady).sum();
    let verdict = if first <= supply { "OK" } else { "SHORT" };
    let pods: u64 = m.tasks.iter().map(|t| t.replicas).sum();
    let total_cpu: f64 = m.tasks.iter().map(|t| t.cpu * t.replicas as f64).sum();
    let total_mem: u64 = m.tasks.iter().map(|t| t.memory * t.replicas).sum();
    let total_gpus: u64 = m.tasks.iter().map(|t| t.gpus * t.replicas).sum();
    let storage: u64 = m.claims.values().filter_map(|c| c.size).sum();

    if json_out {
        let tasks: Vec<Value> = m
            .tasks
            .iter()
            .map(|t| {
                json!({
                    "job": t.job, "role": t.role, "replicas": t.replicas,
                    "cpu_per_pod": t.cpu, "memory_bytes_per_pod": t.memory, "gpus_per_pod": t.gpus,
                    "claims": t.claims.iter().map(|(c, ro)| json!({"claim": c, "read_only": ro})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let claims: Vec<Value> = demands
            .iter()
            .map(|d| {
                let c = m.claims.get(&d.claim);
                let class = c.and_then(|c| c.class.clone());
                let params = class.as_deref().and_then(|n| m.class(n));
                json!({
                    "claim": d.claim,
                    "in_manifests": c.is_some(),
                    "size_bytes": c.and_then(|c| c.size),
                    "storage_class": class,
                    "access_modes": c.map(|c| c.access_modes.clone()).unwrap_or_default(),
                    "parameters": params.map(|p| json!({
                        "replication": p.replication, "cache": p.cache, "prefetch": p.prefetch,
                        "encryption": p.encryption, "compression": p.compression,
                    })),
                    "readers": d.readers, "writers": d.writers,
                    "read_bytes_per_sec_first_epoch": d.first_epoch,
                    "read_bytes_per_sec_steady": d.steady,
                    "decrypt_cores_per_pod": d.decrypt_cores_per_pod,
                })
            })
            .collect();
        let out = json!({
            "tasks": tasks,
            "totals": {"pods": pods, "cpu": total_cpu, "memory_bytes": total_mem, "gpus": total_gpus, "storage_bytes": storage},
            "claims": claims,
            "bandwidth": {
                "demand_bytes_per_sec_first_epoch": first,
                "demand_bytes_per_sec_steady": steady,
                "supply_bytes_per_sec": supply,
                "chunkservers": chunkservers,
                "chunkservers_from": source,
                "assumptions": {
                    "read_per_gpu": args.read_per_gpu, "read_per_pod": args.read_per_pod,
                    "chunkserver_read": args.chunkserver_read, "node_cache": args.node_cache,
                },
                "verdict": verdict,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let rows: Vec<Vec<String>> = m
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.job.clone(),
                t.role.clone(),
                t.replicas.to_string(),
                cores(t.cpu),
                human_bytes(t.memory),
                t.gpus.to_string(),
                cores(t.cpu * t.replicas as f64),
                human_bytes(t.memory * t.replicas),
                (t.gpus * t.replicas).to_string(),
                t.claims
                    .iter()
                    .map(|(c, ro)| format!("{c}{}", if *ro { " (ro)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "JOB", "ROLE", "PODS", "CPU/POD", "MEM/POD", "GPU/POD", "CPU", "MEMORY", "GPUS",
                "CLAIMS"
            ],
            &rows,
            &[2, 3, 4, 5, 6, 7, 8],
        )
    );
    println!(
        "total: {pods} pods, {} CPU, {} memory, {total_gpus} GPUs, {} of claims\n",
        cores(total_cpu),
        human_bytes(total_mem),
        human_bytes(storage)
    );
    let rows: Vec<Vec<String>> = demands
        .iter()
        .map(|d| {
            let c = m.claims.get(&d.claim);
            let class = c.and_then(|c| c.class.clone());
            let params = class.as_deref().and_then(|n| m.class(n));
            let params = match (&class, params) {
                (_, Some(p)) => format!(
                    "r{}{}{}{}{}",
                    p.replication,
                    if p.cache { " cache" } else { "" },
                    if p.prefetch { " prefetch" } else { "" },
                    if p.encryption { " encrypted" } else { "" },
                    if p.compression { " compressed" } else { "" },
                ),
                (Some(_), None) => "not a Cairn class".into(),
                (None, None) => "-".into(),
            };
            vec![
                d.claim.clone(),
                c.and_then(|c| c.size)
                    .map_or_else(|| "?".into(), human_bytes),
                class.unwrap_or_else(|| {
                    if c.is_some() {
                        "(default)".into()
                    } else {
                        "? (claim not given)".into()
                    }
                }),
                params,
                d.readers.to_string(),
                d.writers.to_string(),
                rate(d.first_epoch),
                rate(d.steady),
                cores(d.decrypt_cores_per_pod),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "CLAIM",
                "SIZE",
                "CLASS",
                "CAIRN",
                "READERS",
                "WRITERS",
                "READ EPOCH 1",
                "READ LATER",
                "DECRYPT CPU/POD"
            ],
            &rows,
            &[1, 4, 5, 6, 7, 8],
        )
    );
    println!(
        "\nread bandwidth: needs {} (epoch 1), {} (later epochs); {chunkservers} chunkservers ({source}) \
         deliver {}: {verdict}",
        rate(first),
        rate(steady),
        rate(supply)
    );
    println!(
        "assumed: {} per GPU, {} per pod without GPU, {} per chunkserver, {} of cache per node \
         (see --help to change)",
        rate(args.read_per_gpu as f64),
        rate(args.read_per_pod as f64),
        rate(args.chunkserver_read as f64),
        human_bytes(args.node_cache)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> PlanArgs {
        PlanArgs {
            files: vec![],
            read_per_gpu: 200 << 20,
            read_per_pod: 50 << 20,
            chunkserver_read: 1 << 30,
            node_cache: 100 << 30,
            chunkservers: Some(4),
        }
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(quantity(&json!("500m")).unwrap(), 0.5);
        assert_eq!(quantity(&json!("4Gi")).unwrap(), 4.0 * 1073741824.0);
        assert_eq!(quantity(&json!("2G")).unwrap(), 2e9);
        assert_eq!(quantity(&json!(3)).unwrap(), 3.0);
        assert_eq!(quantity(&json!("1.5")).unwrap(), 1.5);
        assert!(quantity(&json!("lots")).is_err());
        assert!(quantity(&json!(true)).is_err());
    }

    const TFJOB: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: distributed-file-ai
  resources: {requests: {storage: 50Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: ckpt}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: distributed-file-ai-standard
  resources: {requests: {storage: 10Gi}}
---
apiVersion: kubeflow.org/v1
kind: TFJob
metadata: {name: mnist}
spec:
  tfReplicaSpecs:
    Chief:
      replicas: 1
      template:
        spec:
          containers:
            - name: tensorflow
              resources: {requests: {cpu: "2", memory: 8Gi}, limits: {nvidia.com/gpu: 1}}
              volumeMounts: [{name: d, mountPath: /data, readOnly: true}, {name: c, mountPath: /ckpt}]
          volumes:
            - {name: d, persistentVolumeClaim: {claimName: data}}
            - {name: c, persistentVolumeClaim: {claimName: ckpt}}
    Worker:
      replicas: 3
      template:
        spec:
          containers:
            - name: tensorflow
              resources: {limits: {cpu: 4, memory: 16Gi, nvidia.com/gpu: 2}}
              volumeMounts: [{name: d, mountPath: /data, readOnly: true}]
          volumes:
            - {name: d, persistentVolumeClaim: {claimName: data}}
"#;

    #[test]
    fn a_tfjob_is_summed_per_role_and_its_dataset_demand_counts_gpus() {
        let mut m = Manifests::default();
        m.add("tfjob", TFJOB).unwrap();
        assert_eq!(m.tasks.len(), 2);
        let chief = m.tasks.iter().find(|t| t.role == "Chief").unwrap();
        assert_eq!((chief.replicas, chief.cpu, chief.gpus), (1, 2.0, 1));
        assert_eq!(chief.memory, 8 << 30);
        assert_eq!(
            chief.claims,
            vec![("data".into(), true), ("ckpt".into(), false)]
        );
        let worker = m.tasks.iter().find(|t| t.role == "Worker").unwrap();
        assert_eq!((worker.replicas, worker.cpu, worker.gpus), (3, 4.0, 2));
        let d = demand(&m, &args());
        let data = d.iter().find(|d| d.claim == "data").unwrap();
        // 1 GPU + 3 × 2 GPUs at 200 MiB/s each.
        assert_eq!(data.first_epoch, 7.0 * f64::from(200u32 << 20));
        assert_eq!(data.readers, 4);
        // Cached and 50 GiB fits the 100 GiB node cache: later epochs are local.
        assert_eq!(data.steady, 0.0);
        // distributed-file-ai is encrypted: 400 MiB/s × 0.13 s/GiB per worker.
        assert!((data.decrypt_cores_per_pod - 0.4 / 1.024 * 0.13).abs() < 1e-9);
        let ckpt = d.iter().find(|d| d.claim == "ckpt").unwrap();
        assert_eq!((ckpt.readers, ckpt.writers, ckpt.first_epoch), (0, 1, 0.0));
    }

    #[test]
    fn an_uncached_class_or_an_oversized_dataset_reads_every_epoch() {
        let mut m = Manifests::default();
        m.add("tfjob", &TFJOB.replace("storage: 50Gi", "storage: 500Gi"))
            .unwrap();
        let d = demand(&m, &args());
        let data = d.iter().find(|d| d.claim == "data").unwrap();
        assert_eq!(data.steady, data.first_epoch);
        let mut m = Manifests::default();
        m.add(
            "tfjob",
            &TFJOB.replacen("distributed-file-ai\n", "distributed-file-ai-standard\n", 1),
        )
        .unwrap();
        let d = demand(&m, &args());
        let data = d.iter().find(|d| d.claim == "data").unwrap();
        assert_eq!(data.steady, data.first_epoch);
        assert_eq!(data.decrypt_cores_per_pod, 0.0);
    }

    #[test]
    fn volcano_jobs_and_trainjobs_are_read() {
        let volcano = r#"
apiVersion: batch.volcano.sh/v1alpha1
kind: Job
metadata: {name: vj}
spec:
  minAvailable: 3
  tasks:
    - name: master
      replicas: 1
      template: {spec: {containers: [{name: m, resources: {requests: {cpu: 500m, memory: 1Gi}}}]}}
    - name: worker
      replicas: 2
      template: {spec: {containers: [{name: w, resources: {limits: {nvidia.com/gpu: 4}}}]}}
"#;
        let mut m = Manifests::default();
        m.add("vj", volcano).unwrap();
        let roles: Vec<_> = m
            .tasks
            .iter()
            .map(|t| (t.role.as_str(), t.replicas, t.gpus))
            .collect();
        assert_eq!(roles, vec![("master", 1, 0), ("worker", 2, 4)]);
        assert_eq!(m.tasks[0].cpu, 0.5);

        let trainjob = r#"
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata: {name: tj}
spec:
  runtimeRef: {name: torch-distributed}
  trainer:
    numNodes: 4
    resourcesPerNode: {limits: {nvidia.com/gpu: 8, cpu: 32, memory: 256Gi}}
  runtimePatches:
    - manager: example.com/x
      trainingRuntimeSpec:
        template:
          spec:
            replicatedJobs:
              - name: dataset-initializer
                template: {spec: {template: {spec: {volumes: [{name: i, persistentVolumeClaim: {claimName: data}}]}}}}
              - name: node
                template:
                  spec:
                    template:
                      spec:
                        volumes:
                          - {name: d, persistentVolumeClaim: {claimName: data}}
                          - {name: c, persistentVolumeClaim: {claimName: ckpt}}
                        containers:
                          - name: node
                            volumeMounts: [{name: d, mountPath: /data, readOnly: true}, {name: c, mountPath: /c}]
"#;
        let mut m = Manifests::default();
        m.add("tj", trainjob).unwrap();
        assert_eq!(m.tasks.len(), 1);
        let t = &m.tasks[0];
        assert_eq!((t.replicas, t.gpus, t.cpu), (4, 8, 32.0));
        assert_eq!(
            t.claims,
            vec![("data".into(), true), ("ckpt".into(), false)]
        );
    }

    #[test]
    fn bad_quantities_and_non_yaml_are_errors_not_guesses() {
        let mut m = Manifests::default();
        let bad = TFJOB.replace("memory: 8Gi", "memory: eight");
        let e = m.add("bad", &bad).unwrap_err();
        assert!(format!("{e:#}").contains("eight"), "{e:#}");
        assert!(Manifests::default().add("x", "a: [b").is_err());
    }
}
