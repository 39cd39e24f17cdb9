// The redacting logger: what it masks must match pg_byok's byok.redact rules
// closely enough that no key-shaped text survives a log line.

import assert from "node:assert/strict";
import { Logger, mask, redact } from "../log.ts";

const body = (n: number) => Array.from({ length: n }, (_, i) => "aB3xY9kQ"[i % 8]).join("");
const anthropic = `sk-ant-api03-${body(93)}AA`;
const openai = `sk-proj-${body(60)}`;

Deno.test("mask: an ellipsis and the last four characters", () => {
  assert.deepEqual(mask(anthropic), "…" + anthropic.slice(-4));
  assert.deepEqual(mask("short"), "…");
  assert.deepEqual(mask(`  ${openai}\n`), "…" + openai.slice(-4));
});

Deno.test("redact: keys glued to other text, broken across lines, or unknown formats", () => {
  assert.deepEqual(redact(`Bearer${anthropic}`), `Bearer…${anthropic.slice(-4)}`);
  assert.deepEqual(redact(`key="${openai}" ok`), `key="…${openai.slice(-4)}" ok`);
  // A key cut by a line break: both halves are masked.
  const [head, tail] = [anthropic.slice(0, 60), anthropic.slice(60)];
  const broken = redact(`${head}\n${tail}`);
  assert.ok(!broken.includes(head.slice(13)), broken);
  assert.ok(!broken.includes(tail.slice(0, -4)), broken);
  // A 40+ character secret of no known format.
  assert.deepEqual(redact(`token ${body(48)}`), `token …${body(48).slice(-4)}`);
  // Ordinary text stays readable: words, uuids, short sk- words.
  const plain = "workspace a0000000-0000-4000-8000-00000000000a uses sk-learn";
  assert.deepEqual(redact(plain), plain);
});

Deno.test("logger: secret fields dropped, driver errors reduced, every value redacted", () => {
  const lines: string[] = [];
  const log = new Logger((l) => lines.push(l));
  const err = Object.assign(new Error(`bad key ${anthropic}`), {
    code: "22023",
    parameters: [anthropic],
  });
  log.info(`paste ${openai}`, { api_key: anthropic, nested: { note: `x ${openai}` }, err });
  assert.deepEqual(lines.length, 1);
  const line = lines[0];
  for (const secret of [anthropic, openai, anthropic.slice(13, -4), openai.slice(8, -4)]) {
    assert.ok(!line.includes(secret), line);
  }
  const rec = JSON.parse(line);
  assert.deepEqual(rec.api_key, "[redacted]");
  assert.deepEqual(rec.err, { error: `bad key …${anthropic.slice(-4)}`, code: "22023" });
  assert.ok(rec.msg.endsWith(openai.slice(-4)));
});
