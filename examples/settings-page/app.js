// Settings → Keys. Talks only to its backend, the edge function
// (examples/edge-function); every value is put in the page with textContent,
// never as HTML. The page never shows or keeps more of a key than its mask:
// the pasted value leaves the input field as soon as it is sent.

const STATUS = {
  active: "Active",
  pending: "Pending",
  invalid: "Invalid",
  unverified: "Unverified",
  revoked: "Revoked",
};
const $ = (sel) => document.querySelector(sel);
let cfg;
/// New keys that replace an older one, so the list can say so until the
/// new key is valid (pg_byok revokes the old one then).
const replacing = new Map();
let poll = null;

/// A call to the backend; resolves to the JSON body, throws an Error with the
/// backend's message and hint.
async function api(method, path, body) {
  const res = await fetch(`${cfg.apiUrl}/workspaces/${cfg.workspaceId}${path}`, {
    method,
    headers: {
      // Stand-in for `Authorization: Bearer <Supabase session JWT>`.
      "x-byok-demo-user": cfg.userId,
      ...(body ? { "content-type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new Error([data.error ?? `HTTP ${res.status}`, data.hint].filter(Boolean).join(" "));
  }
  return data;
}

/// What a paste leaves around a key: spaces, tabs, line breaks, a BOM.
const cleanKey = (raw) => raw.replace(/^[\s\uFEFF]+|[\s\uFEFF]+$/g, "");

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function say(node, text, isError = false) {
  node.textContent = text;
  node.classList.toggle("error", isError);
}

function vendorName(v) {
  return v === "openai" ? "OpenAI" : v === "anthropic" ? "Anthropic" : v;
}

function keyRow(k) {
  const status = STATUS[k.status] ?? k.status;
  const badge = el("span", { class: `badge ${k.status}` }, `${k.masked} · ${status}`);
  const who = el(
    "span",
    { class: "who" },
    el("strong", {}, vendorName(k.vendor)),
    k.label ? ` — ${k.label}` : "",
  );
  const li = el("li", { "data-key-id": k.id, "data-status": k.status }, who, badge);
  const replaces = replacing.get(k.id);
  let detail = null;
  if (k.status === "pending") {
    detail = replaces
      ? `Checking it with ${
        vendorName(k.vendor)
      }; ${replaces} keeps working until this key is valid.`
      : `Checking it with ${vendorName(k.vendor)}…`;
  } else if (k.status_detail && k.status !== "active") {
    const why = {
      invalid: "The vendor refused it",
      unverified: "Could not check it",
      revoked: "Revoked",
    };
    detail = `${why[k.status] ?? "Note"}: ${k.status_detail}`;
  }
  if (detail) li.append(el("p", { class: "detail muted" }, detail));
  const actions = el("span", { class: "actions" });
  const name = `${vendorName(k.vendor)} key ${k.masked}`;
  if (k.status === "unverified") {
    actions.append(
      el("button", {
        type: "button",
        class: "secondary",
        "aria-label": `Check ${name} again`,
        onclick: () => act(k, "revalidate"),
      }, "Check again"),
    );
  }
  if (k.status === "active" || k.status === "unverified") {
    actions.append(
      el("button", {
        type: "button",
        class: "secondary",
        "aria-label": `Replace ${name}`,
        onclick: () => openReplace(li, k),
      }, "Replace"),
    );
  }
  if (k.status === "active" || k.status === "pending" || k.status === "unverified") {
    actions.append(
      el("button", {
        type: "button",
        class: "danger",
        "aria-label": `Revoke ${name}`,
        onclick: () => revoke(k),
      }, "Revoke"),
    );
  }
  li.append(actions);
  return li;
}

function openReplace(li, k) {
  if (li.querySelector("form")) return li.querySelector("input").focus();
  const id = `replace-${k.id}`;
  const input = el("input", {
    id,
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: "",
  });
  const status = el("span", { role: "status" });
  const form = el(
    "form",
    { class: "replace-form", onsubmit: (e) => submitReplace(e, k, input, status) },
    el("label", { for: id }, `New key to replace ${k.masked}`),
    input,
    el("button", { type: "submit" }, "Save replacement"),
    el("button", { type: "button", class: "secondary", onclick: () => form.remove() }, "Cancel"),
    status,
  );
  li.append(form);
  input.focus();
}

async function submitReplace(e, k, input, status) {
  e.preventDefault();
  const apiKey = cleanKey(input.value);
  if (!apiKey) return say(status, "Paste the new key first.", true);
  try {
    const { key } = await api("POST", `/keys/${k.id}/replace`, { api_key: apiKey });
    input.value = "";
    e.target.remove();
    replacing.set(key.id, k.masked);
    say(
      $("#add-status"),
      `Added ${key.masked}; it takes over from ${k.masked} once ${
        vendorName(key.vendor)
      } accepts it.`,
    );
    await refresh();
  } catch (err) {
    say(status, err.message, true);
  }
}

async function revoke(k) {
  if (!confirm(`Revoke ${vendorName(k.vendor)} key ${k.masked}? It stops working at once.`)) return;
  await act(k, "revoke", { reason: "revoked in Settings → Keys" });
}

async function act(k, what, body = {}) {
  try {
    await api("POST", `/keys/${k.id}/${what}`, body);
    say(
      $("#add-status"),
      what === "revoke" ? `Revoked ${k.masked}.` : `Checking ${k.masked} again.`,
    );
  } catch (err) {
    say($("#add-status"), err.message, true);
  }
  await refresh();
}

async function refresh() {
  const [{ keys }, { activity }] = await Promise.all([
    api("GET", "/keys"),
    api("GET", "/activity"),
  ]);
  const list = $("#keys");
  // Keep an open replace form (and its focus) across refreshes.
  const open = new Map(
    [...list.querySelectorAll("li")].filter((li) => li.querySelector("form"))
      .map((li) => [li.dataset.keyId, li]),
  );
  list.replaceChildren(...keys.map((k) => {
    const row = open.get(k.id);
    return row && row.dataset.status === k.status ? row : keyRow(k);
  }));
  $("#keys-empty").hidden = keys.length > 0;
  $("#activity tbody").replaceChildren(...activity.map((a) =>
    el(
      "tr",
      {},
      el("td", {}, new Date(a.at).toLocaleString()),
      el("td", {}, a.masked ?? "—"),
      el("td", {}, a.action),
      el("td", {}, [a.outcome, a.detail].filter(Boolean).join(": ")),
      el("td", {}, a.actor_role ?? ""),
    )
  ));
  // Keep checking while a key waits for the vendor's verdict.
  clearTimeout(poll);
  if (keys.some((k) => k.status === "pending")) {
    poll = setTimeout(() => refresh().catch(showLoadError), 1000);
  }
}

function showLoadError(err) {
  say($("#add-status"), `Could not load the keys: ${err.message}`, true);
}

async function addKey(e) {
  e.preventDefault();
  const input = $("#api-key");
  const apiKey = cleanKey(input.value);
  if (!apiKey) {
    say($("#add-status"), "Paste a key first.", true);
    return input.focus();
  }
  try {
    const { key } = await api("POST", "/keys", {
      vendor: $("#vendor").value,
      api_key: apiKey,
      label: $("#label").value.trim() || null,
    });
    input.value = "";
    $("#label").value = "";
    say($("#add-status"), `Added ${key.masked}; checking it with ${vendorName(key.vendor)}.`);
    await refresh();
  } catch (err) {
    say($("#add-status"), err.message, true);
    input.focus();
  }
}

async function main() {
  cfg = await (await fetch("config.json")).json();
  $("#signed-in").textContent = `Signed in as ${cfg.userId}`;
  $("#add-form").addEventListener("submit", addKey);
  await refresh().catch(showLoadError);
}

main();
