-- pg_byok tenancy: who may act on which workspace, and keys that die with
-- their workspace.
--
-- byok.authorize is the one predicate: the functions, the RLS policies and
-- the audit trail all use it. attach_members points it at the app's own
-- membership table; attach_workspaces installs statement-level triggers on
-- the app's workspace table so that deleting or pausing workspaces revokes
-- their keys in the same transaction, in one pass however many rows.

CREATE FUNCTION byok.authorize(workspace_id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    src byok.member_source;
    sub text;
    ok boolean;
BEGIN
    IF authorize.workspace_id IS NULL THEN
        RETURN false;
    END IF;
    IF byok._caller_is_trusted() THEN
        RETURN true;
    END IF;
    SELECT * INTO src FROM byok.member_source;
    IF NOT FOUND THEN
        RETURN false;  -- nothing configured: closed by default
    END IF;
    sub := byok._jwt_sub();
    IF sub IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE src.check_sql INTO ok USING authorize.workspace_id, sub;
    RETURN coalesce(ok, false);
END
$$;
COMMENT ON FUNCTION byok.authorize(uuid) IS
    'May the caller act on this workspace? Superuser/service_role: yes; others: per byok.attach_members';

CREATE FUNCTION byok._require_superuser(what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = byok._caller() AND rolsuper) THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = format('only a superuser may %s', what),
            HINT = 'Run it as the database owner in a migration.';
    END IF;
END
$$;

-- The type of table.column, or 22023 when the column is missing or is not
-- one that can hold a uuid.
CREATE FUNCTION byok._uuid_column_type(tbl regclass, col name, what text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ text;
BEGIN
    PERFORM byok._require(col, what);
    SELECT format_type(a.atttypid, NULL) INTO typ
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s has no column %I', tbl, col),
            HINT = format('Pass the name of the column that holds the %s.', what);
    END IF;
    IF typ NOT IN ('uuid', 'text', 'character varying') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('column %I of %s is of type %s; pg_byok needs uuid or text', col, tbl, typ),
            HINT = 'Point pg_byok at a column of type uuid, or text holding uuids.';
    END IF;
    RETURN typ;
END
$$;

-- A comparison of column `col` (of type `typ`) with a uuid parameter, able to
-- use an index on the column.
CREATE FUNCTION byok._match_uuid(col name, typ text, param text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN typ = 'uuid' THEN format('%I = %s', col, param)
                ELSE format('%I IN (%s::text, upper(%s::text))', col, param, param) END
$$;

CREATE FUNCTION byok.attach_members(member_table regclass, workspace_column name DEFAULT 'workspace_id',
                                    user_column name DEFAULT 'user_id')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    ws_type text;
    user_type text;
    check_sql text;
BEGIN
    PERFORM byok._require_superuser('configure workspace membership');
    PERFORM byok._require(attach_members.member_table, 'member_table');
    ws_type := byok._uuid_column_type(attach_members.member_table, attach_members.workspace_column, 'workspace id');
    user_type := byok._uuid_column_type(attach_members.member_table, attach_members.user_column, 'user id');
    -- $1: the workspace (uuid); $2: the JWT subject (text, a uuid for Supabase).
    check_sql := format('SELECT EXISTS (SELECT 1 FROM %s WHERE %s AND %s)',
        attach_members.member_table,
        byok._match_uuid(attach_members.workspace_column, ws_type, '$1'),
        byok._match_uuid(attach_members.user_column, user_type, 'byok._as_uuid($2)'));
    INSERT INTO byok.member_source (member_table, workspace_column, user_column, check_sql)
    VALUES (attach_members.member_table, attach_members.workspace_column, attach_members.user_column, check_sql)
    ON CONFLICT (singleton) DO UPDATE
        SET member_table = excluded.member_table, workspace_column = excluded.workspace_column,
            user_column = excluded.user_column, check_sql = excluded.check_sql;
END
$$;
COMMENT ON FUNCTION byok.attach_members(regclass, name, name) IS
    'Authorize callers whose JWT subject is a member of the workspace in this table (replaces any earlier rule)';

CREATE FUNCTION byok.detach_members() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._require_superuser('configure workspace membership');
    DELETE FROM byok.member_source;
END
$$;
COMMENT ON FUNCTION byok.detach_members() IS 'Forget the membership rule: only superuser/service_role are authorized';

-- Trigger: workspaces removed from an attached table, by DELETE (AFTER,
-- statement-level, reading the transition table: one pass per statement) or
-- by TRUNCATE (BEFORE, reading the table itself: TRUNCATE fires no DELETE
-- trigger). TG_ARGV[0] is the id column.
CREATE FUNCTION byok._on_workspace_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
BEGIN
    EXECUTE format('SELECT array_agg(DISTINCT byok._as_uuid(%I::text)) FROM %s', TG_ARGV[0],
                   CASE WHEN TG_OP = 'TRUNCATE' THEN TG_RELID::regclass::text ELSE 'byok_old_rows' END)
       INTO ids;
    IF ids IS NOT NULL THEN
        PERFORM byok._revoke(NULL, ids, 'workspace deleted', 'workspace_deleted');
    END IF;
    RETURN NULL;
END
$$;

-- Trigger: status column changes. TG_ARGV: id column, status column. Keys
-- die when a workspace's status moves into byok.inactive_statuses; moving
-- back does not revive them (the customer adds keys again).
CREATE FUNCTION byok._on_workspace_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN EXECUTE format(
        'SELECT lower(btrim(n.%2$I::text)) AS status, array_agg(DISTINCT byok._as_uuid(n.%1$I::text)) AS ids
           FROM byok_new_rows n JOIN byok_old_rows o ON o.%1$I = n.%1$I
          WHERE lower(btrim(n.%2$I::text)) = ANY ($1)
            AND o.%2$I IS DISTINCT FROM n.%2$I
          GROUP BY 1', TG_ARGV[0], TG_ARGV[1])
        USING byok._inactive_statuses()
    LOOP
        PERFORM byok._revoke(NULL, r.ids, format('workspace %s', r.status), 'workspace_' || r.status);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE FUNCTION byok.attach_workspaces(workspace_table regclass, id_column name DEFAULT 'id',
                                       status_column name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_superuser('attach a workspace table');
    PERFORM byok._require(attach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._uuid_column_type(attach_workspaces.workspace_table, attach_workspaces.id_column, 'id_column');
    IF attach_workspaces.status_column IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute WHERE attrelid = attach_workspaces.workspace_table
           AND attname = attach_workspaces.status_column AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s has no column %I', attach_workspaces.workspace_table,
                             attach_workspaces.status_column),
            HINT = 'Pass the column holding the workspace''s status, or NULL for none.';
    END IF;
    PERFORM byok._drop_workspace_triggers(attach_workspaces.workspace_table);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_delete AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column);
    IF attach_workspaces.status_column IS NOT NULL THEN
        -- Transition tables cannot be combined with UPDATE OF <column>, so the
        -- trigger fires on every UPDATE and compares old and new status itself.
        EXECUTE format('CREATE TRIGGER byok_revoke_on_status AFTER UPDATE ON %s
                        REFERENCING OLD TABLE AS byok_old_rows NEW TABLE AS byok_new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_update(%L, %L)',
                       attach_workspaces.workspace_table, attach_workspaces.id_column,
                       attach_workspaces.status_column);
    END IF;
    INSERT INTO byok.workspace_source (workspace_table, id_column, status_column)
    VALUES (attach_workspaces.workspace_table, attach_workspaces.id_column, attach_workspaces.status_column)
    ON CONFLICT (workspace_table) DO UPDATE
        SET id_column = excluded.id_column, status_column = excluded.status_column;
END
$$;
COMMENT ON FUNCTION byok.attach_workspaces(regclass, name, name) IS
    'Revoke a workspace''s keys when its row is deleted or its status becomes inactive';

CREATE FUNCTION byok._drop_workspace_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_truncate ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_status ON %s', tbl);
END
$$;

CREATE FUNCTION byok.detach_workspaces(workspace_table regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_superuser('detach a workspace table');
    PERFORM byok._require(detach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._drop_workspace_triggers(detach_workspaces.workspace_table);
    DELETE FROM byok.workspace_source WHERE workspace_table = detach_workspaces.workspace_table;
END
$$;
COMMENT ON FUNCTION byok.detach_workspaces(regclass) IS 'Remove the revocation triggers from a workspace table';

-- The audit trail is append-only for every role, the owner included.
CREATE FUNCTION byok._audit_is_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('byok.audit_log is append-only: %s is not allowed', TG_OP),
        HINT = 'Audit rows are kept as written; archive them by copying, not by editing.';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON byok.audit_log
    FOR EACH ROW EXECUTE FUNCTION byok._audit_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON byok.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION byok._audit_is_append_only();

-- Row-level security: a caller sees the rows of the workspaces it may act on.
CREATE POLICY keys_of_authorized_workspaces ON byok.keys FOR SELECT
    USING (byok.authorize(workspace_id));
CREATE POLICY audit_of_authorized_workspaces ON byok.audit_log FOR SELECT
    USING (byok.authorize(workspace_id));
