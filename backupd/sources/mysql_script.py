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

The scanner follows the client's lexical rules: ``'…'`` and ``"…"`` with backslash escapes and
doubled quotes, ```…``` with doubled backticks, ``-- `` and ``#`` comments to the end of the
line, ``/* … */`` comments (``/*! … */`` too), and ``DELIMITER`` at the start of a statement.
It works on a stream cut anywhere and keeps at most one short token across a cut.
"""

from __future__ import annotations

import re

_NORMAL, _QUOTE, _LINE_COMMENT, _BLOCK_COMMENT = range(4)
_DROPPED = re.compile(rb"(?i)(?:create\s+(?:database|schema)\b|use[\s`])")
_DELIMITER = re.compile(rb"(?i)delimiter[ \t]+(\S+)[^\n]*(?:\n|$)")
_LEADING = re.compile(rb"(?:\s+|--[ \t][^\n]*\n|--\n|#[^\n]*\n)+")
_HEAD = 16  # bytes enough to recognise the start of a statement
_ALTER = re.compile(rb"(?i:alter\s+(?:database|schema))\s+")


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
                if step is not None and not self._dropping:
                    out.append(buffer[position:step])
                elif step is not None and self._at_start:
                    self._dropping = False  # the dropped statement ended at its delimiter
            if step is None:
                break
            position = step
        self._carry = buffer[position:]
        return b"".join(out)

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
        index = position
        while True:
            found = _next_of(buffer, index, quote, b"\\" if quote != b"`" else b"")
            if found < 0:
                return len(buffer) if len(buffer) > position else None
            if buffer[found : found + 1] == b"\\":
                if found + 1 >= len(buffer) and not eof:
                    return found if found > position else None
                index = found + 2
                continue
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
            if not eof and len(buffer) - index < max(len(self._delimiter), 2):
                # A delimiter, `--` or `/*` may be cut here.
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


def _next_of(buffer: bytes, start: int, first: bytes, second: bytes) -> int:
    """The index of the next ``first`` or ``second`` byte at or after ``start``, or -1."""
    a = buffer.find(first, start)
    b = buffer.find(second, start) if second else -1
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def _space_or_end(buffer: bytes, index: int) -> bool:
    """``--`` starts a comment only before white space or a control character."""
    return index >= len(buffer) or buffer[index] <= 0x20
