"""The .env syntax: values are literal, one pair of quotes is stripped, ` #` outside quotes is
a comment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backupd import envfile
from backupd.environment import read_environment
from backupd.errors import ConfigError


@pytest.mark.parametrize(
    ("line", "value"),
    [
        # never interpolated
        ("P=ab ${HOME} #cd", "ab ${HOME}"),
        ("P='ab ${HOME} #cd'", "ab ${HOME} #cd"),
        ('P="ab ${HOME} #cd"', "ab ${HOME} #cd"),
        ("P=$HOME", "$HOME"),
        ("P='$HOME'", "$HOME"),
        ('P="$HOME"', "$HOME"),
        ("P=a$$b", "a$$b"),
        # quotes: one matching pair is removed; the other kind is kept as written
        ("P='it\"s'", 'it"s'),
        ('P="it\'s"', "it's"),
        ("P='it's'", "it's"),
        ('P="say "hi""', 'say "hi"'),
        ("P=''", ""),
        ('P=""', ""),
        ("P=it's", "it's"),
        ('P=a"b"', 'a"b"'),
        ("P=\"'both'\"", "'both'"),
        ("P='\"both\"'", '"both"'),
        ("P='a' # comment with ' quote", "a"),
        ("P='a'#comment", "a"),
        # # is a comment only after a blank and outside quotes
        ("P=ab#cd", "ab#cd"),
        ("P=#ab", "#ab"),
        ("P=ab #cd", "ab"),
        ("P=ab\t#cd", "ab"),
        ("P='ab #cd'", "ab #cd"),
        ('P="ab #cd" # note', "ab #cd"),
        ("P= #only a comment", ""),
        # backslashes are never escapes
        ("P=a\\b", "a\\b"),
        ("P='a\\nb'", "a\\nb"),
        ('P="a\\nb"', "a\\nb"),
        ('P="a\\"', "a\\"),
        ("P=a\\ #c", "a\\"),
        # spaces: inside quotes kept; unquoted, inner kept and outer removed
        ("P=  a b  ", "a b"),
        ("P=' a b '", " a b "),
        ('P=" a b "  ', " a b "),
        ("P = value", "value"),
        ("export P=value", "value"),
        # everything at once
        ("P='$ \" # \\ x'", '$ " # \\ x'),
        ('P="$ \' # \\ x"', "$ ' # \\ x"),
        ("P=$'\"#\\x", "$'\"#\\x"),
        ("P=ab=cd", "ab=cd"),
    ],
)
def test_value_is_read_literally(line: str, value: str) -> None:
    parsed = envfile.parse(line)

    assert parsed.problems == []
    assert parsed.values == {"P": value}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("P='abc", ".env line 1: P: the value opens a ' quote that does not close on its line"),
        ('P="abc', '.env line 1: P: the value opens a " quote that does not close on its line'),
        ("P='abc' trailing", ".env line 1: P: the value opens a ' quote"),
        ("no equals sign", ".env line 1: expected NAME=value"),
        ("1P=x", ".env line 1: expected NAME=value"),
        ("=x", ".env line 1: expected NAME=value"),
    ],
)
def test_malformed_line_is_named_without_its_value(line: str, problem: str) -> None:
    parsed = envfile.parse(line)

    assert parsed.values == {}
    assert len(parsed.problems) == 1
    assert parsed.problems[0].startswith(problem)
    assert "abc" not in parsed.problems[0]


def test_comments_blank_lines_crlf_and_bom_are_ignored() -> None:
    text = "\ufeff# header\r\n\r\n  # indented comment\r\nA=1\r\nB='2'\r\n   C = 3  \r\n"

    assert envfile.parse(text).values == {"A": "1", "B": "2", "C": "3"}


def test_later_line_wins_and_lines_are_numbered() -> None:
    parsed = envfile.parse("A=1\nA=2\n\nbroken\n")

    assert parsed.values == {"A": "2"}
    assert parsed.problems == [".env line 4: expected NAME=value"]


def test_a_password_with_every_awkward_character_reaches_the_settings(tmp_path: Path) -> None:
    password = "p$ss ${HOME} 'q' \"d\" #h \\b"
    dotenv = tmp_path / ".env"
    # The only way to write a value holding both quote kinds and ` #`: quoted, as written.
    dotenv.write_text(f"DB_PASSWORD='{password}'\n")

    assert read_environment({}, dotenv)["DB_PASSWORD"] == password


def test_explicit_env_file_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        read_environment({}, tmp_path / "prod.env", required=True)

    assert raised.value.problems == [f"--env-file {tmp_path / 'prod.env'}: no such file"]
    assert read_environment({"A": "1"}, tmp_path / ".env") == {"A": "1"}


def test_malformed_env_file_is_a_config_error(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("DB_HOST=x\nDB_PASSWORD='unterminated\n")

    with pytest.raises(ConfigError) as raised:
        read_environment({}, dotenv)

    assert raised.value.problems == [
        f"{dotenv} line 2: DB_PASSWORD: the value opens a ' quote that does not close on its line"
    ]


def test_the_readme_examples_hold() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = readme.split("| line | value |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    examples = [re.findall(r"`([^`]*)`", row)[:2] for row in rows.splitlines()]

    assert len(examples) == 5
    for line, value in examples:
        assert envfile.parse(line).values == {"DB_PASSWORD": value}, line


@pytest.mark.parametrize("inside", ["\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"])
def test_a_quoted_value_holding_a_break_only_python_knows_stays_one_line(
    tmp_path: Path, inside: str
) -> None:
    """Form feed, NEL, U+2028 ... end a line for ``str.splitlines``, not for Docker, compose or
    an editor: the password was cut in two and a line the file does not have was named."""
    path = tmp_path / ".env"
    path.write_text(f'DB_HOST=db\nDB_PASSWORD="pa{inside}ss"\nDB_USER=\n', encoding="utf-8")

    parsed = envfile.read(path)

    assert parsed.problems == []
    assert parsed.values == {"DB_HOST": "db", "DB_PASSWORD": f"pa{inside}ss", "DB_USER": ""}
    unclosed = envfile.parse(f'A=1\nB="x{inside}y\nC=2\n')
    assert unclosed.problems == [
        '.env line 2: B: the value opens a " quote that does not close on its line'
    ]
