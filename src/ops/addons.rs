//! `kubeforge addons plan|apply|status`: the addons phase on its own, against the
//! cluster's API (through SSH to a control-plane node, with the admin kubeconfig from
//! the state) or any API server given with `--kubeconfig`.

use crate::addons::{self, manifest, AddonsError, Bundle, Engine};
use crate::artifacts::Cache;
use crate::error::Error;
use crate::ops::apply::AddonArgs;
use crate::output::{print_json, OutputFormat};
use crate::spec::{self, LoadedCluster};
use crate::state::StateDocument;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct AddonsArgs {
    #[command(subcommand)]
    pub command: AddonsCommand,
}

#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub spec: crate::cli::SpecArgs,
    /// Talk to the API server of this kubeconfig instead of the cluster's (the admin
    /// kubeconfig in the state, reached through SSH to a control-plane node).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AddonsCommand {
    /// Show what applying the addons would change, object by object (server-side dry
    /// run; diffs for updates). Changes nothing.
    Plan(Target),
    /// Apply the addons of the cluster file; addons removed from it are deleted (only
    /// objects kubeforge applied and labelled).
    Apply {
        #[command(flatten)]
        target: Target,
        /// Apply without asking for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        addons: AddonArgs,
    },
    /// The compatibility matrix: every release kubeforge knows of each addon and the
    /// Kubernetes versions it supports; with -f, which release the cluster file gets.
    /// Offline: reads no state and contacts nothing.
    Versions {
        /// A cluster file: mark the default for its Kubernetes version and the release
        /// each configured addon uses.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Rollout status of every addon (Deployments/DaemonSets available, Ceph health).
    Status {
        #[command(flatten)]
        target: Target,
        /// Wait until every addon is ready (see --timeout).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "5m", value_parser = crate::ops::apply::parse_duration)]
        timeout: std::time::Duration,
    },
}

fn boxed(e: AddonsError) -> Error {
    Error::Addons(Box::new(e))
}

/// An engine for `c`, and what must stay alive while it is used (tunnel, SSH pool).
struct Connected {
    engine: Engine,
    _tunnel: Option<addons::tunnel::Tunnel>,
    pool: Option<Arc<crate::transport::SshPool>>,
}

async fn connect(
    c: &LoadedCluster,
    doc: &StateDocument,
    kubeconfig: Option<&PathBuf>,
    opts: addons::AddonOptions,
) -> Result<Connected, Error> {
    if let Some(path) = kubeconfig {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
        let engine = Engine::connect(&text, None, opts).await.map_err(boxed)?;
        return Ok(Connected {
            engine,
            _tunnel: None,
            pool: None,
        });
    }
    use crate::transport::{MemoryHostKeyStore, SshPool};
    let kc = doc.secrets.admin_kubeconfig.clone().ok_or_else(|| {
        Error::Usage(
            "the state has no admin kubeconfig (run `kubeforge apply` first, or give --kubeconfig)"
                .into(),
        )
    })?;
    let first = c
        .topology
        .first_control_plane()
        .ok_or_else(|| Error::Usage("the cluster has no control-plane node".into()))?;
    let auth = crate::ops::apply::ssh_auth(c, doc)?;
    // Host keys must already be pinned (apply pinned them); nothing new is saved here.
    let keys = Arc::new(MemoryHostKeyStore::from_map(doc.host_keys.clone()));
    let pool = Arc::new(SshPool::new(
        crate::ops::apply::ssh_config(c, auth, &[])?,
        keys,
    ));
    let session = pool.session(&first.address.to_string()).await?;
    let (engine, tunnel) = addons::connect_through(c, first, session, &kc, opts)
        .await
        .map_err(boxed)?;
    Ok(Connected {
        engine,
        _tunnel: Some(tunnel),
        pool: Some(pool),
    })
}

impl Connected {
    async fn close(self) {
        if let Some(p) = &self.pool {
            p.close_all().await;
        }
    }
}

async fn bundles(c: &LoadedCluster) -> Result<Vec<Bundle>, Error> {
    manifest::load(c, &Cache::default_location())
        .await
        .map_err(boxed)
}

#[derive(Serialize)]
struct PlanReport<'a> {
    server: &'a str,
    changes: &'a [addons::engine::ObjectChange],
}

pub fn plan_text(changes: &[addons::engine::ObjectChange]) -> String {
    let mut out = String::new();
    let count = |a: &str| changes.iter().filter(|c| c.action == a).count();
    for ch in changes.iter().filter(|c| c.action != "unchanged") {
        let sign = match ch.action {
            "create" => "+",
            "delete" => "-",
            _ => "~",
        };
        out.push_str(&format!(
            "  {sign} {} {}: {}\n",
            ch.action, ch.addon, ch.object
        ));
        if let Some(d) = &ch.detail {
            for l in d.lines() {
                out.push_str(&format!("      {l}\n"));
            }
        }
    }
    out.push_str(&format!(
        "addons: {} to create, {} to update, {} to delete, {} unchanged\n",
        count("create"),
        count("update"),
        count("delete"),
        count("unchanged")
    ));
    out
}

pub async fn run(args: AddonsArgs, output: OutputFormat) -> Result<(), Error> {
    match args.command {
        AddonsCommand::Versions { file } => versions(file.as_deref(), output),
        AddonsCommand::Plan(t) => {
            let c = spec::load_file(&t.spec.file)?;
            let store = crate::ops::apply::open_store(&c)?;
            let (doc, _) = store.load_or_new().await?;
            let conn = connect(&c, &doc, t.kubeconfig.as_ref(), Default::default()).await?;
            let mut b = bundles(&c).await?;
            conn.engine.adapt(&mut b);
            let changes = conn.engine.plan(&b, &doc.addons).await.map_err(boxed);
            let server = conn.engine.server_version().to_string();
            conn.close().await;
            let changes = changes?;
            match output {
                OutputFormat::Json => print_json(&PlanReport {
                    server: &server,
                    changes: &changes,
                })?,
                OutputFormat::Text => print!("{}", plan_text(&changes)),
            }
            Ok(())
        }
        AddonsCommand::Apply {
            target,
            yes,
            addons: a,
        } => {
            let c = spec::load_file(&target.spec.file)?;
            crate::ops::validate::print_warnings(&c.warnings, output);
            let store = crate::ops::apply::open_store(&c)?;
            let lock = store
                .lock(&std::env::args().collect::<Vec<_>>().join(" "))
                .await?;
            let result = crate::state::until_ctrl_c(apply_locked(
                &c,
                store,
                target.kubeconfig.as_ref(),
                yes,
                a.options(),
                output,
                &lock,
            ))
            .await;
            let released = lock.release().await;
            let report = result??;
            released?;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => {
                    for o in &report.outcomes {
                        println!("{}", o.line());
                    }
                    for s in &report.status {
                        for l in s.lines() {
                            println!("{l}");
                        }
                    }
                }
            }
            Ok(())
        }
        AddonsCommand::Status {
            target,
            wait,
            timeout,
        } => {
            let c = spec::load_file(&target.spec.file)?;
            let store = crate::ops::apply::open_store(&c)?;
            let (doc, _) = store.load_or_new().await?;
            let opts = addons::AddonOptions {
                wait,
                timeout,
                ..Default::default()
            };
            let conn = connect(&c, &doc, target.kubeconfig.as_ref(), opts).await?;
            let mut b = bundles(&c).await?;
            conn.engine.adapt(&mut b);
            let st = if wait {
                conn.engine.wait_ready(&b).await
            } else {
                conn.engine.status(&b).await
            };
            conn.close().await;
            let st = st.map_err(boxed)?;
            match output {
                OutputFormat::Json => print_json(&st)?,
                OutputFormat::Text => {
                    for s in &st {
                        for l in s.lines() {
                            println!("{l}");
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct ApplyReport {
    server: String,
    outcomes: Vec<addons::engine::AddonOutcome>,
    status: Vec<addons::engine::AddonStatus>,
}

async fn apply_locked(
    c: &LoadedCluster,
    store: crate::state::StateStore,
    kubeconfig: Option<&PathBuf>,
    yes: bool,
    opts: addons::AddonOptions,
    output: OutputFormat,
    lock: &crate::state::LockGuard,
) -> Result<ApplyReport, Error> {
    let (doc, version) = store.load_or_new().await?;
    let wait = opts.wait;
    let conn = connect(c, &doc, kubeconfig, opts).await?;
    let mut b = bundles(c).await?;
    conn.engine.adapt(&mut b);
    let result = async {
        let changes = conn.engine.plan(&b, &doc.addons).await.map_err(boxed)?;
        if output == OutputFormat::Text {
            eprint!("{}", plan_text(&changes));
            for n in b
                .iter()
                .flat_map(|b| b.notes.iter().map(move |n| (b.addon, n)))
            {
                eprintln!("note: {}: {}", n.0, n.1);
            }
        }
        let deletes = changes.iter().filter(|c| c.action == "delete").count();
        if !yes {
            let q = if deletes > 0 {
                format!("Apply the addons, deleting {deletes} object(s) kubeforge applied before?")
            } else {
                "Apply the addons?".to_string()
            };
            crate::ops::confirm(&q, "applying", "not applied")?;
        }
        lock.check()?;
        let state = crate::phase::StateHandle::new(store, doc.clone(), version);
        let outcomes = conn
            .engine
            .apply(&b, &doc.addons, &state, &|line| {
                if output == OutputFormat::Text {
                    eprintln!("{line}")
                }
            })
            .await
            .map_err(boxed)?;
        let status = if wait {
            conn.engine.wait_ready(&b).await
        } else {
            conn.engine.status(&b).await
        }
        .map_err(boxed)?;
        Ok::<_, Error>(ApplyReport {
            server: conn.engine.server_version().to_string(),
            outcomes,
            status,
        })
    }
    .await;
    conn.close().await;
    result
}

#[derive(Debug, Serialize)]
struct VersionsReport {
    /// The cluster file's Kubernetes version (with -f).
    kubernetes: Option<String>,
    addons: Vec<AddonVersions>,
}

#[derive(Debug, Serialize)]
struct AddonVersions {
    addon: addons::AddonId,
    releases: Vec<ReleaseRow>,
}

#[derive(Debug, Serialize)]
struct ReleaseRow {
    version: &'static str,
    /// `1.20-1.22`, `>= 1.21`.
    kubernetes: String,
    min_minor: u64,
    max_minor: Option<u64>,
    source: &'static str,
    /// With -f: whether it supports the cluster's Kubernetes version.
    #[serde(skip_serializing_if = "Option::is_none")]
    supported: Option<bool>,
    /// With -f: the newest release supporting it (used unless the file pins another).
    default: bool,
    /// With -f: the release the cluster file's addon uses.
    selected: bool,
}

/// `kubeforge addons versions`: the matrix, and with a cluster file what it selects.
fn versions(file: Option<&std::path::Path>, output: OutputFormat) -> Result<(), Error> {
    use addons::catalogue::{self, AddonId};
    let c = file.map(spec::load_file).transpose()?;
    let k8s = c.as_ref().map(|c| c.version());
    // What each configured addon uses (validated on load: select succeeds).
    let mut selected: Vec<(AddonId, &'static str)> = Vec::new();
    if let (Some(c), Some(k)) = (&c, &k8s) {
        let a = &c.cluster.spec.addons;
        let mut pick = |id: AddonId, pinned: Option<&str>| {
            if let Ok(r) = catalogue::select(id, pinned, k) {
                selected.push((id, r.version));
            }
        };
        match c.cluster.spec.networking.cni {
            spec::Cni::Flannel => pick(AddonId::Flannel, None),
            spec::Cni::Calico => pick(AddonId::Calico, None),
            spec::Cni::Bridge | spec::Cni::None => {}
        }
        if let Some(m) = &a.metallb {
            pick(AddonId::Metallb, m.version.as_deref());
        }
        if let Some(i) = &a.ingress {
            let id = match i.controller {
                spec::IngressController::Contour => AddonId::Contour,
                spec::IngressController::IngressNginx => AddonId::IngressNginx,
            };
            pick(id, i.version.as_deref());
        }
        if let Some(r) = &a.rook_ceph {
            pick(AddonId::RookCeph, r.version.as_deref());
        }
    }
    let report = VersionsReport {
        kubernetes: k8s.as_ref().map(|k| k.to_string()),
        addons: AddonId::ALL
            .into_iter()
            .map(|id| {
                let default = k8s.as_ref().and_then(|k| id.default_for(k));
                AddonVersions {
                    addon: id,
                    releases: catalogue::matrix(id)
                        .iter()
                        .map(|r| ReleaseRow {
                            version: r.version,
                            kubernetes: r.range(),
                            min_minor: r.min_minor,
                            max_minor: r.max_minor,
                            source: r.source,
                            supported: k8s.as_ref().map(|k| r.supports(k)),
                            default: default.is_some_and(|d| d.version == r.version),
                            selected: selected.contains(&(id, r.version)),
                        })
                        .collect(),
                }
            })
            .collect(),
    };
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print!("{}", versions_text(&report)),
    }
    Ok(())
}

fn versions_text(r: &VersionsReport) -> String {
    let mut out = String::new();
    if let Some(k) = &r.kubernetes {
        out.push_str(&format!("Kubernetes v{k} (the cluster file)\n"));
    }
    out.push_str(&format!(
        "{:<14} {:<20} {:<12} {}\n",
        "ADDON", "RELEASE", "KUBERNETES", "NOTE"
    ));
    for a in &r.addons {
        for (i, rel) in a.releases.iter().enumerate() {
            let mut note = Vec::new();
            if rel.selected {
                note.push("used by the cluster file");
            } else if rel.default {
                note.push("default for this Kubernetes");
            }
            if rel.supported == Some(false) {
                note.push("does not support this Kubernetes");
            }
            let name = if i == 0 { a.addon.as_str() } else { "" };
            out.push_str(
                format!(
                    "{name:<14} {:<20} {:<12} {}",
                    rel.version,
                    rel.kubernetes,
                    note.join("; ")
                )
                .trim_end(),
            );
            out.push('\n');
        }
    }
    out
}
