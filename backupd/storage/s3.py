"""S3 and S3-compatible storage (AWS S3, Cloudflare R2, MinIO, ...) through aiobotocore.

One client per storage, reused for every request. A dump that fits in one part is one
PutObject; anything larger is a multipart upload whose parts, all but the last of one exact
size, are sent a few at a time. Objects never overwrite (``IfNoneMatch="*"``), and a failed or
cancelled upload is always aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from backupd.config import MAX_PART_SIZE, MIB, S3Config, StorageType
from backupd.errors import StorageError
from backupd.parts import Part, PartBody
from backupd.storage.base import (
    MAX_DELETE_BATCH,
    Estimate,
    Lock,
    PendingUpload,
    Removal,
    StoredObject,
    check_fence,
    finish_in_flight,
    note_writing,
)

if TYPE_CHECKING:
    from aiobotocore.config import AioConfig
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
SEND_SLICE = 256 * 1024
DOWNLOAD_CHUNK = 1024 * 1024
DOWNLOAD_ATTEMPTS = 5
"""Requests one download may take, as the AWS SDKs' transfer managers retry a download cut
short (s3transfer: 5 attempts)."""
GROWTH_BLOCK = 1_000
# A conditional write that did not happen: the condition failed, or (409) a concurrent
# conditional write to the same key won.
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
# What a resent CompleteMultipartUpload may hear when its first attempt landed.
_COMPLETION_REFUSED = _CONDITION_FAILED | {"NoSuchUpload"}
_MISSING = {"NoSuchKey", "404"}
_CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "Unauthorized"}
"""The store does not know the key, or the secret does not sign for it."""
_PERMISSION_ERRORS = {"AccessDenied", "403", "AllAccessDisabled"}
"""Known credentials whose identity may not do this (IAM, a bucket policy); a bare 403 (a
HEAD's answer has no body) may be either."""


def part_size_for(number: int, base: int, may_grow: bool) -> int:
    """Size of part ``number``. On R2 always ``base``; on S3 it doubles every 1,000 parts and the
    last thousand are 5 GiB, so that 10,000 parts hold S3's 5 TiB maximum object."""
    if not may_grow:
        return base
    if number > MAX_PARTS - GROWTH_BLOCK:
        return MAX_PART_SIZE
    return min(base << ((number - 1) // GROWTH_BLOCK), MAX_PART_SIZE)


ESTIMATE_HEADROOM = 2
"""On R2, parts are sized so that 10,000 of them hold this many times the database's estimated
size: estimates are rough (PostgreSQL's counts free space and indexes, MySQL's is InnoDB's
guess, and a text dump of binary columns is twice their size)."""


def base_part_size(
    configured: int, explicit: bool, may_grow: bool, estimated_size: int | None
) -> int:
    """The part size an upload starts with, in bytes.

    ``configured`` (STORAGE_PART_SIZE or its default) stands whenever parts may grow (S3),
    the user set it (``explicit``) or nothing is known of the database's size. Otherwise (R2,
    default) it becomes large enough, in whole MiB, for 10,000 equal parts to hold
    ``ESTIMATE_HEADROOM`` times ``estimated_size``: a bigger database costs more memory
    (part size x (concurrency + 1)) instead of failing at part 10,001.
    """
    if may_grow or explicit or estimated_size is None:
        return configured
    needed = -(-ESTIMATE_HEADROOM * estimated_size // MAX_PARTS)
    needed = -(-needed // MIB) * MIB
    return min(max(configured, needed), MAX_PART_SIZE)


def capacity(base: int, may_grow: bool) -> int:
    """The largest object 10,000 parts can hold."""
    if not may_grow:
        return base * MAX_PARTS
    return (
        sum(part_size_for(n, base, True) for n in range(1, MAX_PARTS + 1, GROWTH_BLOCK))
        * GROWTH_BLOCK
    )


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def too_many_parts(config: S3Config, base: int | None = None) -> str:
    size = config.part_size if base is None else base
    limit = human_size(capacity(size, config.kind is StorageType.S3))
    if config.kind is StorageType.R2:
        return (
            f"the dump is larger than {limit}: 10,000 parts of "
            f"STORAGE_PART_SIZE={human_size(size)} "
            "(R2 needs equal parts); raise STORAGE_PART_SIZE"
        )
    return f"the dump is larger than {limit}, the most an S3 object can hold"


DATA_OPERATIONS = frozenset({"UploadPart", "CompleteMultipartUpload", "GetObject"})
"""Requests whose answer may take long to come: a part, a completion (which S3 may take
minutes over, sending blanks meanwhile) and a download. They keep ``read_timeout``."""
CONTROL_READ_TIMEOUT = 20.0
"""Seconds any other request (create, put, list, delete, head) waits for its answer: an
endpoint that accepts connections and never answers fails within about two minutes (five
attempts), not the ten per request that ``read_timeout`` would allow."""


def _bound_control_requests(model: Any, context: dict[str, Any], **_: Any) -> None:
    """botocore's before-call hook: a shorter read timeout, per request (aiobotocore reads
    ``read_timeout`` from the request's context), for every operation not in
    ``DATA_OPERATIONS``."""
    if model.name not in DATA_OPERATIONS:
        context["read_timeout"] = CONTROL_READ_TIMEOUT


def _no_expect_continue(request: Any, **_: Any) -> None:
    """botocore's request-created hook: no ``Expect: 100-continue``. botocore asks for it on
    every body it sends, and aiohttp then waits for the ``100 Continue`` with no timeout at
    all: an endpoint that accepts connections and never answers held a backup forever. Sent
    whole instead, a body's answer is waited for within the read timeout; a refusal costs the
    body's bytes once."""
    if "Expect" in request.headers:
        del request.headers["Expect"]


def client_config(config: S3Config) -> AioConfig:
    """Timeouts, retries and, off AWS, checksums only when an API requires them."""
    from aiobotocore.config import AioConfig  # see S3Storage.client

    options: dict[str, Any] = {
        "max_pool_connections": config.upload_concurrency + 2,
        "retries": {"mode": "standard", "total_max_attempts": 5},
        "connect_timeout": 10,
        "read_timeout": 120,
        # Otherwise botocore SHA-256-signs every part on the event loop (always over http, and
        # over https too when no checksum header is sent). TLS protects the body in transit, and
        # the manifest's sha256, checked on restore, covers it end to end.
        "s3": {"payload_signing_enabled": False},
    }
    if not config.is_aws and config.object_lock_days is None:
        # R2, B2 and others reject botocore's default aws-chunked CRC32 trailers. A write under
        # Object Lock must carry a checksum, so with a lock botocore's default stays.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return AioConfig(**options)


def lock_arguments(config: S3Config, now: datetime, locked: bool = True) -> dict[str, Any]:
    """ObjectLockMode and ObjectLockRetainUntilDate for a ``locked`` write at ``now``, or
    nothing (no STORAGE_OBJECT_LOCK_DAYS, or a write that must stay deletable)."""
    if config.object_lock_days is None or not locked:
        return {}
    return {
        "ObjectLockMode": config.object_lock_mode.value,
        "ObjectLockRetainUntilDate": now + timedelta(days=config.object_lock_days),
    }


def explain(error: Exception, config: S3Config, action: str) -> str:
    """One line for a person: what the storage said, and which setting to look at."""
    where = f"bucket {config.bucket!r}" + (
        f" at {config.endpoint_url}" if config.endpoint_url else ""
    )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "?"))
        if code == "NoSuchBucket":
            return f"{action}: {where} does not exist (STORAGE_BUCKET_NAME)"
        if code in _CREDENTIAL_ERRORS:
            return (
                f"{action}: {where} refused the credentials ({code}); check STORAGE_ACCESS_KEY_ID "
                "and STORAGE_SECRET_ACCESS_KEY"
            )
        if code in _PERMISSION_ERRORS:
            return (
                f"{action}: {where} denied it ({code}); the identity of STORAGE_ACCESS_KEY_ID "
                "lacks the permission (see the README's permissions), or the credentials are wrong"
            )
        if code in {"PreconditionFailed", "412"}:
            return f"{action}: the key already exists in {where}; backupd never overwrites"
        message = error.response.get("Error", {}).get("Message", "")
        return f"{action}: {where} answered {code}" + (f": {message}" if message else "")
    if isinstance(error, EndpointConnectionError):
        if config.endpoint_url is None:  # AWS itself: the network, or STORAGE_REGION
            return f"{action}: cannot reach AWS S3 ({error}; check STORAGE_REGION)"
        return f"{action}: cannot reach {config.endpoint_url} (STORAGE_ENDPOINT_URL)"
    if isinstance(error, ReadTimeoutError):
        if config.endpoint_url is None:
            return f"{action}: AWS S3 accepted the connection but did not answer"
        return (
            f"{action}: {config.endpoint_url} accepted the connection but did not "
            "answer (STORAGE_ENDPOINT_URL: is it an S3 endpoint?)"
        )
    if isinstance(error, NoCredentialsError):
        return f"{action}: no storage credentials; set STORAGE_ACCESS_KEY_ID and its secret"
    return f"{action}: {type(error).__name__}: {error}"


@contextlib.contextmanager
def storage_errors(config: S3Config, action: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise StorageError(explain(error, config, action)) from error
    except OSError as error:
        raise StorageError(f"{action}: {error}") from error
    except Exception as error:
        # botocore wraps aiohttp's errors while a request is sent, not those of reading a
        # response body afterwards (a download cut short: ClientPayloadError). aiohttp comes
        # with the client, which is imported lazily: looked up only on this path.
        import aiohttp

        if not isinstance(error, aiohttp.ClientError):
            raise
        raise StorageError(f"{action}: {type(error).__name__}: {error}") from error


@contextlib.contextmanager
def tolerating(*codes: str) -> Iterator[None]:
    """Swallow a ClientError whose code is one of ``codes`` (an expected answer, not a fault)."""
    try:
        yield
    except ClientError as error:
        if _code(error) not in codes:
            raise


class ByteBudget:
    """Backpressure: bytes held may not exceed ``limit`` (a bigger part takes it all).

    A part is held from the moment it is accepted until its buffer is free again: sent *and*
    hashed. With the part being filled, at most (concurrency + 1) part buffers exist.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Event()

    async def acquire(self, size: int) -> int:
        amount = min(size, self.limit)
        while self.used + amount > self.limit:
            self._changed.clear()
            await self._changed.wait()
        self.used += amount
        return amount

    def release(self, amount: int) -> None:
        self.used -= amount
        self._changed.set()


class S3Upload:
    def __init__(
        self,
        storage: S3Storage,
        key: str,
        metadata: dict[str, str],
        locked: bool = False,
        estimated_size: int | None = None,
    ) -> None:
        self._storage = storage
        self._locked = locked
        config = self._config = storage.config
        self._key = key
        self._metadata = metadata
        self._may_grow = config.kind is StorageType.S3
        explicit = "part_size" in config.model_fields_set
        self._base = base_part_size(config.part_size, explicit, self._may_grow, estimated_size)
        self._budget = ByteBudget(self._base * config.upload_concurrency)
        self._held: Part | None = None
        self._upload_id: str | None = None
        self._creating: asyncio.Future[None] | None = None
        """CreateMultipartUpload, started with the second part: parts are accepted (within
        the budget) while it runs, so that the dump keeps flowing while the client starts."""
        self._count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: list[CompletedPartTypeDef] = []
        self._stored = 0
        """Bytes of the parts stored so far."""
        self._failure: BaseException | None = None
        self._completing = False
        self.committed = False
        self.create_retried = False

    def part_size(self, number: int) -> int:
        return part_size_for(number, self._base, self._may_grow)

    async def write(self, part: Part) -> None:
        self._raise_failure()
        self._count += 1
        if self._count > MAX_PARTS:
            raise StorageError(too_many_parts(self._config, self._base))
        if self._count == 1:
            self._held = part  # one part only? then a single PutObject will do
            return
        if self._creating is None:
            await note_writing(self._key)  # before the upload exists, so a takeover can find it
            self._creating = asyncio.ensure_future(self._create())
            assert self._held is not None
            await self._start_part(1, self._held)
            self._held = None
        await self._start_part(self._count, part)

    async def commit(self) -> None:
        if self._creating is None:
            await check_fence(self._key)
            await self._storage.put_new(
                self._key,
                self._held.body if self._held else b"",
                f"upload {self._key}",
                Metadata=self._metadata,
                **lock_arguments(self._config, datetime.now(UTC), self._locked),
            )
            self.committed = True
            if self._held is not None:
                self._held.release()
            return
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._raise_failure()
        assert self._upload_id is not None  # every part waited for it
        parts = sorted(self._done, key=lambda p: p["PartNumber"])
        await check_fence(self._key)
        client = await self._storage.client()
        self._completing = True
        try:
            with storage_errors(self._config, f"complete {self._key}"):
                await finish_in_flight(
                    client.complete_multipart_upload(
                        Bucket=self._config.bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    ),
                    self._key,
                )
        except StorageError as error:
            if _error_code(error) not in _COMPLETION_REFUSED or not await self._completed():
                raise
            log.info(
                "%s: an earlier attempt of its completion landed; the answer was lost", self._key
            )
        self.committed = True

    async def _completed(self) -> bool:
        """Whether this upload's completion landed although the answer said "the key exists"
        or "no such upload": what a retry finds when botocore resent a completion whose first
        answer was lost. True when the upload is gone (ListParts answers NoSuchUpload) and the
        key holds an object of exactly the bytes sent, with this upload's metadata; the key
        carries this run's random id, so no other run writes it. An upload still open means
        the key was taken by another write: False. False, too, when the checks cannot be made.
        """
        assert self._upload_id is not None
        client = await self._storage.client()
        bucket, key = self._config.bucket, self._key
        try:
            with storage_errors(self._config, f"check the completion of {key}"):
                try:
                    await client.list_parts(
                        Bucket=bucket, Key=key, UploadId=self._upload_id, MaxParts=1
                    )
                    return False
                except ClientError as error:
                    if _code(error) != "NoSuchUpload":
                        raise
                try:
                    stored = await client.head_object(Bucket=bucket, Key=key)
                except ClientError as error:
                    if _code(error) in _MISSING:
                        return False
                    raise
        except StorageError as error:
            log.warning("%s: whether its completion landed is unknown: %s", key, error)
            return False
        return stored["ContentLength"] == self._stored and stored["Metadata"] == self._metadata

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._creating is not None:
            # Never cancelled: a CreateMultipartUpload the store already received would leave
            # an upload open that nothing here could abort.
            await asyncio.wait([self._creating])
            if not self._creating.cancelled():
                self._creating.exception()  # already reported through the parts
        if self._upload_id is None or self.committed:
            return
        client = await self._storage.client()
        # A completion whose answer was lost may have ended the upload: then no parts are left.
        gone = ("NoSuchUpload",) if self._completing else ()
        try:
            with storage_errors(self._config, f"abort upload of {self._key}"), tolerating(*gone):
                await client.abort_multipart_upload(
                    Bucket=self._config.bucket, Key=self._key, UploadId=self._upload_id
                )
        except StorageError as error:
            log.warning("%s; its parts stay billed until a lifecycle rule removes them", error)
        else:
            log.info("aborted multipart upload of %s", self._key)

    async def _create(self) -> None:
        client = await self._storage.client()
        with storage_errors(self._config, f"start upload of {self._key}"):
            response = await client.create_multipart_upload(
                Bucket=self._config.bucket,
                Key=self._key,
                Metadata=self._metadata,
                **lock_arguments(self._config, datetime.now(UTC), self._locked),
            )
        self._upload_id = response["UploadId"]
        # botocore resends a request whose answer was lost; a resent CreateMultipartUpload
        # starts a second upload, and the first stays open, unknown to this one.
        self.create_retried = response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0

    async def _start_part(self, number: int, part: Part) -> None:
        amount = await self._budget.acquire(part.size)
        self._raise_failure()
        task = asyncio.create_task(self._send_part(number, part, amount), name=f"part-{number}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_part(self, number: int, part: Part, amount: int) -> None:
        assert self._creating is not None
        try:
            await asyncio.shield(self._creating)  # its failure is each part's failure
            assert self._upload_id is not None
            client = await self._storage.client()
            with storage_errors(self._config, f"upload part {number} of {self._key}"):
                response = await client.upload_part(
                    Bucket=self._config.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=part.body,
                )
            self._done.append({"PartNumber": number, "ETag": response["ETag"]})
            self._stored += part.size
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._failure = self._failure or error
        finally:
            part.release()
            part.when_free(lambda: self._budget.release(amount))

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


_payload_registered = False


def _register_part_payload() -> None:
    """Teach aiohttp to send a part in ``SEND_SLICE`` (256 KiB) slices of its buffer.

    Its stock BytesIO payload copies 64 KiB at a time and yields to the event loop after each:
    for an 8 MiB part that is 128 copies holding the GIL, while the thread reading the dump's
    pipe waits for it. Slices of a memoryview copy nothing and take 32 turns.
    """
    global _payload_registered
    if _payload_registered:
        return
    from aiohttp import payload

    class PartPayload(payload.BytesIOPayload):
        async def write_with_length(self, writer: Any, content_length: int | None) -> None:
            self._set_or_restore_start_position()
            start = self._value.tell()
            # No `with`: the transport may still hold slices after the last write; the view
            # is released when they are garbage, once sent.
            view = self._value.getbuffer()
            end = len(view) if content_length is None else min(len(view), start + content_length)
            for offset in range(start, end, SEND_SLICE):
                await writer.write(view[offset : min(offset + SEND_SLICE, end)])
            self._value.seek(end)

    payload.PAYLOAD_REGISTRY.register(PartPayload, PartBody, order=payload.Order.try_first)
    _payload_registered = True


_session: Any = None
_session_lock = threading.Lock()


def _prepared_session() -> Any:
    """The process's aiobotocore session, its S3 model and endpoint data already parsed.

    Importing aiobotocore and parsing botocore's JSON data (a few MB) is most of the cost of a
    client: done once per process (``backupd run`` makes a client per run, every target, every
    slot), and ahead of ``create_client``, which then finds it all cached.
    """
    global _session
    with _session_lock:
        if _session is None:
            from aiobotocore.session import get_session

            _register_part_payload()
            session = get_session()
            loader = session.get_component("data_loader")
            for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
                loader.load_data(name)
            for kind in ("service-2", "endpoint-rule-set-1"):
                loader.load_service_model("s3", kind)
            _session = session
        return _session


class S3Storage:
    def __init__(self, config: S3Config) -> None:
        self.config = config
        endpoint = config.endpoint_url or f"s3 ({config.region})"
        self.description = f"{config.kind} bucket {config.bucket} at {endpoint}"
        self._client: S3Client | None = None
        self._lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, config: S3Config) -> AsyncIterator[S3Storage]:
        storage = cls(config)
        async with storage._stack:
            yield storage

    async def client(self) -> S3Client:
        """The one client of this storage, created on first use.

        aiobotocore is imported here, not at module import: importing it and building the
        client costs a few hundred milliseconds of CPU, which ``warm_up`` lets overlap with the
        start of a dump instead of delaying it.
        """
        async with self._lock:
            if self._client is None:
                # In a worker thread, so that the event loop keeps serving the dump meanwhile.
                session = await asyncio.to_thread(_prepared_session)
                key_id, secret = self.config.access_key_id, self.config.secret_access_key
                client: S3Client = await self._stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=self.config.endpoint_url,
                        region_name=self.config.region,
                        config=client_config(self.config),
                        # None for both: the default AWS chain (IAM role, profile, ...).
                        aws_access_key_id=key_id.get_secret_value() if key_id else None,
                        aws_secret_access_key=secret.get_secret_value() if secret else None,
                    )
                )
                client.meta.events.register("before-call.s3", _bound_control_requests)
                client.meta.events.register("request-created.s3", _no_expect_continue)
                self._client = client
            return self._client

    async def warm_up(self) -> None:
        await self.client()

    @contextlib.asynccontextmanager
    async def upload(
        self,
        key: str,
        metadata: dict[str, str],
        *,
        locked: bool = False,
        estimate: Estimate | None = None,
    ) -> AsyncIterator[S3Upload]:
        # Only R2 with the default part size needs to know (see ``base_part_size``).
        asks = (
            self.config.kind is StorageType.R2 and "part_size" not in self.config.model_fields_set
        )
        estimated_size = await estimate() if asks and estimate is not None else None
        upload = S3Upload(self, key, metadata, locked, estimated_size)
        try:
            yield upload
        finally:
            if not upload.committed:
                # Cancelled meanwhile (a failed login stops the store), the abort still ends
                # before this does: an upload left open is billed until retention aborts it.
                await finish_in_flight(upload.abort(), key)
            if upload.create_retried:
                await finish_in_flight(self._abort_strays(key), key)

    async def _abort_strays(self, key: str) -> None:
        """Abort the uploads of ``key`` left open by a CreateMultipartUpload that was resent
        after its answer was lost: the key carries this run's id, so once this upload is
        complete or aborted, any upload of it still open is one of those."""
        try:
            aborted = await self.abort_uploads(key)
        except StorageError as error:
            log.warning("%s; it stays open until retention aborts it", error)
        else:
            if aborted:
                log.info("aborted %d stray multipart upload(s) of %s", aborted, key)

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, *, locked: bool = False
    ) -> None:
        await check_fence(key)
        await self.put_new(
            key,
            data,
            f"write {key}",
            ContentType=content_type,
            **lock_arguments(self.config, datetime.now(UTC), locked),
        )

    async def put_new(
        self, key: str, body: bytes | io.BytesIO, action: str, **arguments: Any
    ) -> None:
        """PutObject ``body`` to ``key`` with ``If-None-Match: *``: it never overwrites.

        "The key exists" (412, or 409 for a concurrent conditional write) comes back when the
        key was taken before, and also when an earlier attempt of this very request landed but
        its answer was lost: botocore retries a dropped connection or a 5xx itself, and the
        retry then finds the key taken by the first attempt. The stored object is read back
        and compared with ``body``, byte for byte: equal, the write counts as done; anything
        else stays the error.

        Why bytes, not the ETag: the S3 API calls an ETag opaque ("may or may not be an MD5
        digest"). A single PutObject's is the body's MD5 on AWS S3 (and moto) only without
        SSE-KMS or SSE-C; MinIO's is not under its encryption; R2 promises nothing for single
        uploads. Equal bytes prove it on every store. ``body`` is still in memory (one part at
        most), and the read-back happens only on this rare path.
        """
        client = await self.client()
        try:
            with storage_errors(self.config, action):
                await finish_in_flight(
                    client.put_object(
                        Bucket=self.config.bucket,
                        Key=key,
                        Body=body,
                        IfNoneMatch="*",
                        **arguments,
                    ),
                    key,
                )
        except StorageError as error:
            if _error_code(error) not in _CONDITION_FAILED or not await self._holds(key, body):
                raise
            log.info("%s: an earlier attempt of this write landed and its answer was lost", key)

    async def _holds(self, key: str, body: bytes | io.BytesIO) -> bool:
        """Whether ``key`` holds exactly ``body`` (False when it cannot be read)."""
        client = await self.client()
        with memoryview(body) if isinstance(body, bytes) else body.getbuffer() as sent:
            try:
                with storage_errors(self.config, f"read back {key}"):
                    response = await client.get_object(Bucket=self.config.bucket, Key=key)
                    async with response["Body"] as stored:
                        if response["ContentLength"] != len(sent):
                            return False
                        offset = 0
                        while chunk := await stored.read(DOWNLOAD_CHUNK):
                            if sent[offset : offset + len(chunk)] != chunk:
                                return False
                            offset += len(chunk)
                        return offset == len(sent)
            except StorageError as error:
                log.warning("%s exists; reading it back to compare failed: %s", key, error)
                return False

    async def delete(self, key: str) -> None:
        client = await self.client()
        # S3 answers a missing key with 204; some stores say 404 NoSuchKey, and no bucket
        # holds no key either: already gone, as the contract says.
        with storage_errors(self.config, f"delete {key}"), tolerating(*_MISSING, "NoSuchBucket"):
            await client.delete_object(Bucket=self.config.bucket, Key=key)

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        client = await self.client()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.config.bucket, Prefix=prefix
        )
        with storage_errors(self.config, f"list {prefix or '/'}"):
            async for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], item["Size"], item["LastModified"])

    async def get_bytes(self, key: str) -> bytes:
        client = await self.client()
        with storage_errors(self.config, f"read {key}"):
            response = await client.get_object(Bucket=self.config.bucket, Key=key)
            async with response["Body"] as body:
                return bytes(await body.read())

    async def download(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of at most ``DOWNLOAD_CHUNK`` bytes. A body cut short
        (a connection lost, a read timeout) is asked for again from the byte where it stopped,
        up to ``DOWNLOAD_ATTEMPTS`` requests in all, each but the first a Range request under
        IfMatch the first answer's ETag, so that bytes of another object are never spliced in.
        Raises StorageError when a request fails, the last attempt is cut short too, or the
        object changed meanwhile."""
        import aiohttp  # loaded with the client already: see storage_errors

        cut_short = (
            aiohttp.ClientPayloadError,
            ResponseStreamingError,
            IncompleteReadError,
            ReadTimeoutError,
        )
        client = await self.client()
        action = f"download {key}"
        received, etag, size = 0, "", 0
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            with storage_errors(self.config, action):
                response = await self._get_from(client, key, received, etag)
                if attempt == 1:
                    etag, size = response.get("ETag", ""), response.get("ContentLength", 0)
                async with response["Body"] as body:
                    while True:
                        try:
                            chunk = await body.read(DOWNLOAD_CHUNK)
                        except cut_short as error:
                            if attempt == DOWNLOAD_ATTEMPTS or not etag:
                                raise StorageError(
                                    f"{action}: cut short {attempt} time(s), the last after "
                                    f"{received:,} of {size:,} bytes: {error}"
                                ) from error
                            log.warning(
                                "%s: cut short after %s of %s bytes (%s); asking for the rest "
                                "(attempt %d of %d)",
                                action,
                                f"{received:,}",
                                f"{size:,}",
                                error,
                                attempt + 1,
                                DOWNLOAD_ATTEMPTS,
                            )
                            break
                        if not chunk:
                            return
                        received += len(chunk)
                        yield bytes(chunk)
            if received >= size:  # cut after the last byte: nothing is left to ask for
                return

    async def _get_from(self, client: S3Client, key: str, start: int, etag: str) -> Any:
        """GetObject of ``key`` from byte ``start`` on: the whole object at 0, else a Range
        request under IfMatch ``etag``. Raises StorageError when the object changed (412),
        botocore's errors otherwise."""
        if start == 0:
            return await client.get_object(Bucket=self.config.bucket, Key=key)
        try:
            return await client.get_object(
                Bucket=self.config.bucket, Key=key, Range=f"bytes={start}-", IfMatch=etag
            )
        except ClientError as error:
            if _code(error) not in _CONDITION_FAILED:
                raise
            raise StorageError(
                f"download {key}: the object changed while it was read (its ETag)"
            ) from error

    async def delete_many(self, objects: Sequence[Removal]) -> dict[str, str]:
        client = await self.client()
        failed: dict[str, str] = {}
        for start in range(0, len(objects), MAX_DELETE_BATCH):
            batch = objects[start : start + MAX_DELETE_BATCH]
            entries: list[Any] = [
                {"Key": o.key, **({"VersionId": o.version_id} if o.version_id else {})}
                for o in batch
            ]
            with storage_errors(self.config, f"delete {len(batch)} objects"):
                response = await client.delete_objects(
                    Bucket=self.config.bucket, Delete={"Objects": entries, "Quiet": True}
                )
            for error in response.get("Errors", []):
                failed[error.get("Key", "?")] = f"{error.get('Code')}: {error.get('Message')}"
        return failed

    async def list_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        client = await self.client()
        pages = client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.config.bucket, Prefix=prefix
        )
        with storage_errors(self.config, f"list uploads under {prefix or '/'}"):
            async for page in pages:
                for item in page.get("Uploads", []):
                    yield PendingUpload(item["Key"], item["UploadId"], item["Initiated"])

    async def abort_upload(self, upload: PendingUpload) -> None:
        client = await self.client()
        action = f"abort upload of {upload.key}"
        with storage_errors(self.config, action), tolerating("NoSuchUpload"):
            await client.abort_multipart_upload(
                Bucket=self.config.bucket, Key=upload.key, UploadId=upload.upload_id
            )

    async def last_activity(self, upload: PendingUpload) -> datetime:
        client = await self.client()
        newest = upload.initiated
        pages = client.get_paginator("list_parts").paginate(
            Bucket=self.config.bucket, Key=upload.key, UploadId=upload.upload_id
        )
        # Parts go up concurrently: the newest is not always the last numbered.
        with (
            storage_errors(self.config, f"list the parts of {upload.key}"),
            tolerating("NoSuchUpload"),
        ):
            async for page in pages:
                for part in page.get("Parts", []):
                    newest = max(newest, part["LastModified"])
        return newest

    async def object_lock_enabled(self) -> bool:
        client = await self.client()
        response = None
        action = "read the bucket's Object Lock configuration"
        # No configuration, or a store that does not implement Object Lock (R2, ...): unlocked.
        unlocked = ("ObjectLockConfigurationNotFoundError", "NotImplemented", "501")
        with storage_errors(self.config, action), tolerating(*unlocked):
            response = await client.get_object_lock_configuration(Bucket=self.config.bucket)
        if response is None:
            return False
        return response.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    async def lock_of(self, key: str) -> Lock:
        client = await self.client()
        head = None
        with storage_errors(self.config, f"read {key}'s retention"), tolerating("404", "NoSuchKey"):
            head = await client.head_object(Bucket=self.config.bucket, Key=key)
        if head is None:
            return Lock()
        return Lock(
            head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate"), head.get("VersionId")
        )

    async def create(self, key: str, data: bytes) -> str | None:
        return await self._conditional_put(key, data, {"IfNoneMatch": "*"})

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        return await self._conditional_put(key, data, {"IfMatch": etag})

    async def _conditional_put(
        self, key: str, data: bytes, condition: dict[str, str]
    ) -> str | None:
        client = await self.client()
        try:
            with storage_errors(self.config, f"write {key}"):
                response = await client.put_object(
                    Bucket=self.config.bucket,
                    Key=key,
                    Body=data,
                    ContentType="application/json",
                    **condition,  # type: ignore[arg-type]
                )
        except StorageError as error:
            if _error_code(error) in _CONDITION_FAILED | _MISSING:
                return None
            raise
        return str(response["ETag"])

    async def read(self, key: str) -> tuple[bytes, str] | None:
        client = await self.client()
        try:
            with storage_errors(self.config, f"read {key}"):
                response = await client.get_object(Bucket=self.config.bucket, Key=key)
                async with response["Body"] as body:
                    return bytes(await body.read()), str(response["ETag"])
        except StorageError as error:
            if _error_code(error) in _MISSING:
                return None
            raise

    async def abort_uploads(self, key: str) -> int:
        client = await self.client()
        aborted = 0
        with storage_errors(self.config, f"abort uploads of {key}"):
            listing = await client.list_multipart_uploads(Bucket=self.config.bucket, Prefix=key)
            for upload in listing.get("Uploads", []):
                if upload.get("Key") == key and "UploadId" in upload:
                    await client.abort_multipart_upload(
                        Bucket=self.config.bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted


def _error_code(error: StorageError) -> str:
    """The S3 error code behind a StorageError, or ""."""
    cause = error.__cause__
    return _code(cause) if isinstance(cause, ClientError) else ""


def _code(error: ClientError) -> str:
    """The S3 error code of an answer ("NoSuchKey", "412", ...)."""
    return str(error.response.get("Error", {}).get("Code", ""))
