"""A restore decompresses in bounded pieces, whatever the compression ratio."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from backupd.restore import decompressor_for, stream_end_problem

CHUNK = 1024 * 1024  # what a download hands over at a time
PLAIN = b"INSERT INTO t VALUES (1,'" + b"x" * (48 * 1024 * 1024) + b"');\n"


def compressed(suffix: str, data: bytes) -> bytes:
    if suffix == ".zst":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return gzip.compress(data, 6)


@pytest.mark.parametrize("suffix", [".zst", ".gz"])
def test_a_highly_compressible_dump_comes_out_in_bounded_pieces(suffix: str) -> None:
    """A 1 MiB chunk of a dump compressed 1000:1 came out as one piece of about 1 GB: a
    restore's memory grew with the size of the dump (600 MiB for a 290 MiB dump). This one
    compresses about 10,000:1, to less than a zstd slice."""
    stored = compressed(suffix, PLAIN)
    assert len(stored) < CHUNK  # the whole dump arrives as one download chunk
    decompressor = decompressor_for(f"backup_x_20261130_010203_0a1b2c3d.sql{suffix}")
    pieces = [
        piece
        for start in range(0, len(stored), CHUNK)
        for piece in decompressor.pieces(stored[start : start + CHUNK])
    ]
    assert b"".join(pieces) == PLAIN
    assert max(map(len, pieces)) <= 8 * 1024 * 1024 + 128 * 1024
    assert stream_end_problem("k", decompressor) is None


@pytest.mark.parametrize("suffix", [".zst", ".gz"])
def test_bytes_after_the_end_or_a_cut_are_found(suffix: str) -> None:
    stored = compressed(suffix, b"SELECT 1;\n" * 1000)
    for data, problem in (
        ([stored, b"junk"], "holds bytes after the end"),
        ([stored[:-1] + stored[-1:] + b"j", b"unk"], "holds bytes after the end"),
        ([stored[: len(stored) // 2]], "is truncated"),
    ):
        decompressor = decompressor_for(f"x.sql{suffix}")
        for chunk in data:
            for _ in decompressor.pieces(chunk):
                pass
        assert problem in (stream_end_problem("k", decompressor) or "")
