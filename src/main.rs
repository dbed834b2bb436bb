#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use credvault::{
    cli::{Cli, Command, ServeArgs},
    client::{self, Request},
    commands::{self, EXIT_CONFIG, exit_for, offline, with_advice},
    config::{Config, Settings},
    server::{self, Listeners},
    telemetry,
    vault::Vault,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Keygen(args) => commands::keygen(args.out.as_deref()),
        Command::Serve(args) => serve(&args),
        Command::RotateSigningKey(args) => offline(commands::rotate_signing_key(&args)),
        Command::Backup(args) => offline(commands::backup(&args)),
        Command::Restore(args) => offline(commands::restore(&args)),
        Command::RotateKey(args) => offline(commands::rotate_key(&args)),
        Command::Migrate(args) => offline(commands::migrate(&args)),
        Command::Accounts(group) => client::run(Request::Accounts(group)),
        Command::Leases(group) => client::run(Request::Leases(group)),
        Command::Callers(group) => client::run(Request::Callers(group)),
        Command::Tokens(group) => client::run(Request::Tokens(group)),
        Command::Reveal(reveal) => client::run(Request::Reveal(reveal)),
        Command::Watch(watch) => client::run(Request::Watch(watch)),
        Command::Audit(group) => client::run(Request::Audit(group)),
        Command::Keys(group) => client::run(Request::Keys(group)),
        Command::Health(health) => client::run(Request::Health(health)),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "credvault",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let settings =
        match Config::load(args.config.as_deref(), args.overrides()).and_then(Config::resolve) {
            Ok(settings) => settings,
            Err(error) => {
                eprintln!("credvault: configuration error: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    telemetry::init(settings.log_format, &settings.log_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("credvault: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> ExitCode {
    if let Some(dev) = &settings.dev_key {
        tracing::warn!(
            key_file = %dev.path.display(),
            "DEVELOPMENT MODE: the master key is stored beside the data; anyone who can read the data directory can read every secret. Never use --dev in production."
        );
    }
    // Bound first: the probe port answers NOT_SERVING while the vault opens.
    let listeners = match Listeners::bind(&settings).await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!("credvault: {error}");
            return ExitCode::from(match &error {
                server::ServeError::Bind { source, .. }
                    if source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    commands::EXIT_IN_USE
                }
                _ => commands::EXIT_UNAVAILABLE,
            });
        }
    };
    let vault = match Vault::open(&settings).await {
        Ok(vault) => vault,
        Err(error) => {
            let described = with_advice(&error);
            tracing::error!(error = %described, "refusing to start");
            eprintln!("credvault: refusing to start: {described}");
            return exit_for(&error);
        }
    };
    let shutdown = match server::shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("credvault: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    if settings.admin_token_generated {
        // Shown once, on stdout, on its own line; never logged.
        println!("admin token: {}", settings.admin_token.expose());
    }
    tracing::info!(
        tcp = %listeners.tcp_addr().map(|a| a.to_string()).unwrap_or_default(),
        socket = %listeners.socket_path().map(|p| p.display().to_string()).unwrap_or_default(),
        data_dir = %settings.data_dir.display(),
        metrics = %listeners.metrics_addr().map(|a| a.to_string()).unwrap_or_default(),
        health = %listeners.health_addr().map(|a| a.to_string()).unwrap_or_default(),
        "credvault serving"
    );
    match server::run(vault, listeners, settings.shutdown_grace, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "credvault stopped with an error");
            ExitCode::FAILURE
        }
    }
}
