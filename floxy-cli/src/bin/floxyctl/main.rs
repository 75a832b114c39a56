//! `floxyctl`: run a YAML flow on an embedded store, operate instances in a database
//! (PostgreSQL or a redb file), validate and draw flow files.

mod db;
mod input;
mod render;
mod run;

use clap::{Args, Parser, Subcommand};
use floxy_cli::duration::parse_duration;
use floxy_cli::exit::{CliError, CliResult, EXIT_CODES_HELP, Exit};
use floxy_cli::flows::GraphFormat;
use floxy_cli::output::OutputFormat;
use floxy_cli::store::{DEFAULT_SCHEMA, PgParts, StoreSpec};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const ABOUT: &str = "Run floxy saga flows from YAML files and operate their instances.";

const LONG_ABOUT: &str = "\
Run floxy saga flows from YAML files and operate their instances.

Run mode: `floxyctl run` runs one instance of a flow file to its end on an embedded store
(memory by default, or a redb file that survives a crash: continue with `floxyctl resume`).

Database mode: start, cancel, abort, decide, requeue, list and inspect instances stored in
PostgreSQL (--database-url, or --host --port --user --database with the password from -W
or PG_PASSWORD) or in a redb file (--store redb:PATH).";

const MAIN_AFTER_HELP: &str = "\
Examples:
  floxyctl run -f order.yaml -i input.json
  echo '{\"amount\": 120}' | floxyctl run -f order.yaml --flow order
  floxyctl validate -f order.yaml
  floxyctl graph -f order.yaml --flow order --format mermaid
  floxyctl start -o order-v1 -i input.json --host localhost --port 5432 --user floxy --database floxy -W
  floxyctl list --status running --store redb:./floxy.redb
  floxyctl show 01936d5e-0000-7000-8000-000000000000 --database-url postgres://floxy@localhost/floxy";

fn after_help(examples: &str) -> String {
    format!("Examples:\n{examples}\n\n{EXIT_CODES_HELP}")
}

/// Parses a `--*-timeout`/`--older-than` value.
fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Parses a `--store` value.
fn store_arg(s: &str) -> Result<StoreSpec, String> {
    s.parse::<StoreSpec>().map_err(|e| e.to_string())
}

#[derive(Debug, Parser)]
#[command(
    name = "floxyctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = format!("{MAIN_AFTER_HELP}\n\n{EXIT_CODES_HELP}"),
    propagate_version = true,
)]
struct Cli {
    /// Output format: aligned tables for people, or JSON for scripts (on stdout; progress
    /// and errors go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one instance of a flow to its end on an embedded store, with live progress.
    #[command(after_help = after_help("\
  floxyctl run -f order.yaml -i input.json
  echo '{\"amount\": 120}' | floxyctl run -f order.yaml --flow order
  floxyctl run -f order.yaml -w 5 --completion-timeout 5m -D
  floxyctl run -f order.yaml --store redb:./run.redb   # survives a crash: floxyctl resume
  floxyctl run -f order.yaml --output json | jq .status"))]
    Run(run::RunArgs),
    /// Continue the unfinished instances of a redb file (or database) after a crash.
    #[command(after_help = after_help("\
  floxyctl resume -f order.yaml --store redb:./run.redb
  floxyctl resume -f order.yaml --store redb:./run.redb --completion-timeout 30m"))]
    Resume(run::ResumeArgs),
    /// Start an instance of a registered workflow (it runs where workers run: floxyd).
    #[command(after_help = after_help("\
  floxyctl start -o order-v1 -i input.json --host localhost --port 5432 --user floxy --database floxy -W
  floxyctl start -o order-v1 -i - --store redb:./floxy.redb < input.json
  floxyctl start -o order-v1 --idempotency-key order-42 --database-url postgres://floxy@localhost/floxy"))]
    Start(db::StartArgs),
    /// Cancel an instance: compensate every completed step, end `cancelled`.
    #[command(after_help = after_help("\
  floxyctl cancel -o 01936d5e-... --reason \"User requested cancellation\" --requested-by alice -W --host localhost --user floxy --database floxy"))]
    Cancel(db::StopArgs),
    /// Abort an instance at once, without compensation: end `aborted`.
    #[command(after_help = after_help("\
  floxyctl abort -o 01936d5e-... --reason \"Critical error\" --store redb:./floxy.redb"))]
    Abort(db::StopArgs),
    /// Confirm or reject a human step waiting for a decision.
    #[command(after_help = after_help("\
  floxyctl decide -o 01936d5e-... --step approve --confirm --comment \"looks good\" --store redb:./floxy.redb
  floxyctl decide -o 01936d5e-... --step approve --reject --decided-by bob --database-url postgres://floxy@localhost/floxy"))]
    Decide(db::DecideArgs),
    /// Requeue a DLQ record: the step runs again (optionally with a new input).
    #[command(after_help = after_help("\
  floxyctl dlq --store redb:./floxy.redb
  floxyctl requeue 7 --store redb:./floxy.redb
  floxyctl requeue 7 -i fixed-input.json --database-url postgres://floxy@localhost/floxy"))]
    Requeue(db::RequeueArgs),
    /// List instances, oldest first, a bounded page at a time.
    #[command(after_help = after_help("\
  floxyctl list --store redb:./floxy.redb
  floxyctl list --status running --workflow order-v1 --limit 20 --database-url postgres://floxy@localhost/floxy
  floxyctl list --after 01936d5e-... --store redb:./floxy.redb   # the next page"))]
    List(db::ListArgs),
    /// Show an instance: its steps and its event timeline.
    #[command(after_help = after_help("\
  floxyctl show 01936d5e-... --store redb:./floxy.redb
  floxyctl show 01936d5e-... --output json --database-url postgres://floxy@localhost/floxy | jq .steps"))]
    Show(db::ShowArgs),
    /// List the dead-letter queue.
    #[command(after_help = after_help("\
  floxyctl dlq --store redb:./floxy.redb
  floxyctl dlq --workflow order-v1 --limit 20 --database-url postgres://floxy@localhost/floxy"))]
    Dlq(db::DlqArgs),
    /// List the registered workflow definitions.
    #[command(after_help = after_help("\
  floxyctl workflows --store redb:./floxy.redb"))]
    Workflows(db::PlainArgs),
    /// Counts of instances by status, the queue and the DLQ.
    #[command(after_help = after_help("\
  floxyctl stats --database-url postgres://floxy@localhost/floxy --output json"))]
    Stats(db::PlainArgs),
    /// Remove terminal instances older than a duration (retention).
    #[command(after_help = after_help("\
  floxyctl cleanup --older-than 30d --store redb:./floxy.redb
  floxyctl cleanup --older-than 12h --database-url postgres://floxy@localhost/floxy"))]
    Cleanup(db::CleanupArgs),
    /// Create or upgrade the database schema (PostgreSQL) or the redb file.
    #[command(after_help = after_help("\
  floxyctl migrate --database-url postgres://floxy@localhost/floxy
  floxyctl migrate --partitioned --host localhost --user floxy --database floxy -W
  floxyctl migrate --store redb:./floxy.redb"))]
    Migrate(db::MigrateArgs),
    /// Check a flow file: every error with its line and column.
    #[command(after_help = after_help("\
  floxyctl validate -f order.yaml
  floxyctl validate -f order.yaml --output json"))]
    Validate(ValidateArgs),
    /// Draw a flow of a flow file (text, Mermaid or Graphviz dot).
    #[command(after_help = after_help("\
  floxyctl graph -f order.yaml --flow order
  floxyctl graph -f order.yaml --flow order --format mermaid
  floxyctl graph -f order.yaml --flow order --format dot | dot -Tsvg > order.svg"))]
    Graph(GraphArgs),
    /// Print the version.
    #[command(after_help = after_help("\
  floxyctl version
  floxyctl version --output json"))]
    Version,
}

/// The store of database-mode commands.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "FLOXY_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with_all = ["host", "store"]
    )]
    database_url: Option<String>,
    /// PostgreSQL host (Floxy's connection flags: --host --port --user --database).
    #[arg(long, value_name = "HOST", conflicts_with = "store")]
    host: Option<String>,
    /// PostgreSQL port.
    #[arg(long, value_name = "PORT", requires = "host")]
    port: Option<u16>,
    /// PostgreSQL user.
    #[arg(long, value_name = "USER", requires = "host")]
    user: Option<String>,
    /// PostgreSQL database.
    #[arg(long, value_name = "NAME", requires = "host")]
    database: Option<String>,
    /// Prompt for the PostgreSQL password (otherwise PG_PASSWORD is used when set).
    #[arg(short = 'W', long = "password-prompt", requires = "host")]
    password_prompt: bool,
    /// PostgreSQL schema holding floxy's tables.
    #[arg(long, env = "FLOXY_DB_SCHEMA", default_value = DEFAULT_SCHEMA, value_name = "SCHEMA")]
    schema: String,
    /// A redb file (`redb:PATH`) instead of PostgreSQL.
    #[arg(long, value_name = "redb:PATH", value_parser = store_arg)]
    store: Option<StoreSpec>,
    /// Do not run the PostgreSQL migrations on connection (Floxy runs them; so do we by
    /// default).
    #[arg(long)]
    no_migrate: bool,
}

impl DbArgs {
    /// The store these flags name.
    fn spec(&self) -> CliResult<StoreSpec> {
        if let Some(url) = &self.database_url {
            return Ok(StoreSpec::Postgres {
                url: url.clone(),
                schema: self.schema.clone(),
            });
        }
        if let Some(host) = &self.host {
            let password = if self.password_prompt {
                Some(prompt_password()?)
            } else {
                std::env::var("PG_PASSWORD").ok().filter(|p| !p.is_empty())
            };
            let parts = PgParts {
                host: host.clone(),
                port: self.port,
                user: self.user.clone(),
                password,
                database: self.database.clone(),
            };
            return Ok(StoreSpec::Postgres {
                url: parts.url(),
                schema: self.schema.clone(),
            });
        }
        match &self.store {
            Some(StoreSpec::Memory) => Err(CliError::bad_input(
                "--store memory holds nothing between runs: use --store redb:PATH or a PostgreSQL database",
            )),
            Some(StoreSpec::Postgres { url, .. }) => Ok(StoreSpec::Postgres {
                url: url.clone(),
                schema: self.schema.clone(),
            }),
            Some(spec) => Ok(spec.clone()),
            None => Err(CliError::bad_input(
                "no database: give --database-url URL, --host HOST [--port --user --database], or --store redb:PATH",
            )),
        }
    }
}

fn prompt_password() -> CliResult<String> {
    if !std::io::stdin().is_terminal() && !std::io::stderr().is_terminal() {
        return Err(CliError::bad_input(
            "-W needs a terminal to prompt for the password; set PG_PASSWORD instead",
        ));
    }
    rpassword::prompt_password("PostgreSQL password: ")
        .map_err(|e| CliError::bad_input(format!("cannot read the password: {e}")))
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// The flow file (YAML or JSON).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, Args)]
struct GraphArgs {
    /// The flow file (YAML or JSON).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// The flow to draw (required when the file has several).
    #[arg(long, value_name = "NAME")]
    flow: Option<String>,
    /// Text outline, Mermaid flowchart or Graphviz dot.
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    format: GraphFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli.output;
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(dispatch(cli)),
        Err(e) => Err(CliError::error(format!("cannot start the runtime: {e}"))),
    };
    match result {
        Ok(exit) => exit.exit_code(),
        Err(e) => {
            eprintln!("floxyctl: {}", e.message);
            let _ = output;
            e.exit.exit_code()
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult<Exit> {
    let out = cli.output;
    match cli.command {
        Command::Run(args) => run::run(args, out).await,
        Command::Resume(args) => run::resume(args, out).await,
        Command::Start(args) => db::start(args, out).await,
        Command::Cancel(args) => db::stop(args, out, db::StopKind::Cancel).await,
        Command::Abort(args) => db::stop(args, out, db::StopKind::Abort).await,
        Command::Decide(args) => db::decide(args, out).await,
        Command::Requeue(args) => db::requeue(args, out).await,
        Command::List(args) => db::list(args, out).await,
        Command::Show(args) => db::show(args, out).await,
        Command::Dlq(args) => db::dlq(args, out).await,
        Command::Workflows(args) => db::workflows(args, out).await,
        Command::Stats(args) => db::stats(args, out).await,
        Command::Cleanup(args) => db::cleanup(args, out).await,
        Command::Migrate(args) => db::migrate(args, out).await,
        Command::Validate(args) => Ok(validate(&args, out)),
        Command::Graph(args) => graph(&args),
        Command::Version => Ok(version(out)),
    }
}

fn validate(args: &ValidateArgs, out: OutputFormat) -> Exit {
    match floxy_cli::flows::validate(&args.file) {
        Ok(v) => {
            match out {
                OutputFormat::Json => println!(
                    "{}",
                    floxy_cli::output::to_json(&serde_json::json!({
                        "valid": true,
                        "path": v.path,
                        "flows": v.flows,
                        "handlers": v.handlers,
                    }))
                ),
                _ => println!(
                    "{}: valid: {} flow(s) ({}), {} handler(s)",
                    v.path.display(),
                    v.flows.len(),
                    v.flows.join(", "),
                    v.handlers.len()
                ),
            }
            Exit::Ok
        }
        Err(e) => {
            let exit = if e.is_bad_input() {
                Exit::BadInput
            } else {
                Exit::Error
            };
            match out {
                OutputFormat::Json => {
                    let errors: Vec<String> = flow_error_lines(&e);
                    println!(
                        "{}",
                        floxy_cli::output::to_json(&serde_json::json!({
                            "valid": false,
                            "path": args.file,
                            "errors": errors,
                        }))
                    );
                }
                _ => eprintln!("floxyctl: {e}"),
            }
            exit
        }
    }
}

/// The errors of a flow file, one per entry.
fn flow_error_lines(e: &floxy_cli::flows::FlowError) -> Vec<String> {
    match e {
        floxy_cli::flows::FlowError::Invalid { errors, .. } => errors
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        other => vec![other.to_string()],
    }
}

fn graph(args: &GraphArgs) -> CliResult<Exit> {
    let text = floxy_cli::flows::graph(&args.file, args.flow.as_deref(), args.format)
        .map_err(run::flow_error)?;
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(Exit::Ok)
}

fn version(out: OutputFormat) -> Exit {
    let v = env!("CARGO_PKG_VERSION");
    match out {
        OutputFormat::Json => println!(
            "{}",
            floxy_cli::output::to_json(&serde_json::json!({ "name": "floxyctl", "version": v }))
        ),
        _ => println!("floxyctl {v}"),
    }
    Exit::Ok
}
