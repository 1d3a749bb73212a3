from __future__ import annotations

import pytest

from backupd.config import MAX_PART_SIZE, MIB, S3Config, StorageType
from backupd.storage.s3 import (
    MAX_PARTS,
    base_part_size,
    capacity,
    part_size_for,
    too_many_parts,
)

TIB = 1024 * 1024 * MIB


@pytest.mark.parametrize(
    ("number", "base", "may_grow", "size"),
    [
        (1, 16 * MIB, False, 16 * MIB),
        (10_000, 16 * MIB, False, 16 * MIB),
        (1, 16 * MIB, True, 16 * MIB),
        (1_000, 16 * MIB, True, 16 * MIB),
        (1_001, 16 * MIB, True, 32 * MIB),
        (2_001, 16 * MIB, True, 64 * MIB),
        (8_001, 16 * MIB, True, 4096 * MIB),
        (8_999, 1024 * MIB, True, MAX_PART_SIZE),
        (9_001, 5 * MIB, True, MAX_PART_SIZE),
        (10_000, 5 * MIB, True, MAX_PART_SIZE),
    ],
)
def test_part_size_grows_on_s3_but_not_on_r2(
    number: int, base: int, may_grow: bool, size: int
) -> None:
    assert part_size_for(number, base, may_grow) == size


@pytest.mark.parametrize("base", [5 * MIB, 8 * MIB, 16 * MIB, 64 * MIB, MAX_PART_SIZE])
def test_growing_parts_hold_s3s_largest_object(base: int) -> None:
    assert capacity(base, may_grow=True) >= 5 * TIB
    sizes = [part_size_for(n, base, True) for n in range(1, MAX_PARTS + 1)]
    assert sizes == sorted(sizes), "parts never shrink"
    assert max(sizes) <= MAX_PART_SIZE


@pytest.mark.parametrize(("base", "limit"), [(16 * MIB, "156.2 GiB"), (64 * MIB, "625.0 GiB")])
def test_r2_capacity_is_fixed_by_the_part_size_and_the_error_names_the_setting(
    base: int, limit: str
) -> None:
    assert capacity(base, may_grow=False) == base * MAX_PARTS
    config = S3Config.model_validate(
        {
            "kind": StorageType.R2,
            "STORAGE_BUCKET_NAME": "bucket",
            "STORAGE_ENDPOINT_URL": "https://x.r2.cloudflarestorage.com",
            "STORAGE_PART_SIZE": str(base),
        }
    )
    message = too_many_parts(config)
    assert limit in message
    assert "raise STORAGE_PART_SIZE" in message


GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("configured", "explicit", "may_grow", "estimated", "base"),
    [
        (8 * MIB, False, True, 10_000 * GIB, 8 * MIB),  # S3: parts grow, no estimate needed
        (8 * MIB, True, False, 10_000 * GIB, 8 * MIB),  # R2, STORAGE_PART_SIZE set: as given
        (8 * MIB, False, False, None, 8 * MIB),  # R2, size unknown: the default
        (8 * MIB, False, False, 10 * GIB, 8 * MIB),  # small enough for the default
        (8 * MIB, False, False, 39 * GIB, 8 * MIB),  # 2 x 39 GiB still fits 10,000 x 8 MiB
        (8 * MIB, False, False, 40 * GIB, 9 * MIB),  # whole MiB, rounded up
        (8 * MIB, False, False, 500 * GIB, 103 * MIB),
        (8 * MIB, False, False, 100_000 * GIB, MAX_PART_SIZE),  # never past S3's limit
    ],
)
def test_r2_parts_grow_with_the_estimate_only_when_the_part_size_is_not_set(
    configured: int, explicit: bool, may_grow: bool, estimated: int | None, base: int
) -> None:
    chosen = base_part_size(configured, explicit, may_grow, estimated)
    assert chosen == base
    if not may_grow and not explicit and estimated is not None and chosen < MAX_PART_SIZE:
        assert capacity(chosen, may_grow=False) >= 2 * estimated
