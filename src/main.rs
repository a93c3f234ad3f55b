//! The `pgvane` binary: command line → logging → `app::run`. No logic.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// The static (musl) build's allocator: musl's own serialises every thread
/// on one lock, which a relay allocating per message would feel.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A PostgreSQL router for Patroni clusters.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Something other than running the router.
    #[command(subcommand)]
    command: Option<Sub>,
    /// Configuration file (YAML, patroni_proxy compatible), as patroni_proxy
    /// takes it: `pgvane /etc/pgvane/pgvane.yaml`.
    #[arg(value_name = "CONFIG", conflicts_with = "config")]
    path: Option<PathBuf>,
    /// Configuration file, the same as the positional argument
    /// [default: /etc/pgvane/pgvane.yaml].
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration as a start would (every TLS, CA and
    /// password file read) and exit: 0 when valid, 1 otherwise.
    #[arg(long)]
    check: bool,
    /// Client worker threads, each a single-threaded runtime (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Log filter, over the config's `log_level` (RUST_LOG wins over both).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// `pgvane <command>`.
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Print a running pgvane's map, ports and pool use (from its admin API).
    Status {
        /// Its admin API address [default: `listen_address` of the default
        /// config, else 127.0.0.1:8009].
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
}

/// Where the config is read from when no path is given (the package's).
const DEFAULT_CONFIG: &str = "/etc/pgvane/pgvane.yaml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Status { admin }) = cli.command {
        let admin = admin.unwrap_or_else(|| {
            pgvane::config::load_file(std::path::Path::new(DEFAULT_CONFIG)).map_or_else(
                |_| "127.0.0.1:8009".to_owned(),
                |c| c.listen_address.to_string(),
            )
        });
        return match pgvane::status::fetch(&admin) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgvane status: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let path = cli
        .path
        .or(cli.config)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    if cli.check {
        return match pgvane::app::check(&path) {
            Ok(summary) => {
                println!("{}: {summary}", path.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: invalid configuration:\n{errors}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    // The same preparation as --check and a reload: every file read here.
    let prepared = match pgvane::app::prepare(&path) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{}: invalid configuration:\n{errors}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let config = prepared.config().clone();
    let json = config.log_format == pgvane::config::LogFormat::Json;
    let logs = pgvane::telemetry::init_logging(json, &config.log_level, cli.log.as_deref());
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let started = pgvane::workers::Workers::start(threads, config.worker_packing).and_then(|w| {
        // Control plane (watchers, admin API, accept loops, reload) on this thread.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok((std::sync::Arc::new(w), rt))
    });
    let (workers, runtime) = match started {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot start the runtimes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = match pgvane::relay::Engine::start(config.io_uring, threads) {
        Ok(e) => std::sync::Arc::new(e),
        Err(e) => {
            tracing::error!("io_uring: on, but {e}");
            eprintln!("pgvane: io_uring: on, but {e}; set io_uring: auto or off");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        engine = engine.name(),
        threads,
        "role ports relay with {}",
        engine.name()
    );
    let result = runtime.block_on(pgvane::app::run(
        path,
        prepared,
        std::sync::Arc::clone(&workers),
        engine,
        logs,
    ));
    workers.stop();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("pgvane: {e}");
            ExitCode::FAILURE
        }
    }
}
