// Serves the Settings → Keys page for the demo and the tests: its three
// static files and config.json, which tells the page where its backend (the
// edge function) is and who is signed in. Only the files listed here are
// served, so nothing else in the directory can be read through it.
//   API_URL       the edge function's base URL
//   WORKSPACE_ID  the workspace the page manages
//   USER_ID       the signed-in user (a stand-in for a Supabase session)
//   PORT          where to listen (127.0.0.1)

const FILES: Record<string, [string, string]> = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/index.html": ["index.html", "text/html; charset=utf-8"],
  "/app.js": ["app.js", "text/javascript; charset=utf-8"],
  "/style.css": ["style.css", "text/css; charset=utf-8"],
};

const env = (name: string) => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const config = JSON.stringify({
  apiUrl: env("API_URL"),
  workspaceId: env("WORKSPACE_ID"),
  userId: env("USER_ID"),
});
const headers = (type: string) => ({
  "content-type": type,
  "cache-control": "no-store",
  // The page runs only its own script and talks only to its backend.
  "content-security-policy": `default-src 'self'; connect-src 'self' ${
    env("API_URL")
  }; frame-ancestors 'none'`,
  "x-content-type-options": "nosniff",
});

Deno.serve({
  hostname: "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? "8080"),
  onListen: ({ hostname, port }) =>
    console.log(JSON.stringify({ msg: "listening", url: `http://${hostname}:${port}` })),
}, async (req) => {
  const path = new URL(req.url).pathname;
  if (req.method !== "GET") return new Response("method not allowed\n", { status: 405 });
  if (path === "/config.json") {
    return new Response(config, { headers: headers("application/json") });
  }
  const file = FILES[path];
  if (!file) return new Response("not found\n", { status: 404 });
  const body = await Deno.readFile(new URL(file[0], import.meta.url));
  return new Response(body, { headers: headers(file[1]) });
});
