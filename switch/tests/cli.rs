//! The `switch config` and `switch clearing` commands as an operator runs them: exit codes and
//! what they print.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

// The binary only.
#[allow(dead_code)]
mod common;

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
    let mut process = common::serve(config, &log).expect("running the switch binary");
    let status = process
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the switch started: {e}"));
    (status.code(), process.log())
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

/// PEM files for `tls.mode = "files"`: the server's certificate and key, a key of another
/// certificate, and a client CA.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> TlsFiles {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).expect("cert");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("a CA");
        for (name, text) in [
            ("server.pem", server.cert.pem()),
            ("server.key", server.signing_key.serialize_pem()),
            ("other.key", other.signing_key.serialize_pem()),
            ("ca.pem", ca.pem()),
            ("garbage.pem", "not a PEM file\n".to_string()),
            // A certificate block whose contents are not a certificate.
            (
                "bad-der.pem",
                "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n"
                    .to_string(),
            ),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A configuration in files mode naming these files (`cert`, `key`, `ca` by file name).
    fn config(&self, cert: &str, key: &str, ca: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\nmode = \"files\"\ncert_file = {cert:?}\nkey_file = {key:?}\n\
             client_ca_file = {ca:?}\n",
            data = self.path("data"),
            cert = self.path(cert),
            key = self.path(key),
            ca = self.path(ca),
        )
    }
}

/// `config check` reads and checks the TLS files (the same code `serve` starts with) and
/// refuses each unusable one with exit 2, naming its key and its path.
#[test]
fn config_check_refuses_unusable_tls_files_naming_the_key() {
    let files = TlsFiles::new();
    let (code, stdout, stderr) = check(&files.config("server.pem", "server.key", "ca.pem"));
    assert_eq!(code, Some(0), "a good pair: {stderr}");
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
    for ((cert, key, ca), bad_key, bad_file, why) in [
        (
            ("absent.pem", "server.key", "ca.pem"),
            "tls.cert_file",
            "absent.pem",
            "No such file",
        ),
        (
            ("garbage.pem", "server.key", "ca.pem"),
            "tls.cert_file",
            "garbage.pem",
            "no certificate",
        ),
        (
            ("bad-der.pem", "server.key", "ca.pem"),
            "tls.cert_file",
            "bad-der.pem",
            "X.509",
        ),
        (
            ("server.pem", "absent.key", "ca.pem"),
            "tls.key_file",
            "absent.key",
            "No such file",
        ),
        (
            ("server.pem", "garbage.pem", "ca.pem"),
            "tls.key_file",
            "garbage.pem",
            "no private key",
        ),
        (
            ("server.pem", "other.key", "ca.pem"),
            "tls.key_file",
            "other.key",
            "not the key of",
        ),
        (
            ("server.pem", "server.key", "absent.pem"),
            "tls.client_ca_file",
            "absent.pem",
            "No such file",
        ),
        (
            ("server.pem", "server.key", "garbage.pem"),
            "tls.client_ca_file",
            "garbage.pem",
            "no certificate",
        ),
        (
            ("server.pem", "server.key", "bad-der.pem"),
            "tls.client_ca_file",
            "bad-der.pem",
            "CA certificate",
        ),
    ] {
        let (code, stdout, stderr) = check(&files.config(cert, key, ca));
        let case = format!("{cert} {key} {ca}");
        assert_eq!(code, Some(2), "{case}: {stdout}");
        assert!(
            stderr.contains(&format!("{bad_key}: {}", files.path(bad_file))),
            "{case}: {stderr}"
        );
        assert!(stderr.contains(why), "{case}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{case}: one line: {stderr}"
        );
    }
}

/// `serve` refuses a key that is not its certificate's the same way, exit 2 naming the key,
/// before it recovers anything (the log directory is never created).
#[test]
fn serve_refuses_a_mismatched_key_before_recovery() {
    let files = TlsFiles::new();
    let config = files.dir.path().join("switch.toml");
    std::fs::write(&config, files.config("server.pem", "other.key", "ca.pem")).expect("write");
    let (code, stderr) = serve_refused(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("tls.key_file: {}", files.path("other.key"))),
        "{stderr}"
    );
    assert!(!stderr.contains("recovered"), "{stderr}");
    assert!(!files.dir.path().join("data").join("wal").exists());
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
