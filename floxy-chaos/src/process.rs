//! Process faults: worker processes killed with SIGKILL and restarted.
//!
//! [`WorkerProcesses`] runs `n` copies of the `floxy-chaos worker` subcommand (or any
//! program taking the same arguments) against a shared store. Each writes its ledger to its
//! own file. As a [`Disruptor`] it SIGKILLs a random worker after each pause and starts a
//! replacement; [`Disruptor::heal`] kills them all for good and merges their ledger files
//! into the run's ledger, so the controller can settle and audit what they left behind.
//!
//! A worker watches its standard input and exits when it closes, so workers never outlive
//! their controller.
//!
//! The other process faults live where their resource does: an immediate PostgreSQL restart
//! is [`crate::backend::PgRestarter`]; killing the process that holds a redb file is this
//! module with a single *driving* worker (`--drive`), which starts instances itself and
//! adopts the ones its killed predecessor left in the file.

use crate::faults::FaultCounters;
use crate::ledger::Ledger;
use crate::rng::ChaosRng;
use crate::runner::Disruptor;
use parking_lot::Mutex;
use rand::Rng;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::process::{Child, Command};

/// A pool of worker processes under chaos.
pub struct WorkerProcesses {
    program: PathBuf,
    args: Vec<String>,
    ledger_dir: PathBuf,
    children: tokio::sync::Mutex<Vec<Option<Child>>>,
    generation: AtomicU64,
    interval_ms: (u64, u64),
    ledger: Arc<Ledger>,
    files: Mutex<Vec<PathBuf>>,
}

impl std::fmt::Debug for WorkerProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerProcesses")
            .field("program", &self.program)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl WorkerProcesses {
    /// Starts `n` workers: `program args... --index K --generation G --ledger FILE`.
    /// Ledger files go to `ledger_dir` and are merged into `ledger` by [`Disruptor::heal`].
    ///
    /// # Errors
    /// A process could not be spawned.
    pub async fn start(
        program: PathBuf,
        args: Vec<String>,
        n: usize,
        ledger_dir: PathBuf,
        interval_ms: (u64, u64),
        ledger: Arc<Ledger>,
    ) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(&ledger_dir).map_err(|e| e.to_string())?;
        let me = Arc::new(Self {
            program,
            args,
            ledger_dir,
            children: tokio::sync::Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            interval_ms,
            ledger,
            files: Mutex::new(Vec::new()),
        });
        let mut kids = Vec::with_capacity(n);
        for k in 0..n {
            kids.push(Some(me.spawn(k)?));
        }
        *me.children.lock().await = kids;
        Ok(me)
    }

    fn spawn(&self, k: usize) -> Result<Child, String> {
        let g = self.generation.fetch_add(1, Ordering::Relaxed);
        let file = self.ledger_dir.join(format!("ledger-{k}-{g}.jsonl"));
        self.files.lock().push(file.clone());
        let child = Command::new(&self.program)
            .args(&self.args)
            .arg("--index")
            .arg(k.to_string())
            .arg("--generation")
            .arg(g.to_string())
            .arg("--ledger")
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        tracing::info!(
            worker = k,
            generation = g,
            pid = child.id(),
            "worker process started"
        );
        Ok(child)
    }

    /// SIGKILLs worker `k` and starts a replacement.
    ///
    /// # Errors
    /// The replacement could not be spawned.
    pub async fn kill_and_restart(&self, k: usize) -> Result<(), String> {
        let mut kids = self.children.lock().await;
        if let Some(Some(c)) = kids.get_mut(k) {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        if let Some(slot) = kids.get_mut(k) {
            *slot = Some(self.spawn(k)?);
        }
        Ok(())
    }

    /// Workers that exited on their own (crashed), with their exit status.
    pub async fn exited(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut kids = self.children.lock().await;
        for (k, c) in kids.iter_mut().enumerate() {
            if let Some(c) = c
                && let Ok(Some(st)) = c.try_wait()
            {
                out.push((k, st.to_string()));
            }
        }
        out
    }

    /// Kills every worker (SIGKILL) and merges their ledger files into the run's ledger.
    /// Returns the number of entries merged.
    ///
    /// # Errors
    /// A worker's ledger file could not be read.
    pub async fn stop_and_merge(&self) -> Result<usize, String> {
        let mut kids = self.children.lock().await;
        for c in kids.iter_mut() {
            if let Some(mut c) = c.take() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
        let files = std::mem::take(&mut *self.files.lock());
        let mut n = 0;
        for f in files {
            if f.exists() {
                n += self.ledger.merge_file(&f).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_file(&f);
            }
        }
        let _ = std::fs::remove_dir(&self.ledger_dir);
        Ok(n)
    }
}

#[floxy::async_trait]
impl Disruptor for WorkerProcesses {
    fn name(&self) -> String {
        "SIGKILL of worker processes".into()
    }
    fn interval_ms(&self) -> (u64, u64) {
        self.interval_ms
    }
    async fn disrupt(&self, rng: &mut ChaosRng, counters: &FaultCounters) -> Result<(), String> {
        for (k, status) in self.exited().await {
            counters.add("process.exited_unexpectedly");
            tracing::warn!(worker = k, %status, "worker process exited on its own");
        }
        let n = self.children.lock().await.len();
        if n == 0 {
            return Ok(());
        }
        let k = rng.random_range(0..n);
        counters.add("process.sigkill");
        self.kill_and_restart(k).await
    }
    async fn heal(&self) -> Result<(), String> {
        let merged = self.stop_and_merge().await?;
        tracing::info!(entries = merged, "worker processes stopped; ledgers merged");
        Ok(())
    }
}

/// In a worker process: exits the process when standard input closes (the controller died
/// or killed the pipe). Spawn it once at start-up.
pub async fn exit_when_stdin_closes() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => {
                tracing::info!("controller gone (stdin closed); exiting");
                std::process::exit(0);
            }
            Ok(_) => {}
        }
    }
}
