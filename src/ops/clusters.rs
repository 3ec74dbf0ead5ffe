//! `kubeforge clusters --state-url URL`: the clusters whose states are kept under one
//! prefix (one bucket for prd, dev, wsp and a canary), each with its generation, last
//! change, last writer and lock holder. Read-only: no lock taken, no state key needed
//! (these fields are stored in clear).

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::state::lock::LOCK_KEY;
use crate::state::store::STATE_KEY;
use crate::state::{LockInfo, StateSpec, StateStore};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One cluster found under the prefix.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEntry {
    /// The cluster's name as its state records it (else its prefix).
    pub name: String,
    /// Its prefix under the URL given (`""`: the URL itself is a cluster's store).
    pub prefix: String,
    /// The URL to give `kubeforge state --state-url`.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// When the state was last saved (the state's own record, else the object's time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    pub machines: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockInfo>,
    /// Whether that lock's lease has run out (its holder probably died).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_expired: Option<bool>,
    /// Why the state or the lock could not be read (the others are listed all the same).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub url: String,
    pub clusters: Vec<ClusterEntry>,
}

pub async fn run(args: crate::cli::ClustersArgs, output: OutputFormat) -> Result<(), Error> {
    let spec = StateSpec {
        url: Some(args.state_url.clone()),
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        path_style: args.path_style,
        allow_http: args.allow_http,
        ..Default::default()
    };
    let listing = list(&args.state_url, &spec, Path::new(".")).await?;
    match output {
        OutputFormat::Json => print_json(&listing)?,
        OutputFormat::Text => print!("{}", text(&listing)),
    }
    Ok(())
}

/// Find every cluster under `url`: a prefix holding `state.json` or `lock`.
pub async fn list(url: &str, spec: &StateSpec, base_dir: &Path) -> Result<Listing, Error> {
    let options = spec.options()?;
    let root = StateStore::backend_for(url, &options, base_dir)?;
    let objects = root
        .list_tree()
        .await
        .map_err(|e| crate::state::lock::backend_err(root.as_ref(), e))?;
    // prefix -> the state object's modification time, if there is one
    let mut prefixes: BTreeMap<String, Option<DateTime<Utc>>> = BTreeMap::new();
    for o in &objects {
        let (dir, name) = match o.key.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), o.key.as_str()),
        };
        if name == STATE_KEY {
            prefixes.insert(dir, o.last_modified);
        } else if name == LOCK_KEY {
            prefixes.entry(dir).or_insert(None);
        }
    }
    let mut clusters = Vec::new();
    for (prefix, modified) in prefixes {
        let sub = if prefix.is_empty() {
            url.to_string()
        } else {
            format!("{}/{prefix}", url.trim_end_matches('/'))
        };
        let store = StateStore::with_backend(StateStore::backend_for(&sub, &options, base_dir)?)
            .with_seen_dir(None);
        clusters.push(entry(&store, prefix, sub, modified).await);
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name).then(a.prefix.cmp(&b.prefix)));
    Ok(Listing {
        url: root.describe(),
        clusters,
    })
}

async fn entry(
    store: &StateStore,
    prefix: String,
    url: String,
    modified: Option<DateTime<Utc>>,
) -> ClusterEntry {
    let fallback = prefix.rsplit('/').next().unwrap_or_default().to_string();
    let mut e = ClusterEntry {
        name: fallback,
        prefix,
        url,
        generation: None,
        updated: modified,
        updated_by: None,
        machines: 0,
        kubernetes_version: None,
        lock: None,
        lock_expired: None,
        problems: Vec::new(),
    };
    match store.load_sealed().await {
        Ok(Some((doc, _))) => {
            if !doc.cluster.is_empty() {
                e.name = doc.cluster.clone();
            }
            e.generation = Some(doc.generation);
            e.updated = doc.updated.or(modified);
            e.updated_by = doc.updated_by.clone();
            e.machines = doc.machines.len();
            e.kubernetes_version = doc.versions.kubernetes.clone();
        }
        Ok(None) => e
            .problems
            .push("no state saved yet (a lock object only)".into()),
        Err(err) => e.problems.push(chain(&err)),
    }
    match store.lock_status().await {
        Ok(Some(info)) => {
            e.lock_expired = Some(info.is_expired(Utc::now()));
            e.lock = Some(info);
        }
        Ok(None) => {}
        Err(err) => e.problems.push(chain(&err)),
    }
    e
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error::render_chain(e)
        .trim_start_matches("error: ")
        .replace("\n  caused by: ", ": ")
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn text(l: &Listing) -> String {
    let mut o = String::new();
    if l.clusters.is_empty() {
        let _ = writeln!(o, "No clusters under {}.", l.url);
        return o;
    }
    let _ = writeln!(o, "Clusters under {}:", l.url);
    let rows: Vec<[String; 6]> = l
        .clusters
        .iter()
        .map(|c| {
            [
                c.name.clone(),
                if c.prefix.is_empty() {
                    ".".into()
                } else {
                    c.prefix.clone()
                },
                c.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                c.updated.as_ref().map(ts).unwrap_or("-".into()),
                c.updated_by.clone().unwrap_or("-".into()),
                match (&c.lock, c.lock_expired) {
                    (Some(l), Some(true)) => format!("{} (EXPIRED)", l.describe()),
                    (Some(l), _) => l.describe(),
                    (None, _) => "-".into(),
                },
            ]
        })
        .collect();
    let header = ["NAME", "PREFIX", "GENERATION", "CHANGED", "BY", "LOCK"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::from(" ");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 5 {
                let _ = write!(s, " {cell}");
            } else {
                let _ = write!(s, " {cell:<w$}");
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(o, "{}", line(header));
    for r in &rows {
        let _ = writeln!(o, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    for c in &l.clusters {
        for p in &c.problems {
            let _ = writeln!(o, "  ! {}: {p}", c.name);
        }
    }
    o
}
