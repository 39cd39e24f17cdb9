// The routes of the "byok-keys" function: the backend of the Settings → Keys
// page and one agent step. Each handler does its work in one transaction as
// the calling member (pg_byok authorizes it) or, where only the backend may
// act, as service_role after checking membership as the member.

import { asMember, asService, isPgError, type Sql, type Tx } from "./db.ts";
import { type Logger, redact } from "./log.ts";
import { callVendor, type Vendor, type VendorConfig } from "./vendor.ts";

export interface Deps {
  sql: Sql;
  log: Logger;
  vendors: VendorConfig;
  /// The page's origin, allowed by CORS (the page is served from elsewhere,
  /// as a Supabase function's callers are).
  allowedOrigin?: string;
}

const UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
const UUID_RE = new RegExp(`^${UUID}$`);

/// The stand-in for Supabase's JWT verification (see README.md): the caller's
/// user id from a header the demo and the tests set. In a deployed function,
/// replace this with verifying the `Authorization: Bearer <jwt>` header
/// (e.g. `supabase.auth.getUser(jwt)`) and taking its `sub`.
export const USER_HEADER = "x-byok-demo-user";

function callerId(req: Request): string | null {
  const id = req.headers.get(USER_HEADER)?.trim() ?? "";
  return UUID_RE.test(id) ? id.toLowerCase() : null;
}

type Params = { ws: string; id?: string };
type Handler = (d: Deps, user: string, p: Params, req: Request) => Promise<Response>;

const routes: [string, RegExp, Handler][] = [
  ["GET", new RegExp(`/workspaces/(?<ws>${UUID})/keys$`), listKeys],
  ["POST", new RegExp(`/workspaces/(?<ws>${UUID})/keys$`), addKey],
  ["POST", new RegExp(`/workspaces/(?<ws>${UUID})/keys/(?<id>${UUID})/revoke$`), revokeKey],
  ["POST", new RegExp(`/workspaces/(?<ws>${UUID})/keys/(?<id>${UUID})/replace$`), replaceKey],
  ["POST", new RegExp(`/workspaces/(?<ws>${UUID})/keys/(?<id>${UUID})/revalidate$`), revalidateKey],
  ["GET", new RegExp(`/workspaces/(?<ws>${UUID})/activity$`), activity],
  ["POST", new RegExp(`/workspaces/(?<ws>${UUID})/agent$`), agentStep],
];

export function makeHandler(d: Deps): (req: Request) => Promise<Response> {
  return async (req) => {
    const cors = corsHeaders(d, req);
    if (req.method === "OPTIONS") return new Response(null, { status: 204, headers: cors });
    const path = new URL(req.url).pathname;
    const started = performance.now();
    let res: Response;
    try {
      res = await route(d, req, path);
    } catch (e) {
      res = errorResponse(d.log, e, path);
    }
    for (const [k, v] of Object.entries(cors)) res.headers.set(k, v);
    d.log.info("request", {
      method: req.method,
      path,
      status: res.status,
      ms: Math.round(performance.now() - started),
    });
    return res;
  };
}

async function route(d: Deps, req: Request, path: string): Promise<Response> {
  const matches = routes.filter(([, re]) => re.test(path));
  if (matches.length === 0) return json(404, { error: "No such route." });
  const found = matches.find(([m]) => m === req.method);
  if (!found) return json(405, { error: `Use ${matches.map(([m]) => m).join(" or ")} here.` });
  const user = callerId(req);
  if (!user) {
    return json(401, {
      error: "Not signed in.",
      hint: `Send the user id in ${USER_HEADER} (a stand-in for a Supabase JWT).`,
    });
  }
  const g = found[1].exec(path)!.groups!;
  return await found[2](d, user, { ws: g.ws.toLowerCase(), id: g.id?.toLowerCase() }, req);
}

function corsHeaders(d: Deps, req: Request): Record<string, string> {
  const origin = req.headers.get("origin");
  if (!d.allowedOrigin || origin !== d.allowedOrigin) return {};
  return {
    "access-control-allow-origin": origin,
    "access-control-allow-methods": "GET, POST, OPTIONS",
    "access-control-allow-headers": `content-type, authorization, ${USER_HEADER}`,
    "vary": "origin",
  };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/// pg_byok's SQLSTATEs as HTTP statuses; its message and hint go to the
/// caller as they are (they never hold key material; redacted once more anyway).
const STATUS_OF: Record<string, number> = {
  "22004": 400,
  "22023": 400,
  "22021": 400,
  "42501": 403,
  P0002: 404,
  "55000": 409,
};

function errorResponse(log: Logger, e: unknown, path: string): Response {
  if (isPgError(e) && STATUS_OF[e.code]) {
    return json(STATUS_OF[e.code], {
      error: redact(e.message),
      hint: e.hint ? redact(e.hint) : undefined,
      code: e.code,
    });
  }
  if (e instanceof BadRequest) return json(400, { error: e.message });
  log.error("request failed", { path, err: e });
  return json(500, { error: "Something went wrong on our side; try again." });
}

class BadRequest extends Error {}

async function body(req: Request): Promise<Record<string, unknown>> {
  const b = await req.json().catch(() => null);
  if (b === null || typeof b !== "object" || Array.isArray(b)) {
    throw new BadRequest("Send a JSON object.");
  }
  return b as Record<string, unknown>;
}

function text(b: Record<string, unknown>, name: string, required: boolean): string | null {
  const v = b[name];
  if (v === undefined || v === null) {
    if (required) throw new BadRequest(`"${name}" is required.`);
    return null;
  }
  if (typeof v !== "string") throw new BadRequest(`"${name}" must be a string.`);
  return v;
}

/// A workspace's key by id, as the member sees it (404 when it is not there:
/// key ids say nothing about other workspaces).
async function memberKey(tx: Tx, ws: string, id: string) {
  const [k] = await tx`select * from byok.list_keys(${ws}) where id = ${id}`;
  return k ?? null;
}

async function listKeys(d: Deps, user: string, p: Params): Promise<Response> {
  const keys = await asMember(d.sql, user, (tx) => tx`select * from byok.list_keys(${p.ws})`);
  return json(200, { keys });
}

async function addKey(d: Deps, user: string, p: Params, req: Request): Promise<Response> {
  const b = await body(req);
  const vendor = text(b, "vendor", true),
    apiKey = text(b, "api_key", true),
    label = text(b, "label", false);
  // pg_byok strips surrounding whitespace and line breaks, checks the shape
  // and says what is wrong with a bad paste; the key is a bound parameter.
  const [key] = await asMember(
    d.sql,
    user,
    (tx) => tx`select * from byok.add_key(${p.ws}, ${vendor}, ${apiKey}, ${label})`,
  );
  d.log.info("key added", { workspace: p.ws, vendor: key.vendor, masked: key.masked });
  return json(201, { key });
}

async function revokeKey(d: Deps, user: string, p: Params, req: Request): Promise<Response> {
  const reason = text(await body(req), "reason", false) ?? "revoked by user";
  const key = await asMember(d.sql, user, async (tx) => {
    if (!(await memberKey(tx, p.ws, p.id!))) return null;
    const [k] = await tx`select * from byok.revoke_key(${p.id!}, ${reason})`;
    return k;
  });
  if (!key) return json(404, { error: "This workspace has no such key." });
  d.log.info("key revoked", { workspace: p.ws, masked: key.masked });
  return json(200, { key });
}

/// Replace: add the new key for the old one's vendor. pg_byok keeps the old
/// key serving until the new one is valid, then revokes it (`rotated`) in the
/// same transaction; a new key the vendor refuses leaves the old one active.
async function replaceKey(d: Deps, user: string, p: Params, req: Request): Promise<Response> {
  const b = await body(req);
  const apiKey = text(b, "api_key", true), label = text(b, "label", false);
  const key = await asMember(d.sql, user, async (tx) => {
    const old = await memberKey(tx, p.ws, p.id!);
    if (!old) return null;
    const [k] = await tx`select * from byok.add_key(${p.ws}, ${old.vendor}, ${apiKey}, ${
      label ?? old.label
    })`;
    return k;
  });
  if (!key) return json(404, { error: "This workspace has no such key." });
  return json(201, { key, replaces: p.id });
}

async function revalidateKey(d: Deps, user: string, p: Params): Promise<Response> {
  const key = await asMember(d.sql, user, async (tx) => {
    if (!(await memberKey(tx, p.ws, p.id!))) return null;
    const [k] = await tx`select * from byok.revalidate_key(${p.id!})`;
    return k;
  });
  return key ? json(200, { key }) : json(404, { error: "This workspace has no such key." });
}

/// The workspace's key activity: its rows of byok.audit_log, newest first.
///
/// THE SWITCH: pg_byok 0.2.0 lets `authenticated` read byok.audit_log under
/// its row-level security (the rows of workspaces byok.authorize allows);
/// earlier builds grant it to service_role only. When the member may read it,
/// we read as the member and RLS scopes the rows; otherwise we check
/// membership as the member and read as service_role, scoped to this
/// workspace by the WHERE clause. Once every database runs a pg_byok with the
/// grant, delete the service_role branch.
async function activity(d: Deps, user: string, p: Params): Promise<Response> {
  const query = (tx: Tx) =>
    tx`select a.id, a.at, a.action, a.outcome, a.detail, a.vendor, a.actor_role, a.key_id, k.masked
       from byok.audit_log a left join byok.list_keys(${p.ws}) k on k.id = a.key_id
       where a.workspace_id = ${p.ws} order by a.id desc limit 100`;
  const member = await asMember(d.sql, user, async (tx) => {
    const [r] = await tx`select byok.authorize(${p.ws}) as allowed,
        has_table_privilege('byok.audit_log', 'SELECT') as can_read`;
    if (!r.allowed) return { allowed: false as const };
    return r.can_read
      ? { allowed: true as const, rows: await query(tx) }
      : { allowed: true as const };
  });
  if (!member.allowed) return forbidden();
  if (member.rows) return json(200, { activity: member.rows, read_as: "authenticated" });
  const rows = await asService(d.sql, query);
  return json(200, { activity: rows, read_as: "service_role" });
}

function forbidden(): Response {
  return json(403, {
    error: "You are not a member of this workspace.",
    hint: "Sign in as a member of this workspace.",
    code: "42501",
  });
}

/// One agent step: the backend (service_role) gets the workspace's active key
/// with byok.use_key, calls the vendor, and when the vendor refuses the key
/// (401/403) tells pg_byok, which re-checks it: the sidecar marks it invalid
/// if the vendor refuses it again, and the page shows why.
async function agentStep(d: Deps, user: string, p: Params, req: Request): Promise<Response> {
  const b = await body(req);
  const vendor = (text(b, "vendor", true) ?? "").toLowerCase();
  const prompt = text(b, "prompt", true) ?? "";
  if (vendor !== "anthropic" && vendor !== "openai") {
    throw new BadRequest(`"vendor" must be "anthropic" or "openai".`);
  }
  const allowed = await asMember(d.sql, user, async (tx) => {
    const [r] = await tx`select byok.authorize(${p.ws}) as allowed`;
    return r.allowed as boolean;
  });
  if (!allowed) return forbidden();

  // The key id and the plaintext in one snapshot, so a 401 is reported
  // against the key that was actually used. The plaintext lives only in
  // this function's locals and the vendor request.
  const { keyId, masked, apiKey } = await asService(d.sql, async (tx) => {
    const [k] = await tx`select id, masked from byok.list_keys(${p.ws})
                         where vendor = ${vendor} and status = 'active'`;
    const [u] = await tx`select byok.use_key(${p.ws}, ${vendor}) as api_key`;
    return {
      keyId: k?.id as string | undefined,
      masked: k?.masked as string | undefined,
      apiKey: u.api_key as string,
    };
  });
  const answer = await callVendor(d.vendors, vendor as Vendor, apiKey, prompt);
  if (answer.ok) {
    d.log.info("agent step", { workspace: p.ws, vendor, key: masked, outcome: "ok" });
    return json(200, { text: answer.text, model: answer.model, key: masked });
  }
  if ((answer.status === 401 || answer.status === 403) && keyId) {
    // The vendor refused the key: report it. pg_byok audits the report and
    // re-checks the key at once (a report alone never demotes it); the
    // detail is redacted and cut to length by pg_byok.
    const [key] = await asService(
      d.sql,
      (tx) =>
        tx`select * from byok.report_key_failure(${p.ws}, ${vendor}, ${answer.status}, ${answer.message})`,
    );
    d.log.warn("vendor refused the key", {
      workspace: p.ws,
      vendor,
      key: masked,
      status: answer.status,
    });
    return json(502, {
      error:
        `${vendor} refused the workspace's key ${masked} (HTTP ${answer.status}): ${answer.message}`,
      hint:
        "pg_byok is checking the key again; if the vendor refuses it, replace it in Settings → Keys.",
      vendor_status: answer.status,
      key,
    });
  }
  d.log.warn("vendor call failed", { workspace: p.ws, vendor, key: masked, status: answer.status });
  return json(502, {
    error: `${vendor} answered HTTP ${answer.status}: ${answer.message}`,
    vendor_status: answer.status,
  });
}
