"""Any S3-compatible store (`s3://bucket/prefix`): AWS, MinIO, R2, Ceph.

Credentials come from boto3's own chain; QFARM_S3_ENDPOINT_URL points at a
non-AWS endpoint. Large files go up in parts (boto3's managed transfer), and
every object is checked after upload against an ETag computed locally with the
same part size, so a job is only marked succeeded once its bytes are known to
be in the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from api_client.config import Settings
from api_client.contract.sources import parse_s3_url
from api_client.errors import ServiceUnavailable, first_line
from api_client.infra.storage import register
from api_client.infra.storage.base import CHUNK, Store, StoredObject, StoreError, TransferCancelled, digest_file

MiB = 1024 * 1024


def endpoint_from_env() -> str | None:
    """MinIO, R2, Ceph…: where a non-AWS S3 answers (QFARM_S3_ENDPOINT_URL)."""
    return Settings.from_env().s3_endpoint_url


def s3_client(endpoint_url: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        # MinIO and Ceph are usually reached by path, not by bucket subdomain.
        s3={"addressing_style": "path"} if endpoint_url else {},
        connect_timeout=5,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=cfg)


def _describe(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    return first_line(exc)


@register("s3")
class S3Store(Store):
    def __init__(self, url: str, endpoint_url: str | None = None):
        loc = parse_s3_url(url)
        self.bucket = loc.bucket
        self.prefix = loc.key.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or endpoint_from_env()
        self.client = s3_client(self.endpoint_url)
        # S3 takes no part under 5 MiB but the last.
        self.part_size = max(5 * MiB, Settings.from_env().s3_part_size)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def key_of(self, uri: str) -> str:
        loc = parse_s3_url(uri)
        if loc.bucket != self.bucket or (self.prefix and not loc.key.startswith(self.prefix + "/")):
            raise StoreError(f"{uri} is not inside the store {self.url}")
        return loc.key[len(self.prefix) + 1:] if self.prefix else loc.key

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size, max_concurrency=8)

    def put_file(self, path: Path, key: str, should_stop: Callable[[], bool] | None = None) -> None:
        def progress(_bytes: int) -> None:
            # s3transfer calls this as parts are read; raising aborts the
            # transfer, and a multipart upload is aborted with it.
            if should_stop is not None and should_stop():
                raise TransferCancelled(f"upload of {key} to {self.uri(key)} cancelled")

        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer(), Callback=progress)
        except TransferCancelled:
            raise
        except Exception as exc:
            raise StoreError(f"upload of {key} to {self.uri(key)} failed: {_describe(exc)}") from None

    def verify(self, path: Path, key: str, sha256: str) -> None:
        # S3 does not hand back a SHA-256 of multipart objects; the ETag (an
        # MD5, or an MD5 of part MD5s) is recomputed locally instead.
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise StoreError(f"{self.uri(key)} is missing after upload: {_describe(exc)}") from None
        size = path.stat().st_size
        if head["ContentLength"] != size:
            raise StoreError(f"{self.uri(key)} has {head['ContentLength']} bytes, expected {size}")
        etag = head.get("ETag", "").strip('"')
        # With SSE-KMS the ETag is no MD5; the size check above and the
        # manifest's sha256 (checked on download) then carry the proof.
        if _is_md5_etag(etag) and not any(etag == self._local_etag(path, part) for part in self._part_sizes(etag, size)):
            raise StoreError(f"{self.uri(key)} does not hold the bytes uploaded (ETag {etag})")

    def _part_sizes(self, etag: str, size: int) -> list[int | None]:
        """The part sizes that could have made `etag` (None: a single part).
        An object someone else uploaded (a model put there with `aws s3 cp`,
        8 MiB parts) need not have qfarm's part size: every usual size that
        gives the ETag's part count is tried, ours first."""
        if "-" not in etag:
            return [None]
        from s3transfer.utils import ChunksizeAdjuster

        count = int(etag.rsplit("-", 1)[1])
        ours = ChunksizeAdjuster().adjust_chunksize(self.part_size, size)
        usual = [ours] + [n * MiB for n in (5, 8, 16, 32, 64, 100, 128, 256, 512, 1024)] + [-(-size // count)]
        fits = [p for p in dict.fromkeys(usual) if p > 0 and -(-size // p) == count]
        return fits or [ours]

    def _local_etag(self, path: Path, part: int | None) -> str:
        if part is None:
            return digest_file(path, "md5")
        with open(path, "rb") as f:
            digests = list(_part_md5s(f, part))
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"

    def put_bytes(self, data: bytes, key: str) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise StoreError(f"upload of {key} to {self.uri(key)} failed: {_describe(exc)}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body
        except Exception as exc:
            raise StoreError(f"cannot read {self.uri(key)}: {_describe(exc)}") from None

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self._transfer())
        except Exception as exc:
            raise StoreError(f"cannot download {self.uri(key)}: {_describe(exc)}") from None

    def list(self, prefix: str) -> list[StoredObject]:
        full = self._key(prefix)
        out = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(self.prefix) + 1:] if self.prefix else obj["Key"]
                    out.append(StoredObject(key, obj["Size"], obj.get("LastModified"), str(obj.get("ETag", "")).strip('"')))
        except Exception as exc:
            raise StoreError(f"cannot list {self.uri(prefix)}: {_describe(exc)}") from None
        return out

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(o.key) for o in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StoreError(f"cannot reach {self.uri(key)}: {_describe(exc)}") from None

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            where = f" at {self.endpoint_url}" if self.endpoint_url else ""
            raise ServiceUnavailable(f"cannot reach the S3 bucket {self.bucket}{where}: {_describe(exc)}") from None


def _is_md5_etag(etag: str) -> bool:
    head = etag.split("-", 1)[0]
    return len(head) == 32 and all(c in "0123456789abcdef" for c in head.lower())


def _part_md5s(f: BinaryIO, part: int) -> Iterator[bytes]:
    """MD5 of each `part`-byte slice of an open file, read in small chunks."""
    while True:
        h, n = hashlib.md5(), 0
        while n < part:
            chunk = f.read(min(CHUNK, part - n))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if n == 0:
            return
        yield h.digest()
        if n < part:
            return
