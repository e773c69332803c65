"""The snapshot codec: exact round trips, HMAC before anything else, the allow-list,
and corrupt blobs rejected with a reason (pure: no I/O)."""

from __future__ import annotations

import gc
import os
import pickle
import random
import zlib
from collections import deque
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from graph_service import snapshot_codec as codec
from graph_service.processor import Processor
from graph_service.snapshot_codec import (
    FORMAT_VERSION,
    HEADER_SIZE,
    SnapshotError,
    SnapshotRejected,
    decode,
    decode_payload,
    encode,
    seal,
)
from tests.graph_service.snapshot_helpers import build_processor, event, fingerprint

KEY = b"test-hmac-key"


@pytest.fixture(scope="module")
def processor() -> Processor:
    return build_processor()


def restored(state: dict[str, Any], capacity: int) -> Processor:
    p = Processor(recent_capacity=capacity)
    p.import_state(state)
    return p


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed"])
def test_round_trip_rebuilds_an_identical_processor(processor: Processor, key: bytes | None):
    enc = encode(processor.export_state(), key)
    assert enc.format_version == FORMAT_VERSION
    assert (enc.hmac is None) == (key is None)
    assert enc.raw_size > enc.size > HEADER_SIZE
    copy = restored(decode(enc.blob, key, enc.hmac), processor.recent.capacity)
    assert fingerprint(copy) == fingerprint(processor)
    assert len(copy.graph) == len(processor.graph) > 300
    assert copy.graph.edge_count == processor.graph.edge_count
    assert copy.graph._deleted == processor.graph._deleted and copy.graph._deleted
    assert copy._round == processor._round and copy._round


def test_restored_processor_recognises_redeliveries_and_keeps_processing(processor: Processor):
    enc = encode(processor.export_state(), KEY)
    copy = restored(decode(enc.blob, KEY, enc.hmac), processor.recent.capacity)
    last_id = processor.recent._order[-1]
    redelivered = event("nova.host", "host-3", 10_000, state="available")
    redelivered = redelivered.model_copy(update={"event_id": last_id})
    assert copy.process(redelivered).status.value == "duplicate"
    fresh = event("nova.instance", "vm-new", 10_000, host="host-3", state="ACTIVE")
    assert copy.process(fresh).changes
    assert copy.clock == fresh.sample_timestamp


def test_encoding_is_deterministic(processor: Processor):
    a = encode(processor.export_state(), KEY)
    b = encode(processor.export_state(), KEY)
    assert a == b


def test_allowed_types_round_trip():
    state = {
        "aware": datetime(2026, 1, 1, 12, tzinfo=UTC),
        "offset": datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))),
        "naive": datetime(2026, 1, 1),
        "delta": timedelta(seconds=1.5),
        "queue": deque([1, 2], maxlen=5),
        "scalars": [None, True, 1, 1.5, "s", b"b", bytearray(b"ba")],
        "sets": ({1, 2}, frozenset({"a"})),
        "nested": {"t": (1, [2, {"x": 3}])},
    }
    out = decode(encode(state, None).blob, None, None)
    assert out == state
    assert out["queue"].maxlen == 5
    assert out["offset"].utcoffset() == timedelta(hours=2)


def test_meta_is_carried():
    payload = decode_payload(encode({}, None, meta={"epoch": 7}).blob, None, None)
    assert payload["meta"]["epoch"] == 7
    assert payload["meta"]["pickle_protocol"] == 5
    assert payload["format"] == FORMAT_VERSION


def test_gc_state_is_restored(processor: Processor):
    enc = encode(processor.export_state(), None)
    assert gc.isenabled()
    decode(enc.blob, None, None)
    assert gc.isenabled()
    gc.disable()
    try:
        decode(enc.blob, None, None)
        encode({"a": 1}, None)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_is_paused_while_unpickling(monkeypatch: pytest.MonkeyPatch):
    seen: list[bool] = []
    real_load = codec.RestrictedUnpickler.load

    class Spy(codec.RestrictedUnpickler):
        def load(self) -> Any:
            seen.append(gc.isenabled())
            return real_load(self)

    monkeypatch.setattr(codec, "RestrictedUnpickler", Spy)
    decode(encode({"a": [1]}, None).blob, None, None)
    assert seen == [False]


# ------------------------------------------------------------------------ HMAC
def _forbid_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make decompressing or unpickling fail the test: HMAC must reject first."""

    def boom(*args: object) -> None:
        raise AssertionError("touched the payload before verifying the HMAC")

    monkeypatch.setattr(codec, "_decompress", boom)
    monkeypatch.setattr(codec, "_unpickle", boom)
    monkeypatch.setattr(codec, "read_header", boom)


@pytest.mark.parametrize("where", [0, HEADER_SIZE + 3, -1], ids=["header", "body", "last"])
def test_tampered_blob_is_rejected_before_unpickling(
    processor: Processor, monkeypatch: pytest.MonkeyPatch, where: int
):
    enc = encode(processor.export_state(), KEY)
    tampered = bytearray(enc.blob)
    tampered[where] ^= 0x01
    _forbid_unpacking(monkeypatch)
    with pytest.raises(SnapshotRejected, match="HMAC mismatch"):
        decode(bytes(tampered), KEY, enc.hmac)


def test_missing_signature_is_rejected_when_a_key_is_set(monkeypatch: pytest.MonkeyPatch):
    enc = encode({"a": 1}, None)
    _forbid_unpacking(monkeypatch)
    with pytest.raises(SnapshotRejected, match="not signed"):
        decode(enc.blob, KEY, None)
    with pytest.raises(SnapshotRejected, match="not signed"):
        decode(enc.blob, KEY, b"")


def test_other_key_or_bad_signature_is_rejected(monkeypatch: pytest.MonkeyPatch):
    enc = encode({"a": 1}, b"another key")
    _forbid_unpacking(monkeypatch)
    with pytest.raises(SnapshotRejected, match="HMAC mismatch"):
        decode(enc.blob, KEY, enc.hmac)
    with pytest.raises(SnapshotRejected, match="HMAC mismatch"):
        decode(enc.blob, KEY, b"\x00" * 32)


def test_signature_is_ignored_without_a_key():
    enc = encode({"a": 1}, KEY)
    assert decode(enc.blob, None, enc.hmac) == {"a": 1}


def test_hmac_key_bytes():
    assert codec.hmac_key_bytes(None) is None
    assert codec.hmac_key_bytes("") is None
    assert codec.hmac_key_bytes("k") == b"k"
    assert codec.hmac_key_bytes(b"k") == b"k"


# ------------------------------------------------------- the restricted unpickler
class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("__import__('os').getpid()",))


def _valid_blob_around(raw: bytes, key: bytes | None) -> codec.EncodedSnapshot:
    """A correct header, zlib stream and (with a key) signature around ``raw``."""
    return seal(raw, key)


def _payload_pickle(state: object) -> bytes:
    return pickle.dumps({"format": FORMAT_VERSION, "state": state, "meta": {}}, protocol=5)


@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed-with-the-right-key"])
def test_malicious_pickle_is_stopped_by_the_allow_list(tmp_path: Path, key: bytes | None):
    marker = tmp_path / "pwned"
    enc = _valid_blob_around(_payload_pickle({"graph": _System(marker)}), key)
    with pytest.raises(SnapshotRejected, match=r"posix\.system"):
        decode(enc.blob, key, enc.hmac)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        (_Eval(), "builtins.eval"),
        (Processor, "graph_service.processor.Processor"),  # a project class
        (zlib.decompress, "zlib.decompress"),
        (datetime.fromisoformat, "builtins.getattr"),  # a method reference
    ],
)
def test_anything_outside_the_allow_list_is_rejected(obj: object, needle: str):
    enc = _valid_blob_around(_payload_pickle({"x": obj}), KEY)
    with pytest.raises(SnapshotRejected, match=needle.replace(".", r"\.")):
        decode(enc.blob, KEY, enc.hmac)


def test_hand_written_global_reduce_is_rejected():
    # PROTO 2, GLOBAL 'builtins eval', the argument tuple, REDUCE, STOP.
    raw = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1+\x85R."
    enc = _valid_blob_around(raw, None)
    with pytest.raises(SnapshotRejected, match=r"builtins\.eval"):
        decode(enc.blob, None, None)


def test_persistent_ids_are_rejected():
    raw = b"\x80\x02X\x01\x00\x00\x00xQ."  # BINPERSID on the string "x"
    with pytest.raises(SnapshotRejected, match="persistent"):
        decode(seal(raw, None).blob, None, None)


# -------------------------------------------------------------- corrupt blobs
def _good() -> codec.EncodedSnapshot:
    return encode({"vertices": {str(i): {"n": i} for i in range(500)}}, None)


def _header(version: int = FORMAT_VERSION, raw: int | None = None, magic: bytes = b"RCASNP"):
    g = _good()
    return codec._HEADER.pack(magic, version, g.raw_size if raw is None else raw)


def _flip(blob: bytes, pos: int) -> bytes:
    return blob[:pos] + bytes([blob[pos] ^ 0xFF]) + blob[pos + 1 :]


def _corruptions() -> dict[str, tuple[bytes, str]]:
    g = _good().blob
    body = g[HEADER_SIZE:]
    return {
        "empty": (b"", "truncated"),
        "short header": (g[:5], "truncated"),
        "header only": (g[:HEADER_SIZE], "truncated"),
        "truncated body": (g[: len(g) // 2], "truncated"),
        "last byte missing": (g[:-1], "truncated"),
        "bad magic": (_header(magic=b"NOTSNP") + body, "bad magic"),
        "future version": (_header(version=FORMAT_VERSION + 1) + body, "format version"),
        "bad zlib": (g[:HEADER_SIZE] + b"\x00garbage" + body[8:], "corrupt compressed"),
        "flipped body byte": (_flip(g, HEADER_SIZE + 40), "corrupt compressed"),
        "trailing bytes": (g + b"extra", "unexpected bytes"),
        "raw size too small": (_header(raw=10) + body, "more than"),
        "raw size too large": (_header(raw=10**9) + body, "header says"),
        "pickle cut short": (seal(_payload_pickle({"a": 1})[:-5], None).blob, "unreadable pickle"),
        "not a pickle": (seal(b"hello world", None).blob, "unreadable pickle"),
        "payload not a dict": (seal(pickle.dumps([1, 2]), None).blob, "not a snapshot"),
        "state not a dict": (seal(_payload_pickle([1]), None).blob, "not a snapshot"),
        "payload format differs": (
            seal(pickle.dumps({"format": 99, "state": {}, "meta": {}}), None).blob,
            "payload format",
        ),
    }


@pytest.mark.parametrize("name", list(_corruptions()))
def test_corrupt_blobs_are_rejected_with_a_reason(name: str):
    blob, reason = _corruptions()[name]
    with pytest.raises(SnapshotRejected, match=reason) as info:
        decode(blob, None, None)
    assert info.value.reason
    assert isinstance(info.value, SnapshotError)


def test_random_damage_only_ever_raises_snapshot_rejected():
    good = _good().blob
    rng = random.Random(1234)
    for _ in range(300):
        damaged = bytearray(good)
        pos = rng.randrange(len(damaged))
        damaged[pos] ^= 0xFF
        if rng.random() < 0.3:
            damaged = damaged[: rng.randrange(len(damaged))]
        with pytest.raises(SnapshotRejected):
            decode(bytes(damaged), None, None)


def test_accepts_memoryview_and_bytearray_blobs():
    enc = encode({"a": 1}, KEY)
    assert decode(memoryview(enc.blob), KEY, memoryview(enc.hmac)) == {"a": 1}  # type: ignore[arg-type]
    assert decode(bytearray(enc.blob), KEY, enc.hmac) == {"a": 1}  # type: ignore[arg-type]
