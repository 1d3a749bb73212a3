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
