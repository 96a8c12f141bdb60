//! The `switch config` and `switch clearing` commands as an operator runs them: exit codes and
//! what they print.

use std::process::{Command, Output};

fn switch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switch"))
        .args(args)
        .output()
        .expect("running the switch binary")
}

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

/// `switch clearing` against an address where nothing answers gives up after `--timeout-secs`
/// and says how long it waited.
#[test]
fn clearing_gives_up_after_its_timeout_and_says_so() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = silent.local_addr().expect("address").to_string();
    let fingerprint = vec!["ab"; 32].join(":");
    let started = std::time::Instant::now();
    let out = switch(&[
        "clearing",
        "--target",
        &target,
        "--fingerprint",
        &fingerprint,
        "--timeout-secs",
        "0.5",
        "list",
    ]);
    let waited = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("no answer from {target} within 0.5 s"))
            && stderr.contains("--timeout-secs"),
        "{stderr}"
    );
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
}
