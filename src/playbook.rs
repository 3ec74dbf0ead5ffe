//! Playbooks: ordered phases with host selectors, read from `playbooks/*.yaml`
//! (embedded) or a file given with `--playbook`.

use crate::spec::decode;
use crate::spec::error::Reporter;
use crate::spec::position::Positions;
use crate::spec::{Host, SpecError, SpecErrors, Topology, API_VERSION};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const BOOTSTRAP: &str = include_str!("../playbooks/bootstrap.yaml");
pub const RECOVER: &str = include_str!("../playbooks/recover.yaml");
pub const UPGRADE: &str = include_str!("../playbooks/upgrade.yaml");
pub const RESTORE: &str = include_str!("../playbooks/restore.yaml");
pub const CERTS_RENEW: &str = include_str!("../playbooks/certs-renew.yaml");
pub const RESET: &str = include_str!("../playbooks/reset.yaml");

/// The playbooks embedded in the binary, by name.
pub const NAMED: &[(&str, &str)] = &[
    ("bootstrap", BOOTSTRAP),
    ("recover", RECOVER),
    ("restore", RESTORE),
    ("certs-renew", CERTS_RENEW),
    ("upgrade", UPGRADE),
    ("reset", RESET),
];

/// An embedded playbook by name.
pub fn named(name: &str, known: &[&str]) -> Result<Playbook, SpecErrors> {
    let text = NAMED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| SpecError {
            file: Path::new("playbooks").join(format!("{name}.yaml")),
            line: None,
            column: None,
            field: String::new(),
            message: format!(
                "no embedded playbook `{name}` (embedded: {})",
                NAMED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })?;
    parse(
        text,
        &Path::new("playbooks").join(format!("{name}.yaml")),
        known,
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Playbook {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub phases: Vec<PhaseRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PhaseRef {
    pub name: String,
    pub hosts: Selector,
    #[serde(default)]
    pub strategy: Strategy,
}

/// Which hosts a phase runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// Runs on the operator's machine only (provider calls, API waits).
    None,
    All,
    KubernetesNodes,
    ControlPlanes,
    FirstControlPlane,
    OtherControlPlanes,
    Workers,
    LoadBalancers,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Hosts in parallel (bounded by --concurrency).
    #[default]
    Parallel,
    /// One host at a time, each health-gated.
    Serial,
}

impl Selector {
    pub fn select<'a>(&self, t: &'a Topology) -> Vec<&'a Host> {
        self.select_with_init(t, t.first_control_plane())
    }

    /// The hosts, with `init` as the first control-plane node (see
    /// `facts::ClusterFacts::init_node`).
    pub fn select_with_init<'a>(&self, t: &'a Topology, init: Option<&'a Host>) -> Vec<&'a Host> {
        let first = init.map(|h| h.name.clone());
        match self {
            Selector::None => Vec::new(),
            Selector::All => t.hosts.iter().collect(),
            Selector::KubernetesNodes => t.kubernetes_nodes(),
            Selector::ControlPlanes => t.control_planes(),
            Selector::FirstControlPlane => init.into_iter().collect(),
            Selector::OtherControlPlanes => t
                .control_planes()
                .into_iter()
                .filter(|h| Some(&h.name) != first.as_ref())
                .collect(),
            Selector::Workers => t.workers(),
            Selector::LoadBalancers => t.lb_hosts(),
        }
    }
}

/// Parse a playbook; `known` lists the phase names the binary implements.
pub fn parse(text: &str, file: &Path, known: &[&str]) -> Result<Playbook, SpecErrors> {
    let value = decode::parse_yaml(text, file)?;
    let positions = Positions::of(text);
    let mut rep = Reporter::new(file, &positions);
    let pb: Option<Playbook> = decode::decode(value, &mut rep);
    let Some(pb) = pb else {
        return Err(SpecErrors { errors: rep.errors });
    };
    if pb.api_version != API_VERSION {
        rep.error(
            "apiVersion",
            format!("expected `{API_VERSION}`, found `{}`", pb.api_version),
        );
    }
    if pb.kind != "Playbook" {
        rep.error("kind", format!("expected `Playbook`, found `{}`", pb.kind));
    }
    for (i, p) in pb.phases.iter().enumerate() {
        if !known.contains(&p.name.as_str()) {
            rep.error(
                &format!("phases[{i}].name"),
                format!(
                    "unknown phase `{}`, expected one of: {}",
                    p.name,
                    known.join(", ")
                ),
            );
        }
    }
    if rep.errors.is_empty() {
        Ok(pb)
    } else {
        Err(SpecErrors { errors: rep.errors })
    }
}

/// Names `--phases` accepts besides the phase names.
const PHASE_ALIASES: &[(&str, &str)] = &[("machines", "provision")];

/// Keep the playbook phases `--phases` names (all when it is empty); an unknown name is
/// a usage error listing the known ones.
pub fn select_phases(pb: &mut Playbook, wanted: &[String]) -> Result<(), crate::error::Error> {
    if wanted.is_empty() {
        return Ok(());
    }
    let mut names = Vec::new();
    for w in wanted {
        let w = w.trim();
        let name = PHASE_ALIASES
            .iter()
            .find(|(a, _)| *a == w)
            .map(|(_, n)| *n)
            .unwrap_or(w);
        if !pb.phases.iter().any(|p| p.name == name) {
            let known: Vec<&str> = pb.phases.iter().map(|p| p.name.as_str()).collect();
            return Err(crate::error::Error::Usage(format!(
                "--phases: no phase `{w}` in playbook {} (phases: {}; `machines` = provision)",
                pb.name,
                known.join(", ")
            )));
        }
        names.push(name.to_string());
    }
    pb.phases.retain(|p| names.contains(&p.name));
    Ok(())
}

/// The embedded bootstrap playbook, or the one in `file`.
pub fn load(file: Option<&Path>, known: &[&str]) -> Result<Playbook, SpecErrors> {
    match file {
        None => named("bootstrap", known),
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| SpecError {
                file: f.to_path_buf(),
                line: None,
                column: None,
                field: String::new(),
                message: format!("cannot read the playbook: {e}"),
            })?;
            parse(&text, f, known)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_embedded_playbook_parses_against_the_phases_of_this_binary() {
        let known = crate::phase::names();
        for (name, _) in super::NAMED {
            let pb = super::named(name, &known).unwrap();
            assert_eq!(pb.name, *name);
        }
        assert!(super::named("nope", &known).is_err());
    }
}
