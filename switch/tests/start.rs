//! Starting `switch serve` as an operator does: one switch per data directory (a second
//! process, or a second server in one process, is refused until the first stops or dies).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Only `loopback_config`, for the in-process servers.
#[allow(dead_code)]
mod common;

const LIMIT: Duration = Duration::from_secs(30);

/// A `switch serve` child, killed and reaped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits (bounded) for the process to exit.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the switch did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A configuration on loopback, ports chosen by the system, data in `data`.
fn write_config(path: &Path, data: &Path, extra: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n{extra}",
        data = data.display().to_string(),
    );
    std::fs::write(path, text).expect("write the configuration");
}

/// Starts the binary with its log in `log`; the receiver gets its `ready` line if it serves.
fn start(config: &Path, log: &Path) -> (Process, std::sync::mpsc::Receiver<String>) {
    let log = std::fs::File::create(log).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn the switch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = tx.send(line);
            }
        }
    });
    (Process(child), rx)
}

/// Starts the binary and waits for its `ready` line.
fn serve(config: &Path, log: &Path) -> (Process, String) {
    let (process, ready) = start(config, log);
    let line = ready.recv_timeout(LIMIT).unwrap_or_else(|_| {
        panic!(
            "no ready line; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (process, line)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).expect("read the log")
}

#[test]
fn a_second_switch_on_a_locked_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = dir.path().join("switch.toml");
    write_config(&config, &data, "");
    let log = |name: &str| dir.path().join(name);
    let (mut first, _) = serve(&config, &log("first.log"));

    // The second process on the same directory (its own ports): refused before recovery,
    // exit 1, naming the directory and the holder's pid.
    let (mut second, _) = start(&config, &log("second.log"));
    assert_eq!(second.exit_code(), Some(1));
    let refused = read(&log("second.log"));
    assert!(
        refused.contains(&format!(
            "data directory {} is in use by another switch (pid {}",
            data.display(),
            first.pid()
        )),
        "{refused}"
    );
    assert!(!refused.contains("recovered"), "{refused}");
    // The first is unharmed: still running.
    assert!(first.0.try_wait().expect("wait").is_none());

    // kill -9 releases the lock with the process: a new switch starts on the directory.
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reap");
    let (third, _) = serve(&config, &log("third.log"));
    // ... and a clean stop releases it too.
    let mut third = third;
    third.signal("TERM");
    assert_eq!(third.exit_code(), Some(0), "{}", read(&log("third.log")));
    let (fourth, _) = serve(&config, &log("fourth.log"));
    drop(fourth);
}

/// Servers in one process: on two directories they run side by side; on the same directory
/// the second is refused (a `flock` belongs to an open file, not to the process), and once
/// the first stops the directory can be served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_one_process_a_data_directory_is_served_once() {
    let (a, b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let start = |dir: &Path| {
        tokio::time::timeout(
            LIMIT,
            switch::server::start(common::loopback_config(dir), None),
        )
    };
    let first = start(a.path())
        .await
        .expect("in time")
        .expect("first starts");
    let beside = start(b.path())
        .await
        .expect("in time")
        .expect("another directory");
    let refused = match start(a.path()).await.expect("in time") {
        Ok(_) => panic!("a second server on the same directory started"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains(&format!(
            "data directory {} is in use by another switch (pid {}",
            a.path().display(),
            std::process::id()
        )),
        "{refused}"
    );
    first.shutdown().await.expect("clean shutdown");
    let again = start(a.path())
        .await
        .expect("in time")
        .expect("served again");
    again.shutdown().await.expect("clean shutdown");
    beside.shutdown().await.expect("clean shutdown");
}
