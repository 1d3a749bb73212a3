"""Reading a MySQL/MariaDB SQL script statement by statement, as the ``mysql`` client does.

Needed only for dumps whose SQL names the original database at its top level:
- dumps made with ``--databases`` (backupd before manifest format 2) hold ``CREATE DATABASE``
  and ``USE`` statements. Loading such a dump under another name means dropping exactly
  those top-level statements;
- around a routine, trigger or event created while the database had another default
  collation than it has now, mysqldump and mariadb-dump switch the database's default by
  name (``ALTER DATABASE `shop` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;``) and switch
  it back afterwards. Loading such a dump under another name means renaming the database in
  exactly those top-level statements; left alone they alter the original database, or fail
  where it does not exist.

The same words inside a routine body (between ``DELIMITER ;;`` lines), inside a string literal
spanning lines, or inside a comment are part of another statement and pass untouched.

The scanner follows the client's lexical rules (``add_line`` in MariaDB's client/mysql.cc):
``'…'`` and ``"…"`` with doubled quotes, ```…``` with doubled backticks, ``-- `` and ``#``
comments to the end of the line, ``/* … */`` comments, and ``DELIMITER`` at the start of a
statement. An executable comment (``/*!50003 … */``, ``/*M!100101 … */``) is no comment to the
client: its text is read as code, so a ``*/`` inside a string in it (a trigger's
``'/* note */'``) ends nothing, and its delimiter ends the statement.

A backslash escapes the next character in ``'…'``, and in ``"…"`` unless ANSI_QUOTES makes
that an identifier, unless the session's sql_mode has NO_BACKSLASH_ESCAPES: the client asks
the server's status after each statement, and the server parses so. The dump sets the sql_mode
itself (``/*!40101 SET SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */`` at its top; around each routine,
trigger and event, the mode it was created under, saved and restored through a user variable),
so the scanner follows the dump's own top-level ``SET`` statements: ``sql_mode = '…'``,
``= @@sql_mode``, ``= @var``, and ``@var = …``. A value it cannot know (``DEFAULT``, an
expression) counts as the server's usual default, backslash escapes on; so does the session
before the dump's first ``SET``.

It works on a stream cut anywhere and keeps at most one short token across a cut.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_NORMAL, _QUOTE, _LINE_COMMENT, _BLOCK_COMMENT = range(4)
_DROPPED = re.compile(rb"(?i)(?:create\s+(?:database|schema)\b|use[\s`])")
_DELIMITER = re.compile(rb"(?i)delimiter[ \t]+(\S+)[^\n]*(?:\n|$)")
_LEADING = re.compile(rb"(?:\s+|--[ \t][^\n]*\n|--\n|#[^\n]*\n)+")
_HEAD = 16  # bytes enough to recognise the start of a statement
_ALTER = re.compile(rb"(?i:alter\s+(?:database|schema))\s+")
_SET = re.compile(rb"(?i)(?:/\*M?!\d*\s*)?set\b")  # a SET statement, maybe in /*!NNNNN
_SET_LIMIT = 1 << 16  # a longer SET statement is not read for the sql_mode it sets
_LOOK = 4  # bytes enough to tell "/*M!" from "/*", or to see a short delimiter whole


class SqlMode(NamedTuple):
    """What of a session's sql_mode changes where a string ends."""

    no_backslash_escapes: bool = False
    ansi_quotes: bool = False

    def escapes(self, quote: bytes) -> bool:
        """Whether a backslash escapes the next character inside ``quote``."""
        if self.no_backslash_escapes or quote == b"`":
            return False
        return quote == b"'" or not self.ansi_quotes


def quoted_name(name: str) -> bytes:
    """``name`` as a MySQL identifier in backticks (a backtick doubled), UTF-8."""
    return b"`" + name.replace("`", "``").encode() + b"`"


class DatabaseStatementFilter:
    """Drops the top-level ``CREATE DATABASE``/``CREATE SCHEMA`` and ``USE`` statements of a
    MySQL script fed in chunks and, given ``rename=(original, new)``, makes each top-level
    ``ALTER DATABASE `original` …`` (or ``ALTER SCHEMA``) name ``new``; everything else comes
    out byte for byte."""

    def __init__(self, rename: tuple[str, str] | None = None) -> None:
        self._rename: tuple[re.Pattern[bytes], bytes] | None = None
        self._lookahead = _HEAD
        if rename is not None:
            original, new = quoted_name(rename[0]), quoted_name(rename[1])
            self._rename = (re.compile(_ALTER.pattern + re.escape(original) + b"(?!`)"), new)
            self._lookahead = max(_HEAD, 64 + len(original))  # the statement's head, whole
        self._carry = b""
        self._state = _NORMAL
        self._quote = b""
        self._delimiter = b";"
        self._at_start = True
        self._dropping = False
        self._mode = SqlMode()
        self._variables: dict[bytes, SqlMode | None] = {}
        self._set: list[bytes] | None = None  # the SET statement being read

    def feed(self, data: bytes) -> bytes:
        return self._run(self._carry + data, eof=False)

    def flush(self) -> bytes:
        return self._run(self._carry, eof=True)

    def _run(self, buffer: bytes, eof: bool) -> bytes:
        out: list[bytes] = []
        position = 0
        while position < len(buffer):
            if self._at_start and self._state == _NORMAL:
                step = self._statement_start(buffer, position, eof, out)
            else:
                step = self._advance(buffer, position, eof)
                if step is not None:
                    self._took(buffer[position:step], out)
            if step is None:
                break
            position = step
        self._carry = buffer[position:]
        return b"".join(out)

    def _took(self, token: bytes, out: list[bytes]) -> None:
        """Pass (or drop) a piece of a statement; read a SET statement once it ends."""
        if not self._dropping:
            out.append(token)
        elif self._at_start:
            self._dropping = False  # the dropped statement ended at its delimiter
        if self._set is None:
            return
        self._set.append(token)
        if sum(map(len, self._set)) > _SET_LIMIT:
            self._set = None
        elif self._at_start:
            text = b"".join(self._set).removesuffix(self._delimiter)
            self._set = None
            self._mode = set_statement(text, self._mode, self._variables)

    def _statement_start(
        self, buffer: bytes, position: int, eof: bool, out: list[bytes]
    ) -> int | None:
        """Pass whitespace and comments, then classify the statement that begins here."""
        leading = _LEADING.match(buffer, position)
        if leading is not None:
            out.append(buffer[position : leading.end()])
            return leading.end()
        if not eof and (
            len(buffer) - position < _HEAD
            or (buffer.startswith((b"--", b"#"), position) and b"\n" not in buffer[position:])
        ):
            return None  # too little to classify, or a comment line cut before its end
        if (delimiter := _DELIMITER.match(buffer, position)) is not None:
            if not delimiter.group(0).endswith(b"\n") and not eof:
                return None
            self._delimiter = delimiter.group(1)
            out.append(delimiter.group(0))
            return delimiter.end()
        if buffer[position : position + 9].lower() == b"delimiter" and not eof:
            return None  # a DELIMITER line cut before its end
        if self._rename is not None and buffer[position : position + 5].lower() == b"alter":
            if not eof and len(buffer) - position < self._lookahead:
                return None  # an ALTER whose database name may be cut
            pattern, new = self._rename
            if (alter := pattern.match(buffer, position)) is not None:
                self._at_start = self._dropping = False
                out.append(b"ALTER DATABASE " + new)
                return alter.end()
        self._at_start = False
        self._dropping = _DROPPED.match(buffer, position) is not None
        self._set = [] if _SET.match(buffer, position) is not None else None
        return position

    def _advance(self, buffer: bytes, position: int, eof: bool) -> int | None:
        """Consume one token of the statement body; return where the next begins, or None to
        wait for more input."""
        if self._state == _QUOTE:
            return self._in_quote(buffer, position, eof)
        if self._state == _LINE_COMMENT:
            end = buffer.find(b"\n", position)
            if end < 0:
                return len(buffer)
            self._state = _NORMAL
            return end + 1
        if self._state == _BLOCK_COMMENT:
            end = buffer.find(b"*/", position)
            if end < 0:
                keep = 1 if buffer.endswith(b"*") and not eof else 0
                return len(buffer) - keep if len(buffer) - keep > position else None
            self._state = _NORMAL
            return end + 2
        return self._in_statement(buffer, position, eof)

    def _in_quote(self, buffer: bytes, position: int, eof: bool) -> int | None:
        quote = self._quote
        body = _quote_body(quote, self._mode.escapes(quote))
        index = position
        while True:
            read = body.match(buffer, index)  # up to a quote, a final backslash, or the end
            found = read.end() if read is not None else index  # (it matches the empty text)
            if found >= len(buffer):
                return len(buffer) if len(buffer) > position else None
            if buffer[found : found + 1] == b"\\":  # the buffer's last byte: escapes what follows
                if not eof:
                    return found if found > position else None
                return len(buffer)
            if found + 1 >= len(buffer) and not eof:
                return found if found > position else None  # a doubled quote may follow
            if buffer[found + 1 : found + 2] == quote:
                index = found + 2
                continue
            self._state = _NORMAL
            return found + 1

    def _in_statement(self, buffer: bytes, position: int, eof: bool) -> int | None:
        index = position
        pattern = _special(self._delimiter)
        while (found := pattern.search(buffer, index)) is not None:
            index = found.start()
            if not eof and len(buffer) - index < max(len(self._delimiter), _LOOK):
                # A delimiter, `--`, `/*` or `/*M!` may be cut here.
                return index if index > position else None
            if buffer.startswith(self._delimiter, index):
                self._at_start = True
                return index + len(self._delimiter)
            char = buffer[index : index + 1]
            if char in (b"'", b'"', b"`"):
                self._state, self._quote = _QUOTE, char
                return index + 1
            if char == b"#" or (
                buffer.startswith(b"--", index) and _space_or_end(buffer, index + 2)
            ):
                self._state = _LINE_COMMENT
                return index + 1
            if buffer.startswith((b"/*!", b"/*M!"), index):
                return index + (3 if buffer[index + 2] == ord("!") else 4)  # read as code
            if buffer.startswith(b"/*", index):
                self._state = _BLOCK_COMMENT
                return index + 2
            index += 1
        keep = max(len(self._delimiter), 2) - 1 if not eof else 0
        end = max(len(buffer) - keep, position)
        return end if end > position else None


_SPECIALS: dict[bytes, re.Pattern[bytes]] = {}


def _special(delimiter: bytes) -> re.Pattern[bytes]:
    """Where something may begin that ends a statement or changes how bytes are read."""
    if delimiter not in _SPECIALS:
        _SPECIALS[delimiter] = re.compile(rb"['\"`#/-]|" + re.escape(delimiter))
    return _SPECIALS[delimiter]


_QUOTE_BODIES: dict[tuple[bytes, bool], re.Pattern[bytes]] = {}


def _quote_body(quote: bytes, escapes: bool) -> re.Pattern[bytes]:
    """The text of a ``quote`` string up to its next quote (or a backslash that ends the
    buffer), escapes included when the backslash ``escapes``, read in one pass of the regular
    expression engine: a long string full of escapes (``\\n`` for every newline of a text)
    is read in linear time."""
    if (quote, escapes) not in _QUOTE_BODIES:
        other = b"[^" + re.escape(quote) + (rb"\\" if escapes else b"") + b"]++"
        _QUOTE_BODIES[quote, escapes] = re.compile(
            b"(?s:" + other + (rb"|\\." if escapes else b"") + b")*+"
        )
    return _QUOTE_BODIES[quote, escapes]


def _space_or_end(buffer: bytes, index: int) -> bool:
    """``--`` starts a comment only before white space or a control character."""
    return index >= len(buffer) or buffer[index] <= 0x20


# Modes that include ANSI_QUOTES (MariaDB's sql_mode documentation, "Combination modes").
_ANSI_QUOTING = {b"ANSI_QUOTES", b"ANSI", b"DB2", b"MAXDB", b"MSSQL", b"ORACLE", b"POSTGRESQL"}
_SESSION_MODE = {b"sql_mode", b"@@sql_mode", b"@@session.sql_mode", b"@@local.sql_mode"}
_SCOPES = {b"session", b"local", b"global"}
_SET_TOKENS: dict[SqlMode, re.Pattern[bytes]] = {}


def set_statement(
    statement: bytes, mode: SqlMode, variables: dict[bytes, SqlMode | None]
) -> SqlMode:
    """The session's sql_mode after the ``SET`` statement ``statement``, run under ``mode``;
    ``variables`` (user variables holding an sql_mode, None for any other value) is updated.
    Every value is read before any is assigned, as the server does
    (``SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO'``)."""
    tokens = _set_tokens(mode).findall(statement)
    words = [token for token in tokens if token]
    head = [word.lower() for word in words[:2]]
    if head[:1] != [b"set"] or head == [b"set", b"statement"]:
        return mode  # SET STATEMENT … FOR changes one statement only
    session, assigned, scope = mode, dict[bytes, SqlMode | None](), b"session"
    for target, value in _assignments(words[1:]):
        names = [word.lower() for word in target]
        if names and names[0] in _SCOPES:
            scope, names = names[0], names[1:]
        if len(names) != 1:
            continue
        name = names[0]
        if name.startswith(b"@") and not name.startswith(b"@@"):
            assigned[name] = _mode_value(value, mode, variables)
        elif name in _SESSION_MODE and (scope != b"global" or name.startswith(b"@@")):
            session = _mode_value(value, mode, variables) or SqlMode()
    variables.update(assigned)
    return session


def _set_tokens(mode: SqlMode) -> re.Pattern[bytes]:
    """Tokens of a SET statement as the server reads them under ``mode``; comments, white
    space and the markers of executable comments come out empty."""
    if mode not in _SET_TOKENS:
        single = rb"'(?:[^'\\]|\\.|'')*'" if mode.escapes(b"'") else rb"'(?:[^']|'')*'"
        double = rb'"(?:[^"\\]|\\.|"")*"' if mode.escapes(b'"') else rb'"(?:[^"]|"")*"'
        _SET_TOKENS[mode] = re.compile(
            rb"(?s)(?:\s+|/\*M?!\d*|\*/|/\*.*?\*/|(?:--(?=\s)|#)[^\n]*)"
            rb"|(@@?(?:[\w$.]+|`(?:[^`]|``)*`|" + single + rb")"
            rb"|" + single + rb"|" + double + rb"|`(?:[^`]|``)*`|[\w$]+|:=|.)"
        )
    return _SET_TOKENS[mode]


def _assignments(words: list[bytes]) -> list[tuple[list[bytes], list[bytes]]]:
    """``target = value`` pairs of a SET statement's words, split at top-level commas."""
    pairs: list[tuple[list[bytes], list[bytes]]] = []
    piece: list[bytes] = []
    depth = 0
    for word in [*words, b","]:
        depth += {b"(": 1, b")": -1}.get(word, 0)
        if word != b"," or depth:
            piece.append(word)
            continue
        equals = next((i for i, w in enumerate(piece) if w in (b"=", b":=")), None)
        if equals is not None:
            pairs.append((piece[:equals], piece[equals + 1 :]))
        piece = []
    return pairs


def _mode_value(
    value: list[bytes], mode: SqlMode, variables: dict[bytes, SqlMode | None]
) -> SqlMode | None:
    """The sql_mode a SET value names, or None when it is not one this reader can know."""
    if len(value) != 1:
        return None
    word = value[0].lower()
    if word[:1] == b"'" or (word[:1] == b'"' and not mode.ansi_quotes):
        names = {name.strip() for name in word[1:-1].upper().split(b",")}
        return SqlMode(b"NO_BACKSLASH_ESCAPES" in names, bool(names & _ANSI_QUOTING))
    if word in _SESSION_MODE - {b"sql_mode"}:
        return mode
    if word.startswith(b"@") and not word.startswith(b"@@"):
        return variables.get(word)
    return None
