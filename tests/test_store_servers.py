"""Store specs (``--store``), server stores end to end, and their bad input.

The conformance suite (test_store_conformance.py) holds every backend to the protocol; here: parsing
store specs in one place, a collection on a Chroma server and on PostgreSQL giving the same answers as
the embedded default, and what a user sees for an unreachable server, wrong credentials, an unknown
scheme and a dimension mismatch (one line, quickly, nothing written).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from store_servers import chroma_server, free_port, milvus_lite, pg_server  # noqa: F401 - session fixtures

from heterag import Document, open_collection
from heterag.cli import main
from heterag.core.errors import DimensionMismatchError, StoreUnavailableError, UnknownNameError
from heterag.stores import STORES, Record, open_store, parse_store_url

DOCS = {
    "bees": "Honey bees communicate the direction of flowers with the waggle dance inside the hive.",
    "bread": "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon on the oceans.",
    "volcano": "A volcano erupts when pressure from gases and molten rock becomes too great.",
}
QUESTIONS = ["How do bees tell where flowers are?", "Why does sourdough rise?", "What causes tides?"]


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(("spec", "kind", "location"), [
    ("chroma", "chroma", None),
    ("faiss", "faiss", None),
    ("chroma-http://127.0.0.1:8123", "chroma-http", "http://127.0.0.1:8123"),
    ("chroma-http://db.example", "chroma-http", "http://db.example:8000"),
    ("chroma-https://db.example:9443", "chroma-http", "https://db.example:9443"),
    ("postgresql://u:pw@localhost:5433/rag", "pgvector", "postgresql://u:pw@localhost:5433/rag"),
    ("postgres:///rag?host=/tmp/sock", "pgvector", "postgres:///rag?host=/tmp/sock"),
    ("qdrant", "qdrant", None),
    ("qdrant:/srv/qdrant", "qdrant", "/srv/qdrant"),
    ("qdrant:http://127.0.0.1:6333", "qdrant", "http://127.0.0.1:6333"),
    ("qdrant::memory:", "qdrant", ":memory:"),
    ("lancedb", "lancedb", None),
    ("lancedb:/srv/lance", "lancedb", "/srv/lance"),
    ("milvus", "milvus", None),
    ("milvus:/srv/rag.db", "milvus", "/srv/rag.db"),
    ("milvus:http://127.0.0.1:19530", "milvus", "http://127.0.0.1:19530"),
])
def test_store_specs_parse(spec: str, kind: str, location: str | None) -> None:
    url = parse_store_url(spec)
    assert (url.kind, url.location, url.shared) == (kind, location, location is not None)
    assert url.kind in STORES


def test_passwords_never_shown() -> None:
    url = parse_store_url("postgresql://alice:s3cret@db.example:5432/rag?sslmode=require&password=other")
    assert "s3cret" not in url.display() and "other" not in url.display()
    assert url.display() == "postgresql://alice:***@db.example:5432/rag?sslmode=require&password=***"


@pytest.mark.parametrize("spec", ["mongodb://localhost", "chromadb", "", "pinecone:index", "http://127.0.0.1:8000"])
def test_unknown_scheme_lists_the_choices(spec: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        parse_store_url(spec)
    msg = str(info.value)
    assert "\n" not in msg
    for form in ("chroma", "faiss", "chroma-http://HOST:PORT", "postgresql://"):
        assert form in msg


def test_cli_unknown_store_is_one_line_and_writes_nothing(tmp_path: Path, heterag_home: Path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "bees.txt").write_text(DOCS["bees"])
    code = main(["ingest", str(tmp_path / "notes"), "--collection", "c1", "--store", "mongodb://x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "chroma-http://HOST:PORT" in err and "mongodb://x" in err
    assert not (heterag_home / "collections" / "c1").exists()


# --------------------------------------------------------------------------- unreachable, credentials


@pytest.mark.parametrize("template", ["chroma-http://127.0.0.1:{port}", "postgresql://heterag:pw123@127.0.0.1:{port}/rag",
                                      "qdrant:http://127.0.0.1:{port}", "milvus:http://127.0.0.1:{port}"])
def test_unreachable_server_fails_fast_naming_the_url(template: str, tmp_path: Path, heterag_home: Path, capsys) -> None:
    spec = template.format(port=free_port())  # nothing listens there
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "bees.txt").write_text(DOCS["bees"])
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        open_store(spec, tmp_path / "store", "heterag")
    assert time.monotonic() - start < 10
    shown = parse_store_url(spec).display()
    assert shown in str(info.value) and "pw123" not in str(info.value) and "\n" not in str(info.value)
    start = time.monotonic()
    code = main(["ingest", str(tmp_path / "notes"), "--collection", "c2", "--store", spec])
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - start < 10
    assert code == 2 and len(err.splitlines()) == 1 and shown in err and "pw123" not in err
    assert not (heterag_home / "collections" / "c2").exists()  # nothing written


def test_wrong_postgres_password_is_refused(pg_server: str) -> None:  # noqa: F811
    import psycopg

    url = parse_store_url(pg_server)
    with psycopg.connect(url.location, autocommit=True) as conn:
        hba = conn.execute("SHOW hba_file").fetchone()[0]
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # the admin's part; a plain role may not create it
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'heterag_pw'").fetchone() is None:
            conn.execute("CREATE ROLE heterag_pw LOGIN PASSWORD 'right-password'")
        conn.execute("GRANT ALL ON SCHEMA public TO heterag_pw")
        text = Path(hba).read_text()
        if "heterag_pw" not in text:
            Path(hba).write_text("local all heterag_pw scram-sha-256\n" + text)
        conn.execute("SELECT pg_reload_conf()")
    socket = url.location.split("host=")[1]
    wrong = f"postgresql://heterag_pw:wrong-password@/postgres?host={socket}"
    with pytest.raises(StoreUnavailableError) as info:
        open_store(wrong, "unused", "creds")
    msg = str(info.value)
    assert "password authentication failed" in msg and "wrong-password" not in msg and "\n" not in msg
    with open_store(f"postgresql://heterag_pw:right-password@/postgres?host={socket}", "unused", "creds") as ok:
        ok.upsert([Record("a", np.ones(4, dtype=np.float32), "t")])
        assert ok.count() == 1


@pytest.mark.parametrize("server", ["chroma_server", "pg_server"])
def test_dimension_mismatch_across_handles(server: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    spec = request.getfixturevalue(server)
    rng = np.random.default_rng(0)
    with open_store(spec, tmp_path / "store", "dims") as one:
        one.upsert([Record(f"r{i}", rng.normal(size=16).astype(np.float32), "t") for i in range(3)])
    with open_store(spec, tmp_path / "store", "dims") as two:  # another connection, as another process would
        with pytest.raises(DimensionMismatchError):
            two.query(rng.normal(size=8).astype(np.float32))
        with pytest.raises(DimensionMismatchError):
            two.upsert([Record("x", rng.normal(size=8).astype(np.float32), "t")])
        assert two.count() == 3


# --------------------------------------------------------------------------- collections on servers


def _answers(store: str, name: str) -> tuple[list[list[tuple[str, str, float]]], int]:
    rag = open_collection(name, store=store)
    try:
        rag.ingest([Document.create(text, title=key.title(), id=key) for key, text in DOCS.items()])
        hits = [[(h.doc_id, h.chunk_id, round(h.score, 4)) for h in rag.retrieve(q, k=3)] for q in QUESTIONS]
        return hits, rag.store.count()
    finally:
        rag.close()


@pytest.mark.parametrize("server", ["chroma_server", "pg_server", "qdrant", "qdrant_path", "lancedb", "lancedb_path",
                                    "milvus", "milvus_lite"])
def test_server_collection_answers_like_the_embedded_default(server: str, request: pytest.FixtureRequest, encoder,
                                                            tmp_path: Path) -> None:
    """Also the embedded stores other than the default, in the collection folder and at a path (``KIND:PATH``)."""
    spec = {"qdrant": "qdrant", "qdrant_path": f"qdrant:{tmp_path / 'qdrant-data'}", "lancedb": "lancedb",
            "lancedb_path": f"lancedb:{tmp_path / 'lance-data'}", "milvus": "milvus"}.get(server) or request.getfixturevalue(server)
    embedded, n_embedded = _answers("chroma", "local-notes")
    served, n_served = _answers(spec, f"served-notes-{server}")
    assert served == embedded and n_served == n_embedded >= len(DOCS)
    assert [hits[0][0] for hits in served] == ["bees", "bread", "tides"]
    rag = open_collection(f"served-notes-{server}")  # reopened from collection.json: same server, same data
    try:
        assert rag.store.count() == n_served
        assert rag.store.name == parse_store_url(spec).display()
        assert [(h.doc_id, h.chunk_id, round(h.score, 4)) for h in rag.retrieve(QUESTIONS[0], k=3)] == served[0]
    finally:
        rag.close()


def spy_sql(store) -> list[str]:
    """The SQL a pgvector store's connection executes from now on, as text (a list that grows)."""
    from psycopg import sql

    seen: list[str] = []
    execute = store._db.execute

    def spy(query, *args, **kwargs):
        seen.append(query.as_string(store._db) if isinstance(query, sql.Composable) else str(query))
        return execute(query, *args, **kwargs)

    store._conn.execute = spy
    return seen


def test_pgvector_search_breadth_comes_from_the_url_and_a_bad_one_is_one_line(pg_server: str) -> None:  # noqa: F811
    from heterag.core.errors import InvalidInputError

    sep = "&" if "?" in pg_server else "?"
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(30, 8)).astype(np.float32)
    with open_store(pg_server + f"{sep}ef_search=640", "unused", "efs") as store:
        assert store.ef_search == 640 and "ef_search=max(640, k)" in store.index_settings()
        store.upsert([Record(f"r{i}", v, f"t{i}") for i, v in enumerate(vecs)])
        seen = spy_sql(store)
        assert store.query(vecs[3], k=5)[0].record.id == "r3"
        assert any("hnsw.ef_search = 640" in q for q in seen), seen
    with open_store(pg_server, "unused", "efs") as plain:  # the same table without the parameter: the default
        assert plain.ef_search == 200 and plain.count() == 30
    for bad in ("0", "1001", "many"):
        with pytest.raises(InvalidInputError) as info:
            open_store(pg_server + f"{sep}ef_search={bad}", "unused", "efs")
        assert "ef_search must be an integer from 1 to 1000" in str(info.value) and "\n" not in str(info.value)


def test_pgvector_hnsw_parameters_leave_the_rest_of_the_url_as_written() -> None:
    from heterag.core.errors import InvalidInputError
    from heterag.stores.pgvector import split_hnsw_params

    def split(url: str):
        return split_hnsw_params(parse_store_url(url))

    assert split("postgresql:///rag?user=me&host=/tmp/sock&ef_search=5") == (
        "postgresql:///rag?user=me&host=/tmp/sock", {"ef_search": 5, "ef_construction": 64})
    assert split("postgresql://u:pw@h/rag?options=-c%20statement_timeout%3D5000&ef_construction=128&application_name=my%20app")[0] \
        == "postgresql://u:pw@h/rag?options=-c%20statement_timeout%3D5000&application_name=my%20app"
    assert split("postgresql://u@h/rag?ef_search=900") == ("postgresql://u@h/rag", {"ef_search": 900, "ef_construction": 64})
    for bad in ("ef_search=10&ef_search=900", "ef_search=1_0", "ef_search=%205", "ef_search=", "ef_construction=8"):
        with pytest.raises(InvalidInputError) as info:
            split(f"postgresql://u:secret@h/rag?{bad}")
        assert "\n" not in str(info.value) and "secret" not in str(info.value)


def test_pgvector_bulk_load_builds_the_indexes_once_and_answers_like_the_ordinary_path(pg_server: str) -> None:  # noqa: F811
    from heterag.core.errors import InvalidInputError

    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(240, 16)).astype(np.float32)
    words = ["kinase", "tumour", "insulin", "cortex", "enzyme", "plasma"]
    recs = [Record(f"r{i}", v, f"{words[i % 6]} passage {i}", {"i": i}) for i, v in enumerate(vecs)]
    with open_store(pg_server, "unused", "bulk-plain") as plain, open_store(pg_server, "unused", "bulk-loaded") as bulk:
        plain.upsert(recs)
        seen = spy_sql(bulk)
        with bulk.bulk_load(maintenance_work_mem="64MB", workers=1):
            for start in range(0, len(recs), 100):
                bulk.upsert(recs[start:start + 100])
            assert not any("CREATE INDEX" in q for q in seen)  # rows only
            assert bulk._hnsw_index() is None and bulk.index_settings().startswith("no HNSW index")
            assert bulk.query(vecs[7], k=1)[0].record.id == "r7"  # exact scans meanwhile, every row visible
            with pytest.raises(InvalidInputError, match="already running"):
                with bulk.bulk_load():
                    pass
            with open_store(pg_server, "unused", "bulk-loaded") as other:  # another handle (as another process)
                with pytest.raises(InvalidInputError, match="already running"):
                    with other.bulk_load():
                        pass
                other.upsert([Record("other", vecs[2] * 2, "other plasma")])  # written, through no index
                assert other._hnsw_index() is None
                assert other._db.execute("SELECT to_regclass(%s)", (other.table + "_tsv",)).fetchone()[0] is None
        build = [q for q in seen if "CREATE INDEX" in q or "SET LOCAL maintenance" in q or "max_parallel_maintenance" in q]
        assert any("maintenance_work_mem = '64MB'" in q for q in build) and any("max_parallel_maintenance_workers = 1" in q for q in build)
        assert any("USING hnsw" in q for q in build) and any("USING gin" in q for q in build)
        assert bulk.index_settings().startswith("HNSW m=16, ef_construction=64") and bulk.count() == len(recs) + 1
        bulk.delete(["other"])
        for q in vecs[:20] + 0.1:
            assert [h.record.id for h in bulk.query(q, k=10)] == [h.record.id for h in plain.query(q, k=10)]
        for text in ("kinase tumour", "plasma"):
            assert [h.record.id for h in bulk.keyword_query(text, k=10)] == [h.record.id for h in plain.keyword_query(text, k=10)]

        # an error inside: the rows so far are kept and indexed before it propagates
        with pytest.raises(InvalidInputError, match="boom"):
            with bulk.bulk_load():  # drops the indexes the table has
                assert bulk._hnsw_index() is None
                bulk.upsert([Record("extra", vecs[0] * 2, "extra enzyme")])
                raise InvalidInputError("boom")
        assert bulk._hnsw_index() is not None and bulk.count() == len(recs) + 1
        # a stop (Ctrl-C, a kill): no index build; the next ordinary write builds it
        with pytest.raises(KeyboardInterrupt):
            with bulk.bulk_load():
                raise KeyboardInterrupt
        assert bulk._hnsw_index() is None and bulk.query(vecs[5], k=1)[0].record.id == "r5"
        bulk.upsert([Record("later", vecs[1] * 3, "later insulin")])
        assert bulk._hnsw_index() is not None and bulk.keyword_query("insulin", k=50)
        assert any("USING gin" in q for q in seen[-10:])
        with pytest.raises(KeyboardInterrupt):  # stopped again; ensure_indexes (heterag migrate's last step) builds them
            with bulk.bulk_load():
                raise KeyboardInterrupt
        assert bulk.ensure_indexes() is True and bulk._hnsw_index() is not None and bulk.ensure_indexes() is False
        for bad in ({"maintenance_work_mem": "lots"}, {"maintenance_work_mem": "4GB; DROP TABLE x"}, {"maintenance_work_mem": "1kB"},
                    {"maintenance_work_mem": "3TB"}, {"maintenance_work_mem": "1GB\n"}, {"workers": -1}, {"workers": True}):
            with pytest.raises(InvalidInputError) as info:
                with bulk.bulk_load(**bad):
                    pass
            assert "\n" not in str(info.value)
        assert bulk._hnsw_index() is not None  # a refused bulk load drops nothing
        bulk.drop()
        plain.drop()
        bulk.upsert(recs[:3])  # a dropped collection written again through the same handle
        assert bulk.count() == 3 and bulk.dim == 16
        bulk.drop()

    # a new collection: another handle's first write (which creates the table) builds no index during the load
    with open_store(pg_server, "unused", "bulk-new") as loader, open_store(pg_server, "unused", "bulk-new") as first:
        with loader.bulk_load():
            first.upsert(recs[:5])
            first.rebuild_keywords()
            assert first._hnsw_index() is None
            assert first._db.execute("SELECT to_regclass(%s)", (first.table + "_tsv",)).fetchone()[0] is None
            loader.upsert(recs[5:40])
        assert loader._hnsw_index() is not None and loader.count() == 40 and loader.keyword_query("kinase", k=3)
        loader.drop()

    # the index keeps the collection's own HNSW settings, whatever URL the loading handle has
    sep = "&" if "?" in pg_server else "?"
    with open_store(pg_server + f"{sep}ef_construction=40", "unused", "bulk-efc") as made:
        made.upsert(recs[:50])
    with open_store(pg_server, "unused", "bulk-efc") as plain_url:
        with plain_url.bulk_load():
            plain_url.upsert(recs[50:100])
        assert "ef_construction=40" in plain_url.index_settings()
        with pytest.raises(KeyboardInterrupt):
            with plain_url.bulk_load():
                raise KeyboardInterrupt
        plain_url.upsert(recs[100:110])  # the repair after a stopped load too
        assert "ef_construction=40" in plain_url.index_settings() and plain_url.count() == 110
        plain_url.drop()
