//! `kubeforge addons plan|apply|status`: the addons phase on its own, against the
//! cluster's API (through SSH to a control-plane node, with the admin kubeconfig from
//! the state) or any API server given with `--kubeconfig`.

use crate::addons::{self, manifest, AddonsError, Bundle, Engine};
use crate::artifacts::Cache;
use crate::cli::{AddonsArgs, AddonsCommand};
use crate::error::Error;
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::spec::{self, LoadedCluster};
use crate::state::StateDocument;
use serde::Serialize;
use std::path::PathBuf;

fn boxed(e: AddonsError) -> Error {
    Error::Addons(Box::new(e))
}

/// An engine for the session's cluster: through the session's tunnel to the API (the
/// admin kubeconfig from the state), or to the API server of `--kubeconfig`.
async fn connect(
    s: &Session,
    doc: &StateDocument,
    kubeconfig: Option<&PathBuf>,
    opts: addons::AddonOptions,
) -> Result<Engine, Error> {
    if let Some(path) = kubeconfig {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
        return Engine::connect(&text, None, opts).await.map_err(boxed);
    }
    let kc = doc.secrets.admin_kubeconfig.clone().ok_or_else(|| {
        Error::Usage(
            "the state has no admin kubeconfig (run `kubeforge apply` first, or give --kubeconfig)"
                .into(),
        )
    })?;
    let c = &s.cluster;
    let first = c
        .topology
        .first_control_plane()
        .ok_or_else(|| Error::Usage("the cluster has no control-plane node".into()))?;
    let rt = s.rt()?;
    let session = rt.pool.session(&first.address.to_string()).await?;
    rt.api
        .engine(c, first, session, &kc, opts)
        .await
        .map_err(boxed)
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
            let opts = SessionOptions::read_only(output);
            with_session(&t.spec.file.clone(), opts, |s| {
                Box::pin(async move {
                    let doc = s.state.get().await;
                    let engine =
                        connect(s, &doc, t.kubeconfig.as_ref(), Default::default()).await?;
                    let mut b = bundles(&s.cluster).await?;
                    engine.adapt(&mut b);
                    let changes = engine.plan(&b, &doc.addons).await.map_err(boxed)?;
                    match output {
                        OutputFormat::Json => print_json(&PlanReport {
                            server: engine.server_version(),
                            changes: &changes,
                        })?,
                        OutputFormat::Text => print!("{}", plan_text(&changes)),
                    }
                    Ok(())
                })
            })
            .await
        }
        AddonsCommand::Apply {
            target,
            yes,
            addons: a,
        } => {
            let opts = SessionOptions::locked(output);
            let report = with_session(&target.spec.file.clone(), opts, |s| {
                Box::pin(async move {
                    apply_locked(s, target.kubeconfig.as_ref(), yes, a.options(), output).await
                })
            })
            .await?;
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
            let opts = SessionOptions::read_only(output);
            with_session(&target.spec.file.clone(), opts, |s| {
                Box::pin(async move {
                    let doc = s.state.get().await;
                    let opts = addons::AddonOptions {
                        wait,
                        timeout,
                        ..Default::default()
                    };
                    let engine = connect(s, &doc, target.kubeconfig.as_ref(), opts).await?;
                    let mut b = bundles(&s.cluster).await?;
                    engine.adapt(&mut b);
                    let st = if wait {
                        engine.wait_ready(&b).await
                    } else {
                        engine.status(&b).await
                    }
                    .map_err(boxed)?;
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
                })
            })
            .await
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
    s: &Session,
    kubeconfig: Option<&PathBuf>,
    yes: bool,
    opts: addons::AddonOptions,
    output: OutputFormat,
) -> Result<ApplyReport, Error> {
    let doc = s.state.get().await;
    let wait = opts.wait;
    let engine = connect(s, &doc, kubeconfig, opts).await?;
    let mut b = bundles(&s.cluster).await?;
    engine.adapt(&mut b);
    let changes = engine.plan(&b, &doc.addons).await.map_err(boxed)?;
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
    s.check_lock()?;
    let outcomes = engine
        .apply(&b, &doc.addons, &s.state, &|line| {
            if output == OutputFormat::Text {
                eprintln!("{line}")
            }
        })
        .await
        .map_err(boxed)?;
    let status = if wait {
        engine.wait_ready(&b).await
    } else {
        engine.status(&b).await
    }
    .map_err(boxed)?;
    Ok(ApplyReport {
        server: engine.server_version().to_string(),
        outcomes,
        status,
    })
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
