"""Reading a ``.env`` file literally: what is written is what backupd uses.

The rule, line by line (documented in the README's Configuration section):

- Blank lines and lines whose first non-blank character is ``#`` are ignored; a leading
  ``export `` is allowed and ignored; spaces around the name and after ``=`` are ignored.
- ``NAME=value``: NAME is letters, digits and ``_``, not starting with a digit.
- A value that starts with ``'`` or ``"`` is quoted: it runs to the matching quote of the same
  kind that ends the value (only blanks, or blanks and a ``#`` comment, may follow it), and that
  one pair of quotes is removed. Inside, every character is kept as written, the other kind of
  quote, ``#``, ``\\`` and ``$`` included.
- Any other value runs to the end of the line; ``#`` after a blank (`` #``) starts a comment
  there, and trailing blanks are removed. A ``#`` right after a character (``ab#cd``) is kept.
- Nothing is ever interpolated (``$VAR`` and ``${VAR}`` stay as written) and backslashes are
  never escapes. A value is one line: a quote that does not close on its line is an error.
- A value holding a NUL character is an error: no environment variable can hold one, so neither
  can a child process's, nor a file name.

Unlike python-dotenv, which expands ``${VAR}`` (even inside single quotes) and reads escapes in
double quotes, this matches how most people read such a file. ``docker run --env-file`` differs
in one way: it keeps quotes as part of the value, so a file meant for both is written unquoted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_AFTER_QUOTE = re.compile(r"\s*(?:#.*)?")
_COMMENT = re.compile(r"\s#")


@dataclass(frozen=True)
class EnvFile:
    """The variables of a ``.env`` file, in file order, and one line per problem found.

    A problem names the line and the variable, never the value (it may be a secret).
    """

    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_value(raw: str) -> str | None:
    """The value of ``raw`` (what follows ``=``), or None when an opening quote does not close.

    >>> parse_value("'ab ${HOME} #cd'  # note")
    'ab ${HOME} #cd'
    >>> parse_value("ab ${HOME} #cd")
    'ab ${HOME}'
    """
    text = raw.lstrip()
    if text[:1] in {"'", '"'}:
        quote = text[0]
        position = text.find(quote, 1)
        while position != -1:
            if _AFTER_QUOTE.fullmatch(text, position + 1):
                return text[1:position]
            position = text.find(quote, position + 1)
        return None
    comment = _COMMENT.search(raw)
    if comment is not None:
        raw = raw[: comment.start()]
    return raw.strip()


def parse(text: str, origin: str = ".env") -> EnvFile:
    """Parse the text of an env file; ``origin`` names it in problems (``.env line 3: ...``)."""
    result = EnvFile()
    # Lines end at a line feed (and a CR before it), as for Docker, compose and editors; not
    # at every break ``str.splitlines`` knows (form feed, NEL, U+2028, ...), which cut a
    # quoted password holding one in two and named a line the editor does not show.
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, equals, raw = stripped.removeprefix("export ").partition("=")
        name = name.strip()
        where = f"{origin} line {number}"
        if not equals or not _NAME.fullmatch(name):
            result.problems.append(f"{where}: expected NAME=value")
            continue
        value = parse_value(raw)
        if value is None:
            result.problems.append(
                f"{where}: {name}: the value opens a {raw.lstrip()[0]} quote that does not close "
                "on its line"
            )
            continue
        if "\x00" in value:
            result.problems.append(
                f"{where}: {name}: the value contains a NUL character, which no variable can hold"
            )
            continue
        result.values[name] = value
    return result


def read(path: Path, named: str | None = None) -> EnvFile:
    """Read and parse ``path``; a file that cannot be read is one problem, never an exception,
    saying where the file was given (``named``, e.g. ``--env-file FILE``; the path itself by
    default)."""
    where = named if named is not None else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return EnvFile(problems=[f"{where}: not UTF-8 text"])
    except OSError as error:
        return EnvFile(problems=[f"{where}: cannot read: {error.strerror or error}"])
    return parse(text, str(path))
