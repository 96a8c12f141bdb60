//! A child process of a test (a switch, or loadgen): started with its standard output read
//! line by line and its standard error appended to a log file, every wait for it bounded, and
//! killed (SIGKILL) and reaped when dropped, so that none outlives its test however the test
//! ends.
//!
//! The switch's tests reach it through `common` (`common::serve` starts the `switch serve`
//! binary); loadgen's tests include this file by path, since they cannot name the switch's
//! binary: their switch is a test binary serving in a process of its own. Either prints the
//! line `switch serve` prints once it serves (`Running::ready_line`), which `ready` waits for.

// Each test uses its part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use switch::tls::Fingerprint;

/// Where the ready line starts; a test binary's own output may come before it on the line.
const READY: &str = "ready quic=";

/// A child process, killed and reaped when dropped.
pub struct Process {
    child: Child,
    /// Standard output, line by line, from a reader thread that ends with the process. The
    /// channel is unbounded so that the child never blocks on a full pipe; a test's child
    /// prints a few lines.
    stdout: Receiver<String>,
    log: PathBuf,
}

/// What the ready line says: the switch has recovered and bound its addresses.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub fingerprint: Fingerprint,
}

impl Ready {
    /// `ready quic=ADDR http=ADDR fingerprint=HEX`, anywhere in `line`.
    pub fn parse(line: &str) -> Option<Ready> {
        let (_, rest) = line.split_once(READY)?;
        let (mut quic, mut http, mut fingerprint) = (None, None, None);
        for word in format!("quic={rest}").split_whitespace() {
            let Some(pair) = word.split_once('=') else {
                continue;
            };
            match pair {
                ("quic", addr) => quic = addr.parse().ok(),
                ("http", addr) => http = addr.parse().ok(),
                ("fingerprint", hex) => {
                    fingerprint = switch::config::parse_fingerprint(hex).map(Fingerprint);
                }
                _ => {}
            }
        }
        Some(Ready {
            quic: quic?,
            http: http?,
            fingerprint: fingerprint?,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `command` with no standard input, its standard output read here and its
    /// standard error appended to `log`.
    pub fn spawn(command: &mut Command, log: &Path) -> Result<Process, String> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("spawning {:?}: {e}", command.get_program()))?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        // The guard exists from here on: an early return kills the child.
        let process = Process {
            child,
            stdout: rx,
            log: log.to_path_buf(),
        };
        let stdout = stdout.ok_or("no standard output pipe")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the ready line, passing over any other output. An error
    /// (none in time, the process ended, an unreadable line) says why, with the log's end.
    pub fn ready(&mut self, limit: Duration) -> Result<Ready, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.stdout.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failed(&format!("no ready line within {limit:?}")));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed("its output ended without a ready line"));
                }
            };
            if line.contains(READY) {
                return Ready::parse(&line)
                    .ok_or_else(|| self.failed(&format!("unreadable ready line {line:?}")));
            }
        }
    }

    fn failed(&mut self, what: &str) -> String {
        let exit = self.exited();
        format!(
            "{what} (exit: {exit:?}); log {}:\n{}",
            self.log.display(),
            self.log_tail(30)
        )
    }

    /// Sends the signal `name` (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .map_err(|e| format!("running kill: {e}"))?;
        if !status.success() {
            return Err(format!("kill -{name} {}: {status}", self.pid()));
        }
        Ok(())
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) -> Result<(), String> {
        self.child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
        self.child.wait().map_err(|e| format!("reaping: {e}"))?;
        Ok(())
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `limit` for it to end.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failed(&format!("still running after {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its standard output not read yet, waiting at most `limit` for the pipe to close (it
    /// closes when the process ends).
    pub fn stdout(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut text = String::new();
        while let Ok(line) = self
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
