-- pg_byok encoding check: runs right after bootstrap in CREATE EXTENSION.
--
-- Keys, masks ('…' is three bytes) and the redaction rules are defined on
-- UTF-8 text. In another encoding the mask no longer fits byok.keys' CHECK,
-- a key broken by a byte that is not UTF-8 escapes redaction, and the Rust
-- functions would have to guess what the bytes mean; so pg_byok refuses to
-- be installed there at all (CREATE EXTENSION is one transaction: nothing
-- bootstrap created is left behind).

DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('pg_byok needs a UTF8 database; database %I is %s',
                             pg_catalog.current_database(), pg_catalog.getdatabaseencoding()),
            HINT = 'Install pg_byok in a database created with ENCODING ''UTF8'' '
                   '(CREATE DATABASE ... TEMPLATE template0 ENCODING ''UTF8''), '
                   'or dump this one and restore it into such a database.';
    END IF;
END
$encoding$;
