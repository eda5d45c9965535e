//! `hass-config-watcher check [DIR]`: prints every problem in a Home Assistant config
//! folder as `file:line:col: severity: message`, or as JSON.
//! `hass-config-watcher run`: watches the folder and reloads what changed.
//! `hass-config-watcher backup` / `restore`: backups in Home Assistant's format.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hass_config_check::{Checked, Diagnostic, Severity};
use hass_config_watcher::ConfigWatcher;
use hass_runtime::Component;
use serde::Serialize;

/// See Cargo.toml for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Validates Home Assistant config the way Home Assistant loads it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config folder; exit 1 if it has errors.
    Check {
        /// The folder holding configuration.yaml.
        #[arg(default_value = "/config")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write a backup of a config folder in Home Assistant's format, keeping
    /// the newest `--keep` of this tool's backups in the output folder.
    Backup {
        #[arg(long, value_name = "DIR", default_value = "/config")]
        config_dir: PathBuf,
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        /// Backups to keep, oldest deleted first; 0 keeps all.
        #[arg(long, default_value_t = 7)]
        keep: usize,
    },
    /// Restore a backup's config folder into DIR (files not in the backup
    /// are left alone). The whole backup is checked first: links, devices and
    /// paths outside DIR are refused, and nothing is written.
    Restore {
        backup: PathBuf,
        dir: PathBuf,
        /// Most bytes of file content the restore may write; default 64
        /// times the backup's size, at least 64 MiB.
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
    },
    /// Watch a config folder, validate every change and reload in Home
    /// Assistant exactly the domains that changed (`run --help` lists the flags).
    #[command(disable_help_flag = true)]
    Run {
        /// Flags of the watcher: --config FILE, --admin-listen ADDR, …
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    valid: bool,
    errors: usize,
    warnings: usize,
    diagnostics: &'a [Diagnostic],
}

fn main() -> ExitCode {
    // clap exits 2 on bad usage, which is what we promise.
    // Every long flag also reads HASS_CONFIG_WATCHER_<FLAG>, as `run`'s do.
    let prefix = <ConfigWatcher as Component>::INFO.env_prefix();
    let cli: Cli = hass_runtime::cli::parse_with_env(&prefix);
    let (dir, format) = match cli.command {
        Command::Check { dir, format } => (dir, format),
        Command::Run { args } => return hass_config_watcher::run_command::main(args),
        Command::Backup {
            config_dir,
            output,
            keep,
        } => {
            return match hass_config_watcher::backup::write_backup(&config_dir, &output, keep) {
                Ok(written) => {
                    eprintln!(
                        "hass-config-watcher: wrote {} ({} bytes){}",
                        written.path.display(),
                        written.size,
                        if written.deleted.is_empty() {
                            String::new()
                        } else {
                            format!(", deleted {} older", written.deleted.len())
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hass-config-watcher: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Restore {
            backup,
            dir,
            max_bytes,
        } => {
            let limits = hass_config_watcher::backup::RestoreLimits { max_bytes };
            return match hass_config_watcher::backup::restore(&backup, &dir, limits) {
                Ok(files) => {
                    eprintln!(
                        "hass-config-watcher: restored {files} files into {}",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hass-config-watcher: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    let checked = hass_config_check::load(&dir);
    if let Err(err) = print_report(&checked, format) {
        // A closed pipe is not worth a panic; say so and fail.
        eprintln!("hass-config-watcher: cannot write the report: {err}");
        return ExitCode::FAILURE;
    }
    let code = if checked.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    // The process ends here: freeing the tree node by node would only cost
    // time (a tenth of a large check).
    std::mem::forget(checked);
    code
}

#[allow(clippy::print_stdout)]
fn print_report(checked: &Checked, format: Format) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match format {
        Format::Text => {
            for diagnostic in &checked.diagnostics {
                writeln!(out, "{diagnostic}")?;
            }
        }
        Format::Json => {
            let count = |severity| {
                checked
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == severity)
                    .count()
            };
            let report = JsonReport {
                valid: !checked.has_errors(),
                errors: count(Severity::Error),
                warnings: count(Severity::Warning),
                diagnostics: &checked.diagnostics,
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
    }
    out.flush()
}
