//! Starting `switch serve` as an operator does: one switch per data directory (a second
//! process, or a second server in one process, is refused until the first stops or dies), the
//! start-up log line, and what a SIGHUP says about the sections it does not reload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// The binary, and `loopback_config` for the in-process servers.
#[allow(dead_code)]
mod common;
use common::process::{Process, Ready};
use switch::server::lock::LockError;

const LIMIT: Duration = Duration::from_secs(30);

/// A configuration on loopback, ports chosen by the system, data in `data`.
fn write_config(path: &Path, data: &Path, extra: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n{extra}",
        data = data.display().to_string(),
    );
    std::fs::write(path, text).expect("write the configuration");
}

/// Starts the binary and waits for its `ready` line.
fn serve(config: &Path, log: &Path) -> (Process, Ready) {
    let mut process = common::serve(config, log).expect("spawn the switch");
    let ready = process.ready(LIMIT).unwrap_or_else(|e| panic!("{e}"));
    (process, ready)
}

/// Its exit code, once it has exited (bounded).
fn exit_code(process: &mut Process) -> Option<i32> {
    process.wait(LIMIT).expect("the switch exits").code()
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).expect("read the log")
}

/// Polls the log until `pattern` occurs `count` times; the log then.
fn wait_for(log: &Path, pattern: &str, count: usize) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = read(log);
        if text.matches(pattern).count() >= count {
            return text;
        }
        assert!(Instant::now() < deadline, "no {pattern:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let mut second = common::serve(&config, &log("second.log")).expect("spawn the switch");
    assert_eq!(exit_code(&mut second), Some(1));
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
    assert_eq!(
        refused.lines().filter(|l| l.contains("in use")).count(),
        1,
        "said once: {refused}"
    );
    // The first is unharmed: still running.
    assert!(first.exited().is_none());

    // kill -9 releases the lock with the process: a new switch starts on the directory.
    first.kill().expect("SIGKILL");
    let (mut third, _) = serve(&config, &log("third.log"));
    // ... and a clean stop releases it too.
    third.signal("TERM").expect("SIGTERM");
    assert_eq!(
        exit_code(&mut third),
        Some(0),
        "{}",
        read(&log("third.log"))
    );
    let (fourth, _) = serve(&config, &log("fourth.log"));
    drop(fourth);
}

/// The line that says the switch serves names its version and commit, where its
/// configuration came from, its data directory and its addresses; the fingerprint line says
/// how a client pins the certificate.
#[test]
fn the_start_line_says_what_runs_where() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = dir.path().join("switch.toml");
    write_config(&config, &data, "");
    let log = dir.path().join("switch.log");
    let (_process, ready) = serve(&config, &log);
    let text = read(&log);
    let line = text
        .lines()
        .find(|l| l.contains("switch is serving"))
        .unwrap_or_else(|| panic!("no serving line:\n{text}"));
    assert!(
        line.contains(&format!("version=\"{}\"", switch::VERSION)),
        "{line}"
    );
    assert!(
        line.contains(&format!("commit=\"{}\"", switch::COMMIT)),
        "{line}"
    );
    assert!(
        line.contains(&format!("config={}", config.display())),
        "{line}"
    );
    assert!(
        line.contains(&format!("data_dir={}", data.display())),
        "{line}"
    );
    let (quic, http, fingerprint) = (ready.quic, ready.http, ready.fingerprint);
    assert!(line.contains(&format!("quic_addr={quic}")), "{line}");
    assert!(line.contains(&format!("http_addr={http}")), "{line}");
    let cert = data.join("tls").join(switch::tls::SELF_SIGNED_CERT_FILE);
    assert!(
        text.contains(&format!(
            "`--fingerprint {fingerprint}` (loadgen, switch clearing); openssl shows it with \
             `openssl x509 -inform DER -in {} -noout -fingerprint -sha256`",
            cert.display()
        )),
        "{text}"
    );
}

/// SIGHUP reloads the routes only: a file whose other sections changed is warned about,
/// naming them; one that changed only its routes is not; and a file that cannot be read is
/// logged in one line that says its cause once.
#[test]
fn a_reload_names_the_sections_it_does_not_apply() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config: PathBuf = dir.path().join("switch.toml");
    write_config(&config, &data, "");
    let log = dir.path().join("switch.log");
    let (process, _) = serve(&config, &log);

    let route = "[[routes]]\nprefix = \"62\"\nissuer = 2\n";
    write_config(&config, &data, route);
    process.signal("HUP").expect("SIGHUP");
    let text = wait_for(&log, "routing table reloaded", 1);
    assert!(
        !text.contains("applies [[routes]] and [[cluster.members]] only"),
        "{text}"
    );

    write_config(
        &config,
        &data,
        &format!(
            "[authorization]\nexpiry_tick_ms = 250\n\n[[identities]]\nfingerprint_sha256 = \
             \"{}\"\nparticipant = 2\n\n{route}",
            "ab".repeat(32)
        ),
    );
    process.signal("HUP").expect("SIGHUP");
    let text = wait_for(&log, "routing table reloaded", 2);
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("applies [[routes]] and [[cluster.members]] only"))
        .collect();
    assert_eq!(warned.len(), 1, "{text}");
    assert!(warned[0].contains(" WARN "), "{}", warned[0]);
    assert!(
        warned[0].contains("the file's [authorization], [[identities]] differ"),
        "{}",
        warned[0]
    );

    std::fs::remove_file(&config).expect("remove the configuration");
    process.signal("HUP").expect("SIGHUP");
    let text = wait_for(&log, "routing table not reloaded", 1);
    let line = text
        .lines()
        .find(|l| l.contains("routing table not reloaded"))
        .expect("the line");
    assert!(line.contains(&config.display().to_string()), "{line}");
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
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
        Err(e) => {
            // Typed, as the restart below tells it from other failures.
            assert!(
                matches!(e.downcast_ref(), Some(LockError::Held { .. })),
                "{e:#}"
            );
            e.to_string()
        }
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
    // Served again once the first has stopped. The other tests of this file spawn switch
    // processes meanwhile, and a child holds a copy of every descriptor of this process, the
    // lock's included, from its fork until its exec: a restart in that instant is refused,
    // so it is tried again for a moment. A lock the stop did not release fails it.
    let retry_until = Instant::now() + Duration::from_secs(2);
    let again = loop {
        match start(a.path()).await.expect("in time") {
            Ok(again) => break again,
            Err(e)
                if Instant::now() < retry_until
                    && matches!(e.downcast_ref(), Some(LockError::Held { .. })) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("served again: {e:#}"),
        }
    };
    again.shutdown().await.expect("clean shutdown");
    beside.shutdown().await.expect("clean shutdown");
}
