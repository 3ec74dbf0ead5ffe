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
        Provider::Docker(_) => "ensure",
        Provider::Static(_) => "use",
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
        phases,
        warnings: c.warnings.clone(),
    })
}

pub fn run(file: &Path, show_content: bool, output: OutputFormat) -> Result<(), Error> {
    let loaded = spec::load_file(file)?;
    crate::ops::validate::print_warnings(&loaded.warnings, output);
    // Offline: no state to read secrets from, so the plan is made with fresh ones, and
    // shows them redacted like any plan.
    let secrets = Secrets::generate();
    let plan = build(&loaded, &secrets, None)?;
    match output {
        OutputFormat::Json => print_json(&plan)?,
        OutputFormat::Text => print!("{}", text(&plan, &loaded, show_content)),
    }
    Ok(())
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
    let total = plan.phases.len();
    for (i, p) in plan.phases.iter().enumerate() {
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
        let _ = writeln!(
            o,
            "\nPhase {}/{total} {}: {} [{hosts}]",
            i + 1,
            p.name,
            p.description
        );
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
    }
    o
}
