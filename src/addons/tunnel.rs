//! The API server through SSH: a local listener on 127.0.0.1 whose connections are
//! carried to a control-plane node's API port over the existing SSH session (like
//! `ssh -L`). The API server is reachable wherever kubeforge can SSH (bastions,
//! internal networks), and TLS is still verified end to end against the cluster CA
//! with the endpoint's name.

use crate::transport::SshSession;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An open forward; closed when dropped.
pub struct Tunnel {
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forward `127.0.0.1:<free port>` to `target:port` as seen from `session`'s host.
pub async fn open(session: Arc<SshSession>, target: String, port: u16) -> std::io::Result<Tunnel> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                break;
            };
            let session = session.clone();
            let target = target.clone();
            tokio::spawn(async move {
                match session.direct_tcpip(&target, port).await {
                    Ok(mut remote) => {
                        let _ = tcp.set_nodelay(true);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut remote).await {
                            tracing::debug!("API tunnel connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("API tunnel: {e}"),
                }
            });
        }
    });
    Ok(Tunnel { local, task })
}

/// Where a forwarded connection may go: `target:port` as seen from the SSH host
/// `via` (an address the pool connects to), named `name` in messages.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub via: String,
    pub target: String,
    pub port: u16,
}

/// Re-reads what may have changed since the proxy started (host-key pins that a
/// recover run re-pinned for re-created machines); called when no route answers.
pub type Refresh =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Serve `listener` until dropped: each connection goes through the route that carried
/// the last one, else the others in order (a control plane that is down, or whose SSH
/// is gone, is passed over for the next); when none answers, `refresh` runs and they
/// are tried once more. `on_event` hears which route serves and which failed.
pub fn serve_failover(
    listener: TcpListener,
    pool: Arc<crate::transport::SshPool>,
    routes: Vec<Route>,
    refresh: Refresh,
    on_event: Arc<dyn Fn(String) + Send + Sync>,
) -> JoinHandle<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let current = Arc::new(AtomicUsize::new(usize::MAX));
    tokio::spawn(async move {
        let routes = Arc::new(routes);
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                break;
            };
            let (pool, routes, current, on_event, refresh) = (
                pool.clone(),
                routes.clone(),
                current.clone(),
                on_event.clone(),
                refresh.clone(),
            );
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                for attempt in 0..2 {
                    if attempt == 1 {
                        refresh().await;
                    }
                    let last = current.load(Ordering::Relaxed);
                    let order: Vec<usize> = std::iter::once(last)
                        .filter(|i| *i < routes.len())
                        .chain((0..routes.len()).filter(|i| *i != last))
                        .collect();
                    for i in order {
                        let r = &routes[i];
                        let stream = match pool.session(&r.via).await {
                            // A host that vanished leaves a session that looks open
                            // until keepalives give up: bounded, and dropped.
                            Ok(s) => match tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                s.direct_tcpip(&r.target, r.port),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => Ok(stream),
                                Ok(Err(e)) => {
                                    // A session that broke is opened anew next time.
                                    if s.is_closed() {
                                        pool.forget(&r.via);
                                    }
                                    Err(e.to_string())
                                }
                                Err(_) => {
                                    pool.forget(&r.via);
                                    Err("no answer over SSH within 10 s".to_string())
                                }
                            },
                            Err(e) => Err(e.to_string()),
                        };
                        match stream {
                            Ok(mut remote) => {
                                if current.swap(i, Ordering::Relaxed) != i {
                                    on_event(format!(
                                        "connections go to {} ({}:{}) through SSH",
                                        r.name, r.target, r.port
                                    ));
                                }
                                if let Err(e) =
                                    tokio::io::copy_bidirectional(&mut tcp, &mut remote).await
                                {
                                    tracing::debug!("API proxy connection ended: {e}");
                                }
                                return;
                            }
                            Err(e) => {
                                if last == i {
                                    current.store(usize::MAX, Ordering::Relaxed);
                                    on_event(format!("{} does not serve the API now: {e}", r.name));
                                }
                                tracing::debug!("API proxy: {} failed: {e}", r.name);
                            }
                        }
                    }
                }
                on_event("no control-plane node serves the API: connection closed".into());
            });
        }
    })
}
