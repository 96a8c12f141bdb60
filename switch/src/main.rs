//! `switch`: the payment switch binary. A thin shell over the `switch` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switch::config::{Config, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(name = "switch", version, about = "Payment switch and clearing core")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the protocol (the default when no command is given).
    Serve {
        /// TOML configuration; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
    /// Check a configuration file and say what is wrong with it.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let path = config.clone();
            let loaded = match &config {
                Some(path) => Config::load(path),
                None => Config::parse(DEFAULT_CONFIG, "embedded default"),
            };
            let config = match loaded {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            switch::server::init_logging(&config.log);
            match switch::server::run(config, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("switch: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
