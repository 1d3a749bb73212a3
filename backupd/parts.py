"""The unit that flows from the byte pipeline to storage: one part of one object."""

from __future__ import annotations

import io
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One part, ready to send: ``body`` is positioned at 0 and holds ``size`` bytes.

    A ``BytesIO`` because it can be filled in place and sent as a stream: aiohttp sends it in
    chunks instead of copying it whole, and botocore rewinds it to retry.
    """

    body: io.BytesIO
    size: int


def blank_body(size: int) -> io.BytesIO:
    """A buffer of ``size`` bytes to be filled in place through ``getbuffer()``."""
    body = io.BytesIO()
    body.seek(size - 1)
    body.write(b"\0")
    return body
