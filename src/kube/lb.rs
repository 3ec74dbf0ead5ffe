//! The HAProxy in front of the apiservers, through its runtime API (the admin socket the
//! template opens): take one apiserver out of rotation without a reload (`drain`: no new
//! connections, established ones finish), put it back (`ready`), and read what HAProxy
//! thinks of it. A reload would reset every server's state and re-open the listeners;
//! the runtime API changes one server and nothing else.

use crate::transport::remote::{self, HostError, Redact};
use crate::transport::shell::quote;
use crate::transport::Transport;

/// The admin socket (`stats socket ... level admin` in templates/haproxy/haproxy.cfg.tera).
pub const ADMIN_SOCKET: &str = "/run/haproxy/admin.sock";
/// The backend holding the apiservers; each server is named after its host.
pub const BACKEND: &str = "kube-apiserver";

/// What kubeforge sets a server to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// In rotation.
    Ready,
    /// No new connections; established ones go on until they end.
    Drain,
}

impl ServerState {
    fn as_str(self) -> &'static str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Drain => "drain",
        }
    }
}

/// A command line sending `cmd` to the admin socket (socat is a host requirement).
fn admin(cmd: &str) -> String {
    format!(
        "echo {} | socat -t 5 stdio {}",
        quote(cmd),
        quote(&format!("unix-connect:{ADMIN_SOCKET}"))
    )
}

/// Set `server`'s administrative state on the HAProxy of `host`. HAProxy answers an
/// unknown server with a message and no error status: that is an error here.
pub async fn set_state(
    t: &dyn Transport,
    host: &str,
    server: &str,
    state: ServerState,
    secrets: &dyn Redact,
) -> Result<(), HostError> {
    let out = remote::run(
        t,
        host,
        &admin(&format!(
            "set server {BACKEND}/{server} state {}",
            state.as_str()
        )),
        secrets,
        false,
    )
    .await?;
    let said = out.trim();
    if said.is_empty() {
        Ok(())
    } else {
        Err(HostError::Other {
            host: host.to_string(),
            message: format!(
                "HAProxy refused to set {BACKEND}/{server} to {}: {said}",
                state.as_str()
            ),
        })
    }
}

/// The `status` column HAProxy shows for `server` (`UP`, `DOWN`, `DRAIN`, `MAINT`,
/// `UP 1/2` while rising ...), from a `show stat` CSV. None: no such server.
pub fn status_in(csv: &str, server: &str) -> Option<String> {
    let mut lines = csv.lines();
    let header = lines.next()?.trim_start_matches("# ");
    let cols: Vec<&str> = header.split(',').collect();
    let px = cols.iter().position(|c| *c == "pxname")?;
    let sv = cols.iter().position(|c| *c == "svname")?;
    let st = cols.iter().position(|c| *c == "status")?;
    lines.find_map(|l| {
        let f: Vec<&str> = l.split(',').collect();
        (f.get(px) == Some(&BACKEND) && f.get(sv) == Some(&server))
            .then(|| f.get(st).map(|s| s.to_string()))
            .flatten()
    })
}

/// What the HAProxy of `host` shows for `server`.
pub async fn status(
    t: &dyn Transport,
    host: &str,
    server: &str,
    secrets: &dyn Redact,
) -> Result<Option<String>, HostError> {
    let out = remote::run(t, host, &admin("show stat"), secrets, false).await?;
    Ok(status_in(&out, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
kube-apiserver,FRONTEND,,,0,1,2000,3,0,0,0,0,0,,,,,OPEN,\n\
kube-apiserver,cp-1,0,0,0,1,1000,3,0,0,,0,,0,0,0,0,UP,100\n\
kube-apiserver,cp-2,0,0,0,1,1000,3,0,0,,0,,0,0,0,0,DRAIN,100\n\
kube-apiserver,cp-3,0,0,0,1,1000,3,0,0,,0,,0,0,0,0,UP 1/2,100\n\
kube-apiserver,BACKEND,0,0,0,1,200,3,0,0,0,0,,0,0,0,0,UP,300\n";

    #[test]
    fn a_servers_status_is_read_from_show_stat() {
        assert_eq!(status_in(CSV, "cp-1").as_deref(), Some("UP"));
        assert_eq!(status_in(CSV, "cp-2").as_deref(), Some("DRAIN"));
        assert_eq!(status_in(CSV, "cp-3").as_deref(), Some("UP 1/2"));
        assert_eq!(status_in(CSV, "cp-9"), None);
        assert_eq!(status_in("", "cp-1"), None);
    }

    #[test]
    fn commands_go_to_the_admin_socket_quoted() {
        let c = admin("set server kube-apiserver/cp-1 state drain");
        assert_eq!(
            c,
            "echo 'set server kube-apiserver/cp-1 state drain' | socat -t 5 stdio unix-connect:/run/haproxy/admin.sock"
        );
    }
}
