from __future__ import annotations

import pytest

from backupd.config import MAX_PART_SIZE, MIB, S3Config, StorageType
from backupd.storage.s3 import MAX_PARTS, capacity, part_size_for, too_many_parts

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
