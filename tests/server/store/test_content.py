"""Compressed resource JSON in SQLite (server/store/content.py): exact bytes back, old rows readable."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import zstandard

from mappers.vcf import map_vcf
from server import jsonio
from server.store import content
from server.store.base import FreshBatch, StoredResource
from server.store.sqlite import SqliteStore

SHARED_VCF = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "vcf" / "vcf2fhir" / "NB6TK328_filtered.vcf"
)

BODIES = [
    b'{"resourceType":"Patient","id":"a"}',
    # what a client sent, kept as sent: spacing, key order, digits, escapes, non-ASCII
    b'{ "resourceType" : "Observation", "id":"o", "valueQuantity":{"value":1.50E+245},\n'
    b' "note":[{"text":"\\u00e6 \xc3\xb8"}]}',
    b'{"resourceType":"Binary","id":"b","data":"' + b"QUJD" * 5000 + b'"}',
]


@pytest.mark.parametrize("body", BODIES)
def test_round_trip_gives_back_the_exact_bytes(body: bytes) -> None:
    frame = content.compress(body)
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    assert zstandard.get_frame_parameters(frame).dict_id == content.DICT_ID
    assert content.decompress(frame) == body


def test_compress_many_gives_each_body_its_own_frame_in_order() -> None:
    frames = content.compress_many(iter(BODIES))  # any iterable, e.g. a generator
    assert frames == [content.compress(body) for body in BODIES]
    assert [content.decompress(frame) for frame in frames] == BODIES
    assert content.compress_many([]) == []


def test_a_fresh_batch_sent_without_its_json_serves_it_from_the_content() -> None:
    keys = [("Patient", "a"), ("Observation", "o"), ("Binary", "b")]
    batch = FreshBatch(0.0, "PUT", keys, list(BODIES), content.compress_many(BODIES), {}, {})
    assert [batch.served(k) for k in range(3)] == BODIES and batch.served(-1) == BODIES[-1]
    batch.json = []  # as the VCF mapping process sends it
    assert [batch.served(k) for k in range(3)] == BODIES and batch.served(-1) == BODIES[-1]


def test_the_shipped_dictionary_makes_a_variant_observation_small() -> None:
    resources = list(map_vcf(SHARED_VCF, "p1").resources())
    variant = next(r for r in resources if r["resourceType"] == "Observation")
    body = jsonio.dumps(variant)
    plain = zstandard.ZstdCompressor(level=content.LEVEL).compress(body)
    ours = content.compress(body)
    assert len(ours) < len(body) * 0.15
    assert len(ours) < len(plain) / 2  # the dictionary, not zstd alone, does most of it


def test_content_that_is_not_a_frame_is_returned_as_it_is() -> None:
    assert content.decompress(b'{"resourceType":"Patient","id":"old"}') == b'{"resourceType":"Patient","id":"old"}'
    assert content.decompress(b"") == b""


def test_a_frame_without_a_dictionary_is_read() -> None:
    frame = zstandard.ZstdCompressor().compress(b'{"resourceType":"Patient","id":"x"}')
    assert content.decompress(frame) == b'{"resourceType":"Patient","id":"x"}'


def test_a_frame_of_a_dictionary_this_server_does_not_have_is_an_error_that_says_so() -> None:
    samples = [b'{"resourceType":"Patient","id":"p%d","gender":"%s"}' % (n, b"male" * (n % 3)) for n in range(400)]
    other = zstandard.train_dictionary(4096, samples, dict_id=9999)
    frame = zstandard.ZstdCompressor(dict_data=other).compress(samples[7])
    with pytest.raises(RuntimeError, match="dictionary 9999"):
        content.decompress(frame)


def test_threads_compress_and_decompress_at_once() -> None:
    failures: list[str] = []

    def work(n: int) -> None:
        for i in range(300):
            body = b'{"resourceType":"Observation","id":"t%d-%d","status":"final"}' % (n, i)
            if content.decompress(content.compress(body)) != body:
                failures.append(f"{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(f"sqlite:///{tmp_path}/content.sqlite")
    yield store
    store.close()


def test_sqlite_stores_frames_and_every_read_gives_the_bytes_written(sqlite_store: SqliteStore) -> None:
    body = BODIES[1]
    with sqlite_store.transaction() as tx:
        tx.put(StoredResource("Observation", "o", 1, 1.0, False, body), "PUT", None)
    with sqlite_store.transaction() as tx:
        current = tx.current("Observation", "o")
        assert current is not None and current.content == body
        tx.put(StoredResource("Observation", "o", 2, 2.0, False, BODIES[2], current.rid), "PUT", None)
    stored = [r[0] for r in sqlite_store.query("SELECT content FROM history ORDER BY seq")]
    assert [bytes(s)[:4] for s in stored] == [b"\x28\xb5\x2f\xfd"] * 2
    assert len(stored[1]) < len(BODIES[2]) / 10
    read = sqlite_store.read("Observation", "o")
    assert read is not None and read.content == BODIES[2]
    first = sqlite_store.vread("Observation", "o", 1)
    assert first is not None and first.content == body
    assert [e.resource.content for e in sqlite_store.history("Observation", "o")] == [BODIES[2], body]
    assert [r.content for r in sqlite_store.read_many([read.rid])] == [BODIES[2]]
    assert [r.content for r in sqlite_store.iter_current("Observation")] == [BODIES[2]]


def test_sqlite_rows_written_before_compression_are_read_beside_new_ones(sqlite_store: SqliteStore) -> None:
    old = b'{"resourceType":"Patient","id":"old"}'
    with sqlite_store.transaction() as tx:
        tx.put(StoredResource("Patient", "old", 1, 1.0, False, old), "PUT", None)
        tx.put(StoredResource("Patient", "new", 1, 1.0, False, BODIES[0]), "PUT", None)
        # as a database written before this module stored it: the JSON itself
        tx.cur.execute("UPDATE history SET content = ? WHERE res_id = ?", (old, "old"))
    assert bytes(sqlite_store.query("SELECT content FROM history WHERE res_id = 'old'")[0][0]) == old
    got = {r.id: r.content for r in sqlite_store.iter_current("Patient")}
    assert got == {"old": old, "new": BODIES[0]}


def test_store_reads_text_plain_and_compressed_content(tmp_path: Path) -> None:
    """Whatever an older writer left in the content column reads back as the JSON bytes."""
    store = SqliteStore(f"sqlite:///{tmp_path}/old.db")
    try:
        frame = content.compress(b'{"resourceType":"Patient","id":"z"}')
        for stored, expected in (
            ('{"resourceType":"Patient","id":"t"}', b'{"resourceType":"Patient","id":"t"}'),  # TEXT
            (b'{"resourceType":"Patient","id":"b"}', b'{"resourceType":"Patient","id":"b"}'),  # plain BLOB
            (frame, b'{"resourceType":"Patient","id":"z"}'),
        ):
            assert store._decode(stored) == expected  # type: ignore[attr-defined]
        assert store._decode(None) is None  # type: ignore[attr-defined]
    finally:
        store.close()
