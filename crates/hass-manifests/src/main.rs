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
        /// Folder to write (`kubectl apply -k DIR`); optional with `--push`.
        #[arg(
            short = 'o',
            long = "output",
            value_name = "DIR",
            required_unless_present_any = ["stdout", "target"],
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
        #[command(flatten)]
        push: Push,
    },
    /// Print the JSON Schema of the values file.
    Schema,
    /// Print the default values file, with comments.
    Defaults,
}

/// Pushing the rendered tree as an OCI artifact (what Flux's OCIRepository
/// reads). The password comes from the environment or a file, never a flag.
#[derive(Debug, clap::Args)]
struct Push {
    /// Also push the tree to `oci://REGISTRY/REPOSITORY:TAG`.
    #[arg(long = "push", value_name = "oci://REGISTRY/REPOSITORY:TAG")]
    target: Option<String>,
    /// The registry user (with a password: basic auth).
    #[arg(long, env = "HASS_MANIFESTS_REGISTRY_USERNAME", requires = "target")]
    registry_username: Option<String>,
    /// A file holding the registry's password, or its token when no user is
    /// given (HASS_MANIFESTS_REGISTRY_PASSWORD holds it directly).
    #[arg(
        long,
        value_name = "FILE",
        env = "HASS_MANIFESTS_REGISTRY_PASSWORD_FILE",
        requires = "target"
    )]
    registry_password_file: Option<PathBuf>,
}

impl Push {
    fn credentials(&self) -> Result<hass_manifests::artifact::Credentials, (u8, String)> {
        let password = match &self.registry_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| (2, format!("{}: {e}", path.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => std::env::var("HASS_MANIFESTS_REGISTRY_PASSWORD").ok(),
        };
        Ok(hass_manifests::artifact::Credentials {
            username: self.registry_username.clone(),
            password: password.map(secrecy::SecretString::from),
        })
    }

    /// Pushes the tree; prints `pushed REFERENCE@DIGEST` on stderr, which
    /// is the output a script reads when stdout holds the stream.
    fn run(&self, manifests: &[hass_manifests::Manifest]) -> Result<(), (u8, String)> {
        let Some(url) = &self.target else {
            return Ok(());
        };
        let reference = hass_manifests::artifact::target(url).map_err(|e| (2, e.to_string()))?;
        let credentials = self.credentials()?;
        let layer = hass_manifests::artifact::pack(&hass_manifests::output::files(manifests))
            .map_err(|e| (1, e.to_string()))?;
        hass_manifests::install_crypto();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (1, format!("cannot start the runtime: {e}")))?;
        let digest = runtime
            .block_on(hass_manifests::artifact::push(
                &reference,
                layer,
                &credentials,
            ))
            .map_err(|e| (1, e.to_string()))?;
        eprintln!("pushed {}@{digest}", reference.whole());
        Ok(())
    }
}

fn main() -> ExitCode {
    // Every long flag also reads HASS_MANIFESTS_<FLAG>.
    let cli: Cli = hass_runtime::cli::parse_with_env("HASS_MANIFESTS");
    match run(cli.command) {
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
            push,
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
                    .map_err(|e| (1, format!("{}: {e}", dir.display())))?,
                _ if stdout => print(&hass_manifests::render::stream(&manifests))?,
                _ => {}
            }
            push.run(&manifests)
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
