//! `modelfs`: parse the command line, set up logging, dispatch. No logic.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modelfs::cli::{self, CliError, Globals};

/// Model files that appear instantly and arrive lazily.
#[derive(Debug, Parser)]
#[command(name = "modelfs", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pin a model (writes a pending manifest; downloads nothing)
    Add(cli::add::AddArgs),
    /// Fetch models now, with progress
    Pull(cli::pull::PullArgs),
    /// List the models in the store and their state
    Ls(cli::ls::LsArgs),
    /// Re-hash present blobs; quarantine corrupt ones
    Verify(cli::verify::VerifyArgs),
    /// Place a model file you already have into the store
    Import(cli::import::ImportArgs),
    /// Remove models' manifests (blobs stay until gc)
    Rm(cli::rm::RmArgs),
    /// Delete blobs no manifest names and abandoned partial downloads
    Gc(cli::gc::GcArgs),
}

fn init_logging(g: &Globals) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("warn,modelfs={level}")),
    )
    .format_timestamp_millis()
    .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.globals);
    let g = &cli.globals;
    let result: Result<(), CliError> = match &cli.command {
        Command::Add(a) => cli::add::run(g, a),
        Command::Pull(a) => cli::pull::run(g, a),
        Command::Ls(a) => cli::ls::run(g, a),
        Command::Verify(a) => cli::verify::run(g, a),
        Command::Import(a) => cli::import::run(g, a),
        Command::Rm(a) => cli::rm::run(g, a),
        Command::Gc(a) => cli::gc::run(g, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelfs: error: {e}");
            ExitCode::from(u8::try_from(e.code).unwrap_or(1))
        }
    }
}
