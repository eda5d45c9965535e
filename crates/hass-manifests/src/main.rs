//! `hass-manifests render -f values.yaml -o DIR | --stdout`, `schema`, `defaults`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Kubernetes manifests for Home Assistant and the hass-sidecars, from one values file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render every object: one file each plus kustomization.yaml, or one stream.
    Render {
        /// The values file (see `defaults`); without one, the defaults.
        #[arg(short = 'f', long = "values", value_name = "FILE")]
        values: Option<PathBuf>,
        /// Folder to write (`kubectl apply -k DIR`).
        #[arg(
            short = 'o',
            long = "output",
            value_name = "DIR",
            required_unless_present = "stdout",
            conflicts_with = "stdout"
        )]
        output: Option<PathBuf>,
        /// Print one multi-document YAML stream instead.
        #[arg(long)]
        stdout: bool,
        /// Pin the hass-sidecars images to the registry, tag and digests of
        /// this lock file (what `images/build --push` writes).
        #[arg(long, value_name = "FILE", env = "HASS_MANIFESTS_IMAGES_LOCK")]
        images_lock: Option<PathBuf>,
    },
    /// Print the JSON Schema of the values file.
    Schema,
    /// Print the default values file, with comments.
    Defaults,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("hass-manifests: {message}");
            ExitCode::from(code)
        }
    }
}

/// Printing is this binary's job.
#[allow(clippy::print_stdout)]
fn print(text: &str) -> Result<(), (u8, String)> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| (1, format!("cannot write to stdout: {e}")))
}

/// Errors as (exit code, message): 2 for bad values, 1 for anything else.
fn run(command: Command) -> Result<(), (u8, String)> {
    match command {
        Command::Render {
            values,
            output,
            stdout,
            images_lock,
        } => {
            let mut values = match values {
                Some(path) => {
                    hass_manifests::values::load(&path).map_err(|e| (2, e.to_string()))?
                }
                None => hass_manifests::Values::default(),
            };
            if let Some(path) = images_lock {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| (2, format!("{}: {e}", path.display())))?;
                let lock = hass_manifests::images::Lock::parse(&text)
                    .map_err(|e| (2, format!("{}: {e}", path.display())))?;
                lock.apply(&mut values.sidecar_images);
            }
            let manifests = hass_manifests::render(&values).map_err(|e| (1, e.to_string()))?;
            match output {
                Some(dir) if !stdout => hass_manifests::output::write_dir(&dir, &manifests)
                    .map_err(|e| (1, format!("{}: {e}", dir.display()))),
                _ => print(&hass_manifests::render::stream(&manifests)),
            }
        }
        Command::Schema => {
            let text = serde_json::to_string_pretty(&hass_manifests::schema())
                .map_err(|e| (1, e.to_string()))?;
            print(&format!("{text}\n"))
        }
        Command::Defaults => {
            let text = hass_manifests::defaults_file().map_err(|e| (1, e.to_string()))?;
            print(&text)
        }
    }
}
