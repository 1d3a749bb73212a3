"""A minimal S3-compatible endpoint that discards every body, for benchmarks only.

It answers just the calls a streaming upload makes (PutObject, CreateMultipartUpload,
UploadPart, CompleteMultipartUpload, AbortMultipartUpload) and costs almost no CPU, so the
storage is never the bottleneck being measured. It remembers the keys of completed objects and
lists them, one a line, at ``GET /_keys``. Run: ``python -m bench.s3sink PORT``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

_OK = (
    "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nETag: {etag}\r\n"
    "Content-Type: application/xml\r\n\r\n"
)
_CREATE = (
    '<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult>'
    "<Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{upload}</UploadId></InitiateMultipartUploadResult>"
)
_COMPLETE = (
    '<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
    "<Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>&quot;sink&quot;</ETag></CompleteMultipartUploadResult>"
)


STORED: list[str] = []


class SinkProtocol(asyncio.BufferedProtocol):
    """Receives into one reused buffer; body bytes are counted and dropped, never copied."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.scratch = bytearray(1 << 20)
        self.head = b""
        self.remaining = 0
        self.request: tuple[str, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.scratch)

    def buffer_updated(self, nbytes: int) -> None:
        data = memoryview(self.scratch)[:nbytes]
        while data:
            if self.remaining:
                taken = min(self.remaining, len(data))
                self.remaining -= taken
                data = data[taken:]
                if self.remaining == 0:
                    self._respond()
                continue
            self.head += bytes(data)
            data = memoryview(b"")
            while not self.remaining and b"\r\n\r\n" in self.head:
                head, rest = self.head.split(b"\r\n\r\n", 1)
                self.head = b""
                self._start(head)
                if self.remaining == 0:
                    self._respond()
                    self.head = rest
                else:
                    data = memoryview(rest)
                    break

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        if headers.get("transfer-encoding", "").lower() == "chunked":
            raise RuntimeError("the sink speaks Content-Length only")
        self.remaining = int(headers.get("content-length", "0"))
        self.request = (method, target)
        if self.remaining and headers.get("expect", "").lower() == "100-continue":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _respond(self) -> None:
        assert self.transport is not None and self.request is not None
        method, target = self.request
        path, _, query = target.partition("?")
        bucket, _, key = path.lstrip("/").partition("/")
        body = ""
        if method == "GET" and path == "/_keys":
            body = "".join(f"{stored}\n" for stored in STORED)
        elif method == "POST" and query.startswith("uploads"):
            body = _CREATE.format(bucket=bucket, key=key, upload=uuid.uuid4().hex)
        elif method == "POST" and "uploadId=" in query:
            body = _COMPLETE.format(bucket=bucket, key=key)
            STORED.append(key)
        elif method == "PUT" and "partNumber=" not in query:
            STORED.append(key)
        elif method == "DELETE":
            self.transport.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            self.request = None
            return
        encoded = body.encode()
        self.transport.write(_OK.format(length=len(encoded), etag='"sink"').encode() + encoded)
        self.request = None


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
