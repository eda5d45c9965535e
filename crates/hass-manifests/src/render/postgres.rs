//! PostgreSQL for Home Assistant's recorder (a plain one-replica StatefulSet)
//! and the `pg_dump` CronJob with its retention.

use std::collections::BTreeMap;

use hass_runtime::ports;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, ExecAction, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Objects;
use super::home_assistant::{claim_spec, claim_template, pod_disruption_budget, secret_volume};
use crate::meta::{
    self, SIDECAR_UID, labels, object_meta, restricted_security_context, selector, selector_labels,
    tcp_port,
};
use crate::values::{PostgresMode, Values};

pub(crate) const COMPONENT: &str = "postgres";
pub(crate) const BACKUP_COMPONENT: &str = "pg-dump";
pub(crate) const PORT: i32 = ports::POSTGRES as i32;

/// Host and port Home Assistant, the exporter and the backup job connect to.
pub(crate) fn address(values: &Values) -> (String, u16) {
    match values.postgres.mode {
        PostgresMode::External => (
            values.postgres.external.host.clone(),
            values.postgres.external.port,
        ),
        _ => (format!("{}-postgres", values.name), ports::POSTGRES),
    }
}

pub(crate) fn render(values: &Values, objects: &mut Objects) {
    if values.postgres.mode == PostgresMode::Internal {
        objects.push(stateful_set(values));
        objects.push(service(values));
        if values.pod_disruption_budget.enabled {
            objects.push(pod_disruption_budget(
                values,
                &format!("{}-postgres", values.name),
                COMPONENT,
            ));
        }
    }
    if values.postgres.backup.enabled && values.postgres.mode != PostgresMode::Disabled {
        objects.push(backup_claim(values));
        objects.push(backup_cron_job(values));
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(meta::quantity("256Mi")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        run_as_non_root: Some(true),
        fs_group: Some(SIDECAR_UID),
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(meta::seccomp_runtime_default()),
        ..Default::default()
    }
}

fn exec_probe(command: &[&str], period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| (*s).to_owned()).collect()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn stateful_set(values: &Values) -> StatefulSet {
    let pg = &values.postgres;
    let name = format!("{}-postgres", values.name);
    let ready = [
        "pg_isready",
        "-h",
        "127.0.0.1",
        "-U",
        pg.user.as_str(),
        "-d",
        pg.database.as_str(),
    ];
    // The official image runs as any UID when its data folder is writable:
    // 65532 with the volume's group, not the image's postgres user.
    let container = Container {
        name: "postgres".to_owned(),
        image: Some(pg.image.reference()),
        image_pull_policy: Some(values.image_pull_policy.as_str().to_owned()),
        ports: Some(vec![tcp_port("postgres", PORT)]),
        env: Some(vec![
            env("POSTGRES_USER", &pg.user),
            env("POSTGRES_DB", &pg.database),
            env("POSTGRES_PASSWORD_FILE", "/run/secrets/postgres/password"),
            env("PGDATA", "/var/lib/postgresql/data/pgdata"),
        ]),
        resources: Some(meta::resources(&pg.resources)),
        security_context: Some(restricted_security_context()),
        startup_probe: Some(exec_probe(&ready, 10, 60)),
        readiness_probe: Some(exec_probe(&ready, 10, 3)),
        liveness_probe: Some(exec_probe(&ready, 30, 3)),
        volume_mounts: Some(vec![
            mount("data", "/var/lib/postgresql/data", false),
            mount("run", "/var/run/postgresql", false),
            mount("tmp", "/tmp", false),
            mount("postgres-password", "/run/secrets/postgres", true),
        ]),
        ..Default::default()
    };
    let mut metadata = object_meta(values, &name, labels(values, COMPONENT, "postgres"));
    let mut accepted = meta::image_findings(values, &[pg.image.reference()]);
    accepted.extend(meta::network_policy_findings(values));
    meta::accept(&mut metadata, &accepted);
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            selector: selector(selector_labels(values, COMPONENT)),
            service_name: Some(name.clone()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(values, COMPONENT, "postgres")),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(values.name.clone()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context()),
                    termination_grace_period_seconds: Some(60),
                    containers: vec![container],
                    volumes: Some(vec![
                        empty_dir("run"),
                        empty_dir("tmp"),
                        secret_volume(
                            "postgres-password",
                            &pg.password_secret.name,
                            &[(&pg.password_secret.key, "password")],
                        ),
                    ]),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim_template("data", &pg.storage)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service(values: &Values) -> Service {
    Service {
        metadata: object_meta(
            values,
            &format!("{}-postgres", values.name),
            labels(values, COMPONENT, "postgres"),
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(values, COMPONENT)),
            ports: Some(vec![ServicePort {
                name: Some("postgres".to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String("postgres".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn backup_name(values: &Values) -> String {
    format!("{}-pg-dump", values.name)
}

fn backup_claim(values: &Values) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: object_meta(
            values,
            &backup_name(values),
            labels(values, BACKUP_COMPONENT, "pg-dump"),
        ),
        spec: Some(claim_spec(&values.postgres.backup.storage)),
        ..Default::default()
    }
}

/// The dump script: a custom-format dump written under a temporary name and
/// renamed when complete, then all but the newest `keep` dumps deleted (by
/// name, which starts with the UTC time). Where to connect and write comes
/// from the container's env ([`backup_env`]: libpq's `PG*` variables), the
/// password from the mounted Secret, never from the manifest.
pub(crate) fn backup_script(values: &Values) -> String {
    let keep = values.postgres.backup.keep;
    format!(
        "set -eu\n\
         stamp=$(date -u +%Y%m%dT%H%M%SZ)\n\
         out=\"$BACKUP_DIR/$PGDATABASE-$stamp.dump\"\n\
         trap 'rm -f \"$out.partial\"' EXIT\n\
         PGPASSWORD=$(cat \"$PASSWORD_FILE\")\n\
         export PGPASSWORD\n\
         pg_dump --format=custom --file=\"$out.partial\"\n\
         mv \"$out.partial\" \"$out\"\n\
         ls -1 \"$BACKUP_DIR/$PGDATABASE\"-*.dump | sort -r | tail -n +{next} | xargs -r rm -f --\n\
         echo \"wrote $out; kept the newest {keep}\"\n",
        next = keep + 1,
    )
}

/// The backup job's env: the server for `pg_dump`, and where the dumps and
/// the password are.
fn backup_env(values: &Values) -> Vec<EnvVar> {
    let pg = &values.postgres;
    let (host, port) = address(values);
    vec![
        env("PGHOST", &host),
        env("PGPORT", &port.to_string()),
        env("PGUSER", &pg.user),
        env("PGDATABASE", &pg.database),
        env("BACKUP_DIR", "/backup"),
        env("PASSWORD_FILE", "/run/secrets/postgres/password"),
    ]
}

fn backup_cron_job(values: &Values) -> CronJob {
    let pg = &values.postgres;
    let name = backup_name(values);
    let container = Container {
        name: "pg-dump".to_owned(),
        image: Some(pg.image.reference()),
        image_pull_policy: Some(values.image_pull_policy.as_str().to_owned()),
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            backup_script(values),
        ]),
        env: Some(backup_env(values)),
        resources: Some(meta::resources(&crate::values::Resources::new(
            "50m", "64Mi", "500m", "256Mi",
        ))),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            mount("backup", "/backup", false),
            mount("tmp", "/tmp", false),
            mount("postgres-password", "/run/secrets/postgres", true),
        ]),
        ..Default::default()
    };
    let pod_labels: BTreeMap<String, String> = labels(values, BACKUP_COMPONENT, "pg-dump");
    let mut metadata = object_meta(values, &name, labels(values, BACKUP_COMPONENT, "pg-dump"));
    let mut accepted = meta::image_findings(values, &[pg.image.reference()]);
    accepted.extend(meta::network_policy_findings(values));
    meta::accept(&mut metadata, &accepted);
    CronJob {
        metadata,
        spec: Some(CronJobSpec {
            schedule: pg.backup.schedule.clone(),
            time_zone: pg.backup.time_zone.clone(),
            concurrency_policy: Some("Forbid".to_owned()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                // The Jobs carry the labels too, so `kubectl get jobs -l` finds them.
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels.clone()),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    active_deadline_seconds: Some(3600),
                    ttl_seconds_after_finished: Some(86_400),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(pod_labels),
                            ..Default::default()
                        }),
                        spec: Some(PodSpec {
                            restart_policy: Some("OnFailure".to_owned()),
                            service_account_name: Some(values.name.clone()),
                            automount_service_account_token: Some(false),
                            enable_service_links: Some(false),
                            security_context: Some(pod_security_context()),
                            containers: vec![container],
                            volumes: Some(vec![
                                Volume {
                                    name: "backup".to_owned(),
                                    persistent_volume_claim: Some(
                                        PersistentVolumeClaimVolumeSource {
                                            claim_name: name.clone(),
                                            read_only: Some(false),
                                        },
                                    ),
                                    ..Default::default()
                                },
                                empty_dir("tmp"),
                                secret_volume(
                                    "postgres-password",
                                    &pg.password_secret.name,
                                    &[(&pg.password_secret.key, "password")],
                                ),
                            ]),
                            ..Default::default()
                        }),
                    },
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
