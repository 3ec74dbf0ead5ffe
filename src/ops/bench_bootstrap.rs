//! `kubeforge bench bootstrap`: where a bootstrap's time goes, against bare kubeadm.
//!
//! Two rounds on fresh local machines of the same topology (docker provider, the
//! Kubernetes mirror), each prepared the same way by `kubeforge apply --phases
//! provision,connect,prepare-hosts,load-balancer` (machines, binaries, images,
//! containerd, kubelet, HAProxy + keepalived), then bootstrapped:
//!
//! - **bare kubeadm** (the peer, first): the same kubeadm commands with the same rendered
//!   configurations, run back to back over SSH with nothing between them: `kubeadm init`
//!   on the first control plane, the other control planes joined one at a time, the
//!   workers at once, the pod network started on every node, then `kubectl get nodes`
//!   every second until every Node is Ready.
//! - **kubeforge**: `kubeforge apply` of the whole cluster file (the preparation phases
//!   find nothing to do), its phase times from `-o json`.
//!
//! Each round ends with `kubeforge destroy`. What kubeforge adds over the peer is its own
//! share: the detached kubeadm and its marker, the facts and state it records, and its
//! gates (every apiserver's /readyz, etcd members healthy, a Service programmed by every
//! kube-proxy).

use super::bench::{measurements, usage, Measurement};
use crate::cli::BootstrapBenchArgs;
use crate::error::Error;
use crate::kube::{self, Kubeadm};
use crate::ops::session::{with_session, Session, SessionOptions};
use crate::output::OutputFormat;
use crate::phase::exec;
use crate::render::{self, FileGroup, Secrets};
use crate::spec::Host;
use crate::transport::{Transport, UploadTarget};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The preparation both rounds share.
const PREPARE: &str = "provision,connect,prepare-hosts,load-balancer";
/// How long the peer waits for every Node to be Ready.
const READY_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapReport {
    pub control_planes: usize,
    pub workers: usize,
    pub load_balancers: usize,
    pub kubernetes_version: String,
    /// The shared preparation (`apply --phases provision,...,load-balancer`), per round.
    pub prepare_seconds: Vec<(String, f64)>,
    /// Each stage: the peer's time, kubeforge's, the ratio (kubeforge / bare kubeadm).
    pub stages: Vec<Stage>,
    /// kubeforge's phase times (the whole `apply`).
    pub kubeforge_phases: Vec<(String, f64)>,
    /// The measurements as in the other benchmarks (ratios to kubeforge).
    pub measurements: Vec<Measurement>,
    pub load_before: String,
    pub load_after: String,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    pub work: String,
    pub bare_kubeadm: f64,
    /// kubeforge's phases that do this work.
    pub kubeforge_phases: String,
    pub kubeforge: f64,
    /// kubeforge / bare kubeadm.
    pub ratio: f64,
}

/// The stages compared, and the kubeforge phases that do each one's work.
const STAGES: [(&str, &[&str]); 4] = [
    ("kubeadm init", &["init-control-plane"]),
    ("control-plane joins", &["join-control-plane"]),
    ("worker joins", &["join-workers"]),
    (
        "pod network, every node Ready",
        &["kubeconfig", "cni", "wait-ready"],
    ),
];

pub fn print_text(r: &BootstrapReport) {
    println!(
        "bootstrap benchmark: {} control planes, {} workers, {} load balancers, Kubernetes {}",
        r.control_planes, r.workers, r.load_balancers, r.kubernetes_version
    );
    println!(
        "load average before: {}; after: {}",
        r.load_before, r.load_after
    );
    for (round, s) in &r.prepare_seconds {
        println!(
            "preparation (machines, binaries, images, load balancers) before {round}: {s:.1} s"
        );
    }
    println!(
        "{:<32} {:>13} {:>10} {:>8}  kubeforge phases",
        "work", "bare kubeadm", "kubeforge", "ratio"
    );
    for s in &r.stages {
        println!(
            "{:<32} {:>11.1} s {:>8.1} s {:>7.2}x  {}",
            s.work, s.bare_kubeadm, s.kubeforge, s.ratio, s.kubeforge_phases
        );
    }
    println!(
        "kubeforge apply, every phase: {}",
        r.kubeforge_phases
            .iter()
            .map(|(p, s)| format!("{p} {s:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in &r.notes {
        println!("note: {n}");
    }
}

pub async fn run(a: &BootstrapBenchArgs) -> Result<BootstrapReport, Error> {
    if a.control_planes != 1 && a.control_planes != 3 {
        return Err(usage("--control-planes must be 1 or 3"));
    }
    if a.workers > 10 || a.load_balancers > 3 {
        return Err(usage(
            "--workers must be at most 10 and --load-balancers at most 3 (the machines share this host's cores)",
        ));
    }
    if crate::spec::validate::parse_kubernetes_version(&a.kubernetes_version).is_none() {
        return Err(usage(format!(
            "--kubernetes-version `{}` is not a Kubernetes version like v1.20.2",
            a.kubernetes_version
        )));
    }
    let mirror = std::path::absolute(&a.mirror)
        .map_err(|e| usage(format!("--mirror {}: {e}", a.mirror.display())))?;
    if !mirror.join(&a.kubernetes_version).is_dir() {
        return Err(usage(format!(
            "--mirror {}: no {} in it (scripts/up.sh builds the mirror and links it at .kubeforge/mirror)",
            mirror.display(),
            a.kubernetes_version
        )));
    }
    vip(&a.subnet)?;
    let dir = super::bench::tempdir()?;
    let result = rounds(a, &dir, &mirror).await;
    if result.is_err() && !a.keep {
        // Whatever round failed leaves its machines: they go.
        let _ = kubeforge(&dir, &["destroy", "-f", "cluster.yaml", "--yes"]);
    }
    if a.keep {
        say(&format!(
            "kept the machines and {} (cluster.yaml, its state and key): `kubeforge destroy -f {}/cluster.yaml` removes them",
            dir.display(),
            dir.display()
        ));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The VIP: the .254 of the subnet.
fn vip(subnet: &ipnet::IpNet) -> Result<std::net::Ipv4Addr, Error> {
    match subnet.trunc() {
        ipnet::IpNet::V4(v4) if v4.prefix_len() <= 24 => {
            Ok(std::net::Ipv4Addr::from(u32::from(v4.network()) + 254))
        }
        _ => Err(usage("--subnet must be an IPv4 network of /24 or larger")),
    }
}

/// The cluster file of the benchmark, its state next to it, encrypted with its own key.
fn write_cluster(a: &BootstrapBenchArgs, dir: &Path, mirror: &Path) -> Result<PathBuf, Error> {
    let net = a.subnet.trunc();
    let vip = vip(&a.subnet)?;
    let mirror = mirror
        .to_str()
        .ok_or_else(|| usage("--mirror must be valid UTF-8"))?;
    if mirror.contains(['"', '\\', '\n']) {
        return Err(usage(
            "--mirror: the path has a quote, backslash or newline",
        ));
    }
    let path = dir.join("cluster.yaml");
    let text = format!(
        "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: kfboot
spec:
  kubernetesVersion: {version}
  provider:
    docker:
      subnet: {net}
  nodePools:
    controlPlane: {{count: {cps}}}
    workers: {{count: {workers}}}
    loadBalancers: {{count: {lbs}}}
  networking:
    podSubnet: 10.244.0.0/16
    serviceSubnet: 10.96.0.0/12
    cni: bridge
  loadBalancer:
    type: haproxy-keepalived
    vip: {vip}
    port: 6443
  artifacts:
    mirror: \"{mirror}\"
  kubeadm:
    skipPhases: [preflight, addon/coredns]
  state:
    encryption: {{keyFile: state.agekey}}
",
        version = a.kubernetes_version,
        cps = a.control_planes,
        workers = a.workers,
        lbs = a.load_balancers,
    );
    std::fs::write(&path, text).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Run this kubeforge binary in `dir`; its stdout, or an error with its stderr's tail.
fn kubeforge(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| usage(format!("cannot find this kubeforge binary: {e}")))?;
    let out = Command::new(&exe)
        .args(args)
        .current_dir(dir)
        .env_remove("KUBEFORGE_STATE_KEY_FILE")
        .env_remove("KUBEFORGE_STATE_KEY")
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .output()
        .map_err(|e| usage(format!("cannot run {}: {e}", exe.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(usage(format!(
            "`kubeforge {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubeforge apply --phases` of the shared preparation; its time.
fn prepare(dir: &Path) -> Result<f64, Error> {
    let t = Instant::now();
    kubeforge(
        dir,
        &["apply", "-f", "cluster.yaml", "--yes", "--phases", PREPARE],
    )?;
    Ok(t.elapsed().as_secs_f64())
}

fn say(msg: &str) {
    eprintln!("bench bootstrap: {msg}");
}

async fn rounds(
    a: &BootstrapBenchArgs,
    dir: &Path,
    mirror: &Path,
) -> Result<BootstrapReport, Error> {
    let file = write_cluster(a, dir, mirror)?;
    kubeforge(dir, &["state", "keygen", "--out", "state.agekey"])?;
    let load_before = super::bench_converge::load_average();
    let _ = kubeforge(dir, &["destroy", "-f", "cluster.yaml", "--yes"]);

    say("round 1: preparing the machines");
    let prep_peer = prepare(dir)?;
    say(&format!(
        "round 1: prepared in {prep_peer:.1} s; bare kubeadm"
    ));
    let peer = with_session(
        &file,
        SessionOptions {
            provider: false,
            ..SessionOptions::locked(OutputFormat::Json)
        },
        |s| Box::pin(async move { bare_kubeadm(s).await }),
    )
    .await?;
    for (stage, secs) in &peer {
        say(&format!("round 1: {stage} {secs:.1} s"));
    }
    kubeforge(dir, &["destroy", "-f", "cluster.yaml", "--yes"])?;

    say("round 2: preparing the machines");
    let prep_ours = prepare(dir)?;
    say(&format!(
        "round 2: prepared in {prep_ours:.1} s; kubeforge apply"
    ));
    let t = Instant::now();
    let json = kubeforge(dir, &["apply", "-f", "cluster.yaml", "--yes", "-o", "json"])?;
    let whole = t.elapsed().as_secs_f64();
    let phases = phase_times(&json)?;
    let phase_notes = phase_notes(&json);
    say(&format!("round 2: kubeforge apply {whole:.1} s"));
    if !a.keep {
        kubeforge(dir, &["destroy", "-f", "cluster.yaml", "--yes"])?;
    }

    let mut stages = Vec::new();
    for (work, names) in STAGES {
        let bare = peer
            .iter()
            .find(|(s, _)| s == work)
            .map(|(_, t)| *t)
            .unwrap_or(0.0);
        let ours: f64 = phases
            .iter()
            .filter(|(p, _)| names.contains(&p.as_str()))
            .map(|(_, t)| *t)
            .sum();
        stages.push(Stage {
            work: work.to_string(),
            bare_kubeadm: bare,
            kubeforge_phases: names.join(" + "),
            kubeforge: ours,
            ratio: ratio(ours, bare),
        });
    }
    let bare_total: f64 = peer.iter().map(|(_, t)| t).sum();
    let ours_total: f64 = stages.iter().map(|s| s.kubeforge).sum();
    stages.push(Stage {
        work: "bootstrap (the stages above)".into(),
        bare_kubeadm: bare_total,
        kubeforge_phases: "init-control-plane .. wait-ready".into(),
        kubeforge: ours_total,
        ratio: ratio(ours_total, bare_total),
    });
    stages.push(Stage {
        work: "whole apply after the preparation".into(),
        bare_kubeadm: bare_total,
        kubeforge_phases: "every phase, preview and state included".into(),
        kubeforge: whole,
        ratio: ratio(whole, bare_total),
    });
    let rows: Vec<(String, String, f64)> = stages
        .iter()
        .flat_map(|s| {
            [
                (s.work.clone(), "kubeforge".to_string(), s.kubeforge),
                (s.work.clone(), "bare kubeadm".to_string(), s.bare_kubeadm),
            ]
        })
        .collect();
    let measurements = measurements(&rows);
    Ok(BootstrapReport {
        control_planes: a.control_planes,
        workers: a.workers,
        load_balancers: a.load_balancers,
        kubernetes_version: a.kubernetes_version.clone(),
        prepare_seconds: vec![
            ("bare kubeadm".into(), prep_peer),
            ("kubeforge".into(), prep_ours),
        ],
        stages,
        kubeforge_phases: phases,
        measurements,
        load_before,
        load_after: super::bench_converge::load_average(),
        notes: [
            "the two rounds run one after the other on fresh machines of the same topology; the preparation (machines, binaries, images, containerd, kubelet, load balancers) is kubeforge's in both".into(),
            "bare kubeadm runs the same commands with the same configurations, back to back over one SSH connection per host, and stops when every Node is Ready; kubeforge's gates go further (every apiserver ready, etcd healthy, a Service programmed by every kube-proxy) and it records the CA, the shared PKI and the admin kubeconfig in the encrypted state".into(),
        ]
        .into_iter()
        .chain(phase_notes)
        .collect(),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// The phases of an `apply -o json` report (at its top, or under `run` when the apply
/// ran an upgrade).
fn report_phases(json: &str) -> Result<Vec<serde_json::Value>, Error> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| usage(format!("`apply -o json` printed no JSON report: {e}")))?;
    v["phases"]
        .as_array()
        .or_else(|| v["run"]["phases"].as_array())
        .cloned()
        .ok_or_else(|| usage("`apply -o json`: no phases in the report"))
}

/// The phase times of an `apply -o json` report.
fn phase_times(json: &str) -> Result<Vec<(String, f64)>, Error> {
    Ok(report_phases(json)?
        .iter()
        .filter_map(|p| Some((p["phase"].as_str()?.to_string(), p["seconds"].as_f64()?)))
        .collect())
}

/// What kubeforge's phases reported (gates that had to repair something, addons), as
/// `kubeforge <phase>: <note>`.
fn phase_notes(json: &str) -> Vec<String> {
    report_phases(json)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| {
            let name = p["phase"].as_str().unwrap_or("?").to_string();
            p["notes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |n| Some(format!("kubeforge {name}: {}", n.as_str()?)))
        })
        .collect()
}

/// Upload the rendered files of `group` for `h`.
async fn upload(
    t: &dyn Transport,
    files: &[(FileGroup, render::RenderedFile)],
    h: &Host,
    group: FileGroup,
) -> Result<(), Error> {
    let items = files
        .iter()
        .filter(|(g, f)| *g == group && f.host == h.name)
        .map(|(_, f)| {
            (
                f.content.clone().into(),
                UploadTarget::new(f.path.clone(), f.mode),
            )
        })
        .collect();
    t.upload_all(items)
        .await
        .map_err(|e| usage(format!("{}: {e}", h.name)))?;
    Ok(())
}

/// The peer: kubeforge's kubeadm commands and rendered files, back to back.
async fn bare_kubeadm(s: &Session) -> Result<Vec<(String, f64)>, Error> {
    let rt = s.rt()?;
    let c = &s.cluster;
    let host_err = |e: exec::HostError| usage(e.to_string());
    let mut secrets: Secrets = s
        .secrets()
        .await
        .ok_or_else(|| usage("the state has no bootstrap token after the preparation"))?;
    let kubeadm = Kubeadm::of(c);
    let first = c
        .topology
        .first_control_plane()
        .ok_or_else(|| usage("no control-plane node"))?;
    let mut times = Vec::new();

    let files = render::render_all(c, &secrets)?;
    let t = exec::session(rt, first).await.map_err(host_err)?;
    upload(t.as_ref(), &files, first, FileGroup::Kubeadm).await?;
    let clock = Instant::now();
    exec::run(t.as_ref(), &first.name, &kubeadm.init(), &secrets, false)
        .await
        .map_err(host_err)?;
    times.push(("kubeadm init".to_string(), clock.elapsed().as_secs_f64()));

    // The joins need the CA's hash, known now.
    let pem = exec::download(t.as_ref(), &first.name, kube::CA_CERT)
        .await
        .map_err(host_err)?;
    secrets.ca_cert_hash = Some(
        crate::phase::init::ca_cert_hash(&pem)
            .map_err(|e| usage(format!("{}: {e}", kube::CA_CERT)))?,
    );
    let files = render::render_all(c, &secrets)?;
    let clock = Instant::now();
    for h in c.topology.control_planes().into_iter().skip(1) {
        let t = exec::session(rt, h).await.map_err(host_err)?;
        upload(t.as_ref(), &files, h, FileGroup::Kubeadm).await?;
        exec::run(t.as_ref(), &h.name, &kubeadm.join(true), &secrets, false)
            .await
            .map_err(host_err)?;
    }
    times.push((
        "control-plane joins".to_string(),
        clock.elapsed().as_secs_f64(),
    ));

    let clock = Instant::now();
    let joins = c.topology.workers().into_iter().map(|h| {
        let (files, secrets, kubeadm) = (&files, &secrets, &kubeadm);
        async move {
            let t = exec::session(rt, h).await.map_err(host_err)?;
            upload(t.as_ref(), files, h, FileGroup::Kubeadm).await?;
            exec::run(t.as_ref(), &h.name, &kubeadm.join(false), secrets, false)
                .await
                .map_err(host_err)
        }
    });
    for r in futures::future::join_all(joins).await {
        r?;
    }
    times.push(("worker joins".to_string(), clock.elapsed().as_secs_f64()));

    let clock = Instant::now();
    let unit = render::views::PODNET_UNIT;
    let podnet = c.topology.kubernetes_nodes().into_iter().map(|h| {
        let (files, secrets) = (&files, &secrets);
        async move {
            let t = exec::session(rt, h).await.map_err(host_err)?;
            upload(t.as_ref(), files, h, FileGroup::Cni).await?;
            exec::run(
                t.as_ref(),
                &h.name,
                &format!(
                    "systemctl daemon-reload && systemctl enable {unit} && systemctl restart {unit}"
                ),
                secrets,
                false,
            )
            .await
            .map_err(host_err)
        }
    });
    for r in futures::future::join_all(podnet).await {
        r?;
    }
    let want = c.topology.kubernetes_nodes().len();
    loop {
        let out = t
            .exec(&format!("{} get nodes -o json", kube::kubectl()))
            .await
            .map_err(|e| usage(format!("{}: {e}", first.name)))?;
        if out.success() {
            let (ready, _) = kube::ready_nodes(&out.stdout).map_err(usage)?;
            if ready.len() >= want {
                break;
            }
        }
        if clock.elapsed() > READY_WAIT {
            return Err(usage(format!(
                "bare kubeadm: not every Node Ready after {}s",
                READY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.push((
        "pod network, every node Ready".to_string(),
        clock.elapsed().as_secs_f64(),
    ));
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_times_are_read_from_the_apply_report() {
        let json = r#"{"cluster":"kfboot","phases":[{"phase":"init-control-plane","seconds":28.5},{"phase":"cni","seconds":2.0}]}"#;
        assert_eq!(
            phase_times(json).unwrap(),
            vec![
                ("init-control-plane".to_string(), 28.5),
                ("cni".to_string(), 2.0)
            ]
        );
        let nested = r#"{"run":{"phases":[{"phase":"cni","seconds":1.5}]}}"#;
        assert_eq!(phase_times(nested).unwrap(), vec![("cni".to_string(), 1.5)]);
        assert!(phase_times("not json").is_err());
        assert!(phase_times("{}").is_err());
        let noted = r#"{"phases":[{"phase":"wait-ready","seconds":48.0,"notes":["kube-proxy replaced"]},{"phase":"cni","seconds":1.0}]}"#;
        assert_eq!(
            phase_notes(noted),
            vec!["kubeforge wait-ready: kube-proxy replaced".to_string()]
        );
    }
}
