-- pg_byok on a self-hosted Supabase project: the migration a project applies
-- (`supabase db push`, or psql as postgres). It runs as postgres, which on
-- Supabase is not a superuser; see docs/GUIDE.md, "Self-hosted Supabase".
--
-- Before it: the server preloads pg_byok and reads a keyring file, and
-- supautils lists pg_byok among its privileged extensions (GUIDE.md, steps
-- 1-3): then supautils runs the CREATE EXTENSION below as supabase_admin on
-- postgres's behalf. Hosted Supabase (supabase.com) loads no third-party
-- preloaded C extension: pg_byok cannot be installed there.
--
-- It assumes the app's tables public.workspaces (id uuid, status text) and
-- public.workspace_members (workspace_id uuid, user_id uuid = auth.users.id),
-- created by an earlier migration; change the names to yours.
--
-- PostgREST must expose schema byok. Self-hosted (docker compose): add it to
-- PGRST_DB_SCHEMAS in .env, e.g. PGRST_DB_SCHEMAS=public,storage,graphql_public,byok;
-- with the CLI's local stack: supabase/config.toml, [api] schemas =
-- ["public", "graphql_public", "byok"]. The app then calls, with the user's
-- session (role authenticated):
--   supabase.schema('byok').rpc('add_key', { workspace_id, vendor: 'anthropic', api_key, label })
--   supabase.schema('byok').rpc('list_keys', { workspace_id })
--   supabase.schema('byok').rpc('revoke_key', { key_id, reason })
--   supabase.schema('byok').rpc('revalidate_key', { key_id })
--   supabase.schema('byok').from('audit_log').select('at, action, vendor, outcome, detail, actor_sub')
--       .eq('workspace_id', workspace_id).order('at', { ascending: false })
-- and, server-side only, with the service_role key (never in a browser):
--   supabase.schema('byok').rpc('use_key', { workspace_id, vendor: 'anthropic' })

create extension if not exists pg_byok;

-- Keys die with their workspace: deleting a workspace row, or moving its
-- status into byok.inactive_statuses (postgresql.conf), revokes its keys in
-- the same transaction.
select byok.attach_workspaces('public.workspaces'::regclass, 'id', 'status');

-- Who may act on a workspace's keys: members, by their JWT subject.
select byok.attach_members('public.workspace_members'::regclass, 'workspace_id', 'user_id');

-- anon: nothing; authenticated: its own workspaces' keys (never use_key) and
-- their audit trail; service_role: use_key. Also grants byok_admin to postgres.
select byok.grant_supabase_roles();

-- The sidecar's login role. Its password is set outside version control:
--   alter role byok_sidecar password '...';   (psql as postgres)
do $$
begin
  if not exists (select from pg_roles where rolname = 'byok_sidecar') then
    create role byok_sidecar login in role byok_worker;
  end if;
end
$$;

-- PostgREST: pick up the new schema's functions now.
notify pgrst, 'reload schema';
