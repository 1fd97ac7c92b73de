//! The Grafana dashboard (`deploy/grafana/cairn-training.json`) asks only
//! for metrics that exist: every metric name in every query is served by a
//! real process (a cairn-meta, a cairn-chunkserver, a client that read,
//! wrote and checkpointed) or recorded by a rule of
//! `deploy/prometheus/cairn-rules.yml`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use cairn_client::{Checkpoints, ClientOptions};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_proto::meta::VolumePolicy;

const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "offset", "bool"];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads (functions, aggregations,
/// label lists, label matchers, ranges and numbers left out).
fn metric_names(expr: &str) -> Vec<String> {
    // Drop strings, label matchers and ranges first.
    let mut flat = String::new();
    let mut depth = (0, 0);
    let mut in_str = false;
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' => depth.0 += 1,
            '}' => depth.0 -= 1,
            '[' => depth.1 += 1,
            ']' => depth.1 -= 1,
            _ if depth == (0, 0) => flat.push(c),
            _ => {}
        }
    }
    let chars: Vec<char> = flat.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        if GROUPING.contains(&word.as_str()) {
            // Skip the label list.
            if chars.get(j) == Some(&'(') {
                while j < chars.len() && chars[j] != ')' {
                    j += 1;
                }
                i = j + 1;
            }
            continue;
        }
        if chars.get(j) == Some(&'(')
            || AGGREGATORS.contains(&word.as_str())
            || KEYWORDS.contains(&word.as_str())
        {
            continue;
        }
        names.push(word);
    }
    names
}

/// Sample names on a Prometheus text page.
fn exposed(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_extractor_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (volume, le) (rate(a_bucket{volume=~\"$v\"}[$__rate_interval]))) / 1e6 + b:rec and on (x) c"
        ),
        ["a_bucket", "b:rec", "c"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_metrics_that_exist() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let meta_addr = format!("127.0.0.1:{}", cairn_jepsen::ports::free_port_run(1)?);
    let cs_addr = format!("127.0.0.1:{}", cairn_jepsen::ports::free_port_run(2)?);
    let cluster = DataCluster::start(DataOpts {
        metas: 1,
        chunkservers: 1,
        meta_args: vec!["--metrics-listen".into(), meta_addr.clone()],
        chunkserver_args: vec!["--metrics-listen".into(), cs_addr.clone()],
        ..DataOpts::default()
    })
    .await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume(
            "dash",
            VolumePolicy {
                replication: 1,
                ..Default::default()
            },
        )
        .await?;
    // Traffic, so that every family has its samples.
    let data: Bytes = pattern(7, 3 << 20);
    client.write_file("/dash/f", data.clone()).await?;
    ensure!(client.read_file("/dash/f").await? == data);
    ensure!(client.read_file("/dash/f").await? == data);
    let ckpt = Checkpoints::new(client.clone(), "/dash/ckpt");
    ckpt.save("step-1", data.clone(), Default::default())
        .await?;
    ckpt.load("step-1").await?;

    let mut names = exposed(&client.metrics().encode());
    names.extend(exposed(
        &cairn_jepsen::scrape::metrics_page(&meta_addr)
            .await
            .context("meta /metrics")?,
    ));
    names.extend(exposed(
        &cairn_jepsen::scrape::metrics_page(&cs_addr)
            .await
            .context("chunkserver /metrics")?,
    ));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/cairn-rules.yml"))?;
    let records: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|r| r.trim().to_string())
        .collect();
    ensure!(
        records.len() == 8,
        "the eight signals are recorded: {records:?}"
    );
    names.extend(records.iter().cloned());

    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(
        root.join("deploy/grafana/cairn-training.json"),
    )?)?;
    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().context("panels")? {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().context("expr")?.to_string());
        }
    }
    for v in dash["templating"]["list"]
        .as_array()
        .context("templating")?
    {
        if let Some(q) = v["definition"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.split(',').next())
                .context("label_values query")?;
            exprs.push(inner.to_string());
        }
    }
    ensure!(exprs.len() > 30, "{} queries", exprs.len());
    let mut missing = Vec::new();
    for e in &exprs {
        for n in metric_names(e) {
            if !names.contains(&n) {
                missing.push(format!("{n} (in {e})"));
            }
        }
    }
    ensure!(
        missing.is_empty(),
        "queries name metrics nothing serves:\n{}\nserved: {names:?}",
        missing.join("\n")
    );
    // The eight signals each have a panel.
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for r in &records {
        ensure!(
            titles.iter().any(|t| t.starts_with(r.as_str())),
            "no panel for {r}: {titles:?}"
        );
    }
    Ok(())
}
