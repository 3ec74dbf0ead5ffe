//! `kubeforge proxy`: the cluster's API on a local port, carried over SSH to the
//! control-plane nodes (for operators who reach the hosts but not the VIP: a bastion,
//! another network). TLS stays end to end: the local port passes bytes through, and the
//! kubeconfig written for it checks the API server's certificate against the cluster
//! CA for the endpoint's name (`tls-server-name`). A connection goes to the control
//! plane that served the last one, else to the next that answers: the proxy survives the
//! loss of a control plane as the VIP does.

use crate::addons::tunnel::{self, Route};
use crate::cli::ProxyArgs;
use crate::error::Error;
use crate::ops::kubeconfig::{adjust, parse, to_yaml, write_new_private};
use crate::ops::session::{with_session, SessionOptions};
use crate::output::OutputFormat;
use std::sync::Arc;

pub async fn run(args: ProxyArgs, output: OutputFormat) -> Result<(), Error> {
    if !(args.address.is_loopback()) && !args.allow_non_loopback {
        return Err(Error::Usage(format!(
            "--address {}: not a loopback address; the port carries the API to anyone who reaches it (pass --allow-non-loopback on purpose)",
            args.address
        )));
    }
    if let Some(out) = args.kubeconfig_out.as_ref().filter(|p| p.exists()) {
        if !args.force {
            return Err(Error::Usage(format!(
                "{} exists: not overwritten (pass --force to replace it)",
                out.display()
            )));
        }
    }
    let kubeconfig_out = args.kubeconfig_out.clone();
    let result = with_session(
        &args.spec.file,
        SessionOptions::read_only(output),
        |s| {
            Box::pin(async move {
                let doc = s.state.get().await;
                let admin = doc.secrets.admin_kubeconfig.clone().ok_or_else(|| {
                    Error::Usage(format!(
                        "cluster `{}` has no admin kubeconfig yet: run `kubeforge apply` first",
                        s.cluster.name()
                    ))
                })?;
                let rt = s.rt()?;
                let port = s.cluster.cluster.spec.networking.api_server_port;
                let routes: Vec<Route> = s
                    .cluster
                    .topology
                    .control_planes()
                    .into_iter()
                    .map(|h| Route {
                        name: h.name.clone(),
                        via: h.address.to_string(),
                        target: h.internal_address.to_string(),
                        port,
                    })
                    .collect();
                if routes.is_empty() {
                    return Err(Error::Usage("the cluster has no control-plane node".into()));
                }
                let listener = tokio::net::TcpListener::bind((args.address, args.port))
                    .await
                    .map_err(|e| {
                        Error::Usage(format!(
                            "cannot listen on {}:{}: {e}",
                            args.address, args.port
                        ))
                    })?;
                let local = listener
                    .local_addr()
                    .map_err(|e| Error::Internal(format!("listener address: {e}")))?;
                let url = format!("https://{local}");
                let conf = proxy_kubeconfig(&admin, &url)?;
                if let Some(out) = &kubeconfig_out {
                    write_new_private(out, conf.as_bytes(), args.force)?;
                }
                let on_event: Arc<dyn Fn(String) + Send + Sync> = match output {
                    OutputFormat::Json => Arc::new(|_| {}),
                    OutputFormat::Text => Arc::new(|e| eprintln!("proxy: {e}")),
                };
                let refresh = pins_refresh(
                    s.state.store.clone(),
                    rt.host_keys.clone(),
                    rt.pool.clone(),
                    on_event.clone(),
                );
                let task = tunnel::serve_failover(
                    listener,
                    rt.pool.clone(),
                    routes.clone(),
                    refresh,
                    on_event,
                );
                let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                match output {
                    // One line: read by a program while the proxy keeps running.
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::json!({
                            "server": url,
                            "kubeconfig": kubeconfig_out.as_ref().map(|p| p.display().to_string()),
                            "controlPlanes": names,
                        })
                    ),
                    OutputFormat::Text => {
                        println!(
                            "Serving the API of `{}` on {url} through SSH to {} (Ctrl-C stops).",
                            s.cluster.name(),
                            names.join(", ")
                        );
                        match &kubeconfig_out {
                            Some(p) => println!(
                                "kubeconfig: {} (mode 0600)\n  KUBECONFIG={} kubectl get nodes",
                                p.display(),
                                p.display()
                            ),
                            None => println!(
                                "Write a kubeconfig for it with --kubeconfig-out FILE (it holds the admin credentials: never printed)."
                            ),
                        }
                    }
                }
                let _ = task.await;
                Ok(())
            })
        },
    )
    .await;
    match result {
        // Ctrl-C is how a proxy ends.
        Err(Error::State(e)) if matches!(*e, crate::state::StateError::Interrupted) => {
            if output == OutputFormat::Text {
                eprintln!("proxy stopped");
            }
            Ok(())
        }
        other => other,
    }
}

/// Re-read the host-key pins from the state (at most every 10 s): a machine that
/// `kubeforge recover` re-created has a new key, pinned there by that run; the proxy
/// takes the new pin (never a key the state does not hold) and reconnects.
fn pins_refresh(
    store: crate::state::StateStore,
    keys: Arc<crate::transport::MemoryHostKeyStore>,
    pool: Arc<crate::transport::SshPool>,
    on_event: Arc<dyn Fn(String) + Send + Sync>,
) -> tunnel::Refresh {
    use crate::transport::HostKeyStore;
    let last = Arc::new(tokio::sync::Mutex::new(None::<std::time::Instant>));
    Arc::new(move || {
        let (store, keys, pool, on_event, last) = (
            store.clone(),
            keys.clone(),
            pool.clone(),
            on_event.clone(),
            last.clone(),
        );
        Box::pin(async move {
            let mut last = last.lock().await;
            if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(10)) {
                return;
            }
            *last = Some(std::time::Instant::now());
            let doc = match store.load().await {
                Ok(Some((doc, _))) => doc,
                Ok(None) => return,
                Err(e) => {
                    on_event(format!(
                        "cannot re-read the host-key pins from the state: {}",
                        crate::error::render_chain(&e).trim_start_matches("error: ")
                    ));
                    return;
                }
            };
            for (host, key) in &doc.host_keys {
                if keys.pinned(host).as_deref() != Some(key.as_str()) {
                    keys.pin(host, key);
                    pool.forget(host);
                    on_event(format!("{host}: took its new host-key pin from the state"));
                }
            }
        })
    })
}

/// The admin kubeconfig pointed at the local proxy, checking the certificate for the
/// name of the server it had (the control-plane endpoint).
fn proxy_kubeconfig(admin: &str, url: &str) -> Result<String, Error> {
    let mut v = parse(admin, "the admin kubeconfig in the state")?;
    let server = v
        .get("clusters")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.get("server"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| Error::Internal("the admin kubeconfig has no server".into()))?
        .to_string();
    let host = reqwest::Url::parse(&server)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .ok_or_else(|| {
            Error::Internal(format!(
                "the admin kubeconfig's server {server:?} has no host"
            ))
        })?;
    adjust(&mut v, None, Some(url))?;
    if let Some(c) = v
        .get_mut("clusters")
        .and_then(|c| c.get_mut(0))
        .and_then(|c| c.get_mut("cluster"))
        .and_then(|c| c.as_mapping_mut())
    {
        c.insert("tls-server-name".into(), host.into());
    }
    to_yaml(&v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_proxy_kubeconfig_checks_the_endpoints_name() {
        let admin = "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    certificate-authority-data: Q0E=\n    server: https://10.0.0.254:6443\ncontexts:\n- name: kubernetes-admin@kubernetes\n  context: {cluster: kubernetes, user: kubernetes-admin}\ncurrent-context: kubernetes-admin@kubernetes\nusers:\n- name: kubernetes-admin\n  user: {client-certificate-data: Qw==, client-key-data: Sw==}\n";
        let out = super::proxy_kubeconfig(admin, "https://127.0.0.1:16443").unwrap();
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
        let c = &v["clusters"][0]["cluster"];
        assert_eq!(c["server"].as_str(), Some("https://127.0.0.1:16443"));
        assert_eq!(c["tls-server-name"].as_str(), Some("10.0.0.254"));
        assert_eq!(c["certificate-authority-data"].as_str(), Some("Q0E="));
        assert_eq!(
            v["users"][0]["user"]["client-key-data"].as_str(),
            Some("Sw==")
        );
    }
}
