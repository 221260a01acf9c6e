//! `modelfs settings [get KEY | set KEY VALUE]`: the store's settings file
//! (`store::settings`), which every mount and command of the store reads.

use crate::store::settings::KEYS;

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    #[command(subcommand)]
    pub action: Option<SettingsAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum SettingsAction {
    /// Show one setting
    Get { key: String },
    /// Set one setting: cache_max SIZE (300G, 10%; 0 or none: no limit), min_free SIZE|PCT (0: off),
    /// mirrors URL[,URL…] (none: no mirrors)
    Set { key: String, value: String },
}

/// Shows every setting, or one, or changes one.
pub fn run(g: &Globals, a: &SettingsArgs) -> Result<(), CliError> {
    let store = g.store_for_writing()?;
    let err = |e: crate::store::settings::SettingsError| CliError::new(e.to_string());
    let mut s = store.read_settings().map_err(err)?;
    match &a.action {
        None => {
            for k in KEYS {
                println!("{k} = {}", s.get(k).unwrap_or_default());
            }
            println!("# {}", store.settings_path().display());
        }
        Some(SettingsAction::Get { key }) => match s.get(key) {
            Some(v) => println!("{v}"),
            None => {
                return Err(CliError::new(format!(
                    "unknown setting {key:?} (known: {})",
                    KEYS.join(", ")
                )));
            }
        },
        Some(SettingsAction::Set { key, value }) => {
            if key == "mirrors" && value.trim() != "none" {
                crate::fetch::Mirror::parse_list(value)
                    .map_err(|e| CliError::new(format!("settings set mirrors: {e}")))?;
            }
            s.set(key, value)
                .map_err(|e| CliError::new(format!("settings set {key}: {e}")))?;
            store.write_settings(&s).map_err(err)?;
            println!(
                "{key} = {} (every mount of the store applies it within 5 s)",
                s.get(key).unwrap_or_default()
            );
        }
    }
    Ok(())
}
