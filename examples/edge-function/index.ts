// Entry point, as a Supabase Edge Function is written: `Deno.serve` with one
// handler. Configuration comes from the environment:
//   DATABASE_URL       Postgres, logging in as `authenticator` (see README.md)
//   ANTHROPIC_BASE_URL, OPENAI_BASE_URL   the vendors (the mock vendor in tests)
//   ALLOWED_ORIGIN     the Settings page's origin, for CORS
//   PORT               where to listen (127.0.0.1)

import { makeHandler } from "./app.ts";
import { connect } from "./db.ts";
import { Logger } from "./log.ts";
import { vendorConfig } from "./vendor.ts";

const log = new Logger();
const url = Deno.env.get("DATABASE_URL");
if (!url) {
  log.error("DATABASE_URL is not set", { hint: "postgres://authenticator@HOST:PORT/DB" });
  Deno.exit(2);
}
const sql = connect(url, log);
const handler = makeHandler({
  sql,
  log,
  vendors: vendorConfig((n) => Deno.env.get(n)),
  allowedOrigin: Deno.env.get("ALLOWED_ORIGIN"),
});

const port = Number(Deno.env.get("PORT") ?? "8000");
Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen: ({ hostname, port }) => log.info("listening", { url: `http://${hostname}:${port}` }),
}, handler);
