"""A blob store on S3 or any S3-compatible endpoint (MinIO, Ceph, R2, SeaweedFS), through boto3.

Credentials and, unless given, the region come from the usual AWS chain (environment, shared files, IMDS,
IRSA). Retries: botocore's "standard" mode — exponential backoff with jitter on throttling, 5xx and
connection errors — up to ``max_attempts``. Large packs go up as multipart uploads (boto3's transfer
manager). Restores read byte ranges with ``Range: bytes=a-b``. botocore errors are mapped here, once, to
:class:`~stoker.agent.cache.api.NotFound` and :class:`~stoker.agent.cache.api.BlobStoreUnavailable`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig

from stoker.agent.cache.api import BlobStoreUnavailable, NotFound
from stoker.agent.cache.blobs import BlobStats, ObjectInfo

_MISSING = {"404", "NoSuchKey", "NotFound"}


log = logging.getLogger(__name__)

_BODY_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ConnectionClosedError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
)


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 5,
        multipart_threshold: int = 64 << 20,
        multipart_chunksize: int = 16 << 20,
        max_connections: int = 32,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.stats = BlobStats()
        self._lock = threading.Lock()
        config = botocore.config.Config(
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=max_connections,
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self._max_attempts = max_attempts
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
            use_threads=True,
        )

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _error(self, action: str, name: str, exc: Exception) -> Exception:
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return NotFound(f"{self.describe()}: no object {name}")
            return BlobStoreUnavailable(f"{self.describe()}: {action} {name} failed: {code or exc}")
        return BlobStoreUnavailable(f"{self.describe()}: {action} {name} failed: {exc}")

    def _read_object(self, name: str, **ranged) -> bytes:
        """GET and read the body, the whole request again when the body breaks off or stalls midway.

        botocore retries a request only until its answer's head arrives; a connection reset or a read
        timeout while the body streams in surfaces later, from ``read()``. Those are retried here with the
        client's attempt budget and full-jitter exponential backoff."""
        attempt = 0
        while True:
            attempt += 1
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(name), **ranged)["Body"]
            try:
                return body.read()
            except _BODY_ERRORS as exc:
                if attempt >= self._max_attempts:
                    raise
                delay = random.uniform(0, min(5.0, 0.1 * 2**attempt))
                log.info(
                    "%s: reading %s broke off (%s); retrying in %.2f s",
                    self.describe(),
                    name,
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)

    def get(self, name: str) -> bytes:
        try:
            data = self._read_object(name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, *_BODY_ERRORS) as exc:
            raise self._error("GET", name, exc) from exc
        self._count(gets=1, bytes_read=len(data))
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            data = self._read_object(name, Range=f"bytes={offset}-{offset + length - 1}")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise self._error("GET", name, exc) from exc
        except (botocore.exceptions.BotoCoreError, *_BODY_ERRORS) as exc:
            raise self._error("GET", name, exc) from exc
        self._count(gets=1, bytes_read=len(data))
        return data[:length]

    def put(self, name: str, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error("PUT", name, exc) from exc
        self._count(puts=1, bytes_written=len(data))

    def put_file(self, name: str, path: Path) -> None:
        size = path.stat().st_size
        try:
            self._client.upload_file(str(path), self.bucket, self._key(name), Config=self._transfer)
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.S3UploadFailedError,
        ) as exc:
            raise self._error("PUT", name, exc) from exc
        parts = (
            1
            if size < self._transfer.multipart_threshold
            else -(-size // self._transfer.multipart_chunksize) + 2
        )
        self._count(puts=parts, bytes_written=size)

    def exists(self, name: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(name))
        except botocore.exceptions.ClientError as exc:
            if isinstance(self._error("HEAD", name, exc), NotFound):
                return False
            raise self._error("HEAD", name, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error("HEAD", name, exc) from exc
        finally:
            self._count(gets=1)
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            ):
                self._count(lists=1)
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(
                        name=obj["Key"][strip:],
                        size=int(obj["Size"]),
                        modified=obj["LastModified"].timestamp(),
                    )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error("LIST", prefix, exc) from exc

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error("DELETE", name, exc) from exc

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, the demo, ``stoker cache`` on a fresh store)."""
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error("CREATE BUCKET", self.bucket, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error("CREATE BUCKET", self.bucket, exc) from exc
