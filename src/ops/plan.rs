//! `kubeforge plan`: what a bootstrap would do, computed offline from the cluster file.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::phase::{self, PhasePlan};
use crate::playbook;
use crate::render::{self, Secrets};
use crate::spec::{self, Endpoint, LoadedCluster, Provider, SpecError};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub cluster: String,
    pub kubernetes_version: String,
    pub kubeadm_api_version: String,
    pub provider: String,
    pub control_plane_endpoint: String,
    pub machines: Vec<Machine>,
    /// Cloud providers: what `provision` makes (offline: everything `create`; planned
    /// against the cloud: `create` or `exists`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cloud_resources: Vec<crate::provider::ResourceChange>,
    pub phases: Vec<PhasePlan>,
    pub warnings: Vec<SpecError>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub name: String,
    pub address: String,
    pub roles: Vec<String>,
    pub action: String,
}

/// Build the bootstrap plan of a loaded cluster. `secrets` are what the files would
/// hold; they never appear in the plan (contents are redacted).
pub fn build(
    c: &LoadedCluster,
    secrets: &Secrets,
    playbook_file: Option<&Path>,
) -> Result<Plan, Error> {
    let pb = playbook::load(playbook_file, &phase::names())?;
    build_for(c, secrets, &pb)
}

/// The plan of playbook `pb` for fresh hosts.
pub fn build_for(
    c: &LoadedCluster,
    secrets: &Secrets,
    pb: &playbook::Playbook,
) -> Result<Plan, Error> {
    let registry = phase::registry();
    let files = render::render_all(c, secrets)?;
    let mut phases = Vec::new();
    for r in &pb.phases {
        if let Some(ph) = registry.iter().find(|p| p.name() == r.name) {
            phases.push(phase::plan_phase(ph.as_ref(), r, c, &files, secrets, None));
        }
    }
    let action = match &c.cluster.spec.provider {
        Provider::Static(_) => "use",
        _ => "ensure",
    };
    Ok(Plan {
        cluster: c.name().to_string(),
        kubernetes_version: format!("v{}", c.version()),
        kubeadm_api_version: format!(
            "kubeadm.k8s.io/{}",
            render::kubeadm_api_version(&c.version())
        ),
        provider: c.cluster.spec.provider.name().to_string(),
        control_plane_endpoint: c.topology.endpoint.address(),
        machines: c
            .topology
            .hosts
            .iter()
            .map(|h| Machine {
                name: h.name.clone(),
                address: h.address.to_string(),
                roles: h.roles.iter().map(|r| r.as_str().to_string()).collect(),
                action: action.into(),
            })
            .collect(),
        cloud_resources: crate::provider::factory::planned_cloud_resources(c)
            .into_iter()
            .map(|resource| crate::provider::ResourceChange {
                action: crate::provider::ChangeAction::Create,
                resource,
            })
            .collect(),
        phases,
        warnings: c.warnings.clone(),
    })
}

/// Whether a plan found something to do (`plan --detailed-exitcode` exits 2 then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    None,
    Pending,
}

/// Print the plan; tell whether it has changes. Offline and fresh-host plans always
/// have (the whole bootstrap); against live hosts, see [`OnlinePlan::has_changes`].
///
/// [`OnlinePlan::has_changes`]: crate::ops::preview::OnlinePlan::has_changes
pub async fn run(args: crate::cli::PlanArgs, output: OutputFormat) -> Result<Changes, Error> {
    let file = &args.spec.file;
    let loaded = spec::load_file(file)?;
    if !args.offline {
        // Planning is read-only: a store that cannot be opened or reached is not fatal,
        // but said; a state that is there but unreadable (wrong key, corrupt) is.
        let store = match crate::ops::session::open_store(&loaded) {
            Ok(s) => Some(s),
            Err(e) => {
                note(
                    output,
                    &format!(
                        "{}: planning for fresh hosts",
                        crate::error::render_chain(&e).trim_start_matches("error: ")
                    ),
                );
                None
            }
        };
        if let Some(store) = store {
            match store.load().await {
                Ok(Some(state)) if !state.0.machines.is_empty() => {
                    let pb = playbook::load(args.playbook.as_deref(), &phase::names())?;
                    let opts = crate::ops::session::SessionOptions {
                        provider: true,
                        ..crate::ops::session::SessionOptions::read_only(output)
                    };
                    crate::ops::validate::print_warnings(&loaded.warnings, output);
                    return crate::ops::session::with_loaded_session(
                        loaded,
                        store,
                        state,
                        opts,
                        |s| Box::pin(async move { online(s, &pb, output).await }),
                    )
                    .await;
                }
                Ok(_) => note(
                    output,
                    "no machines in the state yet: planning for fresh hosts",
                ),
                Err(e @ crate::state::StateError::Unavailable { .. }) => note(
                    output,
                    &format!(
                        "{}: planning for fresh hosts",
                        crate::error::render_chain(&e).trim_start_matches("error: ")
                    ),
                ),
                Err(e) => return Err(e.into()),
            }
        }
    }
    crate::ops::validate::print_warnings(&loaded.warnings, output);
    // Offline: no state to read secrets from, so the plan is made with fresh ones, and
    // shows them redacted like any plan.
    let secrets = Secrets::generate();
    let mut plan = build(&loaded, &secrets, args.playbook.as_deref())?;
    if !args.offline && loaded.cluster.spec.provider.is_cloud() {
        // Read-only: which of the cloud resources exist already.
        match cloud_changes(&loaded).await {
            Ok(changes) => plan.cloud_resources = changes,
            Err(e) => note(
                output,
                &format!(
                    "{}: listing every cloud resource as to be created",
                    crate::error::render_chain(&e).trim_start_matches("error: ")
                ),
            ),
        }
    }
    match output {
        OutputFormat::Json => print_json(&plan)?,
        OutputFormat::Text => print!("{}", text(&plan, &loaded, args.show_content)),
    }
    Ok(Changes::Pending)
}

/// The plan against live hosts; hosts that could not be asked fail the command after
/// the plan is printed.
async fn online(
    s: &crate::ops::session::Session,
    pb: &playbook::Playbook,
    output: OutputFormat,
) -> Result<Changes, Error> {
    use crate::ops::preview::{self, Preview};
    let p = preview::build(s, pb).await?;
    match (&p, output) {
        (Preview::Online { plan, .. }, OutputFormat::Json) => print_json(plan)?,
        (_, OutputFormat::Json) => print_json(&p)?,
        (_, OutputFormat::Text) => print!("{}", preview::text(&p, &s.cluster)),
    }
    match p {
        Preview::Online { failures, .. } if !failures.is_empty() => {
            Err(Error::Phase(Box::new(phase::PhaseError::Hosts {
                phase: "plan".into(),
                errors: failures,
            })))
        }
        Preview::Online { plan, .. } if !plan.has_changes() => Ok(Changes::None),
        _ => Ok(Changes::Pending),
    }
}

/// The cloud resources `provision` would create or finds, asking the cloud (read-only).
async fn cloud_changes(c: &LoadedCluster) -> Result<Vec<crate::provider::ResourceChange>, Error> {
    let Some(p) = crate::provider::factory::open_cloud(c, String::new())? else {
        return Ok(Vec::new());
    };
    let wanted = p.planned(&crate::provider::factory::machine_specs(c));
    let existing = p.resources().await?;
    Ok(crate::provider::diff_resources(&wanted, &existing))
}

fn note(output: OutputFormat, text: &str) {
    if output == OutputFormat::Text {
        eprintln!("note: {text}");
    }
}

/// The plan as a person reads it.
pub fn text(plan: &Plan, c: &LoadedCluster, show_content: bool) -> String {
    let mut o = String::new();
    let lb = match &c.topology.endpoint {
        Endpoint::Vip { lb_hosts, .. } => format!("keepalived VIP on {}", lb_hosts.join(", ")),
        Endpoint::External { .. } => "external load balancer".into(),
        Endpoint::Cloud { .. } => format!("{} load balancer", plan.provider),
    };
    let _ = writeln!(
        o,
        "Plan for cluster `{}`: Kubernetes {} ({}), provider {}",
        plan.cluster, plan.kubernetes_version, plan.kubeadm_api_version, plan.provider
    );
    let _ = writeln!(
        o,
        "Control-plane endpoint {} ({lb})\n",
        plan.control_plane_endpoint
    );
    let _ = writeln!(o, "Machines ({}):", plan.machines.len());
    let width = plan
        .machines
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0);
    for m in &plan.machines {
        let _ = writeln!(
            o,
            "  {:<width$}  {:<15}  {:<14}  {}",
            m.name,
            m.address,
            m.roles.join(","),
            m.action
        );
    }
    if !plan.cloud_resources.is_empty() {
        o.push('\n');
        o.push_str(&resources_text(&plan.provider, &plan.cloud_resources));
    }
    let total = plan.phases.len();
    for (i, p) in plan.phases.iter().enumerate() {
        o.push_str(&phase_text_numbered(
            p,
            &format!("{}/{total} ", i + 1),
            show_content,
        ));
    }
    o
}

/// One phase of a plan as text (`number` like `3/11 `, or empty).
pub fn phase_text_numbered(p: &PhasePlan, number: &str, show_content: bool) -> String {
    let mut o = String::new();
    let hosts = if p.hosts.is_empty() {
        "operator".to_string()
    } else {
        format!(
            "{} on {} host{}",
            match p.strategy {
                playbook::Strategy::Parallel => "parallel",
                playbook::Strategy::Serial => "one at a time",
            },
            p.hosts.len(),
            if p.hosts.len() == 1 { "" } else { "s" }
        )
    };
    let _ = writeln!(o, "\nPhase {number}{}: {} [{hosts}]", p.name, p.description);
    for s in &p.operator {
        let _ = write!(o, "  * {}", s.action);
        if let Some(g) = &s.skip_if {
            let _ = write!(o, "  (skip if {g})");
        }
        o.push('\n');
    }
    for h in &p.hosts {
        let _ = writeln!(o, "  {}", h.host);
        for f in &h.files {
            let _ = writeln!(
                o,
                "    write {} ({}, {} bytes, sha256 {}{})",
                f.path,
                f.mode,
                f.size,
                &f.sha256[..12],
                if f.sensitive { ", holds secrets" } else { "" }
            );
            if show_content {
                for line in f.content.lines() {
                    let _ = writeln!(o, "      | {line}");
                }
            }
        }
        for s in &h.commands {
            let _ = write!(o, "    run   {}", s.action);
            if let Some(g) = &s.skip_if {
                let _ = write!(o, "  (skip if {g})");
            }
            o.push('\n');
        }
    }
    o
}

/// One phase of a plan as text, without its position in the playbook.
pub fn phase_text(p: &PhasePlan, show_content: bool) -> String {
    phase_text_numbered(p, "", show_content)
}

/// Cloud resources and what would happen to them.
pub fn resources_text(provider: &str, changes: &[crate::provider::ResourceChange]) -> String {
    use crate::provider::ChangeAction;
    let mut o = String::new();
    let create = changes
        .iter()
        .filter(|c| c.action == ChangeAction::Create)
        .count();
    let delete = changes
        .iter()
        .filter(|c| c.action == ChangeAction::Delete)
        .count();
    let _ = writeln!(
        o,
        "Cloud resources on {provider} ({create} to create, {} existing{}):",
        changes.len() - create - delete,
        if delete > 0 {
            format!(", {delete} to delete")
        } else {
            String::new()
        }
    );
    for c in changes {
        let action = match c.action {
            ChangeAction::Create => "create",
            ChangeAction::Exists => "exists",
            ChangeAction::Delete => "delete",
        };
        let _ = writeln!(o, "  {action:<7} {}", c.resource);
    }
    o
}
