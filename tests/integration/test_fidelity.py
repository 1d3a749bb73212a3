"""Restores are exact: what comes back is the database that was backed up, completely.

Each engine gets a "torture" database in the suite's own servers, is backed up, restored with
``--into`` under another name, and compared whole: a full schema dump (routine bodies byte for
byte), row data by checksum, and the database-level properties. The tests after those each
specify one way a restore once went wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backupd.catalogue import MANIFEST_SUFFIX
from tests.conftest import (
    bucket_state,
    mariadb_env,
    ok,
    pg_env,
    run_backupd,
    s3_client,
    storage_env,
    unique,
)
from tests.servers import MariaDBServer, PostgresServer

PG_TORTURE = r"""
CREATE EXTENSION citext;
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.positive AS integer CHECK (VALUE > 0);
CREATE TYPE app.pair AS (a int, b text);
CREATE TABLE app.users (
    id bigserial PRIMARY KEY,
    name citext NOT NULL,
    mood app.mood,
    rank app.positive,
    tags text[],
    doc jsonb,
    photo bytea,
    pair app.pair,
    shout text GENERATED ALWAYS AS (upper(name::text)) STORED
);
COMMENT ON TABLE app.users IS 'people; USE `x`; CREATE DATABASE y;';
INSERT INTO app.users (name, mood, rank, tags, doc, photo, pair) VALUES
    ('Zoë 😀 𝄞', 'happy', 1, ARRAY['a', 'b,c', NULL], '{"k": [1, "😀"]}', '\x00ff0a0d27',
     ROW(1, 'x')),
    ('nul', NULL, NULL, NULL, NULL, NULL, NULL),
    (E'line1\nCREATE DATABASE nope;\nUSE `elsewhere`;', 'sad', 7, '{}', 'null', '\x',
     ROW(NULL, NULL));
SELECT setval('app.users_id_seq', 1000);
CREATE SEQUENCE app.invoice_no START 5000 INCREMENT 7;
SELECT nextval('app.invoice_no'), nextval('app.invoice_no');
CREATE TABLE app.events (id int, at date NOT NULL, payload text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025 PARTITION OF app.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_2026 PARTITION OF app.events
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO app.events SELECT g, DATE '2025-06-01' + g, md5(g::text) FROM generate_series(1, 400) g;
CREATE VIEW app.v_users AS SELECT id, name, mood FROM app.users;
CREATE VIEW app.v_happy AS SELECT * FROM app.v_users WHERE mood = 'happy';
CREATE MATERIALIZED VIEW app.mood_counts AS SELECT mood, count(*) AS n FROM app.users GROUP BY mood;
CREATE FUNCTION app.greet(who text) RETURNS text LANGUAGE plpgsql AS $body$
DECLARE
    -- a body holding text that looks like statements:
    sql text := 'CREATE DATABASE archive_db;
USE `elsewhere`;';
BEGIN
    RETURN 'hello, ' || who || '   ' || sql;   -- odd   spacing kept
END
$body$;
CREATE PROCEDURE app.touch() LANGUAGE sql AS $$ UPDATE app.users SET rank = rank WHERE false $$;
CREATE FUNCTION app.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.payload := coalesce(NEW.payload, 'none'); RETURN NEW; END $$;
CREATE TRIGGER events_stamp BEFORE INSERT ON app.events_2026
    FOR EACH ROW EXECUTE FUNCTION app.stamp();
SELECT lo_from_bytea(0, '\x00010203ff'::bytea);
"""


def pg_properties(pg: PostgresServer, database: str) -> dict[str, Any]:
    """The database-level properties, with the database's own name taken out."""
    row = pg.psql(
        "SELECT json_build_object("
        "'encoding', pg_encoding_to_char(encoding), 'collate', datcollate, 'ctype', datctype,"
        "'provider', datlocprovider, 'limit', datconnlimit,"
        "'comment', shobj_description(oid, 'pg_database'),"
        "'settings', (SELECT json_agg(json_build_object('role', r.rolname, 'config', s.setconfig)"
        "  ORDER BY r.rolname NULLS FIRST) FROM pg_db_role_setting s"
        "  LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid),"
        # The privileges in effect (explicit or PostgreSQL's defaults), the owner's as 'owner'.
        "'privileges', (SELECT json_agg(json_build_array(CASE a.grantee WHEN 0 THEN 'PUBLIC'"
        "  WHEN d.datdba THEN 'owner' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type,"
        "  a.is_grantable)) FROM aclexplode(coalesce(d.datacl,"
        "  acldefault('d', d.datdba))) a))"
        f" FROM pg_database d WHERE datname = '{database}'"
    )
    properties: dict[str, Any] = json.loads(row)
    properties["privileges"].sort()
    return properties


def test_postgres_torture_database_comes_back_exactly(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    database = unique("shop")
    pg.psql(f"CREATE DATABASE {database} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    pg.run_sql_file(PG_TORTURE, database)
    for statement in (
        "SET search_path = app, public",
        "SET work_mem = '8MB'",
        "CONNECTION LIMIT 50",
    ):
        pg.psql(f"ALTER DATABASE {database} {statement}")
    pg.psql(f"COMMENT ON DATABASE {database} IS 'the shop ☃; USE x;'")
    pg.psql(f"ALTER ROLE {pg.user} IN DATABASE {database} SET statement_timeout = '1min'")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    copy = unique("copy")
    said = ok("restore", "--into", copy, env=env)

    assert pg.plain_dump(copy) == pg.plain_dump(database)
    # A new database takes every recorded property: nothing to warn about.
    assert "WARNING" not in said, said
    original, restored = pg_properties(pg, database), pg_properties(pg, copy)
    assert restored == original
    assert original["collate"] == "C"  # differs from the server's default (C.UTF-8)
    assert original["comment"] == "the shop ☃; USE x;"
    # The database default makes unqualified names work on the copy as on the original.
    assert pg.psql("SELECT count(*) FROM users", copy) == pg.psql(
        "SELECT count(*) FROM users", database
    )
    assert (
        pg.psql("SELECT lo_get(oid) FROM pg_largeobject_metadata", copy).strip() == "\\x00010203ff"
    )
    (entry,) = json.loads(run_backupd("list", "--json", env=env).stdout)
    assert entry["manifest"]["properties"]["comment"] == "the shop ☃; USE x;"


MARIADB_TABLES = r"""
SET sql_mode = '';
CREATE TABLE t (
    id INT PRIMARY KEY AUTO_INCREMENT,
    name VARCHAR(100),
    d DATE,
    dt DATETIME,
    b BLOB,
    j JSON,
    price DECIMAL(10,2),
    twice DECIMAL(12,2) AS (price * 2) VIRTUAL,
    thrice DECIMAL(12,2) AS (price * 3) STORED,
    e ENUM('a','b'),
    s SET('x','y')
) ENGINE=InnoDB COMMENT 'USE `elsewhere`;';
INSERT INTO t (name, d, dt, b, j, price, e, s) VALUES
    ('Zoë 😀 𝄞', '0000-00-00', '0000-00-00 00:00:00', 0x00FF0A0D275C, '{"k": "😀"}', 1.50,
     'a', 'x,y'),
    (NULL, NULL, NULL, NULL, NULL, NULL, NULL, ''),
    ('line1\nCREATE DATABASE nope;\nUSE `elsewhere`;', '2026-02-28', '2026-11-29 05:00:00', '',
     '[]', 0, 'b', 'y');
CREATE VIEW v1 AS SELECT id, name FROM t;
CREATE VIEW v2 AS SELECT * FROM v1 WHERE id > 1;
"""
# A 9 MB row: its INSERT in a --hex-blob dump is an 18 MB statement, more than the mariadb
# client's default max_allowed_packet (16 MiB) but less than this server's (64 MiB).
MARIADB_WIDE = """
CREATE TABLE wide (id INT PRIMARY KEY, payload LONGBLOB);
INSERT INTO wide VALUES (1, REPEAT(0xAB01, 4500000));
"""
# A 26 MB row: more than mariadb-dump's default max_allowed_packet (24 MiB) on the way out; its
# 52 MB statement still fits this server's 64 MiB on the way back in.
MARIADB_WIDER = """
CREATE TABLE wide (id INT PRIMARY KEY, payload LONGBLOB);
INSERT INTO wide VALUES (1, REPEAT(0xAB01, 13000000));
"""
MARIADB_ROUTINES = r"""
DELIMITER ;;
CREATE PROCEDURE archive()
BEGIN
  -- the next line is a statement of this body, not of the dump
CREATE DATABASE IF NOT EXISTS archive_db;
  /* a comment block in the body
USE `other`;
  */
END ;;
CREATE PROCEDURE note(OUT message TEXT)
BEGIN
  SET message = 'first line
USE `elsewhere`;
last line';
END ;;
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2 ;;
CREATE TRIGGER trim_name BEFORE INSERT ON t FOR EACH ROW SET NEW.name = TRIM(NEW.name) ;;
CREATE EVENT purge_old ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM t WHERE id < 0 ;;
DELIMITER ;
"""


def mariadb_properties(mariadb: MariaDBServer, database: str) -> str:
    return mariadb.root_sql(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, SCHEMA_COMMENT"
        f" FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{database}'"
    )


def mariadb_checksums(mariadb: MariaDBServer, database: str, *tables: str) -> list[str]:
    names = ", ".join(f"`{database}`.{table}" for table in tables)
    rows = mariadb.root_sql(f"CHECKSUM TABLE {names} EXTENDED")
    return [line.split("\t", 1)[1] for line in rows.splitlines()]


def make_mariadb_database(mariadb: MariaDBServer, *parts: str) -> str:
    database = unique("shop")
    mariadb.root_sql(
        f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        " COMMENT 'the shop ☃'"
    )
    mariadb.root_sql("".join(parts), database)
    return database


def test_mariadb_torture_database_comes_back_exactly(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    database = make_mariadb_database(mariadb, MARIADB_TABLES, MARIADB_WIDE, MARIADB_ROUTINES)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    copy = unique("copy")
    ok("restore", "--into", copy, env=env)

    assert mariadb.plain_dump(copy) == mariadb.plain_dump(database)
    tables = ("t", "wide")
    assert mariadb_checksums(mariadb, copy, *tables) == mariadb_checksums(
        mariadb, database, *tables
    )
    assert mariadb_properties(mariadb, copy) == mariadb_properties(mariadb, database)
    assert "utf8mb4_unicode_ci" in mariadb_properties(mariadb, copy)


def test_routine_bodies_keep_lines_that_look_like_database_statements(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    database = make_mariadb_database(mariadb, MARIADB_TABLES, MARIADB_ROUTINES)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    copy = unique("copy")

    ok("restore", "--into", copy, env=env)

    body = (
        "SELECT ROUTINE_DEFINITION FROM information_schema.ROUTINES"
        " WHERE ROUTINE_SCHEMA = '{}' ORDER BY ROUTINE_NAME"
    )
    assert mariadb.root_sql(body.format(copy)) == mariadb.root_sql(body.format(database))
    assert "CREATE DATABASE IF NOT EXISTS archive_db;" in mariadb.root_sql(body.format(copy))
    assert "/* a comment block in the body" in mariadb.root_sql(body.format(copy))
    assert "USE `elsewhere`;" in mariadb.root_sql(body.format(copy))


def mariadb_objects(mariadb: MariaDBServer, database: str) -> str:
    """Every routine, trigger and event with its body and the collations it was created
    under (the database's default among them)."""
    name = f"'{database}'"
    return mariadb.root_sql(
        "SELECT ROUTINE_NAME, ROUTINE_DEFINITION, CHARACTER_SET_CLIENT, COLLATION_CONNECTION,"
        f" DATABASE_COLLATION FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {name}"
        " UNION ALL SELECT TRIGGER_NAME, ACTION_STATEMENT, CHARACTER_SET_CLIENT,"
        " COLLATION_CONNECTION, DATABASE_COLLATION FROM information_schema.TRIGGERS"
        f" WHERE TRIGGER_SCHEMA = {name}"
        " UNION ALL SELECT EVENT_NAME, EVENT_DEFINITION, CHARACTER_SET_CLIENT,"
        f" COLLATION_CONNECTION, DATABASE_COLLATION FROM information_schema.EVENTS"
        f" WHERE EVENT_SCHEMA = {name} ORDER BY 1"
    )


def test_routines_made_under_another_default_collation_restore_under_a_new_name(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """mariadb-dump switches the database's default collation *by name* around a routine,
    trigger or event created under another default. Restored under a new name, those
    statements must name the new database: else they alter the original (or fail where it
    does not exist) and the copies get the wrong collation."""
    database = unique("legacy")
    mariadb.root_sql(f"CREATE DATABASE `{database}` CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    mariadb.root_sql(MARIADB_TABLES + MARIADB_ROUTINES, database)
    mariadb.root_sql(
        f"ALTER DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )
    original = mariadb_objects(mariadb, database)
    assert original.count("latin1_swedish_ci") == 5  # 2 procedures, a function, trigger, event
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    (listed,) = json.loads(run_backupd("list", "--json", env=env).stdout)
    assert listed["manifest"]["properties"]["objects_under_other_collation"] == 5

    copy = unique("copy")
    ok("restore", "--into", copy, env=env)

    assert mariadb_objects(mariadb, copy) == original
    assert mariadb_properties(mariadb, copy) == mariadb_properties(mariadb, database)
    assert "utf8mb4_unicode_ci" in mariadb_properties(mariadb, database)
    assert mariadb.plain_dump(copy).replace(copy, database) == mariadb.plain_dump(database)

    mariadb.root_sql(f"DROP DATABASE `{database}`")  # a server without the original
    again = unique("copy")
    ok("restore", "--into", again, env=env)
    assert mariadb_objects(mariadb, again) == original


def test_a_restore_under_a_new_name_leaves_the_original_alone_whatever_the_routines_hold(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """The reader renaming the dump's ALTER DATABASE statements must read strings as the
    server does: 'C:\\' is a whole string in a procedure made under NO_BACKSLASH_ESCAPES (the
    dump sets that mode before it), and a trigger's '/* note */' inside the dump's
    /*!50003 … */ ends no comment. A reader that lost step there left the later statements
    naming the original database: the restore altered it, or failed where it did not exist."""
    database = unique("modes")
    mariadb.root_sql(f"CREATE DATABASE `{database}` CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    mariadb.root_sql(
        "CREATE TABLE t (id INT, s TEXT);\n"
        "SET sql_mode = 'NO_BACKSLASH_ESCAPES';\n"
        "CREATE PROCEDURE a1() SELECT 'C:\\';\n"
        "SET sql_mode = DEFAULT;\n"
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW"
        " SET NEW.s = CONCAT('/* note */ x', NEW.s);\n",
        database,
    )
    mariadb.root_sql(
        f"ALTER DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )
    mariadb.root_sql("CREATE PROCEDURE b1() SELECT 1;", database)

    def original() -> tuple[str, str]:
        return mariadb.root_sql(f"SHOW CREATE DATABASE `{database}`"), mariadb_objects(
            mariadb, database
        )

    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    dumped, properties = mariadb.plain_dump(database), mariadb_properties(mariadb, database)
    mariadb.root_sql(f"ALTER DATABASE `{database}` COLLATE utf8mb4_bin")  # after the backup
    before = original()
    assert before[1].count("latin1_swedish_ci") == 2 and "C:\\" in before[1]

    copy = unique("copy")
    ok("restore", "--into", copy, env=env)

    assert original() == before
    assert mariadb_objects(mariadb, copy) == before[1]
    assert mariadb_properties(mariadb, copy) == properties
    assert "utf8mb4_unicode_ci" in properties
    assert mariadb.plain_dump(copy).replace(copy, database) == dumped

    mariadb.root_sql(f"DROP DATABASE `{database}`")  # a server without the original
    again = unique("copy")
    ok("restore", "--into", again, env=env)
    assert mariadb_objects(mariadb, again) == before[1]
    assert not mariadb.root_sql(f"SHOW DATABASES LIKE '{database}'")


def test_a_table_whose_column_defaults_to_a_sequence_takes_its_rows_back(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """mariadb-dump's LOCK TABLES `t` WRITE around a table's rows left out the sequence its
    DEFAULT NEXTVAL(…) names: the INSERT failed (ERROR 1100, "was not locked")."""
    database = unique("seq")
    mariadb.root_sql(f"CREATE DATABASE `{database}`")
    mariadb.root_sql(
        "CREATE SEQUENCE z_seq START WITH 500;\n"
        "CREATE TABLE a_tab (id BIGINT DEFAULT NEXTVAL(z_seq) PRIMARY KEY, v INT);\n"
        "INSERT INTO a_tab (v) VALUES (1), (2);\n",
        database,
    )
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    copy = unique("copy")

    ok("restore", "--into", copy, env=env)

    rows = "SELECT id, v FROM `{}`.a_tab ORDER BY id"
    assert mariadb.root_sql(rows.format(copy)) == "500\t1\n501\t2\n"
    assert mariadb_checksums(mariadb, copy, "a_tab") == mariadb_checksums(
        mariadb, database, "a_tab"
    )


def test_an_object_made_with_databases_by_an_older_release_restores_under_a_new_name(
    mariadb: MariaDBServer, s3: Any, moto_url: str, bucket: str
) -> None:
    """Older releases dumped with --databases (CREATE DATABASE and USE at the top level);
    restore drops exactly those statements, found by reading statements, not lines."""
    database = make_mariadb_database(mariadb, MARIADB_TABLES, MARIADB_ROUTINES)
    dump = mariadb.dump_with_databases(database)
    assert b"CREATE DATABASE" in dump and b"USE `" in dump
    started = datetime.now(UTC)
    key = f"backups/{started:%Y%m%d}/backup_{database}_{started:%Y%m%d_%H%M%S}.sql"
    manifest = {
        "format": 1,
        "key": key,
        "sha256": hashlib.sha256(dump).hexdigest(),
        "size": len(dump),
        "started": started.isoformat(),
        "finished": started.isoformat(),
        "duration_s": 1.0,
        "target": "default",
        "database": database,
        "engine": "mariadb",
        "compression": {"setting": "none", "tool": False, "stream": "none"},
    }
    s3.put_object(Bucket=bucket, Key=key, Body=dump)
    s3.put_object(Bucket=bucket, Key=key + ".manifest.json", Body=json.dumps(manifest).encode())
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    copy = unique("copy")

    ok("restore", "--into", copy, env=env)

    assert mariadb.plain_dump(copy) == mariadb.plain_dump(database)
    assert mariadb_checksums(mariadb, copy, "t") == mariadb_checksums(mariadb, database, "t")
    assert not mariadb.root_sql("SHOW DATABASES LIKE 'archive_db'")


def test_a_wide_row_restores_and_a_failing_client_never_hangs(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = make_mariadb_database(mariadb, MARIADB_WIDER)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    mariadb.root_sql("SET GLOBAL max_allowed_packet = 16 * 1024 * 1024")
    try:
        # The server now refuses the 18 MB statement; the client says so, echoing all of it
        # on one stderr line. The restore must end with that error, quickly.
        refused = unique("refused")
        failed = run_backupd("restore", "--into", refused, env=env, timeout=90)
    finally:
        mariadb.root_sql("SET GLOBAL max_allowed_packet = 64 * 1024 * 1024")
    output = failed.stdout + failed.stderr

    assert failed.returncode == 1, output
    assert "raise max_allowed_packet on the server" in output
    assert len(output) < 20_000  # the tail is cut, not the whole statement
    assert "Traceback" not in output
    assert not mariadb.root_sql(f"SHOW DATABASES LIKE '{refused}'")
    copy = unique("copy")
    ok("restore", "--into", copy, env=env)
    assert mariadb_checksums(mariadb, copy, "wide") == mariadb_checksums(mariadb, database, "wide")


def test_restore_chooses_only_among_the_requested_databases_backups(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    first, second = unique("a"), unique("b")
    pg.create_database(first, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    pg.create_database(second, "CREATE TABLE t (n int); INSERT INTO t VALUES (2);")
    both = {**pg_env(pg, f"{first},{second}"), **storage_env(moto_url, bucket)}
    ok("once", env=both)  # the second database's backup is the newest object
    only_first = {**both, "DB_DATABASE": first}

    ambiguous = run_backupd("restore", "--into", unique("x"), env=both)
    implied = unique("implied")
    ok("restore", "--into", implied, env=only_first)
    chosen = unique("chosen")
    ok("restore", "--database", second, "--into", chosen, env=both)
    table = run_backupd("list", env=both).stdout
    filtered = json.loads(run_backupd("list", "--database", first, "--json", env=both).stdout)

    assert ambiguous.returncode == 2
    assert "--database" in ambiguous.stderr and "--key" in ambiguous.stderr
    assert pg.psql("SELECT n FROM t", implied).strip() == "1"
    assert pg.psql("SELECT n FROM t", chosen).strip() == "2"
    header = table.splitlines()[0].split()
    assert header[:3] == ["TIME", "DATABASE", "ENGINE"]
    assert any(first in line and "postgres" in line for line in table.splitlines()[1:])
    assert [entry["database"] for entry in filtered] == [first]


def test_the_time_of_a_backup_is_its_manifests_instant_whatever_the_timezone(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    database = unique("timeline")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env={**env, "TIMEZONE": "UTC"})
    pg.psql("UPDATE t SET n = 2", database)
    before_second = datetime.now(UTC)
    ok("once", env={**env, "TIMEZONE": "America/Los_Angeles"})
    after_second = datetime.now(UTC)

    listing = json.loads(run_backupd("list", "--json", env={**env, "TIMEZONE": "UTC"}).stdout)
    taken = [datetime.fromisoformat(entry["taken"]) for entry in listing]
    table = run_backupd("list", env={**env, "TIMEZONE": "Asia/Kolkata"}).stdout
    restored = unique("restored")
    ok(
        "restore",
        "--at",
        after_second.isoformat(),
        "--into",
        restored,
        env={**env, "TIMEZONE": "UTC"},
    )

    assert before_second <= taken[0] <= after_second  # the Los Angeles backup, newest first
    assert taken[1] < before_second
    assert "+0530" in table  # shown in TIMEZONE, with the offset
    assert pg.psql("SELECT n FROM t", restored).strip() == "2"


def test_distinct_databases_never_share_a_key(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    names = ["q a", "q_a", "q/a"]
    for number, name in enumerate(names):
        pg.psql(f'CREATE DATABASE "{name}"')
        pg.psql(f"CREATE TABLE t (n int); INSERT INTO t VALUES ({number})", name)
    env = {**pg_env(pg, ",".join(names)), **storage_env(moto_url, bucket)}
    try:
        ok("once", env=env)
        for number, name in enumerate(names):
            restored = unique("restored")
            ok("restore", "--database", name, "--into", restored, env=env)
            assert pg.psql("SELECT n FROM t", restored).strip() == str(number)
    finally:
        for name in names:
            pg.psql(f'DROP DATABASE "{name}"')
    keys = [k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json")]
    assert len(keys) == 3
    assert len({k.rsplit("/", 1)[1].rsplit("_", 3)[0] for k in keys}) == 3


def test_a_missing_database_is_named_as_missing_not_as_a_login_failure(
    pg: PostgresServer, mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    present = unique("present")
    pg.create_database(present, "CREATE TABLE t (n int);")
    mariadb.create_database(present, "CREATE TABLE t (n INT);")
    storage = storage_env(moto_url, bucket)

    for env, port in (
        ({**pg_env(pg, "nope"), **storage}, pg.port),
        ({**pg_env(pg, f"{present},nope"), **storage}, pg.port),
        ({**mariadb_env(mariadb, "nope"), **storage}, mariadb.port),
        ({**mariadb_env(mariadb, f"{present},nope"), **storage}, mariadb.port),
    ):
        result = run_backupd("once", env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert f"database nope does not exist on 127.0.0.1:{port}" in output
        assert "cannot log in" not in output


ORACLE_MYSQLDUMP = """#!{python}
import os, sys
if sys.argv[1:] == ["--version"]:
    print("mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)")
    sys.exit(0)
with open({log!r}, "a") as log:
    log.write(repr(sys.argv[1:]) + "\\n")
oracle_only = {{"--set-gtid-purged=OFF", "--column-statistics=0"}}
args = [a for a in sys.argv[1:] if a not in oracle_only]
os.execvp("mariadb-dump", ["mariadb-dump", *args])
"""


def test_an_oracle_mysqldump_gets_its_own_options_from_the_first_dump_on(
    mariadb: MariaDBServer, moto_url: str, bucket: str, tmp_path: Path
) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "argv.log"
    bin_dir.mkdir()
    stand_in = bin_dir / "mysqldump"
    stand_in.write_text(ORACLE_MYSQLDUMP.format(python=sys.executable, log=str(log)))
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    first, second = unique("first"), unique("second")
    for name in (first, second):
        mariadb.create_database(name, "CREATE TABLE t (n INT);")
    env = {
        **mariadb_env(mariadb, f"{first},{second}", DB_TYPE="mysql"),
        **storage_env(moto_url, bucket),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }

    ok("once", env=env)

    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for call in calls:
        assert "--set-gtid-purged=OFF" in call and "--column-statistics=0" in call


def test_a_damaged_object_never_touches_an_existing_database(
    pg: PostgresServer, mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    """--clean drops nothing, and a restore into an existing empty MariaDB database (whose
    client commits as it goes) writes nothing, before the object is verified whole."""
    storage = storage_env(moto_url, bucket, COMPRESSION="none")
    source = unique("source")
    pg.create_database(source, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    mariadb.create_database(source, "CREATE TABLE t (n INT); INSERT INTO t VALUES (1);")
    pg_config = {**pg_env(pg, source), **storage, "STORAGE_DESTINATION_FOLDER": "pg"}
    my_config = {**mariadb_env(mariadb, source), **storage, "STORAGE_DESTINATION_FOLDER": "my"}
    for config in (pg_config, my_config):
        ok("once", env=config)
    for key in bucket_state(s3, bucket)[0]:
        if not key.endswith(".manifest.json"):  # damage the end: the data is long gone by then
            body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            body[-10] ^= 0xFF
            s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    kept = unique("kept")
    pg.create_database(kept, "CREATE TABLE precious (n int); INSERT INTO precious VALUES (42);")
    empty = unique("empty")
    mariadb.create_database(empty)

    clean = run_backupd("restore", "--into", kept, "--clean", env=pg_config)
    into_empty = run_backupd("restore", "--into", empty, env=my_config)

    for result in (clean, into_empty):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "checksum mismatch" in result.stdout
    assert pg.psql("SELECT n FROM precious", kept).strip() == "42"
    assert (
        mariadb.root_sql(
            f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{empty}'"
        ).strip()
        == "0"
    )


def test_an_existing_empty_mariadb_database_gets_the_recorded_defaults(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    database = make_mariadb_database(mariadb, "CREATE TABLE t (n INT);")
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    existing = unique("existing")
    mariadb.root_sql(f"CREATE DATABASE `{existing}` CHARACTER SET latin1 COMMENT 'old'")

    ok("restore", "--into", existing, env=env)

    assert mariadb_properties(mariadb, existing) == mariadb_properties(mariadb, database)


def test_routines_restored_into_an_existing_empty_mariadb_database_keep_their_collation(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """A routine, trigger or event takes the database's default collation as it is created.
    The recorded defaults were applied to an existing database only after the load, so each
    came back under the collation the empty database had had (latin1 here), and the restored
    database's routines differed from the original's."""
    database = make_mariadb_database(mariadb, MARIADB_TABLES, MARIADB_ROUTINES)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    existing = unique("existing")
    mariadb.root_sql(f"CREATE DATABASE `{existing}` CHARACTER SET latin1 COLLATE latin1_german2_ci")

    ok("restore", "--into", existing, env=env)

    assert mariadb.plain_dump(existing) == mariadb.plain_dump(database)
    assert mariadb_objects(mariadb, existing) == mariadb_objects(mariadb, database)


def test_an_existing_empty_postgres_database_loses_a_comment_the_backup_does_not_have(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """The recorded comment is applied after the restore; a database recorded without one kept
    the comment the existing database had, where MariaDB's is cleared."""
    database, existing = unique("plain"), unique("existing")
    pg.create_database(database, "CREATE TABLE t (n int);")
    pg.psql(f"CREATE DATABASE {existing}")
    pg.psql(f"COMMENT ON DATABASE {existing} IS 'not the backup''s'")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    ok("restore", "--into", existing, env=env)

    assert pg_properties(pg, existing)["comment"] is None
    assert pg_properties(pg, existing) == pg_properties(pg, database)


def test_an_existing_empty_postgres_database_takes_the_recorded_settings_alone(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """The recorded settings and connection limit were added to an existing database's own:
    a copy of a database without either kept the work_mem and the limit of 5 connections
    the existing database had."""
    database, existing = unique("plain"), unique("existing")
    pg.create_database(database, "CREATE TABLE t (n int);")
    pg.psql(f"ALTER DATABASE {database} SET search_path = public")
    pg.psql(f"CREATE DATABASE {existing} CONNECTION LIMIT 5")
    pg.psql(f"ALTER DATABASE {existing} SET work_mem = '7MB'")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    ok("restore", "--into", existing, env=env)

    assert pg_properties(pg, existing) == pg_properties(pg, database)
    assert pg_properties(pg, existing)["limit"] == -1


@pytest.mark.parametrize("granted", [False, True])
def test_an_existing_empty_postgres_database_ends_with_the_recorded_privileges_alone(
    pg: PostgresServer, moto_url: str, bucket: str, granted: bool
) -> None:
    """What an existing database granted to another role, and that role's settings in it,
    stayed beside the recorded ones: a copy of a database with the default privileges (or
    with grants of its own) let a role connect and create that the original did not."""
    database, existing = unique("plain"), unique("existing")
    stranger, reader = unique("stranger"), unique("reader")
    pg.psql(f"CREATE ROLE {stranger}; CREATE ROLE {reader}")
    pg.create_database(database, "CREATE TABLE t (n int);")
    if granted:
        pg.psql(f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC")
        pg.psql(f"GRANT CONNECT ON DATABASE {database} TO {reader}")
    pg.psql(f"CREATE DATABASE {existing}")
    pg.psql(f"GRANT CONNECT, CREATE ON DATABASE {existing} TO {stranger}")
    pg.psql(f"REVOKE CONNECT ON DATABASE {existing} FROM PUBLIC")
    pg.psql(f"ALTER ROLE {stranger} IN DATABASE {existing} SET work_mem = '7MB'")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    ok("restore", "--into", existing, env=env)

    assert pg_properties(pg, existing) == pg_properties(pg, database)
    assert stranger not in json.dumps(pg_properties(pg, existing))


def test_an_existing_postgres_database_granted_to_the_recorded_owner_keeps_its_privileges(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """The existing database, made by another role, had granted ALL to the role that owns the
    original (with the default privileges): that role became the owner, then lost the grants
    with the other roles', and with them CREATE on its own database."""
    database, existing, owner = unique("owned"), unique("existing"), unique("owner")
    pg.psql(f"CREATE ROLE {owner}")
    pg.psql(f"CREATE DATABASE {database} OWNER {owner}")
    pg.psql(f"CREATE DATABASE {existing}")
    pg.psql(f"GRANT ALL ON DATABASE {existing} TO {owner}")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    ok("restore", "--into", existing, env=env)

    assert pg_properties(pg, existing) == pg_properties(pg, database)
    owned_by = f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{existing}'"
    assert pg.psql(owned_by).strip() == owner


def test_an_existing_postgres_databases_grants_passed_on_by_a_grantee_are_revoked_too(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """A role of the existing database holding CONNECT WITH GRANT OPTION had granted it on:
    its REVOKE failed (dependent privileges exist), a warning said the database's privileges
    of that role could not be restored, and both roles could still connect to the copy."""
    database, existing = unique("plain"), unique("existing")
    lender, borrower = unique("lender"), unique("borrower")
    pg.psql(f"CREATE ROLE {lender}; CREATE ROLE {borrower}")
    pg.create_database(database, "CREATE TABLE t (n int);")
    pg.psql(f"CREATE DATABASE {existing}")
    pg.psql(f"GRANT CONNECT ON DATABASE {existing} TO {lender} WITH GRANT OPTION")
    pg.psql(f"SET ROLE {lender}; GRANT CONNECT ON DATABASE {existing} TO {borrower}, PUBLIC")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    output = ok("restore", "--into", existing, env=env)

    assert "WARNING" not in output
    assert pg_properties(pg, existing) == pg_properties(pg, database)


def test_an_existing_postgres_database_with_another_locale_is_named_in_a_warning(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    database = unique("c_locale")
    pg.psql(
        f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'LATIN1'"
        " LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    pg.psql("CREATE TABLE t (n int)", database)
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    existing = unique("existing")
    pg.create_database(existing)  # the server's default locale, C.UTF-8

    output = ok("restore", "--into", existing, env=env)

    assert f"{existing} keeps its datcollate 'C.UTF-8'; the backup recorded 'C'" in output
    assert f"{existing} keeps its encoding 'UTF8'; the backup recorded 'LATIN1'" in output


def test_an_existing_postgres_database_with_another_locale_provider_is_named_in_a_warning(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """An ICU collation sorts otherwise than libc's: a database that keeps libc says so."""
    database = unique("icu")
    pg.psql(f"CREATE DATABASE {database} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'")
    pg.psql("CREATE TABLE t (n int)", database)
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    existing = unique("existing")
    pg.create_database(existing)  # the server's default provider, libc

    output = ok("restore", "--into", existing, env=env)

    assert f"{existing} keeps its datlocprovider 'c'; the backup recorded 'i'" in output
    assert f"{existing} keeps its daticulocale none; the backup recorded 'de-DE'" in output
    copy = unique("copy")
    assert "WARNING" not in ok("restore", "--into", copy, env=env)
    assert pg_properties(pg, copy) == pg_properties(pg, database)


def test_a_latin1_database_keeps_its_non_ascii_comment_and_settings(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """backupd reads and re-applies the database's properties in UTF-8 whatever its encoding;
    psql would otherwise speak LATIN1 and the text would come back mangled."""
    database = unique("latin")
    pg.psql(
        f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'LATIN1'"
        " LC_COLLATE 'C' LC_CTYPE 'C'"
    )
    pg.run_sql_file(
        "SET client_encoding = 'UTF8';"
        'CREATE SCHEMA "schéma"; CREATE TABLE "schéma".t (v text);'
        "INSERT INTO \"schéma\".t VALUES ('Zoë');"
        f"COMMENT ON DATABASE {database} IS 'café ½';"
        f'ALTER DATABASE {database} SET search_path = "schéma", public;',
        database,
    )
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    copy = unique("copy")

    ok("restore", "--into", copy, env=env)

    assert pg_properties(pg, copy) == pg_properties(pg, database)
    # Kept in shared catalogs in the database's own encoding: read from inside, in UTF-8.
    inside = (
        "SET client_encoding = 'UTF8'; SELECT json_build_object("
        "'comment', shobj_description(d.oid, 'pg_database'), 'settings', s.setconfig)"
        " FROM pg_database d LEFT JOIN pg_db_role_setting s"
        " ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = current_database()"
    )
    assert json.loads(pg.psql(inside, copy).splitlines()[-1]) == {
        "comment": "café ½",
        "settings": ['search_path="schéma", public'],
    }
    assert pg.psql("SET client_encoding = 'UTF8'; SELECT v FROM t", copy).endswith("\nZoë\n")


def test_backslashes_in_database_properties_survive_standard_conforming_strings_off(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """A role whose sessions run with standard_conforming_strings off reads backslashes in
    plain string constants as escapes: the properties backupd re-applies must not change."""
    role, database = unique("oldstyle"), unique("scs")
    pg.psql(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD 'pw-{role}'")
    pg.psql(f"ALTER ROLE {role} SET standard_conforming_strings = off")
    pg.psql(f"CREATE DATABASE {database} OWNER {role}")
    pg.psql(f"COMMENT ON DATABASE {database} IS 'C:\\temp\\new it''s'")
    pg.psql(f"ALTER DATABASE {database} SET application_name = 'C:\\dir\\x'")
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "DB_USER": role,
        "DB_PASSWORD": f"pw-{role}",
    }
    ok("once", env=env)
    copy = unique("copy")

    ok("restore", "--into", copy, env=env)

    assert pg_properties(pg, copy) == pg_properties(pg, database)
    assert pg_properties(pg, copy)["comment"] == "C:\\temp\\new it's"


def test_database_privileges_tablespace_and_template_flag_come_back(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """Who may connect is part of the database: a copy that let PUBLIC in again would widen
    access. Its tablespace and template flag come back too."""
    reader, database = unique("reader"), unique("guarded")
    location = pg.root / f"space_{database}"
    location.mkdir()
    if pg.os_user:
        entry = pwd.getpwnam(pg.os_user)
        os.chown(location, entry.pw_uid, entry.pw_gid)
    space = unique("space")
    pg.psql(f"CREATE TABLESPACE {space} LOCATION '{location}'")
    pg.psql(f"CREATE ROLE {reader} LOGIN")
    pg.psql(f"CREATE DATABASE {database} TABLESPACE {space} IS_TEMPLATE true")
    pg.psql(f"REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")
    pg.psql(f"GRANT CONNECT ON DATABASE {database} TO {reader} WITH GRANT OPTION")
    pg.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (1);", database)
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    copy = unique("copy")

    output = ok("restore", "--into", copy, env=env)

    def facts(name: str) -> str:
        return pg.psql(
            "SELECT array_to_string(ARRAY(SELECT format('%s %s %s',"
            " coalesce(pg_get_userbyid(a.grantee), 'PUBLIC'), a.privilege_type, a.is_grantable)"
            " FROM aclexplode(d.datacl) a WHERE a.grantee <> d.datdba ORDER BY 1), ', '),"
            " (SELECT spcname FROM pg_tablespace WHERE oid = d.dattablespace), d.datistemplate"
            f" FROM pg_database d WHERE datname = '{name}'"
        )

    assert facts(copy) == facts(database)
    assert facts(copy) == f"{reader} CONNECT t|{space}|t\n"
    assert "WARNING" not in output
    assert pg.psql("SELECT n FROM t", copy) == "1\n"
    # A copy that is a template is still replaced with --clean, and a drill drops its own.
    ok("restore", "--into", copy, "--clean", env=env)
    ok("verify", "--drill", env=env)
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'backupd_drill_%'") == "0\n"


def owners_and_privileges(pg: PostgresServer, database: str) -> dict[str, Any]:
    """Who owns the database and each of its objects, and every privilege on them."""
    row = pg.psql(
        "SELECT json_build_object("
        "'database', (SELECT json_build_object('owner', pg_get_userbyid(datdba), 'acl', datacl)"
        f"  FROM pg_database WHERE datname = '{database}'),"
        "'schemas', (SELECT json_agg(json_build_object(nspname, pg_get_userbyid(nspowner),"
        "  'acl', nspacl) ORDER BY nspname) FROM pg_namespace WHERE nspname !~ '^(pg_|inf)'),"
        "'relations', (SELECT json_agg(json_build_object(relname, pg_get_userbyid(relowner),"
        "  'acl', relacl) ORDER BY relname) FROM pg_class WHERE oid >= 16384),"
        "'routines', (SELECT json_agg(json_build_object(proname, pg_get_userbyid(proowner),"
        "  'acl', proacl) ORDER BY proname) FROM pg_proc WHERE oid >= 16384),"
        "'large objects', (SELECT json_agg(json_build_object(pg_get_userbyid(lomowner),"
        "  lomacl)) FROM pg_largeobject_metadata))",
        database,
    )
    facts: dict[str, Any] = json.loads(row)
    return facts


def test_owners_come_back_and_a_security_definer_function_keeps_its_role(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """Ownership is part of the database: a SECURITY DEFINER function owned by the restoring
    superuser would bypass the row-level security its real owner is held to, and an owner
    that lost its database could no longer connect."""
    alice, bob, database = unique("alice"), unique("bob"), unique("owned")
    pg.psql(f"CREATE ROLE {alice} LOGIN; CREATE ROLE {bob}")
    pg.psql(f"CREATE DATABASE {database} OWNER {alice}")
    pg.psql(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
    pg.run_sql_file(
        f"""SET ROLE {alice};
        CREATE TABLE secret (n int);
        INSERT INTO secret VALUES (1);
        ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
        ALTER TABLE secret FORCE ROW LEVEL SECURITY;
        CREATE POLICY nobody ON secret USING (false);
        CREATE FUNCTION count_secret() RETURNS bigint LANGUAGE sql SECURITY DEFINER
            AS 'SELECT count(*) FROM secret';
        SELECT lo_from_bytea(0, 'x');
        GRANT SELECT ON secret TO {bob};
        RESET ROLE;
        CREATE TABLE bobs (n int);
        ALTER TABLE bobs OWNER TO {bob};
        ALTER SCHEMA public OWNER TO {bob};""",
        database,
    )
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    before = owners_and_privileges(pg, database)
    assert pg.psql("SELECT count_secret()", database) == "0\n"

    copy = unique("copy")
    said = ok("restore", "--into", copy, env=env) + ok(
        "restore", "--into", database, "--clean", env=env
    )

    assert "WARNING" not in said, said
    for name in (copy, database):
        facts = owners_and_privileges(pg, name)
        assert facts == before
        assert facts["database"]["owner"] == alice
        assert pg.psql("SELECT count_secret()", name) == "0\n"


def test_owners_this_server_or_role_cannot_keep_go_to_the_restoring_role_with_a_warning(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """A role missing on the server, or a restoring role that may not act as the owners, does
    not stop the restore: the restoring role owns everything, and a warning says why. A member
    of the owners is not enough (pg_restore would fail giving a table in public to another)."""
    carol, restorer, database = unique("carol"), unique("restorer"), unique("carols")
    pg.psql(f"CREATE ROLE {carol}; CREATE ROLE {restorer} LOGIN CREATEDB PASSWORD 'pw'")
    pg.psql(f"GRANT {carol} TO {restorer}")
    pg.psql(f"CREATE DATABASE {database} OWNER {carol}")
    pg.run_sql_file(f"CREATE TABLE t (n int); ALTER TABLE t OWNER TO {carol};", database)
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)

    as_restorer = {**env, "DB_USER": restorer, "DB_PASSWORD": "pw"}
    not_member, gone = unique("not_member"), unique("gone")
    said = {not_member: ok("restore", "--into", not_member, env=as_restorer)}
    pg.psql(f"DROP DATABASE {database}")
    pg.psql(f"DROP ROLE {carol}")
    said[gone] = ok("restore", "--into", gone, env=env)

    assert f"only a superuser can restore objects owned by {carol}" in said[not_member]
    assert f"this server has no role {carol} (create them" in said[gone]
    for name, owner in ((not_member, restorer), (gone, pg.user)):
        assert f"everything restored into {name} is owned by {owner}, not by" in said[name]
        facts = owners_and_privileges(pg, name)
        assert facts["database"]["owner"] == owner
        assert facts["relations"] == [{"t": owner, "acl": None}]


def test_the_history_of_system_versioned_tables_comes_back(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """History is data: a system-versioned table keeps its past rows through a restore.
    Transaction-precise history, which mariadb-dump cannot dump, is named in a warning and
    the current rows are backed up as always."""
    database = make_mariadb_database(
        mariadb,
        "CREATE TABLE sv (id INT PRIMARY KEY, v TEXT) WITH SYSTEM VERSIONING;"
        "INSERT INTO sv VALUES (1, 'a'), (2, 'b'); UPDATE sv SET v = 'c' WHERE id = 1;"
        "DELETE FROM sv WHERE id = 2;",
    )
    every = "SELECT id, v FROM sv FOR SYSTEM_TIME ALL ORDER BY id, v"
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    copy = unique("copy")

    ok("restore", "--into", copy, env=env)

    assert (
        mariadb.root_sql(every, copy) == mariadb.root_sql(every, database) == "1\ta\n1\tc\n2\tb\n"
    )

    mariadb.root_sql(
        "CREATE TABLE tp (id INT, s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START INVISIBLE,"
        " e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END INVISIBLE, PERIOD FOR SYSTEM_TIME(s, e))"
        " ENGINE=InnoDB WITH SYSTEM VERSIONING; INSERT INTO tp VALUES (1); UPDATE tp SET id = 2;",
        database,
    )
    said = ok("once", env=env)
    assert "table tp keeps transaction-precise history" in said
    again = unique("copy")
    ok("restore", "--into", again, env=env)
    assert mariadb.root_sql("SELECT id FROM tp", again) == "2\n"
    assert mariadb.root_sql("SELECT COUNT(*) FROM sv", again) == "1\n"


def test_a_sql_ascii_database_with_bytes_that_are_not_utf8_is_still_backed_up(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """SQL_ASCII stores bytes as they are: asked for UTF-8, the server refuses a LATIN1 comment.
    The backup goes on, with a warning that those bytes are recorded replaced."""
    database = unique("ascii")
    pg.psql(f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'")
    pg.psql(f"COMMENT ON DATABASE {database} IS E'caf\\xe9'", database)
    pg.psql("CREATE TABLE t (n int); INSERT INTO t VALUES (1);", database)
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}

    output = ok("once", env=env)

    assert "its comment or settings are not UTF-8" in output
    copy = unique("copy")
    ok("restore", "--into", copy, env=env)
    assert pg.psql("SELECT n FROM t", copy) == "1\n"


def test_clean_drops_nothing_when_the_dump_holds_a_statement_the_server_refuses(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """--hex-blob writes a binary value at twice its size: a 36 MB value, which this server
    (max_allowed_packet 64 MiB) took, is a 72 MB INSERT. `restore --into <itself> --clean`
    dropped the live database, then failed on that statement: the database was gone until
    the server was reconfigured. Now the statements are measured while the object is read
    back, before anything is dropped."""
    database = make_mariadb_database(
        mariadb,
        "CREATE TABLE wide (id INT PRIMARY KEY, payload LONGBLOB);"
        "INSERT INTO wide VALUES (1, REPEAT(0xAB, 36000000));"
        "CREATE TABLE small (n INT); INSERT INTO small VALUES (42);",
    )
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    mariadb.root_sql("UPDATE small SET n = 43", database)

    refused = run_backupd("restore", "--into", database, "--clean", env=env)

    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, output[-2000:]
    assert "raise max_allowed_packet on the server to at least 72,00" in output
    assert "nothing was changed" in output and len(output) < 5_000
    assert mariadb.root_sql("SELECT n FROM small", database).strip() == "43"
    # Without its manifest (--force), the statements are measured all the same.
    s3 = s3_client(moto_url)
    (key,) = [k for k in bucket_state(s3, bucket)[0] if not k.endswith(MANIFEST_SUFFIX)]
    manifest = s3.get_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX)
    forced = run_backupd("restore", "--key", key, "--force", "--into", database, "--clean", env=env)
    assert forced.returncode == 1, (forced.stdout + forced.stderr)[-2000:]
    assert "nothing was changed" in forced.stdout + forced.stderr
    assert mariadb.root_sql("SELECT n FROM small", database).strip() == "43"
    s3.put_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX, Body=manifest)
    mariadb.root_sql("SET GLOBAL max_allowed_packet = 128 * 1024 * 1024")
    try:
        ok("restore", "--into", database, "--clean", env=env)
    finally:
        mariadb.root_sql("SET GLOBAL max_allowed_packet = 64 * 1024 * 1024")
    assert mariadb.root_sql("SELECT n FROM small", database).strip() == "42"
    assert mariadb.root_sql("SELECT LENGTH(payload) FROM wide", database).strip() == "36000000"


def test_a_failed_restore_into_an_existing_empty_mariadb_database_leaves_it_empty(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    """The mariadb client commits statement by statement: a restore into an existing, empty
    database that the server stopped half way (here a restoring user who may create tables
    but not routines) left the tables it had loaded, and the database was no longer empty:
    the next attempt was refused without --clean. Now it is empty again, with its own
    defaults and comment."""
    database = make_mariadb_database(mariadb, MARIADB_TABLES, MARIADB_ROUTINES)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    empty, restorer = unique("empty"), unique("restorer")
    mariadb.root_sql(
        f"CREATE DATABASE `{empty}` CHARACTER SET latin1 COLLATE latin1_german2_ci"
        " COMMENT 'kept ☃';"
        f"CREATE USER '{restorer}'@'%' IDENTIFIED BY 'pw';"
        f"GRANT SELECT, INSERT, CREATE, DROP, ALTER, INDEX, CREATE VIEW, SHOW VIEW, TRIGGER"
        f" ON `{empty}`.* TO '{restorer}'@'%';"
    )
    before = mariadb_properties(mariadb, empty)

    failed = run_backupd(
        "restore", "--into", empty, env={**env, "DB_USER": restorer, "DB_PASSWORD": "pw"}
    )

    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output[-2000:]
    assert "Traceback" not in output
    tables = f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{empty}'"
    assert mariadb.root_sql(tables).strip() == "0"
    assert mariadb_properties(mariadb, empty) == before
    assert "latin1_german2_ci" in before
    ok("restore", "--into", empty, env=env)  # empty, so no --clean is needed
    assert mariadb_checksums(mariadb, empty, "t") == mariadb_checksums(mariadb, database, "t")
