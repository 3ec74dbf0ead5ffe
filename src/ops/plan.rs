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
    let registry = phase::registry();
    let names: Vec<&str> = registry.iter().map(|p| p.name()).collect();
    let pb = playbook::load(playbook_file, &names)?;
    let files = render::render_all(c, secrets)?;
    let mut phases = Vec::new();
    for r in &pb.phases {
        if let Some(ph) = registry.iter().find(|p| p.name() == r.name) {
            phases.push(phase::plan_phase(ph.as_ref(), r, c, &files, secrets));
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
        cloud_resources: crate::phase::provision::planned_cloud_resources(c)
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

pub async fn run(args: crate::cli::PlanArgs, output: OutputFormat) -> Result<(), Error> {
    let file = &args.spec.file;
    let loaded = spec::load_file(file)?;
    crate::ops::validate::print_warnings(&loaded.warnings, output);
    if !args.offline {
        // Planning is read-only: a store that cannot be opened or reached is not fatal,
        // but said; a state that is there but unreadable (wrong key, corrupt) is.
        let store = match crate::ops::apply::open_store(&loaded) {
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
        let loaded_state = match &store {
            Some(store) => Some(store.load().await),
            None => None,
        };
        if let Some(result) = loaded_state {
            match result {
                Ok(Some((doc, _))) if !doc.machines.is_empty() => {
                    if output == OutputFormat::Text && loaded.cluster.spec.provider.is_cloud() {
                        // What the cloud has next to what the cluster file wants.
                        match cloud_changes(&loaded).await {
                            Ok(changes) => println!(
                                "{}",
                                resources_text(loaded.cluster.spec.provider.name(), &changes)
                            ),
                            Err(e) => note(
                                output,
                                &format!(
                                    "cloud resources not planned: {}",
                                    crate::error::render_chain(&e).trim_start_matches("error: ")
                                ),
                            ),
                        }
                    }
                    return online(&loaded, &doc, args.playbook.as_deref(), output).await;
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
    Ok(())
}

/// The cloud resources `provision` would create or finds, asking the cloud (read-only).
async fn cloud_changes(c: &LoadedCluster) -> Result<Vec<crate::provider::ResourceChange>, Error> {
    let Some(p) = crate::phase::provision::open_cloud(c, String::new())? else {
        return Ok(Vec::new());
    };
    let wanted = p.planned(&crate::phase::provision::machine_specs(c));
    let existing = p.resources().await?;
    Ok(crate::provider::diff_resources(&wanted, &existing))
}

fn note(output: OutputFormat, text: &str) {
    if output == OutputFormat::Text {
        eprintln!("note: {text}");
    }
}

/// A plan against the hosts as they are: only what would change.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlinePlan {
    pub cluster: String,
    pub state_generation: u64,
    /// Phases that would change something, with what.
    pub phases: Vec<OnlinePhase>,
    /// Addon objects to create, update (with diffs) or delete (server-side dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<crate::addons::engine::ObjectChange>,
    /// Why the addons could not be planned (API unreachable, manifests missing, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addons_error: Option<String>,
}

/// The addons part of an online plan: through the first control-plane node's SSH
/// connection to the API, with the admin kubeconfig from the state.
async fn addon_changes(
    c: &LoadedCluster,
    doc: &crate::state::StateDocument,
    pool: &crate::transport::SshPool,
) -> Result<Vec<crate::addons::engine::ObjectChange>, String> {
    let wanted = crate::addons::manifest::wanted(c).map_err(|e| e.to_string())?;
    if wanted.is_empty() && doc.addons.is_empty() {
        return Ok(Vec::new());
    }
    let Some(kc) = doc.secrets.admin_kubeconfig.as_deref() else {
        return Err("the cluster has no admin kubeconfig yet (apply installs the addons after the control plane)".into());
    };
    let Some(first) = c.topology.first_control_plane() else {
        return Ok(Vec::new());
    };
    let session = pool
        .session(&first.address.to_string())
        .await
        .map_err(|e| e.to_string())?;
    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        crate::error::render_chain(e)
            .trim_start_matches("error: ")
            .to_string()
    }
    let (engine, _tunnel) =
        crate::addons::connect_through(c, first, session, kc, Default::default())
            .await
            .map_err(|e| chain(&e))?;
    let mut bundles =
        crate::addons::manifest::load(c, &crate::artifacts::Cache::default_location())
            .await
            .map_err(|e| chain(&e))?;
    engine.adapt(&mut bundles);
    engine
        .plan(&bundles, &doc.addons)
        .await
        .map_err(|e| chain(&e))
}

#[derive(Debug, Serialize)]
pub struct OnlinePhase {
    pub name: String,
    pub hosts: Vec<crate::phase::exec::ResolvedHost>,
}

async fn online(
    c: &LoadedCluster,
    doc: &crate::state::StateDocument,
    playbook_file: Option<&Path>,
    output: OutputFormat,
) -> Result<(), Error> {
    let (plan, failures) = against_hosts(c, doc, playbook_file).await?;
    match output {
        OutputFormat::Json => print_json(&plan)?,
        OutputFormat::Text => print!("{}", online_text(&plan)),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Phase(Box::new(phase::PhaseError::Hosts {
            phase: "plan".into(),
            errors: failures,
        })))
    }
}

/// The plan against the hosts as they are now (read-only), and the hosts that could not
/// be asked.
pub async fn against_hosts(
    c: &LoadedCluster,
    doc: &crate::state::StateDocument,
    playbook_file: Option<&Path>,
) -> Result<(OnlinePlan, Vec<crate::phase::exec::HostError>), Error> {
    use crate::phase::exec::{resolve_host, HostError, Runtime};
    use crate::transport::{MemoryHostKeyStore, ProgressMode, SshPool};
    use std::sync::Arc;
    let secrets = crate::ops::apply::render_secrets(doc)
        .ok_or_else(|| Error::Usage("the state has no join secrets yet: run apply".into()))?;
    let auth = crate::ops::apply::ssh_auth(c, doc)?;
    // Read-only: keys learned now are not saved.
    let host_keys = Arc::new(MemoryHostKeyStore::from_map(doc.host_keys.clone()));
    // One attempt per host: a plan reports a host it cannot reach, it does not wait for
    // it to boot.
    let mut cfg = crate::ops::apply::ssh_config(c, auth, &[])?;
    cfg.retry.window = std::time::Duration::ZERO;
    cfg.retry.auth_window = std::time::Duration::ZERO;
    let pool = Arc::new(SshPool::new(cfg, host_keys.clone()));
    let rt = Runtime {
        pool: pool.clone(),
        host_keys,
        concurrency: 10,
        progress: ProgressMode::Hidden,
        verbose: false,
    };
    let registry = phase::registry();
    let names: Vec<&str> = registry.iter().map(|p| p.name()).collect();
    let pb = playbook::load(playbook_file, &names)?;
    let files = render::render_all(c, &secrets)?;
    let mut phases = Vec::new();
    let mut failures: Vec<HostError> = Vec::new();
    for r in &pb.phases {
        let Some(ph) = registry.iter().find(|p| p.name() == r.name) else {
            continue;
        };
        let plan = phase::plan_phase(ph.as_ref(), r, c, &files, &secrets);
        let mut hosts = Vec::new();
        for hp in &plan.hosts {
            // A host that already failed is not asked again for the next phases.
            if failures.iter().any(|e| e.host() == Some(hp.host.as_str())) {
                continue;
            }
            match resolve_host(&rt, c, &files, &secrets, hp).await {
                Ok(h) if h.is_empty() => {}
                Ok(h) => hosts.push(h),
                Err(e) => failures.push(e),
            }
        }
        if !hosts.is_empty() {
            phases.push(OnlinePhase {
                name: plan.name.clone(),
                hosts,
            });
        }
    }
    let (addons, addons_error) = match addon_changes(c, doc, &pool).await {
        Ok(a) => (a, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    pool.close_all().await;
    Ok((
        OnlinePlan {
            cluster: c.name().to_string(),
            state_generation: doc.generation,
            phases,
            addons,
            addons_error,
        },
        failures,
    ))
}

pub fn online_text(p: &OnlinePlan) -> String {
    use crate::phase::exec::FileChange;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Plan for cluster `{}` against its hosts (state generation {}):",
        p.cluster, p.state_generation
    );
    let addons_change = p.addons.iter().any(|a| a.action != "unchanged");
    if p.phases.is_empty() && !addons_change && p.addons_error.is_none() {
        o.push_str("No changes: the hosts and addons match the cluster file.\n");
        return o;
    }
    if addons_change {
        let _ = writeln!(o, "\nAddons:");
        o.push_str(&crate::ops::addons::plan_text(&p.addons));
    }
    if let Some(e) = &p.addons_error {
        let _ = writeln!(o, "\nAddons not planned: {e}");
    }
    if p.phases.is_empty() {
        o.push_str("\nNo host changes: the hosts match the cluster file.\n");
        return o;
    }
    for ph in &p.phases {
        let _ = writeln!(o, "\nPhase {}:", ph.name);
        for h in &ph.hosts {
            let _ = writeln!(o, "  {}", h.host);
            for f in &h.files {
                match &f.change {
                    FileChange::Create => {
                        let _ = writeln!(o, "    create {}", f.path);
                    }
                    FileChange::Update { diff } if diff.is_empty() => {
                        let _ = writeln!(o, "    update {} (holds secrets: no diff shown)", f.path);
                    }
                    FileChange::Update { diff } => {
                        let _ = writeln!(o, "    update {}", f.path);
                        for line in diff.lines() {
                            let _ = writeln!(o, "      {line}");
                        }
                    }
                }
            }
            for cmd in &h.commands {
                let _ = writeln!(o, "    run    {cmd}");
            }
        }
    }
    o
}

/// The plan as a person reads it.
pub fn text(plan: &Plan, c: &LoadedCluster, show_content: bool) -> String {
    let mut o = String::new();
    let lb = match &c.topology.endpoint {
        Endpoint::Vip { lb_hosts, .. } => format!("keepalived VIP on {}", lb_hosts.join(", ")),
        Endpoint::External { .. } => "external load balancer".into(),
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
