// One agent step's call to the vendor, with the customer's key, at the base
// URL the environment names (the mock vendor in tests, the real API in
// production). Only what we need from the answer is read; a vendor's error
// body is reduced to its message, redacted, because some vendors quote the
// key they refused.

import { redact } from "./log.ts";

export type Vendor = "anthropic" | "openai";

export interface VendorConfig {
  anthropicBaseUrl: string;
  openaiBaseUrl: string;
  anthropicModel: string;
  openaiModel: string;
  timeoutMs: number;
}

export type VendorAnswer =
  | { ok: true; text: string; model: string }
  | { ok: false; status: number; message: string };

export function vendorConfig(env: (name: string) => string | undefined): VendorConfig {
  return {
    anthropicBaseUrl: env("ANTHROPIC_BASE_URL") ?? "https://api.anthropic.com",
    openaiBaseUrl: env("OPENAI_BASE_URL") ?? "https://api.openai.com",
    anthropicModel: env("ANTHROPIC_MODEL") ?? "claude-haiku-4-5",
    openaiModel: env("OPENAI_MODEL") ?? "gpt-4o-mini",
    timeoutMs: Number(env("VENDOR_TIMEOUT_MS") ?? "20000"),
  };
}

export async function callVendor(
  cfg: VendorConfig,
  vendor: Vendor,
  apiKey: string,
  prompt: string,
): Promise<VendorAnswer> {
  const messages = [{ role: "user", content: prompt }];
  const req: { url: string; headers: Record<string, string>; body: unknown } =
    vendor === "anthropic"
      ? {
        url: `${cfg.anthropicBaseUrl.replace(/\/$/, "")}/v1/messages`,
        headers: { "x-api-key": apiKey, "anthropic-version": "2023-06-01" },
        body: { model: cfg.anthropicModel, max_tokens: 256, messages },
      }
      : {
        url: `${cfg.openaiBaseUrl.replace(/\/$/, "")}/v1/chat/completions`,
        headers: { authorization: `Bearer ${apiKey}` },
        body: { model: cfg.openaiModel, messages },
      };
  const res = await fetch(req.url, {
    method: "POST",
    headers: { ...req.headers, "content-type": "application/json" },
    body: JSON.stringify(req.body),
    signal: AbortSignal.timeout(cfg.timeoutMs),
  });
  // deno-lint-ignore no-explicit-any
  const body: any = await res.json().catch(() => null);
  if (!res.ok) {
    const message = typeof body?.error?.message === "string"
      ? redact(body.error.message).slice(0, 300)
      : `HTTP ${res.status}`;
    return { ok: false, status: res.status, message };
  }
  const text = vendor === "anthropic"
    ? (body?.content ?? []).filter((c: { type: string }) => c.type === "text").map((
      c: { text: string },
    ) => c.text)
      .join("")
    : body?.choices?.[0]?.message?.content ?? "";
  return { ok: true, text: String(text), model: String(body?.model ?? "") };
}
