// End to end: the running function (EDGE_URL) against a real cluster with
// pg_byok, byok-sidecar and the mock vendor (MOCK_URL), all started by
// scripts/examples.sh. The tests run in file order and share workspace A;
// workspace B's member is the outsider. A superuser connection reads what
// the HTTP API does not show (ciphertext erased, audit rows, logs).

import assert from "node:assert/strict";
import postgres from "postgres";

const env = (n: string) => {
  const v = Deno.env.get(n);
  if (!v) throw new Error(`${n} is not set; run: bash scripts/examples.sh test`);
  return v;
};
const EDGE = env("EDGE_URL"), MOCK = env("MOCK_URL");
const WS_A = env("WS_A"), USER_A = env("USER_A"), USER_B = env("USER_B");
const su = postgres(`postgres://postgres@127.0.0.1:${env("PG_PORT")}/postgres`, {
  max: 1,
  onnotice: () => {},
});
/// Every plaintext key the tests send, for the leak check at the end.
const sent: string[] = [];

const rand = (n: number) => {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => abc[b % abc.length]).join("");
};
function anthropicKey(marker = ""): string {
  const k = `sk-ant-api03-${marker}${rand(93 - marker.length)}AA`;
  sent.push(k);
  return k;
}
function openaiKey(marker = ""): string {
  const k = `sk-proj-${marker}${rand(64 - marker.length)}`;
  sent.push(k);
  return k;
}

// deno-lint-ignore no-explicit-any
type Json = any;
async function call(
  method: string,
  path: string,
  opts: { user?: string | null; body?: unknown } = {},
) {
  const headers: Record<string, string> = {};
  const user = opts.user === undefined ? USER_A : opts.user;
  if (user) headers["x-byok-demo-user"] = user;
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${EDGE}${path}`, {
    method,
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await res.text();
  for (const k of sent) {
    assert.ok(!text.includes(k.slice(12, -4)), `response to ${method} ${path} holds a key`);
  }
  return { status: res.status, body: JSON.parse(text) as Json };
}
const ws = (p: string, w = WS_A) => `/workspaces/${w}${p}`;

async function waitStatus(id: string, want: string): Promise<Json> {
  let row: Json;
  for (let i = 0; i < 100; i++) {
    [row] =
      await su`select status, status_detail, revoked_cause, ciphertext is null as erased from byok.keys where id = ${id}`;
    if (row?.status === want) return row;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`key ${id} is ${row?.status}, not ${want}`);
}
async function mockControl(path: string, body?: unknown) {
  const res = await fetch(`${MOCK}/__mock/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: body === undefined ? "" : JSON.stringify(body),
  });
  assert.equal(res.status, 200, await res.text());
}
async function addActive(key: string, vendor = "anthropic", label = "e2e"): Promise<Json> {
  const r = await call("POST", ws("/keys"), { body: { vendor, api_key: key, label } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  await waitStatus(r.body.key.id, "active");
  return r.body.key;
}
const audit = (keyId: string) =>
  su`select action, outcome, actor_role from byok.audit_log where key_id = ${keyId} order by id`;

Deno.test("add: a pasted key with trailing spaces and a line break is stored masked, then validated", async () => {
  const key = anthropicKey();
  const r = await call("POST", ws("/keys"), {
    body: { vendor: "Anthropic", api_key: `${key}  \r\n`, label: " production " },
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.key.masked, `…${key.slice(-4)}`);
  assert.equal(r.body.key.status, "pending");
  assert.equal(r.body.key.vendor, "anthropic");
  assert.equal(r.body.key.label, "production");
  await waitStatus(r.body.key.id, "active");
  const list = await call("GET", ws("/keys"));
  assert.equal(list.status, 200);
  const mine = list.body.keys.find((k: Json) => k.id === r.body.key.id);
  assert.equal(mine.status, "active");
  assert.ok(mine.validated_at);
  assert.equal(Object.keys(mine).includes("ciphertext"), false);
  // The member acted as themself: pg_byok audited the add with their subject.
  const [row] =
    await su`select actor_role, actor_sub from byok.audit_log where key_id = ${mine.id} and action = 'add'`;
  assert.deepEqual({ ...row }, { actor_role: "authenticated", actor_sub: USER_A });
});

Deno.test("tenancy: another workspace's member and an anonymous caller get nothing", async () => {
  const [k] = await su`select id from byok.keys where workspace_id = ${WS_A} limit 1`;
  for (
    const [method, path, body] of [
      ["GET", ws("/keys"), undefined],
      ["POST", ws("/keys"), { vendor: "anthropic", api_key: anthropicKey() }],
      ["POST", ws(`/keys/${k.id}/revoke`), {}],
      ["GET", ws("/activity"), undefined],
      ["POST", ws("/agent"), { vendor: "anthropic", prompt: "hi" }],
    ] as const
  ) {
    const r = await call(method, path, { user: USER_B, body });
    assert.equal(r.status, 403, `${method} ${path}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.code, "42501");
    assert.ok(r.body.hint);
  }
  assert.equal((await call("GET", ws("/keys"), { user: null })).status, 401);
  assert.equal((await call("GET", ws("/keys"), { user: "not-a-uuid" })).status, 401);
  const [{ n }] =
    await su`select count(*)::int as n from byok.keys where workspace_id = ${WS_A} and status <> 'revoked'`;
  assert.ok(n >= 1, "the outsider's revoke changed nothing");
});

Deno.test("add: a bad paste gets pg_byok's own message and hint", async () => {
  const admin = `sk-ant-admin01-${rand(93)}AA`;
  sent.push(admin);
  const r1 = await call("POST", ws("/keys"), { body: { vendor: "anthropic", api_key: admin } });
  assert.equal(r1.status, 400);
  assert.equal(r1.body.code, "22023");
  assert.match(r1.body.error, /admin/i);
  assert.ok(r1.body.hint);
  const r2 = await call("POST", ws("/keys"), {
    body: { vendor: "anthropic", api_key: openaiKey() },
  });
  assert.equal(r2.status, 400);
  assert.match(r2.body.hint, /openai/i);
  const r3 = await call("POST", ws("/keys"), { body: { vendor: "anthropic" } });
  assert.equal(r3.status, 400);
});

// Uses by the service role, flushed (byok.key_usage) or still counted in
// shared memory (byok.key_usage_live): use_key writes no audit row per call
// unless byok.use_audit = 'each'.
async function serviceRoleUses(): Promise<number> {
  const [{ n }] = await su`select coalesce(sum(uses), 0)::int as n from (
      select uses, role from byok.key_usage union all select uses, role from byok.key_usage_live) u
    where role = 'service_role'`;
  return n;
}

Deno.test("agent step: the active key from use_key reaches the vendor", async () => {
  const usesBefore = await serviceRoleUses();
  const before = await (await fetch(`${MOCK}/__mock/stats`)).json();
  const r = await call("POST", ws("/agent"), { body: { vendor: "anthropic", prompt: "Say P" } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.text, "P");
  assert.match(r.body.key, /^…/);
  const after = await (await fetch(`${MOCK}/__mock/stats`)).json();
  assert.equal((after.requests.anthropic?.valid ?? 0) - (before.requests.anthropic?.valid ?? 0), 1);
  // Counted once, as the service role. A flush moves the count from shared
  // memory to the table (it is taken from memory just after the flush
  // commits), so the sum is read until it settles.
  let counted = 0;
  for (let i = 0; i < 50; i++) {
    counted = await serviceRoleUses() - usesBefore;
    if (counted === 1) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(counted, 1);
});

Deno.test("agent step: a 401 from the vendor makes pg_byok re-check the key, which becomes invalid", async () => {
  const key = await addActive(anthropicKey(), "anthropic", "will be refused");
  // The vendor revokes the key on its side: every request now gets 401.
  await mockControl("outage", { vendor: "anthropic", status: 401, seconds: 60 });
  try {
    const r = await call("POST", ws("/agent"), { body: { vendor: "anthropic", prompt: "hi" } });
    assert.equal(r.status, 502, JSON.stringify(r.body));
    assert.equal(r.body.vendor_status, 401);
    assert.equal(r.body.key.id, key.id);
    assert.match(r.body.error, new RegExp(key.masked));
    const row = await waitStatus(key.id, "invalid");
    assert.ok(row.status_detail, "the vendor's reason is kept");
    assert.equal(row.erased, true);
    assert.ok(
      (await audit(key.id)).some((a) =>
        a.action === "report_failure" && a.actor_role === "service_role"
      ),
    );
  } finally {
    await mockControl("reset");
  }
  // No active key is left: the agent is told to add one.
  const again = await call("POST", ws("/agent"), { body: { vendor: "anthropic", prompt: "hi" } });
  assert.equal(again.status, 404);
  assert.equal(again.body.code, "P0002");
});

Deno.test("agent step: a 403 is reported the same way (OpenAI)", async () => {
  const key = await addActive(openaiKey(), "openai", "openai");
  const ok = await call("POST", ws("/agent"), { body: { vendor: "openai", prompt: "hi" } });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  await mockControl("outage", { vendor: "openai", status: 403, seconds: 60 });
  try {
    const r = await call("POST", ws("/agent"), { body: { vendor: "openai", prompt: "hi" } });
    assert.equal(r.status, 502);
    assert.equal(r.body.vendor_status, 403);
    assert.ok((await audit(key.id)).some((a) => a.action === "report_failure"));
  } finally {
    await mockControl("reset");
  }
});

Deno.test("replace: the new key takes over only once valid; a refused one leaves the old key serving", async () => {
  const old = await addActive(anthropicKey(), "anthropic", "to replace");
  const bad = await call("POST", ws(`/keys/${old.id}/replace`), {
    body: { api_key: anthropicKey("mock401") },
  });
  assert.equal(bad.status, 201, JSON.stringify(bad.body));
  assert.equal(bad.body.replaces, old.id);
  assert.equal(bad.body.key.label, "to replace");
  await waitStatus(bad.body.key.id, "invalid");
  assert.equal((await waitStatus(old.id, "active")).status, "active");

  const good = await call("POST", ws(`/keys/${old.id}/replace`), {
    body: { api_key: anthropicKey(), label: "new" },
  });
  assert.equal(good.status, 201);
  assert.equal(good.body.key.status, "pending");
  await waitStatus(good.body.key.id, "active");
  const gone = await waitStatus(old.id, "revoked");
  assert.equal(gone.revoked_cause, "rotated");
  assert.equal(gone.erased, true);
  const unknown = await call("POST", ws(`/keys/${crypto.randomUUID()}/replace`), {
    body: { api_key: anthropicKey() },
  });
  assert.equal(unknown.status, 404);
});

Deno.test("revoke: the key stops working at once", async () => {
  const list = await call("GET", ws("/keys"));
  const active = list.body.keys.find((k: Json) =>
    k.vendor === "anthropic" && k.status === "active"
  );
  const r = await call("POST", ws(`/keys/${active.id}/revoke`), {
    body: { reason: "left the company" },
  });
  assert.equal(r.status, 200);
  assert.equal(r.body.key.status, "revoked");
  assert.equal(r.body.key.status_detail, "left the company");
  assert.equal(
    (await call("POST", ws("/agent"), { body: { vendor: "anthropic", prompt: "hi" } })).status,
    404,
  );
});

Deno.test("activity: the workspace's audit rows, masked, to members only", async () => {
  const r = await call("GET", ws("/activity"));
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.ok(["authenticated", "service_role"].includes(r.body.read_as));
  console.log(`activity read as ${r.body.read_as}`);
  const actions = new Set(r.body.activity.map((a: Json) => a.action));
  // No "use": uses are counted per key, role and hour (byok.key_usage), not
  // audited per call, by default.
  for (const a of ["add", "validate", "revoke", "report_failure"]) {
    assert.ok(actions.has(a), `no ${a} row`);
  }
  assert.ok(r.body.activity.some((a: Json) => a.masked?.startsWith("…")));
  // Every row of the workspace up to the newest one returned (the sidecar may
  // add rows meanwhile), none of another workspace's.
  const newest = r.body.activity[0].id;
  const [{ n }] = await su`select count(*)::int as n from byok.audit_log
                           where workspace_id = ${WS_A} and id <= ${newest}`;
  assert.equal(r.body.activity.length, Math.min(n, 100));
  const ids = r.body.activity.map((a: Json) => a.id);
  const [{ foreign }] = await su`select count(*)::int as foreign from byok.audit_log
                                 where id = any(${ids}::bigint[]) and workspace_id <> ${WS_A}`;
  assert.equal(foreign, 0);
  assert.equal((await call("GET", ws("/activity"), { user: USER_B })).status, 403);
});

Deno.test("no plaintext key in the function's log or the server's log", async () => {
  await su.end();
  assert.ok(sent.length >= 10);
  for (const file of [env("EDGE_LOG"), env("PG_LOG")]) {
    const text = await Deno.readTextFile(file);
    assert.ok(text.length > 0, `${file} is empty`);
    for (const k of sent) {
      // The whole key, and its body without the 4 characters a mask shows.
      assert.ok(!text.includes(k.slice(0, -4)), `${file} holds a key (…${k.slice(-4)})`);
    }
  }
  // The driver sent keys as bound parameters: statements name $n, not keys.
  const pg = await Deno.readTextFile(env("PG_LOG"));
  assert.match(pg, /byok\.add_key\(\$1, \$2, \$3, \$4\)/);
});
