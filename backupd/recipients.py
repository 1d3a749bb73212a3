"""age recipients as backupd reads them from its settings: pure functions, no I/O.

The checks are syntax only (bech32 for ``age1...``, the key type inside an SSH public key's
blob), so that a typo is a configuration error at start rather than a failed backup at night;
age itself is the authority when it encrypts. A problem never quotes what it was given: a secret
key pasted by mistake must not end up in a log.
"""

from __future__ import annotations

import base64
import binascii
import struct

SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _bech32_polymod(values: list[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit in range(5):
            checksum ^= generator[bit] if (top >> bit) & 1 else 0
    return checksum


def bech32_payload(text: str) -> tuple[str, bytes] | None:
    """(human-readable part, payload bytes) of a valid bech32 string (BIP 173), else None.

    age writes recipients in bech32 without BIP 173's 90-character limit.
    """
    if text.lower() != text and text.upper() != text:
        return None
    text = text.lower()
    hrp, separator, data = text.rpartition("1")
    if not separator or not hrp or len(data) < 6 or any(c not in _BECH32 for c in data):
        return None
    values = [_BECH32.index(c) for c in data]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _bech32_polymod(expanded + values) != 1:
        return None
    bits, accumulator, payload = 0, 0, bytearray()
    for value in values[:-6]:
        accumulator, bits = (accumulator << 5) | value, bits + 5
        if bits >= 8:
            bits -= 8
            payload.append((accumulator >> bits) & 0xFF)
    if bits >= 5 or accumulator & ((1 << bits) - 1):
        return None
    return hrp, bytes(payload)


def _ssh_key_type(blob: bytes) -> str | None:
    """The key type named inside an SSH public key blob (RFC 4253 section 6.6)."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > len(blob) - 4:
        return None
    return blob[4 : 4 + length].decode("ascii", "replace")


def recipient_problem(text: str) -> str | None:
    """Why ``text`` is not a recipient age accepts, or None. Never quotes ``text``: a secret
    key pasted by mistake must not end up in an error message."""
    if text.upper().startswith("AGE-SECRET-KEY-"):
        return "is an identity (a secret key), not a recipient: give its public key (age-keygen -y)"
    if "PRIVATE KEY" in text:
        return "is a private key, not a recipient: give the public key (.pub)"
    if text.lower().startswith("age1"):
        decoded = bech32_payload(text)
        if decoded is None or decoded[0] != "age" or len(decoded[1]) != 32:
            return "is not a valid age recipient (age1 followed by 58 bech32 characters)"
        return None
    fields = text.split()
    if fields and fields[0] in SSH_TYPES:
        try:
            blob = base64.b64decode(fields[1] if len(fields) > 1 else "", validate=True)
        except binascii.Error:
            blob = b""
        if _ssh_key_type(blob) != fields[0]:
            return f"is not a valid {fields[0]} public key"
        return None
    return "is not an age recipient (age1...) or an SSH public key (ssh-ed25519 or ssh-rsa)"


def normalise(recipient: str) -> str:
    """An SSH key without its comment (``type base64``); an age recipient in lower case."""
    fields = recipient.split()
    return " ".join(fields[:2]) if fields[0] in SSH_TYPES else recipient.lower()


def parse_recipient_list(text: str) -> tuple[list[str], list[str]]:
    """``ENCRYPTION_RECIPIENTS``: comma-separated. Return (recipients, problems by item)."""
    recipients, problems = [], []
    items = [item.strip() for item in text.split(",")]
    for number, item in enumerate(items, 1):
        problem = recipient_problem(item) if item else "is empty"
        if problem is not None:
            problems.append(f"item {number} of {len(items)} {problem}")
        else:
            recipients.append(normalise(item))
    return recipients, problems


def parse_recipients_file(text: str) -> tuple[list[str], list[str]]:
    """A recipients file in age's format: one per line, ``#`` comments and blank lines
    ignored. Return (recipients, problems by line number)."""
    recipients, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        problem = recipient_problem(item)
        if problem is not None:
            problems.append(f"line {number} {problem}")
        else:
            recipients.append(normalise(item))
    if not recipients and not problems:
        problems.append("holds no recipient")
    return recipients, problems
