//! The `ward` command line: parses arguments and hands each subcommand to `ward-server`.
//!
//! Nothing here knows how ward works; it only translates a command line into calls and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

mod generated;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ward_server::config::Flags;
use ward_server::protocol::ServiceAction;
use ward_server::{Launch, Outcome};

/// Watch file trees, run jobs on changes, never die silently.
#[derive(Debug, Parser)]
#[command(name = "ward", version, about, propagate_version = true)]
struct Cli {
    /// Config file (TOML). Default: the nearest `ward.toml` from the current directory up,
    /// unless watch flags or a command describe the job.
    #[arg(
        long,
        short = 'c',
        global = true,
        value_name = "FILE",
        env = "WARD_CONFIG"
    )]
    config: Option<PathBuf>,
    /// State directory (pidfile, socket, log, crash reports). Default: `.ward` beside the config
    /// file, else the nearest `.ward` from the current directory up, else `./.ward`.
    #[arg(long, global = true, value_name = "DIR", env = "WARD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// What `ward service` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ServiceActionArg {
    /// Start it if it is not running.
    Start,
    /// Stop it until it is started again.
    Stop,
    /// Stop it and start it again.
    Restart,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run in the foreground (logs also on stderr; Ctrl-C or SIGTERM stops gracefully).
    Run(Quick),
    /// Start as a daemon; returns once it is ready, printing its pid and state directory.
    Start(Quick),
    /// Stop the daemon gracefully and wait until every process of it has exited.
    Stop {
        /// Seconds to wait for the whole tree to exit.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Stop the daemon if it runs, then start it.
    Restart(Quick),
    /// Show whether the daemon runs (exit 0) or not (exit 3), and why not.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Summarize the deaths on record, one line each, then print their crash reports.
    ///
    /// Newest first; the post-mortem of a daemon that vanished is among them.
    Diagnose {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only the N newest reports.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        last: Option<u32>,
    },
    /// Print the last lines of the daemon's log; with -f, follow it through its rotations.
    ///
    /// The lines are counted back into the rotated files (`ward.log.1`, ...) when the live one
    /// has fewer.
    Logs {
        /// Lines to print, counted from the end.
        #[arg(long, short = 'n', default_value_t = 10, value_name = "LINES")]
        lines: usize,
        /// Keep printing lines as they are written, through the log's rotations, until Ctrl-C
        /// or the output is closed.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the lines of this service: its output and what ward says about it.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
    },
    /// Hold job starts and subscription deliveries back, until `ward release NAME` or
    /// the timeout; with a command after `--`, while it runs.
    ///
    /// For something that changes many files at once (`ward hold co -- git checkout main`):
    /// each path changed meanwhile is handled once, after the release.
    Hold {
        /// The hold's name; holding again renews it.
        name: String,
        /// Seconds before it ends on its own (default 60, at most 3600).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// The command to run while held; its exit status is ward's.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// End a hold placed with `ward hold NAME`.
    Release {
        /// The hold's name.
        name: String,
    },
    /// Print the daemon's metrics in the Prometheus text format (what `[metrics] listen`
    /// serves on /metrics).
    Metrics,
    /// Start, stop or restart one service of the running daemon, and wait until it is done.
    ///
    /// `start` and `restart` return once the service is ready (its `ready` check passed);
    /// `stop` once its processes are gone. A stopped service stays down until started again.
    Service {
        /// What to do.
        #[arg(value_enum)]
        action: ServiceActionArg,
        /// The service's name, as its `[[service]]` section gives it.
        name: String,
    },
    /// Make the daemon read its config file again (as SIGHUP does) and say if it took it.
    ///
    /// The file is the one the daemon was started with. Exit 2 with file:line:column if it is
    /// invalid (the running configuration is kept), 3 if ward is not running.
    Reload,
    /// Validate the config file and exit (2 with file:line:column on an error).
    Check,
    /// Print the paths changed since sequence number SEQ as JSON lines (0: everything known).
    ///
    /// With --follow, keep printing each change as it is recorded, through the server's
    /// restarts, until the daemon stops: a reader that falls far behind gets a
    /// `{"resync_from":SEQ}` line, then each path changed meanwhile once, at its latest.
    Changes {
        /// The sequence number of the last change already seen (from a previous line's `seq`).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep the connection and print changes as they are recorded.
        #[arg(long, short = 'f')]
        follow: bool,
        /// With --follow: only paths this glob matches (relative to their watch root, as a
        /// trigger's globs); may be given several times.
        #[arg(long, value_name = "GLOB", requires = "follow")]
        glob: Vec<String>,
    },
    /// List the paths whose jobs gave up: trigger, event, attempts, last error, time, report.
    Failures {
        /// Print one JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the jobs of paths that gave up again (a directory: every path below it).
    Retry {
        /// Paths listed by `ward failures`, or directories above them.
        #[arg(
            value_name = "PATH",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        paths: Vec<PathBuf>,
        /// Every path that gave up.
        #[arg(long)]
        all: bool,
    },
    /// Run jobs published by other wards' publish triggers, from a NATS JetStream stream, in the
    /// foreground until SIGTERM or Ctrl-C, or as a daemon (--detach).
    ///
    /// Each message runs with the trigger of this config named in it (or whose globs match its
    /// path): acked when it succeeds, delivered again with a backoff when it fails, and after
    /// --max-deliver deliveries published on `ward.dead.TRIGGER` and dropped.
    #[cfg(feature = "nats")]
    Work(Work),
    /// Print the shell completion script for SHELL.
    ///
    /// For example: `ward completions bash > /usr/share/bash-completion/completions/ward`.
    Completions {
        /// The shell the script is for.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Internal: the server process, started by the keeper, which reads what `ward start`
    /// resolved from the state directory.
    #[command(name = "__server", hide = true)]
    Server,
    /// Internal: write the man pages (roff) into DIR, for `cargo xtask dist`.
    #[command(name = "__man", hide = true)]
    Man {
        /// Where the pages go (`ward.1`, `ward-SUBCOMMAND.1`).
        dir: PathBuf,
    },
}

/// Subcommands that take neither `--config` nor `--state-dir`: the global flags are accepted
/// there as everywhere (clap has no way to leave a subcommand out), but not shown in their help.
const WITHOUT_STATE: [&str; 2] = ["completions", "__man"];

/// The clap definition of the `ward` command line, as it parses and as its help, completions and
/// man page show it.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    // clap copies a global flag into each subcommand that has no flag of its id when it builds
    // the command; a hidden copy put there first is the one such a subcommand keeps.
    let hidden: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.clone().hide(true))
        .collect();
    for name in WITHOUT_STATE {
        command = command.mut_subcommand(name, |sub| sub.args(hidden.clone()));
    }
    command
}

/// Where `ward work` takes its jobs from.
#[cfg(feature = "nats")]
#[derive(Debug, Args, Clone)]
struct Work {
    /// The NATS server.
    #[arg(
        long,
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        env = "WARD_NATS",
        value_parser = nats_url
    )]
    nats: String,
    /// The stream the jobs are in.
    #[arg(long, value_name = "NAME", default_value = "WARD")]
    stream: String,
    /// The durable consumer: workers with the same name share the jobs.
    #[arg(long, value_name = "NAME", default_value = "ward-work")]
    consumer: String,
    /// Where the jobs' relative paths are (a shared tree); without it only jobs that carry their
    /// content run.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Jobs run at once (default: the config's `workers`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Deliveries of a job before it is dead-lettered.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    max_deliver: i64,
    /// Seconds a job may run without a progress mark before it is delivered again (ward marks
    /// progress every half of it).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    ack_wait: f64,
    /// Run as a daemon, as `ward start` does: a keeper restarts it if it dies and reports its
    /// deaths; `ward status` and `ward stop` with the same state directory see and stop it.
    #[arg(long)]
    detach: bool,
}

/// Flags that describe a job without a config file.
#[derive(Debug, Args, Clone, Default)]
struct Quick {
    /// Directory to watch (repeatable).
    #[arg(long, short = 'w', value_name = "DIR")]
    watch: Vec<PathBuf>,
    /// Ignore paths matching this gitignore-style glob (repeatable).
    #[arg(long, short = 'i', value_name = "GLOB")]
    ignore: Vec<String>,
    /// Jobs that run at once.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Quiet window per path, in milliseconds.
    #[arg(long, value_name = "MS")]
    debounce: Option<u64>,
    /// Command run for every changed file (as argv, never through a shell); `{path}` is replaced.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn launch(cli_config: Option<PathBuf>, state_dir: Option<PathBuf>, quick: Quick) -> Launch {
    let given = Launch {
        config_file: cli_config,
        state_dir,
        flags: Flags {
            watch: quick.watch,
            ignore: quick.ignore,
            workers: quick.workers,
            debounce_ms: quick.debounce,
            command: quick.command,
        },
        ..Launch::default()
    };
    // Without a current directory nothing can be found; the command then says what it lacks.
    given.clone().discovered().unwrap_or(given)
}

/// Runs the `ward` command line and returns its exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let (config, state_dir) = (cli.config, cli.state_dir);
    let outcome = match cli.command {
        Command::Run(q) => ward_server::run_foreground(&launch(config, state_dir, q)),
        Command::Start(q) => ward_server::start(&launch(config, state_dir, q)),
        Command::Restart(q) => ward_server::restart(&launch(config, state_dir, q)),
        Command::Server => ward_server::server_main(&launch(config, state_dir, Quick::default())),
        Command::Stop { timeout } => ward_server::stop(
            &launch(config, state_dir, Quick::default()),
            seconds(timeout),
        ),
        Command::Status { json } => {
            ward_server::status(&launch(config, state_dir, Quick::default()), json)
        }
        Command::Diagnose { json, last } => ward_server::diagnose(
            &launch(config, state_dir, Quick::default()),
            json,
            last.map(|n| n as usize),
        ),
        Command::Check => ward_server::check(&launch(config, state_dir, Quick::default())),
        Command::Failures { json } => {
            ward_server::failures(&launch(config, state_dir, Quick::default()), json)
        }
        Command::Retry { paths, all } => {
            ward_server::retry(&launch(config, state_dir, Quick::default()), &paths, all)
        }
        Command::Logs {
            lines,
            follow,
            service,
        } => ward_server::logs(
            &launch(config, state_dir, Quick::default()),
            lines,
            follow,
            service.as_deref(),
        ),
        Command::Metrics => ward_server::metrics(&launch(config, state_dir, Quick::default())),
        Command::Hold {
            name,
            timeout,
            command,
        } => ward_server::hold(
            &launch(config, state_dir, Quick::default()),
            &name,
            timeout,
            &command,
        ),
        Command::Release { name } => {
            ward_server::release(&launch(config, state_dir, Quick::default()), &name)
        }
        Command::Service { action, name } => ward_server::service(
            &launch(config, state_dir, Quick::default()),
            match action {
                ServiceActionArg::Start => ServiceAction::Start,
                ServiceActionArg::Stop => ServiceAction::Stop,
                ServiceActionArg::Restart => ServiceAction::Restart,
            },
            &name,
        ),
        #[cfg(feature = "nats")]
        Command::Work(w) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            let run = if w.detach {
                ward_server::start_work
            } else {
                ward_server::work
            };
            run(
                &launch(config, state_dir, Quick::default()),
                &ward_server::WorkOptions {
                    url: w.nats,
                    stream: w.stream,
                    consumer: w.consumer,
                    root: w.root.map(|r| cwd.join(r)),
                    workers: w.workers.map(usize::from),
                    max_deliver: w.max_deliver,
                    ack_wait: seconds(w.ack_wait).max(std::time::Duration::from_secs(1)),
                },
            )
        }
        Command::Completions { shell } => written(generated::completions(shell, &command())),
        Command::Man { dir } => written(generated::man_pages(command(), &dir)),
        Command::Reload => ward_server::reload(&launch(config, state_dir, Quick::default())),
        Command::Changes {
            since,
            follow: true,
            glob,
        } => ward_server::follow(&launch(config, state_dir, Quick::default()), since, &glob),
        Command::Changes { since, .. } => {
            ward_server::changes(&launch(config, state_dir, Quick::default()), since)
        }
    };
    exit_code(outcome)
}

fn written(result: std::io::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(e) => Outcome::Failed(ward_server::Error::io("writing to stdout", e)),
    }
}

/// A `--nats` address: refused at once when it cannot be one, since `ward work` tries an
/// unreachable server again and again.
#[cfg(feature = "nats")]
fn nats_url(url: &str) -> Result<String, String> {
    let host = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"));
    match host {
        Some(host) if !host.is_empty() => Ok(url.to_owned()),
        _ => Err(format!(
            "{url:?} is not a NATS server's address: nats://HOST:PORT (or tls://)"
        )),
    }
}

fn seconds(s: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(s).unwrap_or(std::time::Duration::from_secs(30))
}

fn exit_code(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Success => ExitCode::SUCCESS,
        Outcome::NotRunning => ExitCode::from(3),
        Outcome::Exit(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Outcome::Failed(e) => {
            eprintln!("ward: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
