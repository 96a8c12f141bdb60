//! `loadgen`: the festival-peak load generator. Not built yet; until it is,
//! `cargo run --release -p benches --bin switch_run` drives a switch end to end.

fn main() -> std::process::ExitCode {
    eprintln!(
        "loadgen: not implemented yet; for an end-to-end run use \
         `cargo run --release -p benches --bin switch_run -- --help`"
    );
    std::process::ExitCode::from(2)
}
