//! `kubeforge certs check|renew`. `check` reads the certificates themselves on every
//! control plane (kubeadm 1.20's check-expiration has no JSON): the PKI files, the
//! client certificates in kubeadm's kubeconfigs and the kubelet's; exit 8 when one
//! expires within 30 days. `renew` runs the certs-renew playbook (one control plane at a
//! time, out of the load balancers, health-gated).

use crate::cli::{CertsArgs, CertsCommand, CertsRenewArgs, SpecArgs};
use crate::error::Error;
use crate::ops::runner::{run_playbook, RunOptions, RunReport};
use crate::ops::session::{with_session, SessionOptions};
use crate::output::{print_json, OutputFormat};
use crate::transport::Transport;
use crate::{phase, playbook};
use serde::Serialize;

/// A certificate expiring within this many days makes `certs check` exit 8.
pub const RENEW_WITHIN_DAYS: i64 = 30;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Cert {
    node: String,
    name: String,
    expires: String,
    days_left: i64,
    ca: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckReport {
    cluster: String,
    certificates: Vec<Cert>,
    /// Control planes that did not answer.
    unreachable: Vec<String>,
    /// Certificates expiring within 30 days (or expired).
    due: usize,
}

/// `apiserver.crt|Nov 29 07:14:00 2027 GMT` lines into certificates of `node`.
fn parse(node: &str, out: &str, now: chrono::DateTime<chrono::Utc>) -> Vec<Cert> {
    out.lines()
        .filter_map(|l| {
            let (name, date) = l.split_once('|')?;
            let t = phase::certs::parse_enddate(date)?;
            Some(Cert {
                node: node.to_string(),
                name: name.trim().to_string(),
                expires: t.to_rfc3339(),
                days_left: (t - now).num_days(),
                ca: name.ends_with("ca.crt"),
            })
        })
        .collect()
}

pub async fn run(args: CertsArgs, output: OutputFormat, verbose: bool) -> Result<u8, Error> {
    match args.command {
        CertsCommand::Check(spec) => check(spec, output).await,
        CertsCommand::Renew(a) => renew(a, output, verbose).await.map(|()| 0),
    }
}

async fn check(spec: SpecArgs, output: OutputFormat) -> Result<u8, Error> {
    let report = with_session(&spec.file, SessionOptions::read_only(output), |s| {
        Box::pin(async move {
            let rt = s.rt()?;
            let now = chrono::Utc::now();
            let mut certificates = Vec::new();
            let mut unreachable = Vec::new();
            for h in s.cluster.topology.control_planes() {
                let out = match crate::phase::exec::session(rt, h).await {
                    Ok(t) => t.exec(phase::certs::CHECK_COMMAND).await.ok(),
                    Err(_) => None,
                };
                match out {
                    Some(o) if o.success() => certificates.extend(parse(&h.name, &o.stdout, now)),
                    _ => unreachable.push(h.name.clone()),
                }
            }
            let due = certificates
                .iter()
                .filter(|c| c.days_left < RENEW_WITHIN_DAYS)
                .count();
            Ok(CheckReport {
                cluster: s.cluster.name().to_string(),
                certificates,
                unreachable,
                due,
            })
        })
    })
    .await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            println!(
                "{:<24} {:<34} {:<27} {:>6}",
                "NODE", "CERTIFICATE", "EXPIRES", "DAYS"
            );
            for c in &report.certificates {
                println!(
                    "{:<24} {:<34} {:<27} {:>6}{}",
                    c.node,
                    if c.ca {
                        format!("{} (CA)", c.name)
                    } else {
                        c.name.clone()
                    },
                    c.expires,
                    c.days_left,
                    if c.days_left < RENEW_WITHIN_DAYS {
                        "  ! renew (`kubeforge certs renew`)"
                    } else {
                        ""
                    }
                );
            }
            for u in &report.unreachable {
                eprintln!("warning: {u} did not answer: its certificates are not listed");
            }
        }
    }
    Ok(if report.due > 0 || report.certificates.is_empty() {
        crate::ops::status::STATUS_DEGRADED
    } else {
        0
    })
}

async fn renew(args: CertsRenewArgs, output: OutputFormat, verbose: bool) -> Result<(), Error> {
    let pb = playbook::named("certs-renew", &phase::names())?;
    let opts = SessionOptions {
        ensure_secrets: true,
        concurrency: 10,
        verbose,
        ..SessionOptions::locked(output)
    };
    let run = RunOptions {
        yes: args.yes,
        question: "Renew the control-plane certificates with this plan?".into(),
        addons: Default::default(),
        upgrade: Default::default(),
        restore: Default::default(),
    };
    let report: RunReport = with_session(&args.spec.file, opts, |s| {
        Box::pin(async move { run_playbook(s, &pb, &run).await })
    })
    .await?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => println!(
            "cluster `{}`: control-plane certificates renewed ({} phases, state generation {})",
            report.cluster,
            report.phases.len(),
            report.generation
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_lines_become_certificates() {
        let now = chrono::Utc::now();
        let c = super::parse(
            "cp-1",
            "apiserver.crt|Nov 29 07:14:00 2099 GMT\netcd/ca.crt|Nov 26 07:14:00 2099 GMT\nadmin.conf|Jan  1 00:00:00 2000 GMT\nnoise\n",
            now,
        );
        assert_eq!(c.len(), 3);
        assert!(!c[0].ca && c[1].ca && c[2].days_left < 0);
        assert_eq!(c[2].name, "admin.conf");
    }
}
