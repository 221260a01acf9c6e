//! `modelfs`: parse the command line, set up logging, dispatch. No logic.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
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
    /// Publish a present model to an OCI registry as a ModelPack artifact
    Push(cli::push::PushArgs),
    /// List the models in the store and their state
    Ls(cli::ls::LsArgs),
    /// What a model's GGUF header says and the memory it needs (no download)
    Info(cli::info::InfoArgs),
    /// Re-hash present blobs; quarantine corrupt ones
    Verify(cli::verify::VerifyArgs),
    /// Place a model file you already have into the store (a reflink or a copy; --link hard-links it), or (--from) the GGUFs of Ollama, the Hugging Face cache, LM Studio or a folder
    Import(cli::import::ImportArgs),
    /// Remove models' manifests (blobs stay until gc)
    Rm(cli::rm::RmArgs),
    /// Delete blobs no manifest names and abandoned partial downloads
    Gc(cli::gc::GcArgs),
    /// Keep models from eviction (a split set as one)
    Pin(cli::pin::PinArgs),
    /// Let models be evicted again
    Unpin(cli::pin::PinArgs),
    /// What the store's blobs take, its limits, what is pinned or open, what is evicted next
    Du(cli::du::DuArgs),
    /// Show or change the store's settings (cache_max, min_free)
    Settings(cli::settings::SettingsArgs),
    /// Show every model's state and download progress (of a mount, or of the store)
    Status(cli::status::StatusArgs),
    /// Mount the store: every model appears as NAME.FORMAT and is fetched on first open
    Mount(cli::mount::MountArgs),
    /// Serve this store's verified blobs over HTTPS, as a mirror for other hosts
    Serve(cli::serve::ServeArgs),
}

fn main() -> ExitCode {
    // `modelfs SOURCE MOUNTPOINT -o …` is how mount.fuse3 runs an fstab line.
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).chain(["help"]).collect();
    let args = cli::mount::rewrite_helper_args(std::env::args().collect(), &names);
    let cli = Cli::parse_from(args);
    let target = match &cli.command {
        Command::Mount(a) => cli::mount::log_target(a),
        _ => cli::logging::LogTarget::Stderr,
    };
    if let Err(e) = cli::logging::init(&cli.globals, &target) {
        eprintln!("modelfs: error: {e}");
        return ExitCode::FAILURE;
    }
    let g = &cli.globals;
    let result: Result<(), CliError> = match &cli.command {
        Command::Add(a) => cli::add::run(g, a),
        Command::Pull(a) => cli::pull::run(g, a),
        Command::Push(a) => cli::push::run(g, a),
        Command::Ls(a) => cli::ls::run(g, a),
        Command::Info(a) => cli::info::run(g, a),
        Command::Verify(a) => cli::verify::run(g, a),
        Command::Import(a) => cli::import::run(g, a),
        Command::Rm(a) => cli::rm::run(g, a),
        Command::Gc(a) => cli::gc::run(g, a),
        Command::Mount(a) => cli::mount::run(g, a),
        Command::Status(a) => cli::status::run(g, a),
        Command::Serve(a) => cli::serve::run(g, a),
        Command::Pin(a) => cli::pin::run_pin(g, a),
        Command::Unpin(a) => cli::pin::run_unpin(g, a),
        Command::Du(a) => cli::du::run(g, a),
        Command::Settings(a) => cli::settings::run(g, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelfs: error: {e}");
            ExitCode::from(u8::try_from(e.code).unwrap_or(1))
        }
    }
}
