//! `herald-server`: the Herald reference server.
//!
//! One binary, no external service: the embedded SQLite store (in `./herald-data`; `store = "memory"` keeps
//! nothing), the WebSocket transport (`ws://127.0.0.1:8080/ws`), `GET /healthz` and Prometheus metrics at
//! `GET /metrics` on the same listener; traces over OTLP/HTTP when configured (`[telemetry]`, see
//! `docs/operations.md`); optionally (`[quic] enabled = true`) native QUIC and WebTransport on UDP
//! `127.0.0.1:8443`, with a generated development certificate whose SHA-256 is printed at start, and
//! (`[longpoll] enabled = true`) HTTP long-poll and SSE on `127.0.0.1:8081`. With `store = "postgres"` (and a
//! `[postgres]` section or `HERALD_DATABASE_URL`), messages, channels and cursors live in PostgreSQL.
//!
//! ```text
//! herald-server [serve] [--config FILE] [--listen ADDR]   run the server (the default command)
//! herald-server token <USER> [--secret S | --config FILE] [--ttl 24h] [--device D]
//! herald-server check-config [--config FILE]              validate, print the effective config (redacted)
//! ```
//!
//! Configuration: defaults < TOML file < `HERALD_*` environment variables (`__` between levels, e.g.
//! `HERALD_HUB__LIMITS__MAX_FRAME_BYTES`) < command line. See `herald.example.toml` at the repository root.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod auth;
mod config;
mod serve;
mod telemetry;
mod token;

use config::{ServerConfig, Sources};
use telemetry::{LogFormat, Telemetry};

/// The error type of the binary: a message for the user.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Herald reference server: instant messaging and push notifications (SQLite or memory store, WebSocket transport).
#[derive(Debug, Parser)]
#[command(name = "herald-server", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Log format (the level comes from RUST_LOG, default `info`); overrides `telemetry.log_format` (default text).
    #[arg(long, global = true, value_enum, env = "HERALD_LOG_FORMAT")]
    log_format: Option<LogFormat>,

    /// What to do (default: serve).
    #[command(subcommand)]
    command: Option<Command>,

    /// Options of `serve` when no command is given.
    #[command(flatten)]
    serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT (Ctrl-C) or SIGTERM.
    Serve(ServeArgs),
    /// Mint an HS256 JWT for a user (development and tests); prints it on stdout.
    Token(TokenArgs),
    /// Validate the configuration and print the effective configuration as TOML (secrets redacted).
    CheckConfig(ConfigArg),
}

/// `--config FILE`.
#[derive(Debug, Clone, Args)]
struct ConfigArg {
    /// TOML configuration file (default: none; defaults and HERALD_* variables apply).
    #[arg(long, short = 'c', value_name = "FILE", env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
}

/// Options of `serve`.
#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// The configuration file.
    #[command(flatten)]
    config: ConfigArg,
    /// Listen address, `IP:port` (overrides `listen` and HERALD_LISTEN; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

/// Options of `token`.
#[derive(Debug, Clone, Args)]
struct TokenArgs {
    /// The user id (the token's `sub`).
    user: String,
    /// The HS256 secret (else HERALD_AUTH__JWT_HS256_SECRET, else auth.jwt_hs256_secret of the config file).
    #[arg(long, env = "HERALD_AUTH__JWT_HS256_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The configuration file (for the secret, jwt_issuer and jwt_audience).
    #[command(flatten)]
    config: ConfigArg,
    /// Lifetime: 3600s, 90m, 24h, 7d, 1h30m, or plain seconds.
    #[arg(long, default_value = "24h", value_parser = token::parse_ttl)]
    ttl: std::time::Duration,
    /// The device id (the token's `device` claim).
    #[arg(long)]
    device: Option<String>,
}

/// Runs the command.
fn run(cli: Cli) -> Result<(), Error> {
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => {
            let sources = Sources { file: args.config.config.as_deref(), listen: args.listen };
            let config = ServerConfig::load(&sources)?;
            // Logging, metrics recorder and trace exporter: before the runtime and the hub exist.
            let telemetry = Telemetry::init(&config.telemetry, cli.log_format)?;
            let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
            let result = runtime.block_on(serve::run(config, &sources, &telemetry));
            drop(runtime);
            telemetry.shutdown();
            result
        }
        Command::Token(args) => {
            let sources = Sources { file: args.config.config.as_deref(), listen: None };
            let request = token::MintRequest {
                user: &args.user,
                device: args.device.as_deref(),
                ttl: args.ttl,
                secret: args.secret.as_deref(),
            };
            println!("{}", token::mint(&request, &sources)?);
            Ok(())
        }
        Command::CheckConfig(args) => {
            let sources = Sources { file: args.config.as_deref(), listen: None };
            let config = ServerConfig::load(&sources)?;
            // Builds the authenticator too: reads and checks the key files and the static tokens.
            auth::build(&config.auth, true)?;
            print!("{}", config.to_redacted_toml()?);
            if !config.auth.has_jwt_key() {
                eprintln!("note: no JWT key is configured: `serve` will generate a development secret at start");
            }
            eprintln!("configuration OK");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default() {
        let cli = Cli::try_parse_from(["herald-server", "--listen", "127.0.0.1:0"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, Some("127.0.0.1:0".parse().expect("addr")));
        let cli = Cli::try_parse_from(["herald-server", "token", "alice", "--ttl", "1h"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::Token(TokenArgs { ref user, .. })) if user == "alice"));
        assert!(Cli::try_parse_from(["herald-server", "token", "alice", "--ttl", "soon"]).is_err());
    }
}
