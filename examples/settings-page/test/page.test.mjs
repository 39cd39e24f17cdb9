// Settings → Keys in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; no browser download), against the page and edge function
// scripts/examples.sh started on a real cluster with the sidecar and the mock
// vendor. Everything a user does here is done with the keyboard only: Tab to
// a control, paste with Ctrl+V from the clipboard, Enter to submit. Saves a
// screenshot per state into SCREENSHOT_DIR.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomInt } from "node:crypto";

const env = (n) => {
  const v = process.env[n];
  if (!v) throw new Error(`${n} is not set; run: bash scripts/examples.sh test`);
  return v;
};
const { chromium } = createRequire(join(env("PLAYWRIGHT_CORE"), "/"))("./index.js");
const PAGE = env("PAGE_URL"), SHOTS = env("SCREENSHOT_DIR");

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const sent = [];
const rand = (n) => {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return Array.from({ length: n }, () => abc[randomInt(abc.length)]).join("");
};
const anthropicKey = (marker = "") => {
  const k = `sk-ant-api03-${marker}${rand(93 - marker.length)}AA`;
  sent.push(k);
  return k;
};
const openaiKey = (marker = "") => {
  const k = `sk-proj-${marker}${rand(64 - marker.length)}`;
  sent.push(k);
  return k;
};
const masked = (k) => `…${k.slice(-4)}`;

let profile, context, page;
let shot = 0;
const screenshot = async (name) => {
  const path = join(SHOTS, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path, fullPage: true });
};

before(async () => {
  profile = mkdtempSync(join(tmpdir(), "byok-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ARGS,
    viewport: { width: 1000, height: 900 },
  });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: PAGE });
  page = context.pages()[0] ?? await context.newPage();
  page.on("dialog", (d) => d.accept()); // the revoke confirmation, accepted as Enter would
  await page.goto(PAGE);
  await page.getByText("Signed in as").waitFor();
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/// The element that has focus, described.
const focused = () =>
  page.evaluate(() => {
    const e = document.activeElement;
    return {
      id: e?.id ?? "",
      tag: e?.tagName ?? "",
      name: e?.getAttribute("aria-label") ?? e?.textContent?.trim() ?? "",
    };
  });

/// Press Tab until `want(focused)` holds; fails after 60 presses.
async function tabTo(what, want) {
  for (let i = 0; i < 60; i++) {
    await page.keyboard.press("Tab");
    if (want(await focused())) return;
  }
  assert.fail(`Tab never reached ${what}`);
}

/// Put `text` on the clipboard and paste it into the focused field with Ctrl+V.
async function paste(text) {
  await page.evaluate((t) => navigator.clipboard.writeText(t), text);
  await page.keyboard.press("Control+V");
}

/// Keyboard only: vendor, paste the key (with what a copy drags along), label, Enter.
async function addWithKeyboard(vendor, key, label) {
  await page.evaluate(() => document.activeElement?.blur());
  await page.locator("body").focus();
  await tabTo("the vendor select", (f) => f.id === "vendor");
  const current = await page.locator("#vendor").inputValue();
  if (current !== vendor) await page.keyboard.press(vendor === "openai" ? "ArrowDown" : "ArrowUp");
  assert.equal(await page.locator("#vendor").inputValue(), vendor);
  await page.keyboard.press("Tab");
  assert.equal((await focused()).id, "api-key");
  await paste(`${key}  \n`);
  await page.keyboard.press("Tab");
  assert.equal((await focused()).id, "label");
  await page.keyboard.type(label);
  await page.keyboard.press("Enter");
  await page.getByRole("status").filter({ hasText: `Added ${masked(key)}` }).waitFor();
  assert.equal(await page.locator("#api-key").inputValue(), "", "the pasted key leaves the field");
}

const badge = (key) => page.locator(".badge", { hasText: masked(key) });
const row = (key) => page.locator("li", { has: badge(key) });
async function waitBadge(key, status) {
  await page.locator(".badge", { hasText: `${masked(key)} · ${status}` }).waitFor({
    timeout: 20_000,
  });
}

test("every input has a label, every button a name", async () => {
  await page.getByRole("combobox", { name: "Vendor" }).waitFor();
  await page.getByRole("textbox", { name: "Label (optional)" }).waitFor();
  assert.equal(await page.getByLabel("API key").getAttribute("type"), "password");
  const unnamed = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea, button")]
      .filter((e) =>
        !(e.labels?.length || e.getAttribute("aria-label") ||
          (e.tagName === "BUTTON" && e.textContent.trim()))
      )
      .map((e) => e.outerHTML)
  );
  assert.deepEqual(unnamed, []);
  await screenshot("empty");
});

let first;
test("keyboard only: paste a key with trailing spaces and a line break; Pending, then Active", async () => {
  first = anthropicKey();
  await addWithKeyboard("anthropic", first, "production");
  await waitBadge(first, "Active");
  assert.match(await row(first).innerText(), /Anthropic — production/);
  await screenshot("active");
});

test("a key the vendor refuses shows Invalid with the vendor's reason", async () => {
  const bad = anthropicKey("mock401");
  await addWithKeyboard("anthropic", bad, "typo");
  await waitBadge(bad, "Invalid");
  const text = await row(bad).innerText();
  assert.match(text, /The vendor refused it: \S+/);
  assert.equal(await row(bad).getByRole("button").count(), 0, "nothing to do with an invalid key");
  await screenshot("invalid");
});

test("a key the vendor cannot judge shows Unverified, with Check again", async () => {
  const key = openaiKey("mock503");
  await addWithKeyboard("openai", key, "ops");
  await waitBadge(key, "Unverified");
  assert.match(await row(key).innerText(), /Could not check it: /);
  await row(key).getByRole("button", { name: `Check OpenAI key ${masked(key)} again` }).waitFor();
  await screenshot("unverified");
});

test("keyboard only: replace; the old key keeps serving until the new one is valid", async () => {
  // mockslow: the vendor takes 1.5 s to accept it, so the in-between state is visible.
  const next = anthropicKey("mockslow");
  await tabTo("Replace", (f) => f.name === `Replace Anthropic key ${masked(first)}`);
  await page.keyboard.press("Enter");
  assert.equal((await focused()).tag, "INPUT");
  await page.getByLabel(`New key to replace ${masked(first)}`).waitFor();
  await paste(`\n${next} \n`);
  await page.keyboard.press("Enter");
  await waitBadge(next, "Pending");
  assert.match(
    await badge(first).innerText(),
    /· Active$/,
    "the old key serves while the new one is checked",
  );
  assert.match(
    await row(next).innerText(),
    new RegExp(`${masked(first)} keeps working until this key is valid`),
  );
  await screenshot("replacing");
  await waitBadge(next, "Active");
  await waitBadge(first, "Revoked");
  await screenshot("replaced");
  first = next;
});

test("keyboard only: revoke (with confirmation)", async () => {
  await page.locator("body").focus();
  await tabTo("Revoke", (f) => f.name === `Revoke Anthropic key ${masked(first)}`);
  await page.keyboard.press("Enter");
  await waitBadge(first, "Revoked");
  assert.match(await row(first).innerText(), /Revoked: revoked in Settings → Keys/);
  await screenshot("revoked");
});

test("key activity lists the workspace's events, masked, and the page holds no key", async () => {
  await page.reload();
  const rows = page.locator("#activity tbody tr");
  await rows.first().waitFor();
  const text = await page.locator("#activity").innerText();
  for (const action of ["add", "validate", "revoke", "rotate"]) {
    assert.match(text, new RegExp(`\\b${action}\\b`));
  }
  assert.match(text, new RegExp(masked(first)));
  const html = await page.content();
  for (const k of sent) assert.ok(!html.includes(k.slice(0, -4)), `the page holds ${masked(k)}`);
  await screenshot("activity");
});
