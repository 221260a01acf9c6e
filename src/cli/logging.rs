//! Log setup: `env_logger` everywhere, writing to stderr, a file, or
//! syslog (a mount daemon has no terminal). `RUST_LOG` overrides the level
//! chosen by `-v`/`-q`.

use std::io::Write;

use super::Globals;
use super::mount::LogTarget;

/// Initialises the global logger once.
pub fn init(g: &Globals, target: LogTarget) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let mut b = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("warn,modelfs={level}")),
    );
    b.format_timestamp_millis();
    match target {
        LogTarget::Stderr => {}
        LogTarget::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => {
                b.target(env_logger::Target::Pipe(Box::new(f)));
            }
            Err(e) => eprintln!(
                "modelfs: cannot open log file {}: {e}; logging to stderr",
                path.display()
            ),
        },
        LogTarget::Syslog => {
            b.format(|buf, record| writeln!(buf, "{}: {}", record.level(), record.args()));
            b.target(env_logger::Target::Pipe(Box::new(Syslog::open())));
        }
    }
    b.init();
}

/// Sends each log line to syslog(3) (journald on systemd hosts).
struct Syslog {
    line: Vec<u8>,
}

impl Syslog {
    fn open() -> Self {
        // SAFETY: the ident is a static C string that outlives the process.
        unsafe { libc::openlog(c"modelfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        Self { line: Vec::new() }
    }
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(pos) = self.line.iter().position(|b| *b == b'\n') {
            let mut msg: Vec<u8> = self.line.drain(..=pos).collect();
            msg.pop();
            msg.retain(|b| *b != 0);
            let prio = if msg.starts_with(b"ERROR") {
                libc::LOG_ERR
            } else if msg.starts_with(b"WARN") {
                libc::LOG_WARNING
            } else {
                libc::LOG_INFO
            };
            msg.push(0);
            // SAFETY: "%s" with a NUL-terminated buffer.
            unsafe { libc::syslog(prio, c"%s".as_ptr(), msg.as_ptr()) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
