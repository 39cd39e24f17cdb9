//! Benchmark (issue 3): delete 1,000 workspaces with 10 keys each in one
//! statement, with pg_byok's statement-level revocation triggers attached.
//!
//! Run:
//!   cargo run --release -p byok-integration --bin workspace_delete -- [--runs 7] [--workspaces 1000] [--keys 10]
//!
//! Needs the installed extension (scripts/install-extension.sh). Starts its
//! own throw-away cluster (as the `postgres` OS user when run as root).
//!
//! Three tables hold the same workspace ids:
//! - `app.workspaces_plain`: no trigger at all (baseline: the DELETE itself);
//! - `app.workspaces`: `byok.attach_workspaces` (statement-level triggers
//!   with transition tables: one revocation pass per statement);
//! - `app.workspaces_rowtrig`: a naive per-row trigger calling
//!   `byok.revoke_workspace(OLD.id)` once per deleted workspace, for comparison.
//!
//! Every measured DELETE runs in its own transaction that is then rolled
//! back (so the same 10,000 keys are revoked in every run), followed by a
//! VACUUM so runs stay comparable; variants are interleaved. The figure is the
//! client-side wall time of the DELETE statement (loopback TCP). A last,
//! committed DELETE (statement + COMMIT) is reported separately.

use byok_integration::postgres::Client;
use byok_integration::{Cluster, ClusterOptions};
use std::time::{Duration, Instant};

struct Args {
    runs: usize,
    workspaces: i32,
    keys: i32,
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 7,
        workspaces: 1000,
        keys: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| -> i64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a positive number"))
        };
        match flag.as_str() {
            "--runs" => a.runs = val("--runs") as usize,
            "--workspaces" => a.workspaces = val("--workspaces") as i32,
            "--keys" => a.keys = val("--keys") as i32,
            "-h" | "--help" => {
                println!("workspace_delete [--runs N] [--workspaces N] [--keys N]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}"),
        }
    }
    assert!(
        a.runs >= 1 && a.workspaces >= 1 && a.keys >= 2,
        "bad arguments"
    );
    a
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

fn setup(c: &Cluster, db: &mut Client, a: &Args) {
    db.batch_execute(&format!(
        "CREATE SCHEMA app;
         CREATE TABLE app.workspaces (id uuid PRIMARY KEY, status text NOT NULL DEFAULT 'active', name text);
         INSERT INTO app.workspaces (id, name)
              SELECT gen_random_uuid(), 'workspace ' || g FROM generate_series(1, {n}) g;
         CREATE TABLE app.workspaces_plain (LIKE app.workspaces INCLUDING ALL);
         CREATE TABLE app.workspaces_rowtrig (LIKE app.workspaces INCLUDING ALL);
         INSERT INTO app.workspaces_plain SELECT * FROM app.workspaces;
         INSERT INTO app.workspaces_rowtrig SELECT * FROM app.workspaces;
         SELECT byok.attach_workspaces(workspace_table => 'app.workspaces', id_column => 'id', status_column => 'status');
         CREATE FUNCTION app.revoke_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM byok.revoke_workspace(workspace_id => OLD.id, reason => 'workspace deleted');
             RETURN OLD;
         END $$;
         CREATE TRIGGER revoke_each_row AFTER DELETE ON app.workspaces_rowtrig
             FOR EACH ROW EXECUTE FUNCTION app.revoke_row();",
        n = a.workspaces
    ))
    .unwrap_or_else(|e| c.fail("bench schema", &e));

    // Keys: half anthropic, half openai, well-formed, distinct (md5 hex is a
    // subset of the key alphabet).
    let t = Instant::now();
    let added: i64 = db
        .query_one(
            &format!(
                "SELECT count(byok.add_key(w.id, v.vendor, v.k))
                   FROM app.workspaces w, generate_series(1, {k}) i,
                        LATERAL (SELECT md5(w.id::text || i) || md5(i || w.id::text) || md5(w.id::text || '/' || i)
                                        || md5(i || '/' || w.id::text) || md5(w.id::text || i || 'x') AS h) h,
                        LATERAL (SELECT CASE WHEN i % 2 = 0 THEN 'anthropic' ELSE 'openai' END AS vendor,
                                        CASE WHEN i % 2 = 0
                                             THEN 'sk-ant-api03-' || left(h.h, 93) || 'AA'
                                             ELSE 'sk-proj-' || left(h.h, 74) || 'T3BlbkFJ' || right(h.h, 74) END AS k) v",
                k = a.keys
            ),
            &[],
        )
        .unwrap_or_else(|e| c.fail("adding keys", &e))
        .get(0);
    eprintln!("added {added} keys in {:.1} s", t.elapsed().as_secs_f64());

    // Validate one key per (workspace, vendor) -> 2 active keys per
    // workspace; the other keys stay pending with a queued (retrying) job.
    let t = Instant::now();
    db.batch_execute(
        "CREATE TEMP TABLE claimed (job_id bigint, workspace_id uuid, vendor text, lease_token uuid);",
    )
    .unwrap();
    for _ in 0..((a.workspaces as i64 * a.keys as i64) / 1000 + 2) {
        db.batch_execute(
            "INSERT INTO claimed SELECT job_id, workspace_id, vendor, lease_token
               FROM byok.claim_jobs(worker => 'bench', max_jobs => 1000, lease_seconds => 3600)",
        )
        .unwrap_or_else(|e| c.fail("claim_jobs", &e));
    }
    db.batch_execute(
        "SELECT count(byok.finish_job(job_id => job_id, lease_token => lease_token,
                    outcome => CASE WHEN rn = 1 THEN 'valid' ELSE 'retry' END, http_status => 503))
           FROM (SELECT *, row_number() OVER (PARTITION BY workspace_id, vendor ORDER BY job_id) rn FROM claimed) s;
         DROP TABLE claimed;",
    )
    .unwrap_or_else(|e| c.fail("finish_job", &e));
    db.batch_execute("VACUUM ANALYZE").unwrap();
    eprintln!("validated in {:.1} s", t.elapsed().as_secs_f64());
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'active'), count(*) FILTER (WHERE status = 'pending'),
                    (SELECT count(*) FROM byok.jobs)
               FROM byok.keys",
            &[],
        )
        .unwrap();
    let (active, pending, jobs): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    eprintln!("state: {active} active, {pending} pending, {jobs} queued jobs");
    assert_eq!(active, 2 * a.workspaces as i64);
    assert_eq!(active + pending, a.workspaces as i64 * a.keys as i64);
}

/// One rolled-back DELETE of every row of `table`; returns the statement time.
fn timed_delete(db: &mut Client, table: &str, check_revoked: bool) -> Duration {
    let mut tx = db.transaction().unwrap();
    let t = Instant::now();
    let n = tx
        .execute(format!("DELETE FROM {table}").as_str(), &[])
        .unwrap();
    let d = t.elapsed();
    assert!(n > 0);
    if check_revoked {
        let row = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE status <> 'revoked' AND status <> 'invalid'),
                        count(*) FILTER (WHERE ciphertext IS NOT NULL),
                        (SELECT count(*) FROM byok.jobs)
                   FROM byok.keys",
                &[],
            )
            .unwrap();
        let (live, sealed, jobs): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (live, sealed, jobs),
            (0, 0, 0),
            "{table}: every key revoked, erased, jobs cancelled"
        );
    }
    tx.rollback().unwrap();
    d
}

fn main() {
    let a = parse_args();
    let c = Cluster::start(ClusterOptions {
        // Durable settings for the committed run (the harness defaults to fsync=off).
        extra_conf: vec!["fsync = on".into()],
        ..Default::default()
    });
    let mut db = c.client();
    setup(&c, &mut db, &a);
    let total_keys = a.workspaces as i64 * a.keys as i64;

    let variants = [
        ("app.workspaces_plain", "no trigger (baseline)", false),
        (
            "app.workspaces",
            "pg_byok attach_workspaces (statement-level)",
            true,
        ),
        (
            "app.workspaces_rowtrig",
            "naive FOR EACH ROW -> byok.revoke_workspace",
            true,
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    // One warm-up round, not counted.
    for (table, _, check) in &variants {
        timed_delete(&mut db, table, *check);
        db.batch_execute("VACUUM byok.keys, byok.jobs, byok.audit_log, app.workspaces, app.workspaces_plain, app.workspaces_rowtrig").unwrap();
    }
    for run in 0..a.runs {
        for (i, (table, _, check)) in variants.iter().enumerate() {
            let d = timed_delete(&mut db, table, *check);
            times[i].push(ms(d));
            db.batch_execute("VACUUM byok.keys, byok.jobs, byok.audit_log, app.workspaces, app.workspaces_plain, app.workspaces_rowtrig").unwrap();
        }
        eprintln!(
            "run {}: {:?}",
            run + 1,
            times
                .iter()
                .map(|t| format!("{:.1}", t[run]))
                .collect::<Vec<_>>()
        );
    }

    // Finally one committed DELETE through the attached table (statement + COMMIT).
    let mut tx = db.transaction().unwrap();
    let t = Instant::now();
    tx.execute("DELETE FROM app.workspaces", &[]).unwrap();
    tx.commit().unwrap();
    let committed = t.elapsed();
    let live: i64 = db
        .query_one("SELECT count(*) FROM byok.keys WHERE status NOT IN ('revoked', 'invalid') OR ciphertext IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert_eq!(live, 0, "committed DELETE revoked every key");
    let audit: i64 = db
        .query_one(
            "SELECT count(*) FROM byok.audit_log WHERE action = 'revoke'",
            &[],
        )
        .unwrap()
        .get(0);

    println!(
        "workspace_delete: {} workspaces x {} keys = {} keys ({} active, {} pending with queued jobs); {} runs, median (min-max) ms",
        a.workspaces,
        a.keys,
        total_keys,
        2 * a.workspaces,
        total_keys - 2 * a.workspaces as i64,
        a.runs
    );
    for (i, (table, what, _)) in variants.iter().enumerate() {
        let (med, min, max) = stats(times[i].clone());
        println!("  {what:<48} {table:<24} {med:>9.1} ({min:.1}-{max:.1})");
    }
    println!("  committed DELETE via attach_workspaces (statement + COMMIT, fsync on): {:.1} ms; {audit} revoke audit rows", ms(committed));
}
