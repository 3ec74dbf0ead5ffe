pub mod addons;
pub mod apply;
pub mod artifacts;
pub mod bench;
pub mod destroy;
pub mod image;
pub mod kubeconfig;
pub mod plan;
pub mod preview;
pub mod render;
pub mod runner;
pub mod session;
pub mod validate;

/// Ask `question [y/N]` on the terminal; anything but yes is `refused` (a usage error,
/// exit 2). Without a terminal nothing is asked: the caller must pass --yes.
pub fn confirm(question: &str, verb: &str, refused: &str) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "not {verb} without confirmation: stdin is not a terminal; pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::Usage(format!("cannot read the answer: {e}")))?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage(refused.into()))
    }
}
