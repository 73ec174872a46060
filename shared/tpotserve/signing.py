"""Artifact signatures: HMAC-SHA256 with a key only the services know.

joblib files are pickles, and loading a pickle runs code. The sha256 in the
metadata only proves the bytes are the ones the metadata names; anyone who
can write the volume can write both. The HMAC proves the trainer, holding
``MODEL_SIGNING_KEY``, wrote them. The API checks both, in constant time,
before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Digests:
    sha256: str
    signature: str | None
    """hex HMAC-SHA256 of the file, or None when no key was given."""


def digest_file(path: Path, key: bytes | None) -> Digests:
    """sha256 and (with a key) HMAC-SHA256 of a file, in one read."""
    sha = hashlib.sha256()
    mac = hmac.new(key, digestmod=hashlib.sha256) if key else None
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
            if mac is not None:
                mac.update(chunk)
    return Digests(sha256=sha.hexdigest(), signature=mac.hexdigest() if mac else None)


def sign_bytes(raw: bytes, key: bytes | None) -> str | None:
    """hex HMAC-SHA256 of ``raw`` (a compiled model), or None when no key was given."""
    return hmac.new(key, raw, digestmod=hashlib.sha256).hexdigest() if key else None


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two hex digests (None never matches)."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(str(a).encode(), str(b).encode())
