//! `connector`: the host daemon and its CLI.

mod agent;
mod cli;
mod clusters;
mod config;
mod control;
mod daemon;
mod engine;
mod progress;
mod routes;
mod state;
#[cfg(test)]
mod testing;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::control::protocol::{Request, Response};

#[derive(Parser, Debug)]
#[command(
    name = "connector",
    version,
    about = "Reach Docker container IPs from the host through a WireGuard tunnel"
)]
struct Cli {
    /// Config file (TOML). Without it, the built-in defaults are used.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (as root): tunnel, agent container and routes.
    Run,
    /// Ask the running daemon to re-read Docker's networks and apply routes now.
    SyncNetworks {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Walk the whole path (config, daemon, Docker, agent, handshake, routes,
    /// VM rules, a probe through the tunnel) and say how to fix what fails.
    Doctor,
    /// Remove everything connector set up (agent container, VM rules, routes,
    /// state directory). Stop the daemon first.
    Uninstall,
    /// Show the running daemon's state.
    Status {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (Homebrew installs them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    #[command(hide = true)]
    Man,
}

fn init_logging(level: &str) -> Result<()> {
    let filter = match level {
        "error" | "warn" | "info" | "debug" | "trace" => tracing_subscriber::EnvFilter::new(
            format!("warn,connector={level},connector_tunnel={level}"),
        ),
        other => tracing_subscriber::EnvFilter::try_new(other)
            .map_err(|e| anyhow::anyhow!("bad --log-level {other:?}: {e}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// `connector run` needs root (a tun device, routes): said at once, before
/// anything is read or made. Without root on a Mac the usual cause is `brew
/// services start` without sudo, a per-user LaunchAgent (launchd then sets
/// `XPC_SERVICE_NAME` to the job's label).
fn require_root(euid: u32, launchd_job: Option<&str>) -> Result<(), String> {
    if euid == 0 {
        return Ok(());
    }
    let mut message = "connector run needs root (it creates a tun device and routes): \
                       run `sudo brew services start connector`, or `sudo connector run`"
        .to_owned();
    if let Some(job) = launchd_job.filter(|j| !j.is_empty() && *j != "0") {
        message += &format!(
            "; it was started by the per-user launchd job {job:?} (`brew services start` without sudo): \
             `brew services stop connector` first"
        );
    }
    Err(message)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run = cli.command {
        let euid = nix::unistd::geteuid().as_raw();
        if let Err(message) = require_root(euid, std::env::var("XPC_SERVICE_NAME").ok().as_deref())
        {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    }
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "connector", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            return Ok(());
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Command::Doctor = cli.command {
        // Doctor reports a bad config as its first failed step.
        let checks = runtime.block_on(cli::doctor::run(cli.config.as_deref()));
        let (text, ok) = cli::doctor::render(&checks);
        print!("{text}");
        if !ok {
            std::process::exit(1);
        }
        return Ok(());
    }
    // Validate the config before anything touches the system.
    let config = Config::load(cli.config.as_deref())?;
    init_logging(&cli.log_level)?;
    runtime.block_on(async {
        match cli.command {
            Command::Run => daemon::run(config).await,
            Command::SyncNetworks { json } => {
                match control::request(&config.control_socket, &Request::SyncNetworks).await? {
                    Response::Sync(report) => {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&report)?);
                        } else {
                            print!("{}", report.render());
                        }
                        if !report.errors.is_empty() {
                            bail!("{} route change(s) failed", report.errors.len());
                        }
                    }
                    Response::Error { message } => bail!("{message}"),
                    other => bail!("unexpected response {other:?}"),
                }
                Ok(())
            }
            Command::Doctor | Command::Completions { .. } | Command::Man => {
                unreachable!("handled above")
            }
            Command::Uninstall => {
                for line in cli::uninstall::run(&config).await? {
                    println!("{line}");
                }
                Ok(())
            }
            Command::Status { json } => {
                match control::request(&config.control_socket, &Request::Status).await? {
                    Response::Status(status) if json => {
                        println!("{}", serde_json::to_string_pretty(&status)?)
                    }
                    Response::Status(status) => print!("{}", cli::status::render(&status)),
                    Response::Error { message } => bail!("{message}"),
                    other => bail!("unexpected response {other:?}"),
                }
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_without_root_names_the_fix_and_the_launchd_job() {
        assert!(require_root(0, None).is_ok());
        let plain = require_root(501, None).unwrap_err();
        assert!(
            plain.contains("sudo brew services start connector"),
            "{plain}"
        );
        assert!(plain.contains("sudo connector run"), "{plain}");
        assert!(!plain.contains("launchd"), "{plain}");
        let launchd = require_root(501, Some("homebrew.mxcl.connector")).unwrap_err();
        assert!(
            launchd.contains("per-user launchd job \"homebrew.mxcl.connector\"")
                && launchd.contains("brew services stop connector"),
            "{launchd}"
        );
    }

    #[test]
    fn completions_and_the_manual_are_generated_from_the_cli() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut command,
            "connector",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("sync-networks") && text.contains("doctor"),
            "{text}"
        );
        let mut man = Vec::new();
        clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut man)
            .unwrap();
        assert!(String::from_utf8(man).unwrap().starts_with(".ie"));
    }
}
