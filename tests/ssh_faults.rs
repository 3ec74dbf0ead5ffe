//! Faults on real machines: a machine stopped or killed mid-run, a paused (hung)
//! machine, a network partition. Each must give a clear per-host error while the other
//! hosts finish, and the pool must recover once the machine is back.

mod common_docker;

use common_docker::{run, with_cluster};
use kubeforge::provider::{MachineRole, Provider};
use kubeforge::transport::{
    fan_out, ConnectFailure, FanOutOptions, MemoryHostKeyStore, ProgressMode, SshPool, SshSession,
    Transport, TransportError, UploadSource, UploadTarget,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREE: [MachineRole; 3] = [
    MachineRole::ControlPlane,
    MachineRole::Worker,
    MachineRole::Worker,
];

fn quiet(label: &str) -> FanOutOptions {
    FanOutOptions {
        concurrency: 3,
        progress: ProgressMode::Hidden,
        label: label.into(),
        cancel_on_ctrl_c: false,
    }
}

#[test]
fn machines_stopped_or_killed_mid_run_fail_alone_and_come_back() {
    run(|| async {
        with_cluster("kft-stop", &THREE, |c| async move {
            let mut cfg = c.ssh_config("root");
            cfg.keepalive_interval = Some(Duration::from_secs(1));
            let pool = Arc::new(SshPool::new(cfg, Arc::new(MemoryHostKeyStore::new())));
            let hosts = c.ips();
            // Connect everywhere first, so the faults hit open connections.
            for h in &hosts {
                pool.session(h).await.unwrap();
            }
            let names: Vec<String> = c.machines.iter().map(|m| m.name.clone()).collect();
            let faults = {
                let c = c.clone();
                let names = names.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    let (a, b) =
                        tokio::join!(c.provider.stop(&names[1]), c.provider.kill(&names[2]));
                    a.unwrap();
                    b.unwrap();
                }
            };
            let t = Instant::now();
            let opts = quiet("sleep");
            let work = fan_out(&hosts, &opts, |h| {
                let pool = pool.clone();
                async move {
                    let s = pool.session(&h).await?;
                    s.exec_checked("sleep 5; echo done").await
                }
            });
            let (results, ()) = tokio::join!(work, faults);
            let took = t.elapsed();
            eprintln!(
                "fan-out with a stopped and a killed machine: {:.1} s",
                took.as_secs_f64()
            );
            assert_eq!(results[0].result.as_ref().unwrap().stdout, "done\n");
            for r in &results[1..] {
                let err = r.result.as_ref().unwrap_err();
                eprintln!("{}: {}", r.host, kubeforge::error::render_chain(err));
                assert!(
                    matches!(
                        err,
                        TransportError::ConnectionLost { .. }
                            | TransportError::CommandFailed { .. }
                    ),
                    "{err}"
                );
                assert!(
                    err.to_string().contains(&r.host),
                    "error must name the host: {err}"
                );
            }
            assert!(
                took < Duration::from_secs(15),
                "a dead host held the run for {took:?}"
            );

            // Back up: the pool reconnects by itself; host keys are unchanged.
            c.provider.start(&names[1]).await.unwrap();
            c.provider.start(&names[2]).await.unwrap();
            for (i, h) in hosts.iter().enumerate().skip(1) {
                c.provider
                    .wait_for_ssh(c.machines[i].ip.unwrap(), 22, Duration::from_secs(30))
                    .await
                    .unwrap();
                let s = pool.session(h).await.unwrap();
                assert!(s.exec("true").await.unwrap().success());
            }
            pool.close_all().await;
        })
        .await;
    });
}

#[test]
fn a_hung_command_times_out_and_the_connection_stays_usable() {
    run(|| async {
        with_cluster("kft-cmdto", &THREE[..1], |c| async move {
            let mut cfg = c.ssh_config("root");
            // Production bounds every command by default.
            assert_eq!(
                (cfg.command_timeout, cfg.long_command_timeout),
                (
                    Some(kubeforge::transport::DEFAULT_COMMAND_TIMEOUT),
                    Some(kubeforge::transport::DEFAULT_LONG_COMMAND_TIMEOUT)
                )
            );
            cfg.command_timeout = Some(Duration::from_secs(2));
            let pool = SshPool::new(cfg, Arc::new(MemoryHostKeyStore::new()));
            let ip = c.ip(0);
            let s = pool.session(&ip).await.unwrap();
            assert_eq!(
                s.limit_for("/usr/local/bin/kubeadm join --config x.yaml"),
                Some(kubeforge::transport::DEFAULT_LONG_COMMAND_TIMEOUT)
            );
            assert_eq!(s.limit_for("systemctl restart kubelet"), Some(Duration::from_secs(2)));

            // Bounded by a generous outer limit only so that a missing timeout fails
            // the test instead of hanging it for 1000 s.
            let err = tokio::time::timeout(Duration::from_secs(120), s.exec("sleep 1000"))
                .await
                .expect("`sleep 1000` was not stopped by the 2 s command limit")
                .unwrap_err();
            assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!("`sleep 1000` on {ip} did not finish within 2.0s and was stopped (the limits are spec.ssh.commandTimeoutSeconds and, for kubeadm, image imports and transfers, spec.ssh.longCommandTimeoutSeconds)")
            );
            // The same connection still works.
            assert!(!s.is_closed());
            let out = s.exec("echo still-here").await.unwrap();
            assert_eq!(out.stdout, "still-here\n");
            // And the remote command did not linger: the remote side stopped it too.
            let mut gone = false;
            for _ in 0..60 {
                if !s.exec("pgrep -x sleep").await.unwrap().success() {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert!(gone, "`sleep 1000` is still running on {ip}");
            pool.close_all().await;
        })
        .await;
    });
}

#[test]
fn a_paused_machine_times_out_instead_of_hanging() {
    run(|| async {
        with_cluster("kft-pause", &THREE[..2], |c| async move {
            let mut cfg = c.ssh_config("root");
            cfg.command_timeout = Some(Duration::from_secs(2));
            cfg.connect_timeout = Duration::from_secs(1);
            cfg.retry.window = Duration::from_secs(2);
            let pool = SshPool::new(cfg.clone(), Arc::new(MemoryHostKeyStore::new()));
            let hung = c.ip(0);
            let s = pool.session(&hung).await.unwrap();
            pool.session(&c.ip(1)).await.unwrap();
            c.provider.pause(&c.machines[0].name).await.unwrap();

            // An open connection: the command times out.
            let t = Instant::now();
            let err = s.exec("true").await.unwrap_err();
            assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
            assert!(err.is_retryable());
            assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

            // A new connection: the connect attempts time out within the retry window.
            let t = Instant::now();
            let err = SshSession::connect(&hung, &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                .await
                .unwrap_err();
            match &err {
                TransportError::Connect {
                    source: ConnectFailure::Timeout(_),
                    attempts,
                    ..
                } => {
                    assert!(*attempts >= 1)
                }
                other => panic!("expected a connect timeout, got {other}"),
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

            // The other machine is unaffected meanwhile.
            let other = pool.session(&c.ip(1)).await.unwrap();
            assert!(other.exec("true").await.unwrap().success());

            // Unpaused, the same connection (or a new one) works again.
            c.provider.unpause(&c.machines[0].name).await.unwrap();
            let s = pool.session(&hung).await.unwrap();
            let out = s
                .exec_timeout("echo back", Some(Duration::from_secs(10)))
                .await
                .unwrap();
            assert_eq!(out.stdout, "back\n");
            pool.close_all().await;
        })
        .await;
    });
}

#[test]
fn a_network_partition_gives_a_clear_error_and_heals() {
    run(|| async {
        with_cluster("kft-netcut", &THREE[..2], |c| async move {
            let mut cfg = c.ssh_config("root");
            cfg.keepalive_interval = Some(Duration::from_secs(1));
            cfg.connect_timeout = Duration::from_secs(2);
            cfg.retry.window = Duration::from_secs(3);
            let pool = Arc::new(SshPool::new(cfg, Arc::new(MemoryHostKeyStore::new())));
            let hosts = c.ips();
            for h in &hosts {
                pool.session(h).await.unwrap();
            }
            let cut = &c.machines[1];
            c.provider.disconnect(&cut.name).await.unwrap();
            assert_eq!(c.provider.get(&cut.name).await.unwrap().ip, None);

            let t = Instant::now();
            let results = fan_out(&hosts, &quiet("hostname"), |h| {
                let pool = pool.clone();
                async move { pool.session(&h).await?.exec_checked("hostname").await }
            })
            .await;
            assert_eq!(
                results[0].result.as_ref().unwrap().stdout.trim(),
                c.machines[0].name
            );
            let err = results[1].result.as_ref().unwrap_err();
            eprintln!(
                "partitioned host after {:.1} s: {}",
                t.elapsed().as_secs_f64(),
                kubeforge::error::render_chain(err)
            );
            assert!(err.is_retryable(), "{err}");
            assert!(err.to_string().contains(&hosts[1]), "{err}");
            assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());

            // Healed: plugged back with its fixed address, the host answers again.
            c.provider
                .reconnect(&cut.name, cut.ip.unwrap())
                .await
                .unwrap();
            c.provider
                .wait_for_ssh(cut.ip.unwrap(), 22, Duration::from_secs(20))
                .await
                .unwrap();
            let s = pool.session(&hosts[1]).await.unwrap();
            assert_eq!(s.exec("hostname").await.unwrap().stdout.trim(), cut.name);
            pool.close_all().await;
        })
        .await;
    });
}

#[test]
fn an_upload_to_a_machine_that_hangs_mid_transfer_fails_within_the_keepalive_window() {
    run(|| async {
        with_cluster("kft-upstall", &THREE[..1], |c| async move {
            let mut cfg = c.ssh_config("root");
            cfg.keepalive_interval = Some(Duration::from_secs(1));
            // Far above the keepalive window: a run that waits on the dead transfer
            // until these limits end shows up as a Timeout, not a lost connection.
            cfg.command_timeout = Some(Duration::from_secs(600));
            cfg.long_command_timeout = Some(Duration::from_secs(600));
            let pool = Arc::new(SshPool::new(cfg, Arc::new(MemoryHostKeyStore::new())));
            let host = c.ip(0);
            let s = pool.session(&host).await.unwrap();
            // Enough that the transfer is still running when the machine freezes.
            let payload = bytes::Bytes::from(vec![7u8; 1 << 30]);
            let target = UploadTarget::new("/var/tmp/kf-stall.bin", 0o600);
            let name = c.machines[0].name.clone();
            let freeze = {
                let c = c.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    c.provider.pause(&name).await.unwrap();
                }
            };
            let t = Instant::now();
            let (res, ()) = tokio::join!(s.upload(UploadSource::Bytes(payload), &target), freeze);
            let took = t.elapsed();
            let err = res.expect_err("the transfer ended before the machine froze");
            eprintln!(
                "upload to a frozen machine failed after {:.1} s: {}",
                took.as_secs_f64(),
                kubeforge::error::render_chain(&err)
            );
            assert!(
                matches!(err, TransportError::ConnectionLost { .. }),
                "expected the connection to count as lost, got: {err}"
            );
            assert!(err.to_string().contains(&host), "{err}");

            // Thawed, the pool opens a new connection and the half-sent file is not
            // where the upload was going.
            c.provider.unpause(&c.machines[0].name).await.unwrap();
            let s = pool.session(&host).await.unwrap();
            let out = s
                .exec("test -e /var/tmp/kf-stall.bin && echo present || echo absent")
                .await
                .unwrap();
            assert_eq!(out.stdout.trim(), "absent");
            pool.close_all().await;
        })
        .await;
    });
}
