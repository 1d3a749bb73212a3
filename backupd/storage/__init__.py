"""Storage backends, one module each, all behind ``base.Storage``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from backupd.config import LocalConfig, S3Config
from backupd.storage.base import ClaimStore, Storage, Upload
from backupd.storage.local import LocalStorage
from backupd.storage.s3 import S3Storage

__all__ = [
    "ClaimStore",
    "Storage",
    "Upload",
    "open_claim_store",
    "open_storage",
    "reuse_or_open",
]


@contextlib.asynccontextmanager
async def open_storage(config: S3Config | LocalConfig) -> AsyncIterator[Storage]:
    """The backend for ``config``, with its connections open for the block's duration."""
    if isinstance(config, LocalConfig):
        yield LocalStorage(config)
        return
    async with S3Storage.connect(config) as storage:
        yield storage


@contextlib.asynccontextmanager
async def open_claim_store(config: S3Config) -> AsyncIterator[ClaimStore]:
    """The store that holds claims for ``COORDINATION=storage`` (object stores only)."""
    async with S3Storage.connect(config) as storage:
        yield storage


@contextlib.asynccontextmanager
async def reuse_or_open(
    config: S3Config | LocalConfig, storage: Storage | None
) -> AsyncIterator[Storage]:
    """``storage`` when a caller already has it open (left open at the end), else a new one
    for ``config``, closed at the end."""
    if storage is not None:
        yield storage
        return
    async with open_storage(config) as opened:
        yield opened
