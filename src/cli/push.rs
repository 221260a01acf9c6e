//! `modelfs push NAME oci://REGISTRY/REPO:TAG`: publish a present model as
//! a ModelPack artifact (see `fetch::oci_push`).

use crate::fetch::oci_push::BlobPushed;
use crate::registry::Reference;
use crate::store::BlobState;
use crate::text::human_bytes;

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The model to publish (its blob must be present)
    pub name: String,
    /// Where: oci://REGISTRY/REPO:TAG (or REGISTRY/REPO:TAG)
    #[arg(value_name = "oci://REGISTRY/REPO:TAG")]
    pub target: String,
}

pub fn run(g: &Globals, a: &PushArgs) -> Result<(), CliError> {
    let name = parse_name(&a.name)?;
    let spec = a.target.strip_prefix("oci://").unwrap_or(&a.target);
    let r = Reference::parse(spec).map_err(|e| CliError::new(e.to_string()))?;
    if r.tag.is_none() || r.digest.is_some() {
        return Err(CliError::new(format!(
            "push {name}: {spec:?} names no tag (or a digest); push to oci://REGISTRY/REPO:TAG"
        )));
    }
    let store = g.store_for_reading()?;
    let Some(m) = store.read_manifest(&name)? else {
        return Err(CliError::new(format!(
            "push: no model {name} in {}; add it first",
            store.root().display()
        )));
    };
    if !matches!(store.blob_state(&m.blob), BlobState::Present(_)) {
        return Err(CliError::new(format!(
            "push {name}: its blob is not here yet; fetch it first with `modelfs pull {name}`"
        )));
    }
    let fetcher = g.fetcher()?;
    let mut shown = 0u64;
    let pushed = fetcher
        .push_oci(&m, &store.blob_path(&m.blob), &r, &mut |sent, total| {
            // A line per tenth, not per chunk.
            if sent == total || sent - shown >= total / 10 {
                shown = sent;
                eprintln!(
                    "{name}: {} / {} sent",
                    human_bytes(sent),
                    human_bytes(total)
                );
            }
        })
        .map_err(|e| CliError::new(e.to_string()))?;
    let how = match pushed.weights {
        BlobPushed::Existed => "the registry had the weights".to_string(),
        BlobPushed::Mounted => format!("weights mounted from {}", m.source.repo),
        BlobPushed::Uploaded(n) => format!("{} uploaded", human_bytes(n)),
    };
    println!("pushed {name} to {r} as {} ({how})", pushed.manifest_digest);
    Ok(())
}
