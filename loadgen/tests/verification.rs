//! Short runs against an in-process switch on loopback: a clean run passes verification, and
//! the verifier fails, listing the mismatch, when a balance is tampered with or the effect of
//! an answer is dropped. Each run is a second or two of load.

use std::time::Duration;

use loadgen::config::{Options, Profile, Target};
use loadgen::run::{Session, Spawned};
use loadgen::verify;
use switch::wire::{Amount, Currency, Operation, Request, ResponseCode};

/// A bound on each whole test, far above what it needs.
const LIMIT: Duration = Duration::from_secs(120);

fn options(profile: Profile) -> Options {
    let mut o = Options::spawn_defaults(profile);
    o.customers = 40;
    o.merchants = 4;
    o.connections = 1;
    o.streams = 2;
    o.depth = 4;
    o.open_depth = 4;
    o.batch_max = 16;
    o.expire_secs = 1;
    o.progress = false;
    o.out = None;
    o.seed = 7;
    o
}

fn constant(rate: f64, secs: f64) -> Profile {
    Profile::Constant {
        rate,
        duration_secs: secs,
    }
}

/// Spawns a switch, connects, sets up and runs the profile, then hands the session to `then`.
fn with_run<T>(options: Options, then: impl AsyncFnOnce(&mut Session) -> T) -> T {
    let spawned = Spawned::start(&options).expect("the switch starts");
    let endpoint = spawned.endpoint();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("a runtime");
    let out = runtime.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mut session = Session::connect(options, &endpoint)
                .await
                .expect("connects");
            session.setup().await.expect("setup");
            session.run_profile().await.expect("the profile runs");
            let out = then(&mut session).await;
            session.close().await;
            out
        })
        .await
        .expect("the test finishes in time")
    });
    drop(runtime);
    spawned.stop().expect("the switch stops cleanly");
    out
}

#[test]
fn a_short_run_passes_verification() {
    let (v, stats) = with_run(options(constant(300.0, 1.5)), async |s: &mut Session| {
        (s.verify().await.expect("verifies"), s.stats())
    });
    assert!(v.passed, "{:#?}", v.mismatches);
    assert_eq!(v.sum_of_balances, "0.00 CNY");
    assert_eq!(v.unanswered, 0);
    assert!(v.authorizations_checked > 0 && v.sales_checked > 0, "{v:?}");
    // Every scheduled request was answered, and most were approved.
    assert!(stats.answered_total() >= 450, "{}", stats.answered_total());
    assert_eq!(stats.errors_total(), 0);
}

#[test]
fn a_balance_changed_behind_the_model_fails_verification() {
    let (v, account) = with_run(options(constant(200.0, 1.0)), async |s: &mut Session| {
        // Money the model never heard of: a deposit straight into customer 3.
        let account = s.customer_account(3);
        let answers = s
            .call_unmodelled(&[Request {
                id: s.next_request_id(),
                operation: Operation::Fund {
                    account,
                    amount: Amount(123),
                    currency: Currency(156),
                },
            }])
            .await
            .expect("answered");
        assert_eq!(answers[0].code, ResponseCode::Approved);
        (s.verify().await.expect("verifies"), account)
    });
    assert!(!v.passed);
    assert!(
        v.mismatches
            .iter()
            .any(|m| m.starts_with("customer 3: ledger balance") && m.contains("off by 1.23 CNY")),
        "{account:?}: {:#?}",
        v.mismatches
    );
    assert!(
        v.mismatches
            .iter()
            .any(|m| m.starts_with("funding account")),
        "{:#?}",
        v.mismatches
    );
}

#[test]
fn a_dropped_answer_fails_verification() {
    let mut o = options(constant(300.0, 1.0));
    o.mix.weights = "sale=1".parse().expect("valid");
    // The model ignores the effect of the tenth approved sale, as if its answer was lost.
    o.faults.drop_sale_effect = Some(10);
    let v = with_run(o, async |s: &mut Session| {
        s.verify().await.expect("verifies")
    });
    assert!(!v.passed);
    let customer = v
        .mismatches
        .iter()
        .filter(|m| m.starts_with("customer") && m.contains("ledger balance"))
        .count();
    let merchant = v
        .mismatches
        .iter()
        .filter(|m| m.starts_with("merchant") && m.contains("ledger balance"))
        .count();
    assert_eq!((customer, merchant), (1, 1), "{:#?}", v.mismatches);
    // The sale the model lost is unknown to it, but its money is still conserved on the switch.
    assert!(!v.mismatches.iter().any(|m| m.contains("not conserved")));
}

#[test]
fn a_tampered_observation_fails_and_the_honest_one_passes() {
    let (model, observed) = with_run(options(constant(200.0, 1.0)), async |s: &mut Session| {
        s.verify().await.expect("verifies");
        (s.model(), s.observe().await)
    });
    let honest = verify::compare(&model, &observed, ledger::Currency::CNY, &[], None);
    assert!(honest.passed, "{:#?}", honest.mismatches);
    let mut tampered = observed.clone();
    let seen = tampered.merchants[1].as_mut().expect("read");
    seen.ledger += 1;
    seen.available += 1;
    let v = verify::compare(&model, &tampered, ledger::Currency::CNY, &[], None);
    assert!(!v.passed);
    assert!(
        v.mismatches
            .iter()
            .any(|m| m.starts_with("merchant 1: ledger balance") && m.contains("off by 0.01 CNY")),
        "{:#?}",
        v.mismatches
    );
    assert!(v.mismatches.iter().any(|m| m.contains("not conserved")));
    let v = verify::compare(
        &model,
        &observed,
        ledger::Currency::CNY,
        &["Sale request 0x1".into()],
        None,
    );
    assert!(!v.passed);
    assert_eq!(
        v.mismatches,
        vec!["no answer: Sale request 0x1".to_string()]
    );
}

#[test]
fn a_lost_answer_is_resolved_by_asking_again() {
    let mut o = options(constant(300.0, 1.0));
    // The answer to an early frame is thrown away: its requests were executed, but loadgen
    // does not know their outcome until it sends them again with the same ids.
    o.faults.lose_frame = Some(5);
    let (v, stats) = with_run(o, async |s: &mut Session| {
        (s.verify().await.expect("verifies"), s.stats())
    });
    assert!(stats.errors_total() > 0, "the lost frame counts as errors");
    assert!(v.passed, "{:#?}", v.mismatches);
    assert_eq!(v.unanswered, 0);
}

#[test]
fn holds_left_to_expire_are_seen_expired() {
    let mut o = options(constant(100.0, 1.0));
    o.mix.weights = "auth_expire=1".parse().expect("valid");
    let (v, model) = with_run(o, async |s: &mut Session| {
        (s.verify().await.expect("verifies"), s.model())
    });
    assert!(v.passed, "{:#?}", v.mismatches);
    assert!(!model.auths.is_empty());
    assert!(
        model
            .auths
            .iter()
            .all(|(_, a)| a.state == loadgen::model::AuthState::Expired)
    );
}

/// A switch that remembers fewer payments than the run makes forgets the oldest finished
/// ones: verification accepts that within the bound, still checks every balance, and fails
/// when told the switch remembers more than it does.
#[test]
fn a_run_past_what_the_switch_remembers_verifies_within_the_bound() {
    const REMEMBERED: u64 = 120;
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("switch.toml");
    std::fs::write(
        &config,
        format!("[ledger]\ntransfers_remembered_max = {REMEMBERED}\npending_max = 60\n"),
    )
    .expect("written");
    let mut o = options(constant(400.0, 1.5));
    o.target = Target::Spawn {
        config: Some(config),
        no_fsync: false,
    };
    o.switch_remembers = Some(REMEMBERED);
    let (v, model, observed) = with_run(o, async |s: &mut Session| {
        let v = s.verify().await.expect("verifies");
        (v, s.model(), s.observe().await)
    });
    assert!(v.passed, "{:#?}", v.mismatches);
    let payments = (model.auths.len() + model.sales.len()) as u64;
    assert!(payments > 2 * REMEMBERED, "{payments} payments");
    assert!(
        v.statuses_forgotten > 0 && v.statuses_forgotten <= payments - REMEMBERED,
        "{} forgotten of {payments}",
        v.statuses_forgotten
    );
    // Holds left to expire that the switch no longer knows were taken as expired, and the
    // balances agreed.
    assert!(model.live_holds().next().is_none());
    // The same observations, judged as if the switch remembered every payment, fail.
    let strict = verify::compare(&model, &observed, ledger::Currency::CNY, &[], None);
    assert!(!strict.passed);
    assert!(
        strict
            .mismatches
            .iter()
            .all(|m| m.contains("switch says NotFound")),
        "{:#?}",
        strict.mismatches
    );
}

#[test]
fn a_target_is_trusted_by_its_fingerprint_and_only_by_it() {
    let spawned = Spawned::start(&options(constant(1.0, 1.0))).expect("the switch starts");
    let hex = |bytes: &[u8; 32]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let remote = |fingerprint: &str| {
        let cli = <loadgen::config::Cli as clap::Parser>::parse_from([
            "loadgen",
            "--target",
            &spawned.addr.to_string(),
            "--fingerprint",
            fingerprint,
            "--customers",
            "20",
            "--merchants",
            "2",
            "--connections",
            "1",
            "--streams",
            "1",
            "--expire-secs",
            "1",
            "--quiet",
            "constant",
            "--rate",
            "100",
            "--duration",
            "0.5",
        ]);
        loadgen::config::Options::from_cli(cli).expect("valid")
    };
    let right = remote(&hex(&spawned.fingerprint));
    let mut wrong_bytes = spawned.fingerprint;
    wrong_bytes[0] ^= 1;
    let wrong = remote(&hex(&wrong_bytes));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let endpoint = loadgen::run::Endpoint::remote(&wrong).expect("an endpoint");
            assert!(Session::connect(wrong, &endpoint).await.is_err());
            let endpoint = loadgen::run::Endpoint::remote(&right).expect("an endpoint");
            let mut session = Session::connect(right, &endpoint).await.expect("connects");
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
    spawned.stop().expect("stops");
}
