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
    query text;
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
    query := byok._membership_sql(src);
    IF sub IS NULL OR query IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE query INTO ok USING authorize.workspace_id, sub;
    RETURN coalesce(ok, false);
END
$$;
COMMENT ON FUNCTION byok.authorize(uuid) IS
    'May the caller act on this workspace? Superuser/service_role: yes; others: per byok.attach_members';

-- The tables pg_byok reads as the extension's owner must be plain tables: a
-- view (or, on PG15, a table turned into one by an ON SELECT rule) would run
-- its owner's code with the extension's privileges.
CREATE FUNCTION byok._is_plain_table(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT relkind IN ('r', 'p') FROM pg_class WHERE oid = tbl), false)
$$;

-- The type of tbl.col as pg_byok classifies it ('enum' for any enum type),
-- NULL when there is no such column.
CREATE FUNCTION byok._column_type(tbl regclass, col name) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN t.typtype = 'e' THEN 'enum' ELSE format_type(a.atttypid, NULL) END
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- Column types pg_byok compares or prints: only built-in types, whose
-- operators and output functions are nobody's own code. (An enum's output
-- function is built in too; its casts are not, so enums are only ever
-- printed with format('%s'), never cast.)
CREATE FUNCTION byok._id_type_ok(typ text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(typ IN ('uuid', 'text', 'character varying'), false)
$$;
CREATE FUNCTION byok._status_type_ok(typ text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(typ IN ('text', 'character varying', 'enum'), false)
$$;

-- The type of table.column, or 22023 when the table is not a plain table,
-- the column is missing, or it is not one that can hold a uuid.
CREATE FUNCTION byok._uuid_column_type(tbl regclass, col name, what text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typ text;
BEGIN
    PERFORM byok._require(col, what);
    IF NOT byok._is_plain_table(tbl) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s is not a table', tbl),
            HINT = 'Point pg_byok at a plain (or partitioned) table, not a view.';
    END IF;
    typ := byok._column_type(tbl, col);
    IF typ IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s has no column %I', tbl, col),
            HINT = format('Pass the name of the column that holds the %s.', what);
    END IF;
    IF NOT byok._id_type_ok(typ) THEN
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

-- The membership test, built from the table's OID at every call (a renamed
-- table is followed, a look-alike put in its place is not), or NULL when the
-- table or its columns are no longer what attach_members checked: then
-- authorization fails closed. $1: workspace (uuid); $2: JWT subject (text).
CREATE FUNCTION byok._membership_sql(src byok.member_source) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ws_type text := byok._column_type(src.member_table, src.workspace_column);
    user_type text := byok._column_type(src.member_table, src.user_column);
BEGIN
    IF NOT byok._is_plain_table(src.member_table) OR NOT byok._id_type_ok(ws_type)
       OR NOT byok._id_type_ok(user_type) THEN
        RETURN NULL;
    END IF;
    RETURN format('SELECT EXISTS (SELECT 1 FROM %s WHERE %s AND %s)', src.member_table,
                  byok._match_uuid(src.workspace_column, ws_type, '$1'),
                  byok._match_uuid(src.user_column, user_type, 'byok._as_uuid($2)'));
END
$$;

CREATE FUNCTION byok.attach_members(member_table regclass, workspace_column name DEFAULT 'workspace_id',
                                    user_column name DEFAULT 'user_id')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_admin('configure workspace membership');
    PERFORM byok._require(attach_members.member_table, 'member_table');
    PERFORM byok._require_table_privilege(attach_members.member_table, 'SELECT');
    PERFORM byok._uuid_column_type(attach_members.member_table, attach_members.workspace_column, 'workspace id');
    PERFORM byok._uuid_column_type(attach_members.member_table, attach_members.user_column, 'user id');
    INSERT INTO byok.member_source (member_table, workspace_column, user_column)
    VALUES (attach_members.member_table, attach_members.workspace_column, attach_members.user_column)
    ON CONFLICT (singleton) DO UPDATE
        SET member_table = excluded.member_table, workspace_column = excluded.workspace_column,
            user_column = excluded.user_column;
END
$$;
COMMENT ON FUNCTION byok.attach_members(regclass, name, name) IS
    'Authorize callers whose JWT subject is a member of the workspace in this table (replaces any earlier rule)';

CREATE FUNCTION byok.detach_members() RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._require_admin('configure workspace membership');
    DELETE FROM byok.member_source;
END
$$;
COMMENT ON FUNCTION byok.detach_members() IS 'Forget the membership rule: only superuser/service_role are authorized';

-- The attached table and columns must still be what attach_workspaces
-- checked (a plain table; built-in id type; text or enum status), since the
-- triggers read them as the extension's owner. If not, fail closed: the
-- app's statement errors instead of keys silently surviving.
CREATE FUNCTION byok._check_workspace_table(tbl regclass, id_col name, status_col name) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT byok._is_plain_table(tbl) OR NOT byok._id_type_ok(byok._column_type(tbl, id_col))
       OR (status_col IS NOT NULL AND NOT byok._status_type_ok(byok._column_type(tbl, status_col))) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('workspace table %s no longer matches what byok.attach_workspaces checked', tbl),
            HINT = 'Run byok.attach_workspaces again for this table (id: uuid or text; status: text or enum).';
    END IF;
END
$$;

-- Trigger: workspaces removed from an attached table, by DELETE (AFTER,
-- statement-level, reading the transition table: one pass per statement) or
-- by TRUNCATE (BEFORE, reading the table itself: TRUNCATE fires no DELETE
-- trigger). TG_ARGV[0] is the id column.
CREATE FUNCTION byok._on_workspace_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], NULL);
    EXECUTE format('SELECT array_agg(DISTINCT byok._as_uuid(%I::text)) FROM %s', TG_ARGV[0],
                   CASE WHEN TG_OP = 'TRUNCATE' THEN TG_RELID::regclass::text ELSE 'byok_old_rows' END)
       INTO ids;
    IF ids IS NOT NULL THEN
        PERFORM byok._revoke(NULL, ids, 'workspace deleted', 'workspace_deleted');
    END IF;
    RETURN NULL;
END
$$;

-- Trigger: UPDATEs of an attached table. TG_ARGV: id column, status column
-- ('' for none). Keys die when a workspace's status moves into
-- byok.inactive_statuses (moving back does not revive them: the customer
-- adds keys again), and when a workspace's id changes (nothing refers to the
-- old id any more). Statuses are printed with format('%s'), never cast: an
-- enum's output function is built in, a cast on it could be anyone's code.
CREATE FUNCTION byok._on_workspace_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    status_col name := nullif(TG_ARGV[1], '');
    gone uuid[];
    r record;
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], status_col);
    EXECUTE format(
        'SELECT array_agg(DISTINCT byok._as_uuid(o.%1$I::text)) FROM byok_old_rows o
          WHERE NOT EXISTS (SELECT 1 FROM byok_new_rows n WHERE n.%1$I = o.%1$I)', TG_ARGV[0])
       INTO gone;
    IF gone IS NOT NULL THEN
        PERFORM byok._revoke(NULL, gone, 'workspace id changed', 'workspace_deleted');
    END IF;
    IF status_col IS NULL THEN
        RETURN NULL;
    END IF;
    FOR r IN EXECUTE format(
        'SELECT lower(btrim(pg_catalog.format(''%%s'', n.%2$I))) AS status,
                array_agg(DISTINCT byok._as_uuid(n.%1$I::text)) AS ids
           FROM byok_new_rows n JOIN byok_old_rows o ON o.%1$I = n.%1$I
          WHERE lower(btrim(pg_catalog.format(''%%s'', n.%2$I))) = ANY ($1)
            AND pg_catalog.format(''%%s'', o.%2$I) IS DISTINCT FROM pg_catalog.format(''%%s'', n.%2$I)
          GROUP BY 1', TG_ARGV[0], status_col)
        USING byok._inactive_statuses()
    LOOP
        PERFORM byok._revoke(NULL, r.ids, format('workspace %s', r.status), 'workspace_' || r.status);
    END LOOP;
    RETURN NULL;
END
$$;

-- What the attached workspace table says of a workspace: its status
-- (lower-cased; '' when it has none), ' missing' when no attached table has
-- the row, NULL when no table is attached. add_key refuses keys for
-- workspaces that are gone or inactive: no trigger would ever revoke those.
CREATE FUNCTION byok._workspace_state(ws uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src byok.workspace_source;
    status_expr text;
    state text;
    attached boolean := false;
BEGIN
    FOR src IN SELECT * FROM byok.workspace_source LOOP
        attached := true;
        PERFORM byok._check_workspace_table(src.workspace_table, src.id_column, src.status_column);
        status_expr := CASE WHEN src.status_column IS NULL THEN quote_literal('')
            ELSE format('coalesce(lower(btrim(pg_catalog.format(%L, %I))), %L)', '%s', src.status_column, '') END;
        EXECUTE format('SELECT %s FROM %s WHERE %s LIMIT 1', status_expr, src.workspace_table,
                       byok._match_uuid(src.id_column, byok._column_type(src.workspace_table, src.id_column), '$1'))
           INTO state USING ws;
        IF state IS NOT NULL THEN
            RETURN state;
        END IF;
    END LOOP;
    RETURN CASE WHEN attached THEN ' missing' END;
END
$$;

CREATE FUNCTION byok.attach_workspaces(workspace_table regclass, id_column name DEFAULT 'id',
                                       status_column name DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    status_type text;
BEGIN
    PERFORM byok._require_admin('attach a workspace table');
    PERFORM byok._require(attach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._require_table_privilege(attach_workspaces.workspace_table, 'TRIGGER');
    PERFORM byok._uuid_column_type(attach_workspaces.workspace_table, attach_workspaces.id_column, 'id_column');
    IF attach_workspaces.status_column IS NOT NULL THEN
        status_type := byok._column_type(attach_workspaces.workspace_table, attach_workspaces.status_column);
        IF status_type IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('table %s has no column %I', attach_workspaces.workspace_table,
                                 attach_workspaces.status_column),
                HINT = 'Pass the column holding the workspace''s status, or NULL for none.';
        END IF;
        IF NOT byok._status_type_ok(status_type) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('status column %I of %s is of type %s; pg_byok needs text or an enum',
                                 attach_workspaces.status_column, attach_workspaces.workspace_table, status_type),
                HINT = 'Point pg_byok at a text, varchar or enum status column.';
        END IF;
    END IF;
    PERFORM byok._drop_workspace_triggers(attach_workspaces.workspace_table);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_delete AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column);
    -- Transition tables cannot be combined with UPDATE OF <column>, so the
    -- trigger fires on every UPDATE and compares old and new rows itself.
    EXECUTE format('CREATE TRIGGER byok_revoke_on_update AFTER UPDATE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows NEW TABLE AS byok_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_update(%L, %L)',
                   attach_workspaces.workspace_table, attach_workspaces.id_column,
                   coalesce(attach_workspaces.status_column, ''));
    INSERT INTO byok.workspace_source (workspace_table, id_column, status_column)
    VALUES (attach_workspaces.workspace_table, attach_workspaces.id_column, attach_workspaces.status_column)
    ON CONFLICT (workspace_table) DO UPDATE
        SET id_column = excluded.id_column, status_column = excluded.status_column;
END
$$;
COMMENT ON FUNCTION byok.attach_workspaces(regclass, name, name) IS
    'Revoke a workspace''s keys when its row is deleted, its id changes or its status becomes inactive';

CREATE FUNCTION byok._drop_workspace_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_truncate ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_update ON %s', tbl);
END
$$;

CREATE FUNCTION byok.detach_workspaces(workspace_table regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_admin('detach a workspace table');
    PERFORM byok._require(detach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._require_table_privilege(detach_workspaces.workspace_table, 'TRIGGER');
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
