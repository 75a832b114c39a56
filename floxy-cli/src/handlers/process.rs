//! A child process in its own process group, killed with its whole group when dropped.

use rustix::process::{Pid, Signal, kill_process_group};
use std::process::ExitStatus;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;
use tokio::time::Instant;

/// How often the termination loop looks whether the group is empty (there is no event for
/// "every process of a group has exited").
const GROUP_POLL: Duration = Duration::from_millis(10);

/// How long to wait for the group to vanish after SIGKILL before giving up (a process in
/// uninterruptible sleep).
const AFTER_KILL_BOUND: Duration = Duration::from_secs(5);

/// The leader of a process group (`process_group(0)`), with its group.
///
/// Dropped before [`ProcessGroup::finish`] or [`ProcessGroup::terminate`] (the runtime
/// drops a handler's future at the step's timeout), it terminates the group from a spawned
/// task: SIGTERM, SIGKILL after the grace period, and reaps the leader.
pub(crate) struct ProcessGroup {
    child: Option<Child>,
    pgid: Option<Pid>,
    grace: Duration,
    reaped: bool,
}

impl ProcessGroup {
    pub(crate) fn new(child: Child, grace: Duration) -> Self {
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        Self {
            child: Some(child),
            pgid,
            grace,
            reaped: false,
        }
    }

    pub(crate) fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Waits for the leader to exit (cancel-safe) and reaps it.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => {
                let s = c.wait().await;
                self.reaped = s.is_ok();
                s
            }
            None => Err(std::io::Error::other("process already taken")),
        }
    }

    /// Sends `sig` to the whole group (a group without processes is not an error).
    pub(crate) fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, sig);
        }
    }

    /// Terminates the group and reaps the leader: SIGTERM, up to the grace period for every
    /// process of the group to exit, then SIGKILL.
    pub(crate) async fn terminate(&mut self) {
        let child = self.child.take();
        terminate_group(child, self.pgid, self.grace, self.reaped).await;
        self.reaped = true;
    }

    /// The leader was reaped and nothing of its group needs to be killed any more.
    pub(crate) fn finish(&mut self) {
        self.child = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let (pgid, grace, reaped) = (self.pgid, self.grace, self.reaped);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(terminate_group(Some(child), pgid, grace, reaped));
        } else {
            // No runtime to wait in: kill at once; tokio's orphan queue reaps the leader.
            if let Some(pgid) = pgid {
                signal_group(pgid, Signal::KILL);
            }
            drop(child);
        }
    }
}

fn signal_group(pgid: Pid, sig: Signal) {
    match kill_process_group(pgid, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw_nonzero().get(), error = %e, "cannot signal the process group");
        }
    }
}

async fn terminate_group(
    mut child: Option<Child>,
    pgid: Option<Pid>,
    grace: Duration,
    reaped: bool,
) {
    let Some(pgid) = pgid else {
        if let Some(c) = child.as_mut() {
            let _ = c.kill().await;
        }
        return;
    };
    let mut reaped = reaped || child.is_none();
    signal_group(pgid, Signal::TERM);
    let deadline = Instant::now() + grace;
    if !wait_group_gone(&mut child, &mut reaped, pgid, deadline).await {
        signal_group(pgid, Signal::KILL);
        let bound = Instant::now() + AFTER_KILL_BOUND;
        if !wait_group_gone(&mut child, &mut reaped, pgid, bound).await {
            tracing::warn!(
                pgid = pgid.as_raw_nonzero().get(),
                "processes of a handler's group survived SIGKILL"
            );
        }
    }
    if !reaped && let Some(c) = child.as_mut() {
        let _ = c.wait().await;
    }
}

/// Polls until the leader is reaped and no live process is left in the group, or the
/// deadline passes. `true` when the group is gone.
async fn wait_group_gone(
    child: &mut Option<Child>,
    reaped: &mut bool,
    pgid: Pid,
    deadline: Instant,
) -> bool {
    loop {
        if !*reaped && let Some(c) = child.as_mut() {
            *reaped = matches!(c.try_wait(), Ok(Some(_)) | Err(_));
        }
        if *reaped && !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Whether a process of the group is still running. Zombies do not count: once the leader
/// is reaped, members that outlived it belong to init, which reaps them (or not: some
/// container inits never do; such a zombie runs nothing and holds no pipe).
pub(crate) fn group_alive(pgid: Pid) -> bool {
    // Fast path: no process at all (zombies included) in the group.
    if rustix::process::test_kill_process_group(pgid) == Err(rustix::io::Errno::SRCH) {
        return false;
    }
    let want = pgid.as_raw_nonzero().get();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        // No /proc: ask the kernel (zombies count there).
        return rustix::process::test_kill_process_group(pgid).is_ok();
    };
    dir.filter_map(Result::ok).any(|e| {
        let name = e.file_name();
        let Some(number) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{number}/stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .is_some_and(|(state, pgrp)| pgrp == want && state != 'Z' && state != 'X')
    })
}

/// State and process group from `/proc/<pid>/stat` (`pid (comm) state ppid pgrp ...`).
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// What reading a stream up to a bound gave.
pub(crate) enum Bounded {
    /// Everything to EOF.
    Complete(Vec<u8>),
    /// More than the bound: reading stopped.
    Overflow,
}

/// Reads `r` to EOF, stopping once more than `limit` bytes came.
pub(crate) async fn read_bounded(
    r: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<Bounded> {
    let Some(mut r) = r else {
        return Ok(Bounded::Complete(Vec::new()));
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Bounded::Complete(buf));
        }
        if buf.len() + n > limit {
            return Ok(Bounded::Overflow);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads `r` to EOF keeping only its last `keep` bytes; complete lines go to `on_line` as
/// they come (cut at `keep` bytes each).
pub(crate) async fn read_tail(
    r: Option<impl AsyncRead + Unpin>,
    keep: usize,
    mut on_line: Option<impl FnMut(&str)>,
) -> Tail {
    let mut tail = Tail::default();
    let Some(mut r) = r else {
        return tail;
    };
    let mut chunk = vec![0u8; 8 * 1024];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &chunk[..n];
        tail.push(data, keep);
        if let Some(f) = on_line.as_mut() {
            for &b in data {
                if b == b'\n' {
                    f(&String::from_utf8_lossy(&line));
                    line.clear();
                } else if line.len() < keep {
                    line.push(b);
                }
            }
        }
    }
    if let Some(f) = on_line.as_mut()
        && !line.is_empty()
    {
        f(&String::from_utf8_lossy(&line));
    }
    tail
}

/// The end of a stream.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8], keep: usize) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > keep {
            let cut = self.bytes.len() - keep;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    /// The kept text, trimmed, with `…` in front when the start was cut off.
    pub(crate) fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.bytes);
        let s = s.trim();
        if self.truncated {
            format!("…{s}")
        } else {
            s.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        assert_eq!(parse_stat("42 (a) b (c)) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::default();
        t.push(b"hello ", 8);
        t.push(b"world", 8);
        assert_eq!(t.text(), "…lo world");
    }
}
