//! `modelfs rm`: drop a manifest. The blob stays until `modelfs gc`.

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Models to remove
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Removes each named manifest (every shard of a named split model);
/// fails if one does not exist.
pub fn run(g: &Globals, a: &RmArgs) -> Result<(), CliError> {
    let store = g.store_for_reading()?;
    // A split model's name removes every shard.
    for name in super::sets::expand(&store, &a.names)? {
        let _l = store
            .lock_model_waiting(&name, &mut || {
                eprintln!("waiting for another process that holds the lock on {name}...")
            })
            .map_err(|e| CliError::new(format!("{name}: cannot take the store lock: {e}")))?;
        if !store.remove_manifest(&name)? {
            return Err(CliError::new(format!(
                "{name}: no such model in {}",
                store.root().display()
            )));
        }
        println!("removed {name} (run `modelfs gc` to free its blob)");
    }
    Ok(())
}
