//! No secret in failure paths: a remote command that fails while its output holds the
//! cluster's bootstrap token or certificate key reports host, command and the end of
//! stderr with every secret redacted; and the join steps kubeforge plans carry no secret
//! on a command line (visible in /proc on the node). Real sshd in a systemd machine.

mod common_docker;

use common_docker::{run, with_cluster};
use kubeforge::provider::MachineRole;
use kubeforge::render::Secrets;

const TOKEN: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "5d4a9f0e3c2b1a0987654321fedcba9876543210fedcba9876543210fedcba98";

#[test]
fn failures_report_commands_and_output_with_secrets_redacted() {
    run(|| async {
        with_cluster("kft-redact", &[MachineRole::ControlPlane], |c| async move {
            let secrets = Secrets {
                bootstrap_token: TOKEN.into(),
                certificate_key: CERT_KEY.into(),
                ca_cert_hash: None,
            };
            let (pool, _) = c.pool("root");
            let s = pool.session(&c.ip(0)).await.unwrap();
            // The secret in the command, in stdout and (its secret half alone) in stderr.
            let cmd = format!(
                "echo joining with {TOKEN}; echo 'key {CERT_KEY}' >&2; echo 'half 0123456789abcdef' >&2; exit 7"
            );
            let err = kubeforge::transport::remote::run(s.as_ref(), "cp-1", &cmd, &secrets, false)
                .await
                .unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains("exited with 7"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
            for secret in [TOKEN, CERT_KEY, "0123456789abcdef"] {
                assert!(!text.contains(secret), "{secret} leaked: {text}");
            }
            // A failure with the output on stdout only is redacted the same way.
            let err = kubeforge::transport::remote::run(
                s.as_ref(),
                "cp-1",
                &format!("echo {TOKEN}; false"),
                &secrets,
                false,
            )
            .await
            .unwrap_err();
            assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
        })
        .await;
    });
}

#[test]
fn planned_commands_hold_no_secret() {
    // The whole bootstrap plan of the local example (JSON, every command and check):
    // the bootstrap token and the certificate key are only in uploaded 0600 files.
    let dir = tempfile::tempdir().unwrap();
    let out = assert_cmd::Command::cargo_bin("kubeforge")
        .unwrap()
        .current_dir(dir.path())
        .args([
            "plan",
            "--offline",
            "-o",
            "json",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/local.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut commands = Vec::new();
    for ph in plan["phases"].as_array().unwrap() {
        for s in ph["operator"].as_array().unwrap() {
            commands.push(s.to_string());
        }
        for h in ph["hosts"].as_array().unwrap() {
            for s in h["commands"].as_array().unwrap() {
                for k in ["run", "check", "action"] {
                    if let Some(c) = s[k].as_str() {
                        commands.push(c.to_string());
                    }
                }
            }
        }
    }
    let joined = commands.join("\n");
    assert!(joined.contains("token create --config"), "{joined}");
    assert!(joined.contains("kubeadm join --config"), "{joined}");
    // Plans are made with real (fresh) secrets and show them redacted; a command that
    // held one would show `<redacted>`.
    assert!(
        !joined.contains("<redacted>"),
        "a command line holds a secret: {joined}"
    );
}
