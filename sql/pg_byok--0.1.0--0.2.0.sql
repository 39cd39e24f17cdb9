-- pg_byok upgrade 0.1.0 → 0.2.0, run by `ALTER EXTENSION pg_byok UPDATE TO '0.2.0'`.
--
-- Hand-written: tables are altered in place, never dropped and re-created,
-- and data migrations run here, so an installed database keeps every key.
-- Functions are replaced. After this script, the catalog must equal that of
-- a fresh CREATE EXTENSION at 0.2.0 (the upgrade test compares them).
--
-- Sections, in order: the security fixes, then the release's own changes.
\echo Use "ALTER EXTENSION pg_byok UPDATE TO '0.2.0'" to load this file. \quit
