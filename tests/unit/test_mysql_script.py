"""Dropping only the top-level CREATE DATABASE and USE statements of an old ``--databases`` dump."""

from __future__ import annotations

import time

import pytest

from backupd.sources.mysql_script import DatabaseStatementFilter, SqlMode, set_statement

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


# As mariadb-dump writes a database whose default collation changed after a trigger and a
# procedure were created: the trigger inside an executable comment with "*/" in a string, the
# procedure under NO_BACKSLASH_ESCAPES (its 'C:\' is a whole string to the server).
MODES = rb"""/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION' */ ;
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER tr BEFORE INSERT
ON t FOR EACH ROW SET NEW.s = CONCAT('/* note */ x', NEW.s)
*/;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
ALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci ;
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
/*!50003 SET sql_mode              = 'NO_BACKSLASH_ESCAPES' */ ;
ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;
DELIMITER ;;
CREATE DEFINER=`root`@`localhost` PROCEDURE `a1`()
SELECT 'C:\', "D:\"
;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
ALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci ;
INSERT INTO t VALUES ('it\'s; ALTER DATABASE `shop` CHARACTER SET ascii ;');
/*!50003 SET sql_mode              = 'ANSI_QUOTES' */ ;
ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;
DELIMITER ;;
CREATE PROCEDURE p() SELECT 'it\'s', 1 AS "col\"
;;
DELIMITER ;
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
ALTER DATABASE `shop` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci ;
INSERT INTO t VALUES ("it\"s; ALTER DATABASE `shop` CHARACTER SET ascii ;");
"""


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 7, 11, 16, 17, 64, 100, len(MODES)])
def test_strings_are_read_under_the_sql_mode_the_dump_sets_and_inside_executable_comments(
    cut: int,
) -> None:
    """A backslash ends no string under NO_BACKSLASH_ESCAPES (nor in "…" under ANSI_QUOTES),
    and a "*/" inside a string in /*!50003 … */ ends no comment: a reader that lost step there
    left every later ALTER DATABASE naming the original database."""
    statements = DatabaseStatementFilter(rename=("shop", "copy"))
    out = b"".join(statements.feed(MODES[i : i + cut]) for i in range(0, len(MODES), cut))
    assert out + statements.flush() == MODES.replace(
        b"ALTER DATABASE `shop` CHARACTER", b"ALTER DATABASE `copy` CHARACTER"
    ).replace(b"it\\'s; ALTER DATABASE `copy`", b"it\\'s; ALTER DATABASE `shop`").replace(
        b'it\\"s; ALTER DATABASE `copy`', b'it\\"s; ALTER DATABASE `shop`'
    )
    assert MODES.count(b"ALTER DATABASE `shop` CHARACTER") == 8  # six statements, two strings


OFF = SqlMode(no_backslash_escapes=True)
ANSI = SqlMode(ansi_quotes=True)
BOTH = SqlMode(no_backslash_escapes=True, ansi_quotes=True)


@pytest.mark.parametrize(
    ("statement", "before", "variables", "after", "afterwards"),
    [
        (b"SET sql_mode = 'NO_BACKSLASH_ESCAPES'", SqlMode(), {}, OFF, {}),
        (b"/*!50003 SET sql_mode = 'no_backslash_escapes,ANSI' */ ", SqlMode(), {}, BOTH, {}),
        (b"set SESSION sql_mode := 'ORACLE'", SqlMode(), {}, ANSI, {}),
        (b'SET @@session.sql_mode = "POSTGRESQL"', SqlMode(), {}, ANSI, {}),
        (b"SET @@local.SQL_MODE = '', @a = 1", OFF, {}, SqlMode(), {b"@a": None}),
        (b"/*!50003 SET @saved_sql_mode = @@sql_mode */", OFF, {}, OFF, {b"@saved_sql_mode": OFF}),
        (
            b"/*!50003 SET sql_mode = @saved_sql_mode */",
            SqlMode(),
            {b"@saved_sql_mode": OFF},
            OFF,
            None,
        ),
        (b"SET sql_mode = @never_set", OFF, {}, SqlMode(), {}),
        (
            b"/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */",
            OFF,
            {},
            SqlMode(),
            {b"@old_sql_mode": OFF},
        ),
        (b"SET GLOBAL sql_mode = 'NO_BACKSLASH_ESCAPES'", SqlMode(), {}, SqlMode(), {}),
        (b"SET @@global.sql_mode = 'ANSI', character_set_client = utf8mb4", OFF, {}, OFF, {}),
        (b"SET sql_mode = DEFAULT", OFF, {}, SqlMode(), {}),
        (b"SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')", OFF, {}, SqlMode(), {}),
        (b"SET STATEMENT sql_mode = 'ANSI' FOR SELECT 1", OFF, {}, OFF, {}),
        (b"SET NAMES utf8mb4", OFF, {}, OFF, {}),
        (b"SET @a = 'C:\\', sql_mode = 'ANSI'", OFF, {}, ANSI, None),  # 'C:\' ends at '
        (b"SET @a = 'C:\\', sql_mode = 'ANSI'", SqlMode(), {}, SqlMode(), None),  # and here not
        (b"SET /* sql_mode = 'ANSI' */ @c = 'ANSI' -- sql_mode = 'ANSI'\n", OFF, {}, OFF, None),
    ],
)
def test_the_sql_mode_a_set_statement_leaves(
    statement: bytes,
    before: SqlMode,
    variables: dict[bytes, SqlMode | None],
    after: SqlMode,
    afterwards: dict[bytes, SqlMode | None] | None,
) -> None:
    assert set_statement(statement, before, variables) == after
    if afterwards is not None:
        assert variables == afterwards


def test_a_long_string_full_of_escapes_is_read_in_linear_time() -> None:
    """mariadb-dump writes each newline of a text as ``\\n``: a 3 MB log of short lines is a
    string holding a million backslashes. The reader searched for the closing quote again
    after each one, through the rest of the buffer: a restore under a new name of such a row
    took 100 s instead of 0.5 s, and a row of tens of MB hours."""
    text = b"a\\n" * 1_000_000  # 3 MB, one buffer (a zstd chunk decompresses to many MB)
    dump = b"INSERT INTO t VALUES (1,'" + text + b"'),(2,\"" + text + b'");\nSELECT 1;\n'
    statements = DatabaseStatementFilter(("shop", "copy"))
    started = time.monotonic()
    out = statements.feed(dump) + statements.flush()
    assert out == dump
    assert time.monotonic() - started < 5  # 0.05 s here; minutes when quadratic
