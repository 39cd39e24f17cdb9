// graphile-worker doing the sidecar's job, for bench/run.sh: read the key,
// GET /v1/models on the mock vendor, mark the key active. Prints one JSON
// line: {"jobs":N,"seconds":S,"per_s":R,"concurrency":C}.
//
//   node bench/graphile/validate.cjs CONNSTRING VENDOR_BASE JOBS LATENCY_MS
//
// JOBS keys are added with their jobs in one transaction before the worker
// starts (as bench/pipeline.rs adds its 5,000 keys); timing runs from the
// worker's start to the last job's success. Keys carry the mock vendor's
// `mockslow` marker when LATENCY_MS > 0 (the mock then answers after
// --slow-ms). graphile-worker's own default concurrency is 1; the bench runs
// it at BENCH_GW_CONCURRENCY (default 64), enough jobs in flight to keep a
// 150 ms vendor busy, on a pool of BENCH_GW_POOL (default 24) connections.
'use strict';
const { run, Logger } = require('graphile-worker');

// graphile-worker logs every job to stdout; the bench keeps stdout for its result.
const logger = new Logger(() => (level, message) => { if (level === 'error') console.error(message); });
const { Pool } = require('pg');

async function main() {
  const [conn, base, jobsArg, latencyArg] = process.argv.slice(2);
  const jobs = Number(jobsArg);
  const marker = Number(latencyArg) > 0 ? 'mockslow' : 'bench';
  const concurrency = Number(process.env.BENCH_GW_CONCURRENCY || 64);
  const pool = new Pool({ connectionString: conn, max: Number(process.env.BENCH_GW_POOL || 24) });
  await pool.query(`DROP SCHEMA IF EXISTS bench_gw CASCADE;
    CREATE SCHEMA bench_gw;
    CREATE TABLE bench_gw.keys (id int PRIMARY KEY, api_key text NOT NULL, status text NOT NULL DEFAULT 'pending')`);
  // Migrate graphile-worker's schema (a runner with no tasks does it), then queue.
  const migrate = await run({ pgPool: pool, concurrency: 1, noHandleSignals: true, logger, taskList: {} });
  await migrate.stop();
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query(`INSERT INTO bench_gw.keys (id, api_key)
      SELECT n, 'sk-ant-api03-' || $2 || left(md5(n::text) || md5('a' || n) || md5('b' || n), 80) || 'AA'
        FROM generate_series(1, $1::int) n`, [jobs, marker]);
    await client.query(`SELECT graphile_worker.add_job('validate', json_build_object('id', n))
        FROM generate_series(1, $1::int) n`, [jobs]);
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  let done = 0;
  let failed = 0;
  let finish;
  const allDone = new Promise((resolve) => { finish = resolve; });
  const started = process.hrtime.bigint();
  const runner = await run({
    pgPool: pool,
    concurrency,
    noHandleSignals: true,
    logger,
    pollInterval: 1000,
    taskList: {
      validate: async (payload, helpers) => {
        const { rows } = await helpers.withPgClient((c) =>
          c.query('SELECT api_key FROM bench_gw.keys WHERE id = $1', [payload.id]));
        const res = await fetch(`${base}/v1/models`, {
          headers: { 'x-api-key': rows[0].api_key, 'anthropic-version': '2023-06-01' },
        });
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`vendor answered ${res.status}`);
        await helpers.withPgClient((c) =>
          c.query("UPDATE bench_gw.keys SET status = 'active' WHERE id = $1", [payload.id]));
      },
    },
  });
  runner.events.on('job:success', () => { done += 1; if (done === jobs) finish(); });
  runner.events.on('job:error', () => { failed += 1; });
  await allDone;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await runner.stop();
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM bench_gw.keys WHERE status = 'active'");
  await pool.end();
  if (rows[0].n !== jobs) throw new Error(`${rows[0].n} of ${jobs} keys active`);
  console.log(JSON.stringify({ jobs, seconds: Number(seconds.toFixed(3)), per_s: Math.round(jobs / seconds),
    concurrency, errors: failed }));
}

main().catch((e) => { console.error(e); process.exit(1); });
