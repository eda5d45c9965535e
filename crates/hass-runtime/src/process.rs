//! The life of a component process, the same for every binary: parse flags and
//! env, load config, prepare, serve the admin port, run, and on SIGTERM drain
//! within the deadline. Maps every failure to one log line and an exit code.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::admin::{self, AdminState};
use crate::cli::{self, CommonArgs, ComponentCli};
use crate::config;
use crate::logging;
use crate::shutdown::{Shutdown, StopSignal, StopSignals};
use crate::{Component, Context, Fatal, Scheduling};

/// The readiness check that covers the time before the component runs.
pub const STARTUP_CHECK: &str = "startup";

/// Runs component `C` as the whole process; call it from `main`.
pub fn run<C: Component>() -> ExitCode {
    run_from::<C, _, _>(std::env::args_os())
}

/// Like [`run`], with the command line given: a binary with subcommands
/// passes `[argv0, rest…]` after taking its subcommand word out.
pub fn run_from<C, I, S>(args: I) -> ExitCode
where
    C: Component,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let cli: ComponentCli<C::Args> = cli::parse_from(&C::INFO, args);
    logging::init(cli.common.log_format);
    match start::<C>(cli) {
        Ok(code) => code,
        Err(fatal) => {
            error!("{fatal}");
            fatal.exit_code()
        }
    }
}

fn start<C: Component>(cli: ComponentCli<C::Args>) -> Result<ExitCode, Fatal> {
    let ComponentCli { mut common, args } = cli;
    let config: C::Config = match &common.config {
        Some(path) => config::load_yaml(path).map_err(Fatal::config)?,
        None => C::Config::default(),
    };
    if common.admin_listen.is_none() {
        common.admin_listen = C::admin_config(&config).and_then(|admin| admin.listen);
    }
    crate::parent::follow()?;
    let component =
        C::prepare(args, config, common.config.as_deref()).map_err(|e| match &common.config {
            Some(path) => e.located_in(path),
            None => e,
        })?;
    // Secrets are typed to print as [REDACTED], so the whole effective
    // configuration can be logged for whoever debugs a pod.
    debug!(?component, "effective configuration");
    if common.check_config {
        let source = common.config.as_deref().map_or_else(
            || "built-in defaults".to_owned(),
            |p| p.display().to_string(),
        );
        info!(config = %source, "configuration is valid");
        return Ok(ExitCode::SUCCESS);
    }
    let mut builder = match C::SCHEDULING {
        Scheduling::Parallel => {
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        Scheduling::InArrivalOrder => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| Fatal::runtime(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(async {
        let mut signals = StopSignals::install()
            .map_err(|e| Fatal::runtime(format!("cannot install signal handlers: {e}")))?;
        let (tx, stops) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                if tx.send(signals.recv().await).await.is_err() {
                    break;
                }
            }
        });
        serve(component, &common, stops).await
    });
    // Tasks that ignored the drain deadline must not hold the exit hostage.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Serves `component` until a stop request arrives on `stops` (the process's
/// SIGTERM and SIGINT in [`run`]), then drains it. Public so tests can drive
/// the whole lifecycle in-process.
pub async fn serve<C: Component>(
    component: C,
    common: &CommonArgs,
    mut stops: mpsc::Receiver<StopSignal>,
) -> Result<ExitCode, Fatal> {
    let info = C::INFO;
    let shutdown = Shutdown::new();
    let admin_state = AdminState::new(&info);
    // Until the component has run up to its first await, the checks it
    // registers first thing do not exist yet and an empty /readyz would say
    // ready: a "startup" check covers that window. Registered before the
    // admin server can answer anyone.
    let startup = admin_state.readiness.register(STARTUP_CHECK);
    let addr = common.admin_addr(&info);
    let listener = admin::bind(addr).await?;
    // With port 0 the kernel picks one; log the port actually bound.
    let addr = listener.local_addr().unwrap_or(addr);
    let mut router = admin::router(admin_state.clone());
    if let Some(extra) = component.admin_routes() {
        router = router.merge(extra);
    }
    // The admin server outlives the drain so probes see "not ready" while
    // work finishes; it stops when the process does.
    tokio::spawn(admin::serve(
        listener,
        router,
        admin_state.metrics.clone(),
        std::future::pending(),
    ));
    info!(
        component = info.name,
        version = info.version,
        admin = %addr,
        "started"
    );

    let AdminState {
        readiness,
        liveness,
        metrics,
    } = admin_state;
    let ctx = Context {
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
        liveness,
        metrics,
    };
    let run = component.run(ctx);
    let startup_readiness = readiness.clone();
    let mut main_task = tokio::spawn(async move {
        let mut run = std::pin::pin!(run);
        let first = std::future::poll_fn(|cx| match run.as_mut().poll(cx) {
            std::task::Poll::Ready(result) => std::task::Poll::Ready(Some(result)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await;
        startup_readiness.unregister(startup.name());
        match first {
            Some(result) => result,
            None => run.await,
        }
    });

    let signal = tokio::select! {
        signal = recv_stop(&mut stops) => signal,
        finished = &mut main_task => {
            // The component stopped on its own: an error, or it had nothing to do.
            shutdown.trigger();
            let _ = shutdown.drain(common.drain_timeout).await;
            return join_result(finished).map(|()| ExitCode::SUCCESS);
        }
    };

    info!(
        signal = signal.name(),
        deadline = ?common.drain_timeout,
        "shutting down: draining"
    );
    readiness.set_draining();
    shutdown.trigger();
    let deadline = common.drain_timeout;
    // One deadline covers the component and every task it spawned.
    let started = Instant::now();
    let drained = async {
        let finished = tokio::time::timeout(deadline, &mut main_task).await;
        let tasks = shutdown
            .drain(deadline.saturating_sub(started.elapsed()))
            .await;
        (finished, tasks)
    };
    tokio::select! {
        (finished, tasks) = drained => {
            let Ok(finished) = finished else {
                return Err(Fatal::runtime(format!(
                    "drain deadline of {deadline:?} passed before the component stopped; exiting anyway"
                )));
            };
            join_result(finished)?;
            if let Err(e) = tasks {
                warn!("{e}; exiting anyway");
                return Ok(ExitCode::from(1));
            }
            info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        second = recv_stop(&mut stops) => {
            Err(Fatal::runtime(format!("{} received while draining; exiting now", second.name())))
        }
    }
}

/// The next stop request; a closed channel means nobody can ask, so wait forever.
async fn recv_stop(stops: &mut mpsc::Receiver<StopSignal>) -> StopSignal {
    match stops.recv().await {
        Some(signal) => signal,
        None => std::future::pending().await,
    }
}

fn join_result(finished: Result<Result<(), Fatal>, tokio::task::JoinError>) -> Result<(), Fatal> {
    match finished {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(Fatal::runtime("the component panicked; see the log above")),
        Err(e) => Err(Fatal::runtime(format!("the component task failed: {e}"))),
    }
}
