//! Command-line flags shared by every binary, and env fallbacks for all flags.
//!
//! Every long flag `--foo-bar` of a binary also reads `HASS_<BINARY>_FOO_BAR`,
//! so a Kubernetes manifest can set any scalar through `env:`. The env names are
//! derived at startup rather than spelled in each `#[arg]`, which keeps the
//! convention impossible to get wrong in one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, Command, Parser, ValueEnum};

use crate::ComponentInfo;

/// Flags every binary has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// YAML config file; without one the binary runs on its built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate flags, env and the config file (secrets included), then exit:
    /// 0 when valid, 2 when not.
    #[arg(long)]
    pub check_config: bool,

    /// Log as human-readable text or as one JSON object per line.
    /// The level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the admin server (/healthz, /readyz, /metrics).
    /// The default port is the binary's own (9181 broker, 9182 serial bridge,
    /// 9183 config watcher, 9184 exporter, 9185 Git mirror); port 0 lets the
    /// kernel pick one, which the "started" log line names.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// How long SIGTERM may take to drain before the process exits anyway
    /// (keep it under the pod's terminationGracePeriodSeconds).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = crate::config::duration::parse)]
    pub drain_timeout: Duration,
}

impl CommonArgs {
    /// The admin address: the flag, else all interfaces on the component's port
    /// (kubelet probes arrive on the pod IP, not loopback).
    pub fn admin_addr(&self, info: &ComponentInfo) -> SocketAddr {
        self.admin_listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], info.admin_port)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole command line of a [`crate::Component`]: shared flags plus its own.
#[derive(Debug, Parser)]
#[command(about = None, long_about = None)]
pub struct ComponentCli<A: Args> {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub args: A,
}

/// Parses the process's arguments as `T`, with env fallbacks named after the
/// component. On bad usage clap prints the error and exits 2; `--help` and
/// `--version` exit 0.
pub fn parse<T: Parser>(info: &ComponentInfo) -> T {
    let matches = command::<T>(info).get_matches();
    from_matches(matches)
}

/// Like [`parse`] but from an explicit argument list (the first item is the
/// program name); exits like [`parse`] on bad usage.
pub fn parse_from<T, I, S>(info: &ComponentInfo, args: I) -> T
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let matches = command::<T>(info).get_matches_from(args);
    from_matches(matches)
}

/// Like [`parse`] but from an explicit argument list, returning errors.
pub fn try_parse_from<T, I, S>(info: &ComponentInfo, args: I) -> Result<T, clap::Error>
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let matches = command::<T>(info).try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

fn from_matches<T: Parser>(matches: ArgMatches) -> T {
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The clap command for `T`, named after the binary, with an env var for every
/// long flag that does not name one itself.
pub fn command<T: Parser>(info: &ComponentInfo) -> Command {
    with_env_fallbacks(
        T::command()
            .name(info.binary())
            .bin_name(info.binary())
            .version(info.version),
        &info.env_prefix(),
    )
}

/// `cmd` with `PREFIX_FLAG_NAME` as the env fallback of every long flag,
/// its subcommands' included (`check --format` reads `PREFIX_FORMAT`), for
/// binaries whose first word picks a subcommand.
pub fn with_env_fallbacks(cmd: Command, prefix: &str) -> Command {
    cmd.mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        if arg.get_env().is_some() || matches!(long, "help" | "version") {
            return arg;
        }
        let var = format!("{prefix}_{}", long.replace('-', "_").to_ascii_uppercase());
        arg.env(var)
    })
    .mut_subcommands(|sub| with_env_fallbacks(sub, prefix))
}

/// Parses the process's arguments as `T` with [`with_env_fallbacks`]; exits
/// 2 on bad usage, as clap does.
pub fn parse_with_env<T: Parser>(prefix: &str) -> T {
    from_matches(with_env_fallbacks(T::command(), prefix).get_matches())
}
