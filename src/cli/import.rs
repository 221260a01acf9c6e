//! `modelfs import`: put a model file you already have into the store
//! ([`crate::store::Store::import_file`] does it, see `store::import`; this parses the
//! arguments and shows progress and the result). `--from` hands over to
//! [`super::import_from`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::store::import::{ImportProgress, ImportRequest, Placed};
use crate::store::manifest::validate_format;
use crate::text::human_bytes;

use super::{CliError, Globals, parse_name, progress_view};

#[derive(Debug, clap::Args)]
#[command(after_long_help = super::import_from::NAMING_HELP)]
pub struct ImportArgs {
    /// The model file to import; with --from, the models (Ollama
    /// MODEL[:TAG]) or repositories (Hugging Face ORG/REPO) to take, all
    /// if none
    #[arg(value_name = "PATH | MODEL")]
    pub items: Vec<PathBuf>,
    /// Take the GGUFs of another tool's store: `ollama`, `hf-cache`,
    /// `lmstudio`, or a folder's path. Each file is reflinked where the
    /// filesystem can, else hard-linked (same filesystem; a later change
    /// to it is caught and never served), else copied; and hashed once
    #[arg(long, value_name = "TOOL|DIR")]
    pub from: Option<String>,
    /// The tool's folder (default: $OLLAMA_MODELS or ~/.ollama/models, else
    /// /usr/share/ollama/.ollama/models;
    /// $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub;
    /// ~/.lmstudio/models)
    #[arg(long, value_name = "DIR", requires = "from")]
    pub path: Option<PathBuf>,
    /// Model name to give it (with --from: to the one model found)
    #[arg(long)]
    pub name: Option<String>,
    /// File format, also the extension in the mount
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// Repoint an existing name at this file's blob
    #[arg(long)]
    pub force: bool,
    /// Hard-link the file into the store instead of copying it (same
    /// filesystem only; no space used). The blob is then your file: an
    /// in-place edit of it is caught before the next open (the blob is
    /// hashed again and quarantined if it changed), but a program that has
    /// the model open already may read the edited bytes.
    #[arg(long, conflicts_with = "from")]
    pub link: bool,
    /// With --from ollama: also import each model's projector layer (a
    /// vision model's image encoder) as NAME-mmproj
    #[arg(long, requires = "from")]
    pub projector: bool,
}

/// How the bytes reached the store, in words.
pub(super) fn placed_word(p: Option<Placed>) -> &'static str {
    match p {
        Some(Placed::Reflink) => "reflink, a copy-on-write copy",
        Some(Placed::Copy) => "copy",
        Some(Placed::HardLink) => "hard link",
        None => "the blob was in the store already",
    }
}

/// Hashes `path`, places it in the store, writes its manifest.
pub fn run(g: &Globals, a: &ImportArgs) -> Result<(), CliError> {
    if let Some(from) = &a.from {
        return super::import_from::run(g, a, from);
    }
    let [path] = &a.items[..] else {
        return Err(CliError::new(
            "import takes one file (PATH --name NAME), or --from TOOL|DIR",
        ));
    };
    let Some(name) = &a.name else {
        return Err(CliError::new(format!(
            "{}: say which name to give it with --name",
            path.display()
        )));
    };
    let name = parse_name(name)?;
    validate_format(&a.format).map_err(|p| CliError::new(format!("--format {p}")))?;
    let store = g.store_for_writing()?;
    let req = ImportRequest {
        name: &name,
        path,
        format: &a.format,
        force: a.force,
        link: a.link,
    };
    // Progress on stderr, unless -q.
    let mut shown = (!g.quiet).then(|| Progress::new(name.as_str()));
    let progress = shown.as_mut().map(|p| p as &mut dyn ImportProgress);
    let imported = store
        .import_file(&req, progress)
        .map_err(|e| CliError::new(e.to_string()))?;
    println!(
        "imported {} as {} ({}, {})",
        path.display(),
        imported.manifest.file_name(),
        imported.manifest.blob.short(),
        placed_word(imported.placed)
    );
    Ok(())
}

/// The import's progress on stderr: one [`Shown`] per hashing pass.
pub(super) struct Progress {
    label: String,
    shown: Option<Shown>,
}

impl Progress {
    pub(super) fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            shown: None,
        }
    }
}

impl ImportProgress for Progress {
    fn start(&mut self, what: &str, total: u64) {
        self.shown = Some(Shown::new(&self.label, what, total));
    }

    fn at(&mut self, done: u64) {
        if let Some(s) = self.shown.as_mut() {
            s.at(done);
        }
    }

    fn finish(&mut self, done: u64) {
        if let Some(s) = self.shown.take() {
            s.finish(done);
        }
    }
}

/// Progress of one import on stderr: a bar on a terminal, a line every few
/// seconds otherwise (logs, CI).
struct Shown {
    label: String,
    what: String,
    total: u64,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Shown {
    const LINE_EVERY: Duration = Duration::from_secs(5);

    fn new(label: &str, what: &str, total: u64) -> Self {
        let bar = super::stderr_is_terminal().then(|| {
            let b = progress_view::new_bar(label, 0, total);
            b.set_message(what.to_string());
            b
        });
        Self {
            label: label.to_string(),
            what: what.to_string(),
            total,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn at(&mut self, done: u64) {
        match &self.bar {
            Some(b) => b.set_position(done),
            None if self.last_line.elapsed() >= Self::LINE_EVERY => {
                self.last_line = Instant::now();
                eprintln!(
                    "{}: {}: {} / {}",
                    self.label,
                    self.what,
                    human_bytes(done),
                    human_bytes(self.total)
                );
            }
            None => {}
        }
    }

    fn finish(self, done: u64) {
        match self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!(
                "{}: {}: {} done in {:.1} s",
                self.label,
                self.what,
                human_bytes(done),
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}
