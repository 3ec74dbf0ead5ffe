//! `kubeforge kubeconfig`: the admin kubeconfig out of the encrypted state.

use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::spec;
use std::path::Path;

pub async fn run(file: &Path, output: OutputFormat) -> Result<(), Error> {
    let loaded = spec::load_file(file)?;
    let store = crate::ops::session::open_store(&loaded)?;
    let Some((doc, _)) = store.load().await? else {
        return Err(Error::Usage(format!(
            "cluster `{}` has no state yet: run `kubeforge apply -f {}` first",
            loaded.name(),
            file.display()
        )));
    };
    let Some(conf) = doc.secrets.admin_kubeconfig else {
        return Err(Error::Usage(format!(
            "cluster `{}` has no admin kubeconfig yet: the kubeconfig phase has not run",
            loaded.name()
        )));
    };
    match output {
        OutputFormat::Json => print_json(&serde_json::json!({ "kubeconfig": conf }))?,
        OutputFormat::Text => print!("{conf}"),
    }
    Ok(())
}
