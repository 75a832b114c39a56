//! The report: markdown sections printed as they are made, and written to
//! `benches/RESULTS.md` after a full run (or to `--out`), with the machine, the date and the
//! commit they were measured on.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// The markdown of a run, printed line by line as it grows.
#[derive(Default)]
pub(crate) struct Report {
    body: String,
}

impl Report {
    /// Starts a section titled `title`.
    pub(crate) fn section(&mut self, title: &str) {
        self.line("");
        self.line(&format!("## {title}"));
        self.line("");
    }

    /// Adds one line.
    pub(crate) fn line(&mut self, line: &str) {
        println!("{line}");
        self.body.push_str(line);
        self.body.push('\n');
    }

    /// The whole report: a header (machine, date, commit, command) and the sections.
    pub(crate) fn render(&self, command: &str) -> String {
        let mut out = String::from("# floxy benchmark results\n\n");
        out.push_str(
            "Written by `cargo bench -p floxy-benches` (see `benches/benches/all/main.rs` for \
             the parts, the flags and what each figure measures); every full run overwrites \
             this file.\n\n",
        );
        let _ = writeln!(out, "* date: {}", date());
        let _ = writeln!(out, "* commit: {}", commit());
        let _ = writeln!(out, "* machine: {}", machine());
        let _ = writeln!(out, "* command: `{command}`");
        out.push_str(&self.body);
        out
    }

    /// Writes [`Report::render`] to `path`.
    pub(crate) fn write(&self, path: &Path, command: &str) -> std::io::Result<()> {
        std::fs::write(path, self.render(command))
    }
}

/// The output of a command, trimmed (`None` if it failed).
fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The current UTC date and time.
fn date() -> String {
    output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".to_owned())
}

/// The commit of the workspace, `+ uncommitted changes` when the tree is dirty.
fn commit() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let Some(head) = output("git", &["-C", dir, "rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    match output(
        "git",
        &["-C", dir, "status", "--porcelain", "--untracked-files=no"],
    ) {
        Some(s) if s.is_empty() => head,
        _ => format!("{head} + uncommitted changes"),
    }
}

/// Cores, CPU model (`/proc/cpuinfo`) and kernel.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    let allocator = if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else {
        "system allocator"
    };
    format!("{cores} cores, {model}, Linux {kernel}, {allocator}")
}
