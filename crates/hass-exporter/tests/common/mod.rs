//! Real parts the exporter tests run against: the real `hass-exporter`
//! binary, a stand-in serial bridge admin port, and helpers for PostgreSQL
//! outages. The stand-in Home Assistant is hass-test-support's.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hass_test_support::{SpawnedBinary, http, openmetrics, wait_for};
use tempfile::TempDir;

/// A running `hass-exporter` with its config and secret files.
pub struct Exporter {
    pub dir: TempDir,
    pub admin: SocketAddr,
    pub process: SpawnedBinary,
}

impl Exporter {
    /// Writes `yaml` (with `{dir}` replaced by the temp dir) and starts the
    /// binary; waits for `/healthz`, not `/readyz` (targets may be down on
    /// purpose).
    pub fn start(yaml: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write secret");
        }
        let yaml = yaml.replace("{dir}", &dir.path().display().to_string());
        let config = dir.path().join("exporter.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hass-exporter"));
        // Port 0: the kernel picks the admin port; the "started" line names it.
        cmd.arg("--config")
            .arg(&config)
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info,hass_exporter=debug");
        let mut process = SpawnedBinary::spawn(cmd).expect("spawn hass-exporter");
        let admin = process
            .logged_addr(" started ", "admin", Duration::from_secs(20))
            .expect("the exporter logs its admin address");
        let up = wait_for(Duration::from_secs(20), || {
            http::get(admin, "/healthz")
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            up.is_some(),
            "exporter did not serve /healthz; stderr:\n{}",
            process.stderr()
        );
        Self {
            dir,
            admin,
            process,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn status(&self, path: &str) -> u16 {
        http::get(self.admin, path).expect("admin answers").status
    }

    pub fn metrics(&self) -> Vec<openmetrics::Family> {
        let reply = http::get(self.admin, "/metrics").expect("metrics");
        openmetrics::parse(&reply.body).unwrap_or_else(|e| panic!("{e}\n{}", reply.body))
    }

    /// The value of the sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        value(&self.metrics(), name, labels)
    }

    /// Waits until `check` holds for the exporter's metrics; returns how long it took.
    pub fn wait_metric(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[openmetrics::Family]) -> bool,
    ) -> Duration {
        let started = Instant::now();
        let ok = wait_for(timeout, || check(&self.metrics()).then_some(()));
        assert!(
            ok.is_some(),
            "{what}: not within {timeout:?}; metrics:\n{}\nstderr:\n{}",
            http::get(self.admin, "/metrics")
                .map(|r| r.body)
                .unwrap_or_default(),
            self.process.stderr()
        );
        started.elapsed()
    }

    /// Waits until `GET path` answers `status`; returns how long it took.
    pub fn wait_status(&self, path: &str, status: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        let ok = wait_for(timeout, || (self.status(path) == status).then_some(()));
        assert!(
            ok.is_some(),
            "{path} not {status} within {timeout:?}: {:?}\nstderr:\n{}",
            http::get(self.admin, path).map(|r| (r.status, r.body)),
            self.process.stderr()
        );
        started.elapsed()
    }
}

/// The value of the sample `name` whose labels include `labels`.
pub fn value(families: &[openmetrics::Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f.samples.iter())
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Scrapes `/metrics` `n` times; returns the sorted latencies.
pub fn scrape_latencies(admin: SocketAddr, n: usize) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let reply = http::get(admin, "/metrics").expect("metrics");
            assert_eq!(reply.status, 200);
            started.elapsed()
        })
        .collect();
    latencies.sort();
    latencies
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------
// Stand-in serial bridge admin port

/// Serves `/readyz` with a body and status the test sets; records paths.
pub struct StandInBridge {
    pub addr: SocketAddr,
    reply: Arc<Mutex<(u16, String)>>,
    paths: Arc<Mutex<Vec<String>>>,
    runtime: tokio::runtime::Runtime,
}

impl StandInBridge {
    pub fn start(status: u16, body: &str) -> Self {
        let reply = Arc::new(Mutex::new((status, body.to_owned())));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind bridge stand-in");
        let addr = listener.local_addr().expect("bound address");
        let (r, p) = (reply.clone(), paths.clone());
        let app = Router::new().fallback(move |request: Request| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                p.lock()
                    .expect("lock")
                    .push(request.uri().path().to_owned());
                let (status, body) = r.lock().expect("lock").clone();
                (StatusCode::from_u16(status).expect("status"), body).into_response()
            }
        });
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            reply,
            paths,
            runtime,
        }
    }

    pub fn set(&self, status: u16, body: &str) {
        *self.reply.lock().expect("lock") = (status, body.to_owned());
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("lock").clone()
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// Certificates for a TLS-enabled PostgreSQL

/// A test CA and a server certificate it signed, made with the openssl CLI.
pub struct TestCerts {
    pub dir: TempDir,
    /// PEM of the CA that signed the server certificate.
    pub ca: PathBuf,
    /// PEM of an unrelated CA.
    pub other_ca: PathBuf,
    pub server_cert: String,
    pub server_key: String,
}

/// The server certificate names only `IP:127.0.0.1`, so connecting to
/// `localhost` is a name mismatch for `verify_full`.
pub fn make_certs() -> TestCerts {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl CLI (Debian's openssl package)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for name in ["ca", "other-ca"] {
        std::fs::write(
            dir.path().join(format!("{name}.cnf")),
            format!(
                "[req]\ndistinguished_name=dn\nx509_extensions=v3_ca\nprompt=no\n[dn]\nCN=hass-test-{name}\n\
                 [v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier=hash\n"
            ),
        )
        .expect("ca.cnf");
        let (cnf, key, crt) = (
            format!("{name}.cnf"),
            format!("{name}.key"),
            format!("{name}.crt"),
        );
        let mut args = vec!["req", "-x509", "-config", &cnf];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt, "-days", "2"]);
        run(&args);
    }
    let mut args = vec!["req", "-new"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&args);
    std::fs::write(
        dir.path().join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("cert file");
    TestCerts {
        ca: dir.path().join("ca.crt"),
        other_ca: dir.path().join("other-ca.crt"),
        server_cert: read("server.crt"),
        server_key: read("server.key"),
        dir,
    }
}
