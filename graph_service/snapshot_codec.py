"""The snapshot format: a signed, compressed, restricted pickle. Pure: no I/O.

A blob is a fixed 16-byte header followed by ``zlib(pickle(payload), level=1)``::

    magic "RCASNP" | format version (uint16, big-endian) | raw size (uint64, big-endian)

and the payload is ``{"format": FORMAT_VERSION, "state": <caller's state>, "meta": {...}}``.
``state`` is whatever the caller exports (the processor's ``export_state()``,
later the evaluator's too): plain builtins and datetimes only.

A pickle read from the database is code. :func:`decode` therefore

1. verifies the HMAC-SHA256 of the whole blob (when a key is configured) before
   it decompresses or unpickles a single byte,
2. checks the header and the decompressed size,
3. unpickles through :class:`RestrictedUnpickler`, which resolves only the few
   classes a snapshot holds (:data:`ALLOWED_GLOBALS`) and rejects everything else.

Every failure is a :class:`SnapshotRejected` with a one-line reason; nothing
else escapes :func:`decode`. The garbage collector is paused while pickling and
unpickling: a 100k-vertex graph is millions of fresh containers, and the
collector's passes over them cost more than the unpickling itself.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import io
import pickle
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Any

from graph_service.gc_policy import gc_paused

FORMAT_VERSION = 1
MAGIC = b"RCASNP"
_HEADER = struct.Struct(">6sHQ")  # magic, format version, raw (uncompressed) size
HEADER_SIZE = _HEADER.size
PICKLE_PROTOCOL = 5
COMPRESS_LEVEL = 1
HMAC_DIGEST = "sha256"
HMAC_SIZE = hashlib.sha256().digest_size

# (module, name) pairs the restricted unpickler resolves. Builtin containers and
# scalars (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, None)
# have their own opcodes and never go through find_class.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
        ("collections", "deque"),
    }
)


class SnapshotError(Exception):
    """Base of every snapshot failure (encoding, taking, storing, loading)."""


class SnapshotRejected(SnapshotError):
    """A blob that must not be loaded: unsigned, tampered, corrupt or disallowed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EncodedSnapshot:
    blob: bytes
    raw_size: int  # size of the pickle before compression
    hmac: bytes | None  # HMAC-SHA256 of ``blob``, when a key was given
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        return len(self.blob)


# --------------------------------------------------------------------- encode
def default_meta() -> dict[str, Any]:
    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "pickle_protocol": PICKLE_PROTOCOL,
    }


def dump(state: dict[str, Any], meta: dict[str, Any] | None = None) -> bytes:
    """The uncompressed pickle of the payload (the step that must see a consistent state)."""
    payload = {"format": FORMAT_VERSION, "state": state, "meta": {**default_meta(), **(meta or {})}}
    with gc_paused():
        return pickle.dumps(payload, protocol=PICKLE_PROTOCOL)


def seal(raw: bytes, hmac_key: bytes | None) -> EncodedSnapshot:
    """Compress a :func:`dump` and sign it (no Python objects touched: safe in a thread)."""
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(raw))
    blob = header + zlib.compress(raw, COMPRESS_LEVEL)
    return EncodedSnapshot(blob, len(raw), sign(blob, hmac_key), FORMAT_VERSION)


def encode(
    state: dict[str, Any], hmac_key: bytes | None, meta: dict[str, Any] | None = None
) -> EncodedSnapshot:
    """Pickle, compress and (when ``hmac_key`` is set) sign ``state``."""
    return seal(dump(state, meta), hmac_key)


def sign(blob: bytes, hmac_key: bytes | None) -> bytes | None:
    if not hmac_key:
        return None
    return _hmac.digest(hmac_key, blob, HMAC_DIGEST)


# --------------------------------------------------------------------- decode
class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; any other global is a rejection."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise SnapshotRejected(f"pickle refers to {module}.{name}, which a snapshot never holds")

    def persistent_load(self, pid: Any) -> Any:
        raise SnapshotRejected("pickle uses persistent ids, which a snapshot never holds")


def verify(blob: bytes, hmac_key: bytes | None, signature: bytes | None) -> None:
    """Raise SnapshotRejected unless ``signature`` is the blob's HMAC under ``hmac_key``.

    With no key configured there is nothing to verify against (signatures are ignored).
    """
    if not hmac_key:
        return
    if not signature:
        raise SnapshotRejected("snapshot is not signed but SNAPSHOT_HMAC_KEY is set")
    expected = _hmac.digest(hmac_key, blob, HMAC_DIGEST)
    if not _hmac.compare_digest(expected, bytes(signature)):
        raise SnapshotRejected("HMAC mismatch: the snapshot was altered or signed with another key")


def read_header(blob: bytes) -> tuple[int, int]:
    """(format version, raw size) from the header; SnapshotRejected if it is not one."""
    if len(blob) < HEADER_SIZE:
        raise SnapshotRejected(f"truncated: {len(blob)} bytes, shorter than the header")
    magic, version, raw_size = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotRejected(f"bad magic {magic!r}: not a snapshot blob")
    if version != FORMAT_VERSION:
        raise SnapshotRejected(
            f"format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )
    return version, raw_size


def _decompress(blob: bytes, raw_size: int) -> bytes:
    d = zlib.decompressobj()
    try:
        raw = d.decompress(memoryview(blob)[HEADER_SIZE:], raw_size + 1)
    except zlib.error as exc:
        raise SnapshotRejected(f"corrupt compressed data: {exc}") from None
    if not d.eof:
        if len(raw) > raw_size:
            raise SnapshotRejected(f"decompresses to more than the {raw_size} bytes announced")
        raise SnapshotRejected("truncated: the compressed stream ends early")
    if d.unused_data:
        raise SnapshotRejected(f"{len(d.unused_data)} unexpected bytes after the compressed data")
    if len(raw) != raw_size:
        raise SnapshotRejected(f"decompressed to {len(raw)} bytes, header says {raw_size}")
    return raw


def _unpickle(raw: bytes) -> Any:
    try:
        with gc_paused():
            return RestrictedUnpickler(io.BytesIO(raw)).load()
    except SnapshotRejected:
        raise
    except Exception as exc:  # any failure of untrusted data is a rejection, with its cause
        raise SnapshotRejected(f"unreadable pickle: {type(exc).__name__}: {exc}"[:500]) from exc


def decode_payload(blob: bytes, hmac_key: bytes | None, signature: bytes | None) -> dict[str, Any]:
    """The whole payload (``format``, ``state``, ``meta``) of a verified blob."""
    blob = bytes(blob)
    verify(blob, hmac_key, signature)
    _, raw_size = read_header(blob)
    payload = _unpickle(_decompress(blob, raw_size))
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise SnapshotRejected("payload is not a snapshot (no state dict)")
    if payload.get("format") != FORMAT_VERSION:
        raise SnapshotRejected(
            f"payload format {payload.get('format')!r} differs from header {FORMAT_VERSION}"
        )
    if not isinstance(payload.get("meta"), dict):
        raise SnapshotRejected("payload has no meta dict")
    return payload


def decode(blob: bytes, hmac_key: bytes | None, hmac: bytes | None) -> dict[str, Any]:
    """The state a blob holds; raises :class:`SnapshotRejected` (only) if it must not be used."""
    return decode_payload(blob, hmac_key, hmac)["state"]


def hmac_key_bytes(value: str | bytes | None) -> bytes | None:
    """The configured key (``SNAPSHOT_HMAC_KEY``) as bytes; unset or empty means none."""
    if not value:
        return None
    return value if isinstance(value, bytes) else value.encode()


__all__ = [
    "ALLOWED_GLOBALS",
    "FORMAT_VERSION",
    "EncodedSnapshot",
    "RestrictedUnpickler",
    "SnapshotError",
    "SnapshotRejected",
    "decode",
    "decode_payload",
    "dump",
    "encode",
    "hmac_key_bytes",
    "seal",
    "sign",
    "verify",
]
