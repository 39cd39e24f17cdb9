// How a request reaches Postgres, the way Supabase's PostgREST does it: the
// function logs in as `authenticator` (NOINHERIT, a member of
// `authenticated` and `service_role`) and, per request, opens a transaction
// that sets the JWT claims and switches role with SET LOCAL, so both end with
// the transaction and a pooled connection carries nothing to the next request.
// Every value (workspace ids, vendors, keys) is a bound parameter of a tagged
// template; nothing is spliced into SQL text.

import postgres from "postgres";
import type { Logger } from "./log.ts";

export type Sql = postgres.Sql;
export type Tx = postgres.TransactionSql;

export function connect(url: string, log: Logger): Sql {
  return postgres(url, {
    max: 4,
    // Notices (e.g. add_key's "workspace not attached yet") go to our
    // redacting logger, not the driver's console.log.
    onnotice: (n) => log.info("postgres notice", { message: n.message, hint: n.hint }),
    connection: { application_name: "byok-edge-function" },
  });
}

/// Run `work` as the workspace member `userId`: `authenticated`, with the
/// JWT subject pg_byok's `byok.authorize` checks against the attached
/// members table.
export function asMember<T>(sql: Sql, userId: string, work: (tx: Tx) => Promise<T>): Promise<T> {
  return sql.begin(async (tx) => {
    const claims = JSON.stringify({ sub: userId, role: "authenticated" });
    await tx`select set_config('request.jwt.claims', ${claims}, true)`;
    await tx.unsafe("set local role authenticated");
    return await work(tx);
  }) as Promise<T>;
}

/// Run `work` as `service_role` (the backend's own role: may call use_key and
/// act on every workspace). Callers must have checked, as the member, that
/// the user belongs to the workspace they act on. Repeatable read, so every
/// statement in `work` sees the same keys.
export function asService<T>(sql: Sql, work: (tx: Tx) => Promise<T>): Promise<T> {
  return sql.begin("isolation level repeatable read", async (tx) => {
    await tx`select set_config('request.jwt.claims', ${
      JSON.stringify({ role: "service_role" })
    }, true)`;
    await tx.unsafe("set local role service_role");
    return await work(tx);
  }) as Promise<T>;
}

/// A Postgres error as the driver raises it (pg_byok sets code, message, hint).
export interface PgError {
  code: string;
  message: string;
  hint?: string;
}

export function isPgError(e: unknown): e is PgError {
  return e instanceof postgres.PostgresError;
}
