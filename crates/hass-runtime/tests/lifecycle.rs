//! The process lifecycle in-process: stop requests, drain deadlines, and
//! components that fail, driven through the same `serve` the binaries use.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hass_runtime::cli::{CommonArgs, LogFormat};
use hass_runtime::process::serve;
use hass_runtime::shutdown::StopSignal;
use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use hass_test_support::{free_addr, http};
use tokio::sync::mpsc;

fn common(drain_timeout: Duration) -> CommonArgs {
    CommonArgs {
        config: None,
        check_config: false,
        log_format: LogFormat::Text,
        admin_listen: Some(free_addr()),
        drain_timeout,
    }
}

const INFO: ComponentInfo = ComponentInfo {
    name: "test",
    version: "0.0.0",
    admin_port: 0,
};

#[derive(Debug, Clone, Copy, clap::Args)]
struct NoArgs {}

/// Flushes acknowledged work on shutdown, taking `flush` to do it.
#[derive(Debug)]
struct Flusher {
    flush: Duration,
    flushed: Arc<AtomicBool>,
}

impl Component for Flusher {
    const INFO: ComponentInfo = INFO;
    type Args = NoArgs;
    type Config = ();

    fn prepare(_: NoArgs, _: (), _: Option<&Path>) -> Result<Self, Fatal> {
        Err(Fatal::config("tests construct it directly"))
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        ctx.readiness.register("queue").set_ready();
        let shutdown = ctx.shutdown.clone();
        ctx.shutdown.spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(self.flush).await;
            self.flushed.store(true, Ordering::SeqCst);
        });
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

/// Never notices shutdown.
#[derive(Debug)]
struct Stubborn;

impl Component for Stubborn {
    const INFO: ComponentInfo = INFO;
    type Args = NoArgs;
    type Config = ();

    fn prepare(_: NoArgs, _: (), _: Option<&Path>) -> Result<Self, Fatal> {
        Ok(Self)
    }

    async fn run(self, _ctx: Context) -> Result<(), Fatal> {
        std::future::pending().await
    }
}

/// Fails on its own, as when a device or store is lost for good.
#[derive(Debug)]
struct Failing;

impl Component for Failing {
    const INFO: ComponentInfo = INFO;
    type Args = NoArgs;
    type Config = ();

    fn prepare(_: NoArgs, _: (), _: Option<&Path>) -> Result<Self, Fatal> {
        Ok(Self)
    }

    async fn run(self, _ctx: Context) -> Result<(), Fatal> {
        Err(Fatal::runtime("store at /data is corrupt"))
    }
}

/// Adds a route of its own to the admin server.
#[derive(Debug)]
struct WithProbe;

impl Component for WithProbe {
    const INFO: ComponentInfo = INFO;
    type Args = NoArgs;
    type Config = ();

    fn prepare(_: NoArgs, _: (), _: Option<&Path>) -> Result<Self, Fatal> {
        Ok(Self)
    }

    fn admin_routes(&self) -> Option<axum::Router> {
        Some(axum::Router::new().route(
            "/probe/thing",
            axum::routing::get(|| async { "thing is fine\n" }),
        ))
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

/// Takes a while before its first await, then registers a check it never passes.
#[derive(Debug)]
struct SlowStarter;

impl Component for SlowStarter {
    const INFO: ComponentInfo = INFO;
    type Args = NoArgs;
    type Config = ();

    fn prepare(_: NoArgs, _: (), _: Option<&Path>) -> Result<Self, Fatal> {
        Ok(Self)
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        // Blocking on purpose: the component has not reached an await yet.
        std::thread::sleep(Duration::from_millis(600));
        let _never = ctx.readiness.register("device:zigbee");
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

async fn readyz_status(addr: std::net::SocketAddr) -> Option<u16> {
    tokio::task::spawn_blocking(move || http::get(addr, "/readyz").ok().map(|r| r.status))
        .await
        .expect("GET task")
}

/// Polls `/readyz` until it answers `want`, for at most 5 s; what it last
/// answered.
async fn readyz_becomes(addr: std::net::SocketAddr, want: u16) -> Option<u16> {
    let mut status = None;
    for _ in 0..250 {
        status = readyz_status(addr).await;
        if status == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    status
}

#[tokio::test]
async fn sigterm_drains_tracked_work_and_reports_not_ready_meanwhile() {
    let flushed = Arc::new(AtomicBool::new(false));
    let args = common(Duration::from_secs(5));
    let admin = args.admin_listen.unwrap();
    let (stop, stops) = mpsc::channel(2);
    let component = Flusher {
        flush: Duration::from_millis(600),
        flushed: flushed.clone(),
    };
    let served = tokio::spawn(async move { serve(component, &args, stops).await });

    assert_eq!(readyz_becomes(admin, 200).await, Some(200));

    stop.send(StopSignal::Terminate).await.unwrap();
    assert_eq!(
        readyz_becomes(admin, 503).await,
        Some(503),
        "not ready while draining"
    );
    assert!(
        !flushed.load(Ordering::SeqCst),
        "the 600 ms flush is not done yet"
    );

    let code = served.await.unwrap().unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(flushed.load(Ordering::SeqCst), "work finished before exit");
}

#[tokio::test]
async fn drain_deadline_bounds_a_component_that_ignores_shutdown() {
    let args = common(Duration::from_millis(300));
    let admin = args.admin_listen.unwrap();
    let (stop, stops) = mpsc::channel(2);
    let served = tokio::spawn(async move { serve(Stubborn, &args, stops).await });
    assert_eq!(readyz_becomes(admin, 200).await, Some(200), "running");
    let sent = Instant::now();
    stop.send(StopSignal::Terminate).await.unwrap();
    let err = served.await.unwrap().unwrap_err();
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(err.exit_code(), ExitCode::from(1));
    assert!(
        err.to_string().contains("drain deadline of 300ms passed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let args = common(Duration::from_secs(60));
    let admin = args.admin_listen.unwrap();
    let (stop, stops) = mpsc::channel(2);
    let served = tokio::spawn(async move { serve(Stubborn, &args, stops).await });
    assert_eq!(readyz_becomes(admin, 200).await, Some(200), "running");
    stop.send(StopSignal::Terminate).await.unwrap();
    stop.send(StopSignal::Interrupt).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("second signal must not wait for the 60 s deadline")
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("SIGINT received while draining"),
        "{err}"
    );
}

#[tokio::test]
async fn a_component_failing_on_its_own_ends_the_process_with_its_error() {
    let args = common(Duration::from_secs(5));
    let (_stop, stops) = mpsc::channel(2);
    let err = serve(Failing, &args, stops).await.unwrap_err();
    assert_eq!(err.exit_code(), ExitCode::from(1));
    assert_eq!(err.to_string(), "store at /data is corrupt");
}

#[tokio::test]
async fn components_add_admin_routes_beside_the_shared_ones() {
    let args = common(Duration::from_secs(5));
    let admin = args.admin_listen.unwrap();
    let (stop, stops) = mpsc::channel(2);
    let served = tokio::spawn(async move { serve(WithProbe, &args, stops).await });
    let mut reply = None;
    for _ in 0..250 {
        reply = tokio::task::spawn_blocking(move || http::get(admin, "/probe/thing").ok())
            .await
            .expect("GET task");
        if reply.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = reply.expect("admin server answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "thing is fine\n");
    assert_eq!(
        readyz_status(admin).await,
        Some(200),
        "shared routes still there"
    );
    stop.send(StopSignal::Terminate).await.unwrap();
    assert_eq!(served.await.unwrap().unwrap(), ExitCode::SUCCESS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_never_200_before_the_components_own_checks_exist() {
    let args = common(Duration::from_secs(5));
    let admin = args.admin_listen.unwrap();
    let (stop, stops) = mpsc::channel(2);
    let served = tokio::spawn(async move { serve(SlowStarter, &args, stops).await });
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        let reply = tokio::task::spawn_blocking(move || http::get(admin, "/readyz").ok())
            .await
            .expect("GET task");
        if let Some(reply) = reply {
            assert_ne!(
                reply.status, 200,
                "ready with nothing checked: {}",
                reply.body
            );
            seen.push(reply.body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.iter().any(|b| b.contains("FAIL startup")), "{seen:?}");
    assert!(
        seen.last()
            .is_some_and(|b| b.contains("FAIL device:zigbee") && !b.contains("startup"))
    );
    stop.send(StopSignal::Terminate).await.unwrap();
    assert_eq!(served.await.unwrap().unwrap(), ExitCode::SUCCESS);
}
