"""Recipients, the argv given to age, and what a failed decryption says: pure functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd.encryption import (
    WrongIdentity,
    decrypt_argv,
    decrypt_error,
    decrypt_problem,
    encrypt_argv,
)
from backupd.environment import load_target
from backupd.errors import ConfigError
from backupd.recipients import (
    bech32_payload,
    parse_recipient_list,
    parse_recipients_file,
    recipient_problem,
)

AGE_1 = "age1hwzyjyf6pyekp84zmu9hddm3ru8hzc9uyg3v283y6uxdr8599gkq44etqw"
AGE_2 = "age1zl6nwtj9jx69xdjcaqxtz7gacn4hn76hzxz8pemp4mqdqy8ae4dqg4qrng"
SSH_ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKK+FUn76F7N7G04/NnhYYhvysvhQKtvTx/1YflNJ4O3"
SSH_RSA = (
    "ssh-rsa " + (Path(__file__).parent.parent / "data" / "rsa_recipient.b64").read_text().strip()
)
# A made-up identity: shaped like age's secret keys, never used to decrypt anything.
IDENTITY = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
MINIMAL = {
    "DB_HOST": "db.internal",
    "DB_USER": "backup",
    "DB_DATABASE": "app",
    "STORAGE_BUCKET_NAME": "my-backups",
}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (AGE_1, None),
        (AGE_1.upper(), None),
        (SSH_ED25519, None),
        (SSH_ED25519 + " ops@example", None),
        (SSH_RSA, None),
        (AGE_1[:-1] + ("q" if AGE_1[-1] != "q" else "p"), "is not a valid age recipient"),
        (AGE_1[:-2], "is not a valid age recipient"),
        ("age1", "is not a valid age recipient"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB", "is not a valid ssh-ed25519 public key"),
        ("ssh-ed25519 not-base64!", "is not a valid ssh-ed25519 public key"),
        ("ssh-rsa", "is not a valid ssh-rsa public key"),
        ("ecdsa-sha2-nistp256 AAAA", "is not an age recipient (age1...) or an SSH public key"),
        ("hello", "is not an age recipient (age1...) or an SSH public key"),
        (IDENTITY, "is an identity (a secret key), not a recipient"),
        (IDENTITY.lower(), "is an identity (a secret key), not a recipient"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "is a private key, not a recipient"),
    ],
)
def test_recipient_problem(text: str, problem: str | None) -> None:
    found = recipient_problem(text)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)
        assert len(text) < 10 or text not in found  # never quotes what it was given


def test_bech32_decodes_an_age_recipient_to_32_bytes() -> None:
    decoded = bech32_payload(AGE_1)
    assert decoded is not None and decoded[0] == "age" and len(decoded[1]) == 32
    assert bech32_payload("Age1" + AGE_1[4:]) is None  # mixed case is invalid bech32


@pytest.mark.parametrize(
    ("text", "recipients", "problems"),
    [
        (AGE_1, [AGE_1], []),
        (f"{AGE_1}, {SSH_ED25519} ops@example", [AGE_1, SSH_ED25519], []),
        (f"{AGE_1},,{AGE_2}", [AGE_1, AGE_2], ["item 2 of 3 is empty"]),
        (f"{AGE_1},{IDENTITY}", [AGE_1], ["item 2 of 2 is an identity"]),
    ],
)
def test_recipient_list(text: str, recipients: list[str], problems: list[str]) -> None:
    found, said = parse_recipient_list(text)
    assert found == recipients
    assert len(said) == len(problems)
    assert all(line.startswith(start) for line, start in zip(said, problems, strict=True))


def test_recipients_file_skips_comments_and_names_the_bad_line() -> None:
    text = f"# backup keys\n\n{AGE_1}\n  # offline laptop\n{SSH_ED25519} me\nnonsense\n{AGE_2}\n"

    found, problems = parse_recipients_file(text)

    assert found == [AGE_1, SSH_ED25519, AGE_2]
    assert problems == [
        "line 6 is not an age recipient (age1...) or an SSH public key (ssh-ed25519 or ssh-rsa)"
    ]
    assert parse_recipients_file("# nothing\n") == ([], ["holds no recipient"])


def test_config_errors_name_the_variable_and_never_echo_a_secret_key(tmp_path: Path) -> None:
    keys = tmp_path / "recipients.txt"
    keys.write_text(f"{AGE_1}\n{IDENTITY}\n")
    env = {
        **MINIMAL,
        "BILLING_ENCRYPTION_RECIPIENTS": f"{AGE_2},{IDENTITY}",
        "ENCRYPTION_RECIPIENTS_FILE": str(keys),
    }

    with pytest.raises(ConfigError) as caught:
        load_target(env, "billing", "BILLING", named=True)

    assert caught.value.problems == [
        "BILLING_ENCRYPTION_RECIPIENTS: item 2 of 2 is an identity (a secret key), not a "
        "recipient: give its public key (age-keygen -y)",
        f"ENCRYPTION_RECIPIENTS_FILE: {keys} line 2 is an identity (a secret key), not a "
        "recipient: give its public key (age-keygen -y)",
    ]
    assert IDENTITY not in str(caught.value)


def test_an_unreadable_recipients_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_target({**MINIMAL, "ENCRYPTION_RECIPIENTS_FILE": str(tmp_path / "missing")})
    (problem,) = caught.value.problems
    assert problem.startswith(f"ENCRYPTION_RECIPIENTS_FILE: {tmp_path / 'missing'} cannot read")


def test_both_variables_add_up_and_duplicates_count_once(tmp_path: Path) -> None:
    keys = tmp_path / "recipients.txt"
    keys.write_text(f"{AGE_1}\n{SSH_ED25519} laptop\n")

    target = load_target(
        {**MINIMAL, "ENCRYPTION_RECIPIENTS": AGE_1, "ENCRYPTION_RECIPIENTS_FILE": str(keys)}
    )

    assert target.encryption.recipients == (AGE_1, SSH_ED25519)
    assert target.encryption.enabled
    assert not load_target(MINIMAL).encryption.enabled


def test_argv_holds_public_keys_and_the_identity_file_name_only() -> None:
    assert encrypt_argv([AGE_1, SSH_ED25519]) == (
        "age",
        "--encrypt",
        "--recipient",
        AGE_1,
        "--recipient",
        SSH_ED25519,
    )
    assert decrypt_argv(Path("/keys/backup.txt")) == (
        "age",
        "--decrypt",
        "--identity",
        "/keys/backup.txt",
    )


@pytest.mark.parametrize(
    ("stderr", "said"),
    [
        (
            "age: error: no identity matched any of the recipients",
            "none of the identities in key.txt can decrypt b/x.dump.age",
        ),
        (
            "age: error: failed to read header: parsing age header: unexpected intro",
            "age could not decrypt b/x.dump.age: age: error: failed to read header: parsing age "
            "header: unexpected intro",
        ),
    ],
)
def test_decrypt_problem(stderr: str, said: str) -> None:
    assert decrypt_problem(stderr, Path("key.txt"), "b/x.dump.age") == said


@pytest.mark.parametrize(
    ("stderr", "identity_trouble", "said"),
    [
        ("age: error: no identity matched any of the recipients", True, "none of the"),
        (
            'age: error: reading "key.txt": failed to read "key.txt": error at line 1: unknown '
            "identity type | age: report unexpected or unhelpful errors",
            True,
            "cannot use key.txt as an age identity file: error at line 1: unknown identity type",
        ),
        (
            'age: error: failed to obtain passphrase: could not read passphrase for "key.txt"',
            True,
            "key.txt is protected by a passphrase, which backupd cannot type in",
        ),
        (
            "age: error: failed to decrypt identity file: could not read passphrase: standard "
            "input is not a terminal, and /dev/tty is not available",
            True,
            "key.txt is protected by a passphrase, which backupd cannot type in",
        ),
        (
            "age: error: failed to decrypt and authenticate payload chunk",
            False,
            "age could not decrypt b/x.dump.age: age: error: failed to decrypt",
        ),
    ],
)
def test_a_failure_of_the_identity_file_is_a_wrong_identity(
    stderr: str, identity_trouble: bool, said: str
) -> None:
    error = decrypt_error(stderr, Path("key.txt"), "b/x.dump.age")

    assert isinstance(error, WrongIdentity) is identity_trouble
    assert str(error).startswith(said)
