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
    sub uuid;
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
    sub := byok._as_uuid(byok._jwt_sub());
    IF sub IS NULL THEN
        RETURN false;
    END IF;
    -- Locks the table by OID, checks it, and queries it as its owner
    -- (app_tables.rs): planning it runs the owner's code, never ours.
    RETURN coalesce(byok._is_member(src.member_table, src.workspace_column, src.user_column,
                                    authorize.workspace_id, sub), false);
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

-- The app tables pg_byok reads must be plain tables: not views, foreign or
-- partitioned tables (their rows are elsewhere, and so would be the code
-- that reading them runs). Reads run as the table's owner anyway
-- (app_tables.rs); this keeps what is read what was attached.
CREATE FUNCTION byok._is_plain_table(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT relkind = 'r' FROM pg_class WHERE oid = tbl), false)
$$;

-- Why a workspace table's statement triggers would miss rows, or NULL:
-- rows of inheritance children and partitions are deleted, updated and
-- truncated without firing the parent's statement triggers (and a parent's
-- statements skip a child's), so such tables are refused at attach and fail
-- closed when they gain one later.
CREATE FUNCTION byok._inheritance_problem(tbl regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = tbl)
            THEN 'has inheritance children or partitions'
        WHEN EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = tbl)
            THEN 'inherits from, or is a partition of, another table'
    END
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
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s is not a plain table', tbl),
            HINT = 'Point pg_byok at a plain table: not a view, a foreign or a partitioned table.';
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

CREATE FUNCTION byok.attach_members(member_table regclass, workspace_column name DEFAULT 'workspace_id',
                                    user_column name DEFAULT 'user_id')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_superuser('configure workspace membership');
    PERFORM byok._require(attach_members.member_table, 'member_table');
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
    PERFORM byok._require_superuser('configure workspace membership');
    DELETE FROM byok.member_source;
END
$$;
COMMENT ON FUNCTION byok.detach_members() IS 'Forget the membership rule: only superuser/service_role are authorized';

-- The attached table and columns must still be what attach_workspaces
-- checked (a plain table without inheritance; built-in id type; text or
-- enum status). If not, fail closed: the app's statement, or add_key,
-- errors instead of keys silently surviving. Locks the table by OID first,
-- so nothing changes between this check and the reads that follow.
CREATE FUNCTION byok._check_workspace_table(tbl regclass, id_col name, status_col name) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    problem text;
BEGIN
    IF NOT byok._lock_app_table(tbl) THEN
        problem := 'no longer exists';
    ELSIF NOT byok._is_plain_table(tbl) THEN
        problem := 'is no longer a plain table';
    ELSE
        problem := byok._inheritance_problem(tbl);
    END IF;
    IF problem IS NULL AND (NOT byok._id_type_ok(byok._column_type(tbl, id_col))
       OR (status_col IS NOT NULL AND NOT byok._status_type_ok(byok._column_type(tbl, status_col)))) THEN
        problem := 'no longer has the columns byok.attach_workspaces checked';
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('workspace table %s %s; its workspaces'' keys cannot be revoked with them', tbl, problem),
            HINT = 'Run byok.attach_workspaces again for this table (a plain table without inheritance; '
                   'id: uuid or text; status: text or enum), or byok.detach_workspaces.';
    END IF;
END
$$;

-- Trigger: workspaces removed from an attached table, by DELETE (AFTER,
-- statement-level, reading the transition table: one pass per statement) or
-- by TRUNCATE (BEFORE: TRUNCATE fires no DELETE trigger, so the table itself
-- is read -- as its owner, by byok._workspace_ids). TG_ARGV[0]: id column.
CREATE FUNCTION byok._on_workspace_removed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids uuid[];
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], NULL);
    IF TG_OP = 'TRUNCATE' THEN
        SELECT array_agg(DISTINCT byok._as_uuid(t.id)) INTO ids
          FROM unnest(byok._workspace_ids(TG_RELID, TG_ARGV[0])) AS t(id);
    ELSE
        EXECUTE format('SELECT array_agg(DISTINCT byok._as_uuid(%I::text)) FROM byok_old_rows', TG_ARGV[0])
           INTO ids;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM byok._revoke(NULL, ids, 'workspace deleted', 'workspace_deleted');
    END IF;
    RETURN NULL;
END
$$;

-- The query a trigger runs to find the workspaces whose rows (in
-- transition table byok_new_rows) carry an inactive status ($1: the
-- statuses); with `old_rows`, only those whose status changed from the
-- matching row of byok_old_rows. One row per status: (status, ids). The
-- trigger runs it itself: transition tables are visible only there.
-- Statuses are printed with format('%s'), never cast: an enum's output
-- function is built in, a cast on it could be anyone's code.
CREATE FUNCTION byok._inactive_rows_sql(id_col name, status_col name, old_rows boolean) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format(
        'SELECT lower(btrim(pg_catalog.format(''%%s'', n.%2$I))) AS status,
                array_agg(DISTINCT byok._as_uuid(n.%1$I::text)) AS ids
           FROM byok_new_rows n %3$s
          WHERE lower(btrim(pg_catalog.format(''%%s'', n.%2$I))) = ANY ($1) %4$s
          GROUP BY 1', id_col, status_col,
        CASE WHEN old_rows THEN format('JOIN byok_old_rows o ON o.%1$I = n.%1$I', id_col) ELSE '' END,
        CASE WHEN old_rows THEN format('AND pg_catalog.format(''%%s'', o.%1$I) IS DISTINCT FROM pg_catalog.format(''%%s'', n.%1$I)', status_col) ELSE '' END)
$$;

-- Trigger: UPDATEs of an attached table. TG_ARGV: id column, status column
-- ('' for none). Keys die when a workspace's status moves into
-- byok.inactive_statuses (moving back does not revive them: the customer
-- adds keys again), and when a workspace's id changes (nothing refers to the
-- old id any more).
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
    FOR r IN EXECUTE byok._inactive_rows_sql(TG_ARGV[0], status_col, true) USING byok._inactive_statuses() LOOP
        PERFORM byok._revoke(NULL, r.ids, format('workspace %s', r.status), 'workspace_' || r.status);
    END LOOP;
    RETURN NULL;
END
$$;

-- Trigger: rows INSERTed (or COPied) already inactive. Keys may exist for a
-- workspace before its row does (add_key allows it, with a notice); a row
-- that arrives paused must revoke them. TG_ARGV: id column, status column.
CREATE FUNCTION byok._on_workspace_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM byok._check_workspace_table(TG_RELID::regclass, TG_ARGV[0], TG_ARGV[1]);
    FOR r IN EXECUTE byok._inactive_rows_sql(TG_ARGV[0], TG_ARGV[1], false) USING byok._inactive_statuses() LOOP
        PERFORM byok._revoke(NULL, r.ids, format('workspace %s', r.status), 'workspace_' || r.status);
    END LOOP;
    RETURN NULL;
END
$$;

-- What the attached workspace tables say of a workspace: its status
-- (lower-cased; '' when it has none), ' missing' when no attached table has
-- the row, NULL when no table is attached. add_key refuses keys for
-- workspaces that are inactive: no trigger would ever revoke those. A
-- dropped attached table is skipped (byok.attachment_problems reports it).
CREATE FUNCTION byok._workspace_state(ws uuid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    src byok.workspace_source;
    state text;
    attached boolean := false;
BEGIN
    FOR src IN SELECT * FROM byok.workspace_source LOOP
        attached := true;
        IF NOT byok._lock_app_table(src.workspace_table) THEN
            CONTINUE;
        END IF;
        PERFORM byok._check_workspace_table(src.workspace_table, src.id_column, src.status_column);
        -- Read as the table's owner, uuid spellings compared as uuids.
        state := byok._workspace_row_state(src.workspace_table, src.id_column, src.status_column, ws);
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
    problem text;
BEGIN
    PERFORM byok._require_superuser('attach a workspace table');
    PERFORM byok._require(attach_workspaces.workspace_table, 'workspace_table');
    PERFORM byok._lock_app_table(attach_workspaces.workspace_table);
    PERFORM byok._uuid_column_type(attach_workspaces.workspace_table, attach_workspaces.id_column, 'id_column');
    problem := byok._inheritance_problem(attach_workspaces.workspace_table);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('table %s %s; pg_byok''s triggers would miss its rows', attach_workspaces.workspace_table, problem),
            HINT = 'Attach a plain table without inheritance children or parents (partitioned tables are not supported).';
    END IF;
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
    PERFORM byok._create_workspace_triggers(attach_workspaces.workspace_table, attach_workspaces.id_column,
                                            attach_workspaces.status_column);
    INSERT INTO byok.workspace_source (workspace_table, id_column, status_column)
    VALUES (attach_workspaces.workspace_table, attach_workspaces.id_column, attach_workspaces.status_column)
    ON CONFLICT (workspace_table) DO UPDATE
        SET id_column = excluded.id_column, status_column = excluded.status_column;
END
$$;
COMMENT ON FUNCTION byok.attach_workspaces(regclass, name, name) IS
    'Revoke a workspace''s keys when its row is deleted, its id changes or its status becomes inactive';

-- (Re)creates the revocation triggers of an attached table; also run by the
-- 0.1.0 → 0.2.0 upgrade on every attached table.
CREATE FUNCTION byok._create_workspace_triggers(tbl regclass, id_col name, status_col name) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM byok._drop_workspace_triggers(tbl);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_delete AFTER DELETE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)', tbl, id_col);
    EXECUTE format('CREATE TRIGGER byok_revoke_on_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_removed(%L)', tbl, id_col);
    -- Transition tables cannot be combined with UPDATE OF <column>, so the
    -- trigger fires on every UPDATE and compares old and new rows itself.
    EXECUTE format('CREATE TRIGGER byok_revoke_on_update AFTER UPDATE ON %s
                    REFERENCING OLD TABLE AS byok_old_rows NEW TABLE AS byok_new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_update(%L, %L)',
                   tbl, id_col, coalesce(status_col, ''));
    -- Only a status can make an inserted row revoke anything.
    IF status_col IS NOT NULL THEN
        EXECUTE format('CREATE TRIGGER byok_revoke_on_insert AFTER INSERT ON %s
                        REFERENCING NEW TABLE AS byok_new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION byok._on_workspace_insert(%L, %L)',
                       tbl, id_col, status_col);
    END IF;
END
$$;

CREATE FUNCTION byok._drop_workspace_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_truncate ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS byok_revoke_on_insert ON %s', tbl);
END
$$;

CREATE FUNCTION byok.detach_workspaces(workspace_table regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM byok._require_superuser('detach a workspace table');
    PERFORM byok._require(detach_workspaces.workspace_table, 'workspace_table');
    -- A dropped table took its triggers with it; only its row is left.
    IF byok._lock_app_table(detach_workspaces.workspace_table) THEN
        PERFORM byok._drop_workspace_triggers(detach_workspaces.workspace_table);
    END IF;
    DELETE FROM byok.workspace_source WHERE workspace_table = detach_workspaces.workspace_table;
END
$$;
COMMENT ON FUNCTION byok.detach_workspaces(regclass) IS 'Remove the revocation triggers from a workspace table';

-- For operators: every way the attached tables currently fail to do their
-- job. An attached table's owner can switch revocation off (disable or drop
-- pg_byok's triggers, drop the table, give it children); nothing in the
-- database can stop its owner, so this makes it visible. Empty when healthy.
CREATE FUNCTION byok.attachment_problems()
RETURNS TABLE (attached_as text, table_name text, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m byok.member_source;
    w byok.workspace_source;
    t record;
BEGIN
    FOR m IN SELECT * FROM byok.member_source LOOP
        attached_as := 'members';
        table_name := m.member_table::text;
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = m.member_table) THEN
            problem := 'dropped: only superuser and service_role are authorized';
            RETURN NEXT;
        ELSIF NOT byok._is_plain_table(m.member_table) THEN
            problem := 'no longer a plain table: authorization fails closed';
            RETURN NEXT;
        ELSIF NOT byok._id_type_ok(byok._column_type(m.member_table, m.workspace_column))
              OR NOT byok._id_type_ok(byok._column_type(m.member_table, m.user_column)) THEN
            problem := 'columns no longer uuid or text: authorization fails closed';
            RETURN NEXT;
        END IF;
    END LOOP;
    FOR w IN SELECT * FROM byok.workspace_source ORDER BY workspace_table LOOP
        attached_as := 'workspaces';
        table_name := w.workspace_table::text;
        IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = w.workspace_table) THEN
            problem := 'dropped: its workspaces'' keys were not revoked (run byok.detach_workspaces)';
            RETURN NEXT;
            CONTINUE;
        END IF;
        problem := CASE
            WHEN NOT byok._is_plain_table(w.workspace_table) THEN 'no longer a plain table'
            WHEN byok._inheritance_problem(w.workspace_table) IS NOT NULL
                THEN byok._inheritance_problem(w.workspace_table)
            WHEN NOT byok._id_type_ok(byok._column_type(w.workspace_table, w.id_column))
              OR (w.status_column IS NOT NULL
                  AND NOT byok._status_type_ok(byok._column_type(w.workspace_table, w.status_column)))
                THEN 'columns no longer what attach_workspaces checked'
        END;
        IF problem IS NOT NULL THEN
            problem := problem || ': its statements and add_key fail closed';
            RETURN NEXT;
        END IF;
        FOR t IN
            SELECT e.name, e.fn, tg.tgenabled
              FROM (VALUES ('byok_revoke_on_delete', 'byok._on_workspace_removed()'::regprocedure),
                           ('byok_revoke_on_truncate', 'byok._on_workspace_removed()'::regprocedure),
                           ('byok_revoke_on_update', 'byok._on_workspace_update()'::regprocedure),
                           ('byok_revoke_on_insert', 'byok._on_workspace_insert()'::regprocedure)) AS e(name, fn)
              LEFT JOIN pg_trigger tg ON tg.tgrelid = w.workspace_table AND tg.tgname = e.name
             WHERE e.name <> 'byok_revoke_on_insert' OR w.status_column IS NOT NULL
        LOOP
            problem := CASE
                WHEN t.tgenabled IS NULL THEN format('trigger %s is missing', t.name)
                WHEN t.tgenabled = 'D' THEN format('trigger %s is disabled', t.name)
                WHEN t.tgenabled = 'R' THEN format('trigger %s fires only in replica sessions', t.name)
                WHEN NOT EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = w.workspace_table
                                    AND tg.tgname = t.name AND tg.tgfoid = t.fn)
                    THEN format('trigger %s no longer calls %s', t.name, t.fn)
            END;
            IF problem IS NOT NULL THEN
                problem := problem || ' (run byok.attach_workspaces again)';
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION byok.attachment_problems() IS
    'Attached tables that no longer revoke keys or authorize as configured (dropped, changed, triggers missing or disabled); empty when healthy';

-- Row-level security: a caller sees the rows of the workspaces it may act on.
CREATE POLICY keys_of_authorized_workspaces ON byok.keys FOR SELECT
    USING (byok.authorize(workspace_id));
CREATE POLICY audit_of_authorized_workspaces ON byok.audit_log FOR SELECT
    USING (byok.authorize(workspace_id));
