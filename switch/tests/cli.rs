//! The `switch config` commands as an operator runs them: exit codes and what they print.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn switch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(args)
        .output()
        .expect("running the switch binary")
}

/// `switch serve --config FILE` that is expected to refuse to start: its exit code and
/// standard error. A switch that starts after all is killed after 30 s, failing the test.
fn serve_refused(config: &Path) -> (Option<i32>, String) {
    let log = config.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switch"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("running the switch binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the switch started: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(&log).expect("log"))
}

/// A server and metrics address on loopback, ports chosen by the system, so that a switch
/// that starts by mistake takes nobody's port.
const LOOPBACK: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n";

fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("switch.toml");
    std::fs::write(&file, text).expect("writing the config");
    let out = switch(&["config", "check", file.to_str().expect("utf-8 path")]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_printed_default_checks_clean() {
    let out = switch(&["config", "default"]);
    assert_eq!(out.status.code(), Some(0));
    let (code, stdout, stderr) = check(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn a_costly_setting_is_valid_but_warned_about_by_key() {
    let (code, stdout, stderr) = check(
        "[ledger]\ntransfers_remembered_max = 1000000\npending_max = 900000\n\
         [wal]\ndurability = \"none\"\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].starts_with("warning: ledger.pending_max (900000)"),
        "{stdout}"
    );
    assert!(
        warnings[1].starts_with("warning: wal.durability: "),
        "{stdout}"
    );
}

#[test]
fn an_invalid_config_exits_2_naming_the_key() {
    let (code, stdout, stderr) = check("[limits]\nqueue_depth_max = 0\n");
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stderr.contains("limits.queue_depth_max"), "{stderr}");
    let (code, _, stderr) = check("[ledger]\npending_maximum = 5\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("pending_maximum"), "{stderr}");
}

/// A listed certificate fingerprint twice, however it is written, is refused naming both
/// entries, by `config check` as by `serve`.
#[test]
fn a_certificate_listed_twice_is_refused_naming_both_entries() {
    let hex = "3f".repeat(32);
    let colons = vec!["3F"; 32].join(":");
    let text = format!(
        "{LOOPBACK}[[identities]]\nfingerprint_sha256 = \"{hex}\"\nparticipant = 2\n\n\
         [[identities]]\nfingerprint_sha256 = \"{colons}\"\nparticipant = 2\nadmin = true\n"
    );
    let (code, stdout, stderr) = check(&text);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stderr.contains("identities.fingerprint_sha256"), "{stderr}");
    assert!(
        stderr.contains("entry 0 (participant 2)")
            && stderr.contains("entry 1 (participant 2, admin)"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("switch.toml");
    std::fs::write(&file, &text).expect("writing the config");
    let (code, stderr) = serve_refused(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("entry 1 (participant 2, admin)"),
        "{stderr}"
    );
}

#[test]
fn a_log_level_that_would_log_nothing_is_refused() {
    for level in ["infoo", "switch=loud", "warning,switch=debug", ""] {
        let (code, stdout, stderr) = check(&format!("[log]\nlevel = {level:?}\n"));
        assert_eq!(code, Some(2), "{level:?}: {stdout}");
        assert!(stderr.contains("log.level"), "{level:?}: {stderr}");
    }
    for level in ["warn", "switch=debug,info", "INFO", "off"] {
        let (code, _, stderr) = check(&format!("[log]\nlevel = {level:?}\n"));
        assert_eq!(code, Some(0), "{level:?}: {stderr}");
    }
}
