//! The run loop in-process: `worker::run(cfg, shutdown)` driven by a
//! shutdown future the test fires, against a real cluster and the mock
//! vendor. Shutdown stops claiming, lets in-flight jobs finish within the
//! grace period, hands back what it cannot finish, and `run` returns.

mod common;

use std::time::{Duration, Instant};

use byok_integration::wait_until;
use byok_sidecar::config::{Cli, Config};
use byok_sidecar::worker;
use clap::Parser;
use common::*;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A sidecar run loop on its own runtime, and the switch that stops it.
struct InProcess {
    runtime: Runtime,
    stop: Option<oneshot::Sender<()>>,
    run: Option<JoinHandle<Result<(), String>>>,
}

impl InProcess {
    fn start(env: &Env, name: &str, flags: &[&str]) -> InProcess {
        let url = env.cluster.url_as("sidecar");
        let (anthropic, openai) = (env.mock.anthropic(), env.mock.openai());
        let mut argv = vec![
            "byok-sidecar",
            "--database-url",
            &url,
            "--anthropic-base-url",
            &anthropic,
            "--openai-base-url",
            &openai,
            "--worker-name",
            name,
            "--metrics-addr",
            "off",
            "--poll-interval",
            "0.2",
        ];
        argv.extend_from_slice(flags);
        let cfg = Config::from_cli(Cli::try_parse_from(argv).unwrap()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let run = runtime.spawn(worker::run(cfg, async {
            let _ = stopped.await;
        }));
        InProcess {
            runtime,
            stop: Some(stop),
            run: Some(run),
        }
    }

    /// Fires the shutdown future; returns what `run` returned and how long
    /// it took to return. Panics if it does not return within `within`.
    fn shut_down(&mut self, within: Duration) -> (Result<(), String>, Duration) {
        let fired = Instant::now();
        self.stop.take().unwrap().send(()).unwrap();
        let run = self.run.take().unwrap();
        let joined = self
            .runtime
            .block_on(async { tokio::time::timeout(within, run).await })
            .unwrap_or_else(|_| panic!("run did not return within {within:?} of shutdown"));
        (joined.expect("run panicked"), fired.elapsed())
    }
}

fn leased_by(db: &mut byok_integration::postgres::Client, name: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM byok.jobs WHERE leased_by = $1",
        &[&name],
    )
    .unwrap()
    .get(0)
}

#[test]
fn shutdown_hands_back_claimed_jobs_and_run_returns() {
    let mut env = setup(
        &[],
        MockOptions {
            hang: Duration::from_secs(120),
            ..Default::default()
        },
    );
    let mut db = env.db();
    let mut ids = Vec::new();
    for i in 0..3u64 {
        let key = env.key("anthropic", "mockhang", i);
        ids.push(add_key(&mut db, Uuid::new_v4(), "anthropic", &key));
    }
    let flags = [
        "--grace-period",
        "1",
        "--request-timeout",
        "30",
        "--lease-seconds",
        "60",
    ];
    let mut sc = InProcess::start(&env, "in-process-hangs", &flags);
    wait_until("jobs claimed", Duration::from_secs(20), || {
        leased_by(&mut db, "in-process-hangs") == 3
    });
    let (result, took) = sc.shut_down(Duration::from_secs(15));
    assert_eq!(result, Ok(()));
    assert!(
        took >= Duration::from_secs(1),
        "the grace period was not given: {took:?}"
    );
    let rows = db
        .query(
            "SELECT attempts, lease_token IS NULL, run_after <= now() + interval '1 second' \
             FROM byok.jobs WHERE key_id = ANY($1)",
            &[&ids],
        )
        .unwrap();
    assert_eq!(rows.len(), 3, "every job is still queued");
    for r in rows {
        assert_eq!(
            r.get::<_, i32>(0),
            0,
            "a handed-back job kept its spent attempt"
        );
        assert!(r.get::<_, bool>(1), "a handed-back job is still leased");
        assert!(
            r.get::<_, bool>(2),
            "a handed-back job is not claimable at once"
        );
    }
    for id in &ids {
        assert_eq!(status(&mut db, *id).0, "pending");
    }
    assert_eq!(leased_by(&mut db, "in-process-hangs"), 0);
    env.mock.assert_no_malformed();
}

#[test]
fn shutdown_lets_in_flight_jobs_finish_then_claims_nothing() {
    let mut env = setup(
        &[],
        MockOptions {
            slow: Duration::from_millis(1500),
            ..Default::default()
        },
    );
    let mut db = env.db();
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let key = env.key("openai", "mockslow", i);
        ids.push(add_key(&mut db, Uuid::new_v4(), "openai", &key));
    }
    let mut sc = InProcess::start(&env, "in-process-slow", &["--grace-period", "10"]);
    wait_until("jobs claimed", Duration::from_secs(20), || {
        leased_by(&mut db, "in-process-slow") == 4
    });
    let (result, took) = sc.shut_down(Duration::from_secs(15));
    assert_eq!(result, Ok(()));
    assert!(
        took < Duration::from_secs(10),
        "waited out the whole grace period: {took:?}"
    );
    for id in &ids {
        assert_eq!(
            status(&mut db, *id).0,
            "active",
            "an in-flight job was not finished before run returned"
        );
    }
    // Stopped means stopped: nothing claims a new key.
    let late = env.key("openai", "", 99);
    let late_id = add_key(&mut db, Uuid::new_v4(), "openai", &late);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(status(&mut db, late_id).0, "pending");
    assert_eq!(leased_by(&mut db, "in-process-slow"), 0);
}

#[test]
fn an_idle_loop_returns_at_once() {
    let env = setup(&[], MockOptions::default());
    let mut sc = InProcess::start(&env, "in-process-idle", &["--grace-period", "10"]);
    std::thread::sleep(Duration::from_millis(500));
    let (result, took) = sc.shut_down(Duration::from_secs(10));
    assert_eq!(result, Ok(()));
    assert!(
        took < Duration::from_secs(3),
        "an idle shutdown took {took:?}"
    );
}
