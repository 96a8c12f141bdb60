//! `loadgen`: a thin shell over the library. Exit code 0: the run passed verification (or
//! skipped it); 1: verification failed; 2: the run could not be made as asked; 3: `step`
//! found no rate that held the SLO (`report::Report::exit_code`).

use std::process::ExitCode;

use clap::Parser;
use loadgen::config::{Cli, Options};

fn main() -> ExitCode {
    let options = match Options::from_cli(Cli::parse()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {}", switch::server::error_line(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    let out = options.out.clone();
    let outcome = match loadgen::run::run(options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {}", switch::server::error_line(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    print!("{}", outcome.report.table());
    if let Some(dir) = out {
        match outcome.report.write(&dir) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
            }
            Err(e) => {
                eprintln!("loadgen: {}", switch::server::error_line(e.as_ref()));
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::from(outcome.report.exit_code())
}
