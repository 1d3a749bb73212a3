"""The least a backup login needs, as the README's "Privileges" says: a role or user that can
only read backs up a database whole, and the restore (by an administrator) gives it back."""

from __future__ import annotations

from typing import Any

from tests.conftest import mariadb_env, ok, pg_env, storage_env, unique
from tests.servers import MariaDBServer, PostgresServer

READER_PASSWORD = "reader-pass-7f3a"


def test_a_postgres_role_with_pg_read_all_data_backs_up_a_whole_database(
    pg: PostgresServer, moto_url: str, bucket: str, s3: Any
) -> None:
    name, copy, reader = unique("readonly"), unique("readonly_copy"), unique("reader")
    pg.create_database(
        name,
        "CREATE SCHEMA app;"
        "CREATE TABLE app.t (id serial PRIMARY KEY, v text);"
        "INSERT INTO app.t (v) VALUES ('a'), ('b');"
        "CREATE VIEW app.v AS SELECT v FROM app.t;"
        "CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT count(*)::int FROM app.t';"
        "CREATE MATERIALIZED VIEW app.m AS SELECT app.f() AS n;",
    )
    pg.psql(f"CREATE ROLE {reader} LOGIN PASSWORD '{READER_PASSWORD}' IN ROLE pg_read_all_data")
    storage = storage_env(moto_url, bucket)
    as_reader = {**pg_env(pg, name), "DB_USER": reader, "DB_PASSWORD": READER_PASSWORD}

    ok("check", env={**as_reader, **storage})
    ok("once", env={**as_reader, **storage})
    ok("restore", "--database", name, "--into", copy, env={**pg_env(pg, name), **storage})

    assert pg.plain_dump(copy) == pg.plain_dump(name)


def test_a_mariadb_user_that_can_only_read_backs_up_a_whole_database(
    mariadb: MariaDBServer, moto_url: str, bucket: str, s3: Any
) -> None:
    name, copy, reader = unique("readonly"), unique("readonly_copy"), unique("reader")
    mariadb.create_database(
        name,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t VALUES (1, 'a'), (2, 'b');"
        "CREATE VIEW v AS SELECT v FROM t;"
        "CREATE FUNCTION f() RETURNS int RETURN (SELECT COUNT(*) FROM t);"
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.v = UPPER(NEW.v);"
        "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM t WHERE id < 0;",
    )
    mariadb.root_sql(
        f"CREATE USER '{reader}'@'%' IDENTIFIED BY '{READER_PASSWORD}';"
        f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{name}`.* TO '{reader}'@'%';"
        f"GRANT SELECT ON mysql.proc TO '{reader}'@'%';"
    )
    storage = storage_env(moto_url, bucket)
    as_reader = {**mariadb_env(mariadb, name), "DB_USER": reader, "DB_PASSWORD": READER_PASSWORD}

    ok("check", env={**as_reader, **storage})
    ok("once", env={**as_reader, **storage})
    ok("restore", "--database", name, "--into", copy, env={**mariadb_env(mariadb, name), **storage})

    assert mariadb.plain_dump(copy) == mariadb.plain_dump(name)
