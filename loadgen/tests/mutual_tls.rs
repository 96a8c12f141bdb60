//! `--target` with a switch that requires client certificates: loadgen trusts the switch by
//! CA file and presents an admin certificate, and the run verifies.

use std::time::Duration;

use clap::Parser;
use loadgen::config::{Cli, Options};
use loadgen::run::{Endpoint, Session};
use switch::config::{Config, Identity, RouteConfig, TlsMode};
use switch::tls::Fingerprint;

const LIMIT: Duration = Duration::from_secs(120);

fn leaf(
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    name: &str,
    client: bool,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    (params.signed_by(&key, ca).expect("signed"), key)
}

#[test]
fn a_switch_that_requires_client_certificates_is_driven_and_verified() {
    let dir = tempfile::tempdir().expect("a directory");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("written");
        path
    };
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).expect("a CA").pem();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let (server_cert, server_key) = leaf(&ca, "localhost", false);
    let (admin_cert, admin_key) = leaf(&ca, "loadgen", true);

    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("literal");
    config.metrics.listen = "127.0.0.1:0".parse().expect("literal");
    config.server.data_dir = dir.path().join("data");
    config.tls.mode = TlsMode::Files;
    config.tls.cert_file = Some(write("server.pem", server_cert.pem()));
    config.tls.key_file = Some(write("server.key", server_key.serialize_pem()));
    config.tls.client_ca_file = Some(write("ca.pem", ca_pem.clone()));
    config.identities = vec![Identity {
        fingerprint_sha256: Fingerprint::of(admin_cert.der()).to_string(),
        participant: 1,
        admin: true,
    }];
    config.routes = vec![RouteConfig {
        prefix: "62".into(),
        issuer: 2,
        pooled_account: None,
    }];
    let switch_runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let running = switch_runtime
        .block_on(switch::server::start(config, None))
        .expect("the switch starts");

    let options = |with_certificate: bool| {
        let addr = running.quic_addr.to_string();
        let ca_file = dir.path().join("ca.pem").display().to_string();
        let cert = write("admin.pem", admin_cert.pem()).display().to_string();
        let key = write("admin.key", admin_key.serialize_pem())
            .display()
            .to_string();
        let mut args = vec!["loadgen", "--target", &addr, "--ca-file", &ca_file];
        if with_certificate {
            args.extend(["--client-cert", &cert, "--client-key", &key]);
        }
        args.extend([
            "--customers",
            "20",
            "--merchants",
            "2",
            "--connections",
            "1",
            "--streams",
            "2",
            "--expire-secs",
            "1",
            "--quiet",
            "constant",
            "--rate",
            "100",
            "--duration",
            "0.5",
        ]);
        let mut o = Options::from_cli(Cli::parse_from(args)).expect("valid");
        o.timeout = Duration::from_secs(3);
        o
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(LIMIT, async {
            // Without a certificate the switch serves nothing: setup cannot be made, and the
            // error says why.
            let anonymous = options(false);
            let endpoint = Endpoint::remote(&anonymous).expect("an endpoint");
            let refused = match Session::connect(anonymous, &endpoint).await {
                Ok(mut session) => session.setup().await.expect_err("refused"),
                Err(e) => e,
            };
            let message = format!("{refused:#}");
            assert!(
                message.contains("the switch refused the TLS handshake: certificate required"),
                "{message}"
            );

            let o = options(true);
            let endpoint = Endpoint::remote(&o).expect("an endpoint");
            let mut session = Session::connect(o, &endpoint).await.expect("connects");
            session.setup().await.expect("setup");
            session.run_profile().await.expect("runs");
            let v = session.verify().await.expect("verifies");
            assert!(v.passed, "{:#?}", v.mismatches);
            assert!(v.authorizations_checked + v.sales_checked > 0);
            session.close().await;
        })
        .await
        .expect("in time")
    });
    drop(runtime);
    switch_runtime
        .block_on(running.shutdown())
        .expect("the switch stops");
}
