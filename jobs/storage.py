"""Where outputs live: a local directory the gateway serves, or an S3-compatible bucket.

Workers `put` files under a key; the gateway hands out time-limited URLs: HMAC-signed for local files
(checked by `verify` when the file is fetched), presigned for S3.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import shutil
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from .settings import ServiceSettings

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def check_key(key: str) -> str:
    """Keys are relative paths of safe names: no '..', no absolute paths, no odd characters."""
    if not KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    def put(self, key: str, source: Path, content_type: str) -> None: ...

    def url(self, key: str, ttl_s: int, now: float | None = None) -> str: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def sweep(self, older_than_s: float, now: float | None = None) -> int: ...


class LocalStorage:
    """Files under `root`; URLs point at the gateway's /v1/files route, signed with an HMAC key."""

    def __init__(self, root: Path, public_url: str, signing_key: str):
        self.root, self.public_url, self.signing_key = Path(root), public_url.rstrip("/"), signing_key.encode()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: Path, content_type: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(source, tmp)
        tmp.replace(target)  # readers never see a half-written file

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self.signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, key: str, ttl_s: int, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + ttl_s)
        query = urlencode({"expires": expires, "sig": self.signature(check_key(key), expires)})
        return f"{self.public_url}/v1/files/{quote(key)}?{query}"

    def verify(self, key: str, expires: int, sig: str, now: float | None = None) -> str | None:
        """None when the URL is good, else why it is refused."""
        # Bytes, not str: compare_digest refuses str holding non-ASCII characters (a TypeError, not a mismatch).
        if not hmac.compare_digest(self.signature(key, expires).encode(), sig.encode("utf-8", "surrogatepass")):
            return "the URL's signature does not match"
        if (now if now is not None else time.time()) > expires:
            return "the URL has expired"
        return None

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / check_key(prefix), ignore_errors=True)

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Delete outputs written more than older_than_s ago; returns how many files went."""
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in self.root.rglob("*"):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
        return removed


class S3Storage:
    """Objects in an S3-compatible bucket (AWS, MinIO, SeaweedFS); URLs are presigned GETs."""

    def __init__(self, settings: ServiceSettings):
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.client = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key, aws_secret_access_key=settings.s3_secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 3, "mode": "standard"}))

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, source: Path, content_type: str) -> None:
        self.client.upload_file(str(source), self.bucket, check_key(key), ExtraArgs={"ContentType": content_type})

    def url(self, key: str, ttl_s: int, now: float | None = None) -> str:
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": check_key(key)},
                                                  ExpiresIn=ttl_s)

    def delete_prefix(self, prefix: str) -> None:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=check_key(prefix) + "/")
        keys = [{"Key": item["Key"]} for item in listing.get("Contents", [])]
        if keys:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Delete objects written more than older_than_s ago (object stores' lifecycle rules vary)."""
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            old = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["LastModified"].timestamp() < cutoff]
            for start in range(0, len(old), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": old[start:start + 1000]})
            removed += len(old)
        return removed


def open_storage(settings: ServiceSettings) -> LocalStorage | S3Storage:
    if settings.storage == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.storage_dir, settings.public_url, settings.url_signing_key)
