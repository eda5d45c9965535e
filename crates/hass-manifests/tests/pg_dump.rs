//! The pg_dump CronJob's script, as rendered, run for real against a
//! throwaway PostgreSQL: each run leaves a dump that restores the data it
//! was taken from, and only the configured number of dumps is kept.
//! Only the job's env entries that depend on the cluster (server address,
//! mount paths) are pointed at the test's; user, database and the script
//! are the rendered ones.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hass_test_support::TempPostgres;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Container;

const KEEP: usize = 2;

fn rendered_job() -> (hass_manifests::Values, Container) {
    let values = hass_manifests::values::parse(&format!(
        "name: ha\npostgres:\n  mode: internal\n  backup:\n    enabled: true\n    keep: {KEEP}\n"
    ))
    .unwrap();
    let ms = hass_manifests::render(&values).unwrap();
    let m = ms.iter().find(|m| m.kind == "CronJob").unwrap();
    let cron: CronJob = serde_saphyr::from_str(&m.yaml).unwrap();
    let pod = cron
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let container = pod.containers.into_iter().next().unwrap();
    (values, container)
}

/// Runs the container's command with its env, some entries replaced.
fn run(container: &Container, replaced: &BTreeMap<&str, String>) {
    let command = container.command.as_ref().unwrap();
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for e in container.env.iter().flatten() {
        let value = replaced
            .get(e.name.as_str())
            .cloned()
            .or_else(|| e.value.clone())
            .unwrap();
        cmd.env(&e.name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "the backup script failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    list.sort();
    list
}

/// Restores `dump` into a new database and returns its `states` row count.
fn restored_rows(pg: &TempPostgres, dump: &Path, database: &str) -> i64 {
    pg.psql(&format!("CREATE DATABASE {database}")).unwrap();
    let out = Command::new("pg_restore")
        .args([
            "--no-owner",
            "--exit-on-error",
            "--host=127.0.0.1",
            "--username=postgres",
        ])
        .arg(format!("--port={}", pg.port()))
        .arg(format!("--dbname={database}"))
        .arg(dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not restore: {}",
        dump.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql_in(database, "SELECT count(*) FROM states")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn each_run_leaves_a_restorable_dump_and_only_the_newest_are_kept() {
    let (values, container) = rendered_job();
    let pg = TempPostgres::start().unwrap();
    let user = &values.postgres.user;
    let database = &values.postgres.database;
    pg.psql(&format!("CREATE ROLE {user} LOGIN")).unwrap();
    pg.psql(&format!("CREATE DATABASE {database} OWNER {user}"))
        .unwrap();
    let sql = |statement: &str| {
        let out = Command::new("psql")
            .args(["--no-psqlrc", "--set=ON_ERROR_STOP=1", "--host=127.0.0.1"])
            .arg(format!("--port={}", pg.port()))
            .arg(format!("--username={user}"))
            .arg(format!("--dbname={database}"))
            .args(["--command", statement])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql("CREATE TABLE states (id serial PRIMARY KEY, state text)");

    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backup");
    std::fs::create_dir(&backup_dir).unwrap();
    let password = work.path().join("password");
    std::fs::write(&password, "not-checked-by-trust-auth").unwrap();
    let replaced = BTreeMap::from([
        ("PGHOST", "127.0.0.1".to_owned()),
        ("PGPORT", pg.port().to_string()),
        ("BACKUP_DIR", backup_dir.display().to_string()),
        ("PASSWORD_FILE", password.display().to_string()),
    ]);

    let runs = KEEP + 2;
    for run_number in 1..=runs {
        sql(&format!(
            "INSERT INTO states (state) VALUES ('run {run_number}')"
        ));
        run(&container, &replaced);
        let now = dumps(&backup_dir);
        assert_eq!(
            now.len(),
            run_number.min(KEEP),
            "after run {run_number}: {now:?}"
        );
        // Dump names carry the time to the second.
        std::thread::sleep(Duration::from_millis(1100));
    }

    // The newest dumps are kept, each holding what was there when it ran.
    let kept = dumps(&backup_dir);
    for (i, dump) in kept.iter().enumerate() {
        let name = dump.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{database}-")) && name.ends_with(".dump"),
            "{name}"
        );
        let taken_at_run = runs - KEEP + 1 + i;
        assert_eq!(
            restored_rows(&pg, dump, &format!("restored_{i}")),
            i64::try_from(taken_at_run).unwrap(),
            "{name}"
        );
    }
}
