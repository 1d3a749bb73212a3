"""Dropping only the top-level CREATE DATABASE and USE statements of an old ``--databases`` dump."""

from __future__ import annotations

import pytest

from backupd.sources.mysql_script import DatabaseStatementFilter

HEADER = (
    b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n"
)
BODY = b"""-- MariaDB dump
/*!40101 SET NAMES utf8mb4 */;
@HEADER@
USE `shop`;
CREATE TABLE t (x text);
INSERT INTO t VALUES ('it''s; USE `x`;\\' \\\\', "q;\\"", 'multi
USE `elsewhere`;
CREATE DATABASE IF NOT EXISTS archive_db;
line');
DELIMITER ;;
CREATE PROCEDURE p()
BEGIN
  CREATE DATABASE IF NOT EXISTS archive_db;
USE `x`;
END ;;
DELIMITER ;
-- a comment; USE `y`;
# another USE `z`;
/* block ; USE `w`; */ SELECT 1;
use `shop`;
SELECT `a``;b` FROM t;
"""
DUMP = BODY.replace(b"@HEADER@\n", HEADER)
EXPECTED = BODY.replace(b"@HEADER@", b"").replace(b"USE `shop`;", b"").replace(b"use `shop`;", b"")


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11, 16, 17, 64, len(DUMP)])
def test_drops_exactly_the_top_level_database_statements_however_the_stream_is_cut(
    cut: int,
) -> None:
    statements = DatabaseStatementFilter()
    out = b"".join(statements.feed(DUMP[i : i + cut]) for i in range(0, len(DUMP), cut))
    assert out + statements.flush() == EXPECTED
    assert b"CREATE DATABASE IF NOT EXISTS archive_db;" in EXPECTED  # the body keeps it
    assert EXPECTED.count(b"USE `elsewhere`;") == 1  # and the string literal keeps its line


def test_a_dump_without_database_statements_passes_unchanged() -> None:
    statements = DatabaseStatementFilter()
    data = b"SELECT 1;\nSELECT 'USE `x`;';\n"
    assert statements.feed(data) + statements.flush() == data


SWITCHED = b"""/*!40101 SET NAMES utf8mb4 */;
CREATE TABLE t (x text);
INSERT INTO t VALUES ('ALTER DATABASE `shop` CHARACTER SET ascii ;'), ("a;
ALTER DATABASE `shop` CHARACTER SET ascii ;");
ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;
DELIMITER ;;
CREATE PROCEDURE p()
BEGIN
ALTER DATABASE `shop` CHARACTER SET ascii ;
END ;;
DELIMITER ;
alter  schema
  `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci ;
-- ALTER DATABASE `shop` CHARACTER SET ascii ;
ALTER DATABASE `shop``s` CHARACTER SET ascii ;
ALTER DATABASE `shopx` CHARACTER SET ascii ;
ALTER TABLE t COMMENT 'ALTER DATABASE `shop`';
ALTER DATABASE `shop` COLLATE latin1_bin ;"""
RENAMED = (
    SWITCHED.replace(
        b"ALTER DATABASE `shop` CHARACTER SET latin1",
        b"ALTER DATABASE `new ``one`` \xe2\x98\x83` CHARACTER SET latin1",
    )
    .replace(
        b"alter  schema\n  `shop` CHARACTER SET utf8mb4",
        b"ALTER DATABASE `new ``one`` \xe2\x98\x83` CHARACTER SET utf8mb4",
    )
    .replace(
        b"ALTER DATABASE `shop` COLLATE latin1_bin",
        b"ALTER DATABASE `new ``one`` \xe2\x98\x83` COLLATE latin1_bin",
    )
)


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11, 16, 17, 64, 100, len(SWITCHED)])
def test_renames_the_database_in_exactly_the_top_level_alter_database_statements(
    cut: int,
) -> None:
    """mariadb-dump switches the database's collation by name around a routine created under
    another default; under a new name those statements must name the new database."""
    statements = DatabaseStatementFilter(rename=("shop", "new `one` ☃"))
    out = b"".join(statements.feed(SWITCHED[i : i + cut]) for i in range(0, len(SWITCHED), cut))
    assert out + statements.flush() == RENAMED
    # two strings, the body, a comment, `shop``s` and the ALTER TABLE keep theirs
    assert RENAMED.count(b"`shop`") == 6
