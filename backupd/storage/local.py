"""A folder on a local or mounted volume, with the same key layout as a bucket.

Each object is written to a hidden temporary name in its final folder, fsynced, and then linked
into place, which fails rather than overwrite; a failed write leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from backupd.config import LocalConfig
from backupd.errors import StorageError
from backupd.parts import Part
from backupd.storage.base import (
    FILE_MODE,
    Estimate,
    Lock,
    PendingUpload,
    Removal,
    StoredObject,
    finish_in_flight,
)

DOWNLOAD_CHUNK = 1024 * 1024
PARTIAL = ".partial"
OPEN_ATTEMPTS = 3


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temporary: Path, final: Path) -> None:
    """Make ``temporary`` visible as ``final`` atomically, refusing to overwrite; published
    durably, or not at all."""
    try:
        os.link(temporary, final)
    except FileExistsError:
        raise StorageError(f"{final} already exists; backupd never overwrites") from None
    finally:
        temporary.unlink(missing_ok=True)
    try:
        _fsync_dir(final.parent)
    except OSError:
        final.unlink(missing_ok=True)  # the link above made it: this write's own
        raise


class LocalUpload:
    def __init__(self, final: Path, part_size: int) -> None:
        self._final = final
        self._part_size = part_size
        self._temporary = final.with_name(f".{final.name}.{secrets.token_hex(4)}{PARTIAL}")
        self._file: BinaryIO | None = None
        self.committed = False

    def part_size(self, number: int) -> int:
        return self._part_size

    async def open(self) -> None:
        def _create() -> BinaryIO:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            return os.fdopen(os.open(self._temporary, flags, FILE_MODE), "wb")

        def _open() -> None:
            for _ in range(OPEN_ATTEMPTS):
                self._final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._file = _create()
                    return
                except FileNotFoundError:
                    continue  # a prune removed the folder, empty, between the two steps
            self._file = _create()

        # Cancelled (the dump failed at once), the thread goes on all the same: wait until the
        # temporary file is created or not, so that ``discard`` removes it and never runs first.
        await finish_in_flight(asyncio.to_thread(_open), str(self._temporary))

    async def write(self, part: Part) -> None:
        assert self._file is not None
        handle = self._file

        def _write() -> None:
            with part.body.getbuffer() as view:
                handle.write(view)

        try:
            await asyncio.to_thread(_write)
        finally:
            part.release()

    async def commit(self) -> None:
        assert self._file is not None
        handle = self._file

        def _finish() -> None:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            _publish(self._temporary, self._final)

        # A thread cannot be stopped: cancelled, wait until it has linked the file or not.
        await finish_in_flight(asyncio.to_thread(_finish), str(self._final))
        self.committed = True

    def discard(self) -> None:
        if self._file is not None:
            # Closing flushes what is still buffered, and fails again as the flush did (a full
            # disk): the file is closed all the same, and must not keep the failure that is
            # being raised from being told, nor the temporary file from being removed.
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(OSError):  # never created, or its folder is not one
            self._temporary.unlink()


class LocalStorage:
    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.root = config.path
        self.description = f"folder {config.path}"

    async def warm_up(self) -> None:
        return None

    def _ensure_root(self) -> None:
        """Create STORAGE_LOCAL_PATH itself if needed, never its parents (a typo stays a typo)."""
        try:
            self.root.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise StorageError(
                f"STORAGE_LOCAL_PATH {self.root}: its parent folder does not exist "
                "(backupd creates only the last level)"
            ) from None
        except (FileExistsError, NotADirectoryError):
            raise StorageError(
                f"STORAGE_LOCAL_PATH {self.root} is not a folder (a file is in the way)"
            ) from None

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(self._outside(key))
        return path

    def _outside(self, key: str) -> str:
        """Why ``key`` resolves outside STORAGE_LOCAL_PATH: a ``..`` in it, or a symbolic link
        on its way (which listings never follow, so what went there would never be listed,
        pruned or restored)."""
        folder = self.root
        for part in PurePosixPath(key).parts:
            folder = folder / part
            if folder.is_symlink():
                return (
                    f"{folder} is a symbolic link (to {folder.readlink()}): backupd follows no "
                    "links inside STORAGE_LOCAL_PATH, where it could not list what it wrote; "
                    "point STORAGE_LOCAL_PATH at a folder without them"
                )
        return f"key {key!r} escapes STORAGE_LOCAL_PATH"

    @contextlib.asynccontextmanager
    async def upload(
        self,
        key: str,
        metadata: dict[str, str],
        *,
        locked: bool = False,
        estimate: Estimate | None = None,
    ) -> AsyncIterator[LocalUpload]:
        final = self.path_for(key)
        upload = LocalUpload(final, self.config.part_size)
        try:
            await asyncio.to_thread(self._ensure_root)
            await upload.open()
            yield upload
        except OSError as error:
            raise StorageError(
                f"write {key} under {self.root}: {error.strerror or error}"
            ) from error
        finally:
            if not upload.committed:
                upload.discard()
                with contextlib.suppress(OSError):  # the folders this write made, if empty
                    self._remove_empty_folders(final.parent)

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, *, locked: bool = False
    ) -> None:
        async with self.upload(key, {}) as upload:
            await upload.write(Part(io.BytesIO(data), len(data)))
            await upload.commit()

    async def delete(self, key: str) -> None:
        path = self.path_for(key)

        def remove() -> None:
            path.unlink(missing_ok=True)
            self._remove_empty_folders(path.parent)

        await asyncio.to_thread(remove)

    def _remove_empty_folders(self, folder: Path) -> None:
        """Remove ``folder`` and the folders above it while they are empty, never
        STORAGE_LOCAL_PATH itself: a pruned day leaves no empty ``YYYYMMDD`` folder behind. A
        write that made the folder a moment before creates it again (``LocalUpload.open``)."""
        root = self.root.resolve()
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or not ours to remove): what is above is not empty either
            folder = folder.parent

    def _files(self, prefix: str) -> Iterator[tuple[Path, os.stat_result]]:
        """Each file below the folder ``prefix`` names, with its status. Other targets share
        the folder and prune at the same time: a file or folder deleted meanwhile, or a
        temporary file linked into place, is passed over, never an error of this listing."""

        def passed_over(error: OSError) -> None:
            if not isinstance(error, FileNotFoundError | PermissionError):
                raise error

        if not self.root.is_dir():
            raise StorageError(
                f"STORAGE_LOCAL_PATH {self.root} does not exist: no backup was ever written "
                "there (check the path, and that its volume is mounted)"
            )
        top = self.root / prefix.rpartition("/")[0]
        if not top.resolve().is_relative_to(self.root.resolve()):
            raise StorageError(self._outside(prefix.rpartition("/")[0]))
        for folder, _, names in os.walk(top, onerror=passed_over):
            for name in names:
                path = Path(folder, name)
                try:
                    status = path.stat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(status.st_mode):
                    yield path, status

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        def walk() -> list[StoredObject]:
            found = []
            for path, status in self._files(prefix):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and not path.name.endswith(PARTIAL):
                    modified = datetime.fromtimestamp(status.st_mtime, UTC)
                    found.append(StoredObject(key, status.st_size, modified))
            return sorted(found, key=lambda o: o.key)

        for item in await asyncio.to_thread(walk):
            yield item

    async def get_bytes(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path_for(key).read_bytes)
        except OSError as error:
            raise StorageError(
                f"read {key} under {self.root}: {error.strerror or error}"
            ) from error

    async def download(self, key: str) -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(self.path_for(key).open, "rb")
        except OSError as error:
            raise StorageError(
                f"read {key} under {self.root}: {error.strerror or error}"
            ) from error
        try:
            while chunk := await asyncio.to_thread(handle.read, DOWNLOAD_CHUNK):
                yield chunk
        finally:
            handle.close()

    async def delete_many(self, objects: Sequence[Removal]) -> dict[str, str]:
        def remove() -> dict[str, str]:
            failed = {}
            folders = set()
            for item in objects:
                try:
                    path = self.path_for(item.key)
                    path.unlink(missing_ok=True)
                    folders.add(path.parent)
                except OSError as error:
                    failed[item.key] = str(error.strerror or error)
            for folder in sorted(folders, reverse=True):  # deeper ones first
                self._remove_empty_folders(folder)
            return failed

        return await asyncio.to_thread(remove)

    async def list_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """The temporary files of writes that never finished (``.{name}.{random}.partial``)."""

        def walk() -> list[PendingUpload]:
            found = []
            for path, status in self._files(prefix):
                if not (path.name.startswith(".") and path.name.endswith(PARTIAL)):
                    continue
                name = path.name[1:].removesuffix(PARTIAL).rsplit(".", 1)[0]
                key = path.with_name(name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    modified = datetime.fromtimestamp(status.st_mtime, UTC)
                    found.append(PendingUpload(key, path.name, modified))
            return sorted(found, key=lambda u: u.key)

        for item in await asyncio.to_thread(walk):
            yield item

    async def abort_upload(self, upload: PendingUpload) -> None:
        temporary = self.path_for(upload.key).with_name(upload.upload_id)

        def remove() -> None:
            temporary.unlink(missing_ok=True)
            self._remove_empty_folders(temporary.parent)

        await asyncio.to_thread(remove)

    async def last_activity(self, upload: PendingUpload) -> datetime:
        return upload.initiated  # the temporary file's mtime: its last write

    async def object_lock_enabled(self) -> bool:
        return False

    async def lock_of(self, key: str) -> Lock:
        return Lock()
