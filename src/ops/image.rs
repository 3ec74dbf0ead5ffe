//! `kubeforge image build|tag`: the docker provider's node image.

use crate::cli::{ImageArgs, ImageCommand};
use crate::error::Error;
use crate::output::{print_json, OutputFormat};
use crate::provider::image::{build_node_image, node_image_tag};

pub async fn run(args: ImageArgs, output: OutputFormat) -> Result<(), Error> {
    let tag = match args.command {
        ImageCommand::Tag => node_image_tag(),
        ImageCommand::Build { force } => build_node_image(force).await?,
    };
    match output {
        OutputFormat::Json => print_json(&serde_json::json!({ "image": tag }))?,
        OutputFormat::Text => println!("{tag}"),
    }
    Ok(())
}
