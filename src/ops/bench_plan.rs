//! `kubeforge bench plan`: what kubeforge does before it touches a host, on a large
//! inventory (1,000 hosts by default): `validate` and `plan --offline` of a static
//! cluster, each as its own process (wall time and peak RSS from `wait4`), against
//! Ansible parsing an inventory of the same hosts and listing a playbook of the same
//! shape (`ansible-playbook --list-hosts --list-tasks`: no connection either) in the
//! same run. Nothing is started; everything is written to a scratch directory.

use super::bench::{measurements, tempdir, usage, which, Measurement};
use crate::cli::PlanBenchArgs;
use crate::error::Error;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanBenchReport {
    pub hosts: usize,
    pub rounds: usize,
    /// Median per command.
    pub measurements: Vec<Measurement>,
    /// Peak resident memory per command (MiB), the largest of the rounds.
    pub peak_rss_mib: Vec<(String, String, f64)>,
    pub load_average: String,
    pub notes: Vec<String>,
}

/// The cluster file and inventories for `n` hosts: 3 control planes, 3 load balancers,
/// the rest workers, on one /16.
fn write_inputs(dir: &Path, n: usize) -> Result<(), Error> {
    let w = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|source| Error::Write {
            path: dir.join(name),
            source,
        })
    };
    let workers = n.saturating_sub(6);
    let addr = |i: usize| format!("10.1.{}.{}", i / 200, 10 + i % 200);
    let mut yaml = String::from("apiVersion: kubeforge.dev/v1alpha1\nkind: Inventory\nhosts:\n");
    let mut ini = String::new();
    let mut groups: Vec<(&str, Vec<String>)> = vec![
        ("control_plane", vec![]),
        ("load_balancers", vec![]),
        ("workers", vec![]),
    ];
    for i in 0..n {
        let (name, role, g) = match i {
            0..=2 => (format!("cp-{}", i + 1), "controlPlane", 0),
            3..=5 => (format!("lb-{}", i - 2), "loadBalancer", 1),
            _ => (format!("worker-{}", i - 5), "worker", 2),
        };
        yaml.push_str(&format!(
            "  - {{name: {name}, address: {}, roles: [{role}]}}\n",
            addr(i)
        ));
        groups[g].1.push(format!("{name} ansible_host={}", addr(i)));
    }
    for (g, lines) in &groups {
        ini.push_str(&format!("[{g}]\n{}\n\n", lines.join("\n")));
    }
    w("hosts.yaml", yaml)?;
    w("hosts.ini", ini)?;
    w("id_ed25519", String::new())?;
    w(
        "cluster.yaml",
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: bench-plan
spec:
  kubernetesVersion: v1.20.2
  provider:
    static: {{inventory: hosts.yaml}}
  ssh: {{keyFile: id_ed25519}}
  networking: {{nodeSubnet: 10.1.0.0/16, cni: flannel}}
  nodePools:
    controlPlane: {{count: 3}}
    workers: {{count: {workers}}}
    loadBalancers: {{count: 3}}
  loadBalancer: {{placement: dedicated, vip: 10.1.255.250}}
"
        ),
    )?;
    // The same phases as plays: what every host gets, the load balancers, the first
    // control plane, the others, the workers.
    let task = |name: &str, module: &str| format!("    - name: {name}\n      {module}\n");
    let play = |hosts: &str, tasks: &[(&str, &str)]| {
        format!(
            "- hosts: {hosts}\n  gather_facts: false\n  tasks:\n{}",
            tasks.iter().map(|(n, m)| task(n, m)).collect::<String>()
        )
    };
    let site = [
        play(
            "all",
            &[
                ("kernel settings", "template: {src: sysctl.conf.j2, dest: /etc/sysctl.d/90-kubeforge.conf}"),
                ("containerd config", "template: {src: config.toml.j2, dest: /etc/containerd/config.toml}"),
                ("binaries", "copy: {src: bin/, dest: /usr/local/bin/, mode: '0755'}"),
                ("kubelet unit", "template: {src: kubelet.service.j2, dest: /etc/systemd/system/kubelet.service}"),
                ("services", "systemd: {name: containerd, state: started, enabled: true}"),
            ],
        ),
        play(
            "load_balancers",
            &[
                ("haproxy", "template: {src: haproxy.cfg.j2, dest: /etc/haproxy/haproxy.cfg}"),
                ("keepalived", "template: {src: keepalived.conf.j2, dest: /etc/keepalived/keepalived.conf}"),
            ],
        ),
        play(
            "control_plane[0]",
            &[
                ("kubeadm config", "template: {src: kubeadm-init.yaml.j2, dest: /etc/kubeforge/kubeadm-init.yaml}"),
                ("kubeadm init", "command: kubeadm init --config /etc/kubeforge/kubeadm-init.yaml\n      args: {creates: /etc/kubernetes/admin.conf}"),
            ],
        ),
        play(
            "control_plane[1:]",
            &[("kubeadm join", "command: kubeadm join --config /etc/kubeforge/kubeadm-join.yaml\n      args: {creates: /etc/kubernetes/kubelet.conf}")],
        ),
        play(
            "workers",
            &[("kubeadm join", "command: kubeadm join --config /etc/kubeforge/kubeadm-join.yaml\n      args: {creates: /etc/kubernetes/kubelet.conf}")],
        ),
    ]
    .join("\n");
    w("site.yml", site)
}

/// Run `program args` in `dir` with its output discarded; wall seconds and peak RSS
/// (MiB) from `wait4`.
fn timed(dir: &Path, program: &Path, args: &[&str]) -> Result<(f64, f64), Error> {
    let t0 = Instant::now();
    let child = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| usage(format!("cannot run {}: {e}", program.display())))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage_out: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for elsewhere.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage_out) };
    let secs = t0.elapsed().as_secs_f64();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(usage(format!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            stderr.trim()
        )));
    }
    Ok((secs, usage_out.ru_maxrss as f64 / 1024.0))
}

pub fn run(a: &PlanBenchArgs) -> Result<PlanBenchReport, Error> {
    if a.hosts < 7 {
        return Err(usage(
            "--hosts: at least 7 (3 control planes, 3 load balancers, workers)",
        ));
    }
    let dir = tempdir()?.join("plan");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    write_inputs(&dir, a.hosts)?;
    let me: PathBuf = std::env::current_exe()
        .map_err(|e| usage(format!("cannot find this kubeforge's binary: {e}")))?;
    let mut work: Vec<(&str, String, PathBuf, Vec<&str>)> = vec![
        (
            "validate",
            "kubeforge".into(),
            me.clone(),
            vec!["validate", "-f", "cluster.yaml"],
        ),
        (
            "plan without connecting",
            "kubeforge".into(),
            me.clone(),
            vec!["plan", "-f", "cluster.yaml", "--offline", "-o", "json"],
        ),
    ];
    let mut notes = Vec::new();
    if a.no_ansible {
        notes.push("Ansible skipped (--no-ansible)".into());
    } else if let (Some(inv), Some(pb)) = (which("ansible-inventory"), which("ansible-playbook")) {
        work.push((
            "validate",
            "ansible-inventory --list".into(),
            inv,
            vec!["-i", "hosts.ini", "--list"],
        ));
        work.push((
            "plan without connecting",
            "ansible-playbook --list-hosts --list-tasks".into(),
            pb,
            vec![
                "-i",
                "hosts.ini",
                "site.yml",
                "--list-hosts",
                "--list-tasks",
            ],
        ));
    } else {
        notes.push("Ansible skipped: ansible-playbook not found (pip install ansible-core)".into());
    }
    let rounds = a.rounds.max(1);
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    for (what, tool, program, args) in &work {
        let mut times = Vec::new();
        let mut peak = 0f64;
        for _ in 0..rounds {
            let (s, m) = timed(&dir, program, args)?;
            times.push(s);
            peak = peak.max(m);
        }
        times.sort_by(f64::total_cmp);
        rows.push((what.to_string(), tool.clone(), times[times.len() / 2]));
        rss.push((what.to_string(), tool.clone(), peak));
    }
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        notes.push(format!("inputs kept in {}", dir.display()));
    }
    Ok(PlanBenchReport {
        hosts: a.hosts,
        rounds,
        measurements: measurements(&rows),
        peak_rss_mib: rss,
        load_average,
        notes,
    })
}

pub fn print_text(r: &PlanBenchReport) {
    println!(
        "plan benchmark: {} hosts, median of {} rounds, load average {}",
        r.hosts, r.rounds, r.load_average
    );
    println!(
        "{:<26} {:<44} {:>9} {:>9} {:>12}",
        "work", "tool", "seconds", "peak MiB", "x kubeforge"
    );
    for (m, (_, _, mib)) in r.measurements.iter().zip(&r.peak_rss_mib) {
        println!(
            "{:<26} {:<44} {:>9.3} {:>9.1} {:>12.2}",
            m.work, m.tool, m.seconds, mib, m.ratio_to_kubeforge
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}
