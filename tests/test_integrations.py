"""LangChain and LlamaIndex retrievers over a heterag collection (offline: real encoder, MockLLM).

The LangChain retriever is also held against LangChain's own standard suite (``langchain-tests``
``RetrieversIntegrationTests``, unmodified).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest

from corpora.synthetic_scenes import generate_scenes
from heterag import Document, Pipeline, load_text_encoder, make_view, open_store

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")
from langchain_core.documents import Document as LCDocument  # noqa: E402

from heterag.integrations.langchain import HeteragRetriever  # noqa: E402
from heterag.integrations.llamaindex import HeteragLlamaRetriever  # noqa: E402

DOCS = {
    "bees": "Honey bees communicate the direction of flowers with the waggle dance inside the hive.",
    "bread": "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon on the oceans.",
    "volcano": "A volcano erupts when pressure from gases and molten rock becomes too great.",
}


@functools.cache
def scenes():
    return list(generate_scenes(3, seed=5, size=64))


@functools.cache
def pipeline() -> Pipeline:
    """One small collection (4 text documents, 3 image items) for the whole module, in a temp folder."""
    root = Path(tempfile.mkdtemp(prefix="heterag-integrations-"))
    pipe = Pipeline(open_store("faiss", root / "store", "heterag"), load_text_encoder(None), make_view("heterag"),
                    image_store=open_store("faiss", root / "store", "heterag_images"), image_encoder="default",
                    image_files=root / "images")
    pipe.ingest([Document.create(t, title=k.title(), id=k, metadata={"topic": k}) for k, t in DOCS.items()]
                + [s.to_document() for s in scenes()])
    return pipe


# --------------------------------------------------------------------------- LangChain


try:
    from langchain_tests.integration_tests import RetrieversIntegrationTests
except ImportError:  # pragma: no cover - langchain-tests is in the test extra
    RetrieversIntegrationTests = None


if RetrieversIntegrationTests is not None:

    class TestHeteragRetrieverStandard(RetrieversIntegrationTests):
        """LangChain's standard retriever tests, unmodified."""

        @property
        def retriever_constructor(self) -> type[HeteragRetriever]:
            return HeteragRetriever

        @property
        def retriever_constructor_params(self) -> dict:
            return {"pipeline": pipeline(), "k": 2}

        @property
        def retriever_query_example(self) -> str:
            return "What causes ocean tides?"


def test_langchain_documents_carry_chunk_source_score_and_view() -> None:
    docs = HeteragRetriever(pipeline=pipeline(), k=3).invoke("Why does sourdough bread rise?")
    assert all(isinstance(d, LCDocument) for d in docs) and len(docs) == 3
    top = docs[0]
    assert top.metadata["source"] == "bread" and "yeast" in top.page_content
    assert top.metadata["score"] >= docs[1].metadata["score"] and top.metadata["view"]
    assert top.metadata["metadata"]["topic"] == "bread" and top.metadata["image"] is None and top.id == top.metadata["chunk_id"]
    only = HeteragRetriever(pipeline=pipeline(), k=3, where={"topic": "bees"}).invoke("Why does sourdough bread rise?")
    assert {d.metadata["source"] for d in only} == {"bees"}


def test_langchain_image_query() -> None:
    target = scenes()[2]
    docs = HeteragRetriever(pipeline=pipeline(), k=2).invoke("", image=target.image)
    assert docs[0].metadata["source"] == target.id and Path(docs[0].metadata["image"]).exists()
    assert docs[0].metadata["scores"]["image"] == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------- LlamaIndex


def test_llamaindex_retriever_and_query_engine(tmp_path: Path) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import ImageNode, QueryBundle, TextNode

    retriever = HeteragLlamaRetriever(pipeline(), k=2)
    nodes = retriever.retrieve("What makes a volcano erupt?")
    assert len(nodes) == 2 and type(nodes[0].node) is TextNode
    assert nodes[0].node.metadata["source"] == "volcano" and nodes[0].score >= nodes[1].score
    assert "molten rock" in nodes[0].node.get_content()

    target = scenes()[0]
    path = tmp_path / "query.png"
    target.image.save(path) if hasattr(target.image, "save") else path.write_bytes(target.to_document().image.data)
    by_image = retriever.retrieve(QueryBundle(query_str="", image_path=str(path)))
    assert isinstance(by_image[0].node, ImageNode) and by_image[0].node.metadata["source"] == target.id
    assert Path(by_image[0].node.image_path).exists() and by_image[0].node.text

    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query("What causes ocean tides?")
    assert response.source_nodes[0].node.metadata["source"] == "tides"
    assert isinstance(response.response, str)


# --------------------------------------------------------------------------- the reverse: framework stores behind heterag


@pytest.mark.parametrize("kind", ["langchain", "llamaindex"])
def test_framework_vector_store_backs_a_heterag_collection(kind: str, tmp_path: Path) -> None:
    from heterag.stores.frameworks import LangChainStore, LlamaIndexStore

    store = LangChainStore() if kind == "langchain" else LlamaIndexStore()
    pipe = Pipeline(store, load_text_encoder(None), make_view("heterag"))
    pipe.ingest([Document.create(t, title=k.title(), id=k, metadata={"topic": k}) for k, t in DOCS.items()])
    reference = Pipeline(open_store("faiss", tmp_path / "ref", "heterag", keywords=False), load_text_encoder(None),
                         make_view("heterag"))  # dense, as the framework store
    reference.ingest([Document.create(t, title=k.title(), id=k, metadata={"topic": k}) for k, t in DOCS.items()])
    for q in ("Why does sourdough bread rise?", "What causes ocean tides?"):
        got = [(h.chunk_id, round(h.score, 4)) for h in pipe.retrieve(q, k=3)]
        assert got == [(h.chunk_id, round(h.score, 4)) for h in reference.retrieve(q, k=3)]
    others = [h.doc_id for h in pipe.retrieve("waggle dance", k=2, where={"topic": {"$ne": "bees"}})]
    assert len(others) == 2 and "bees" not in others
    # the records live in the framework's own store
    if kind == "langchain":
        assert len(store.vectorstore.store) == store.count() > 0
    else:
        assert len(store.vector_store.data.embedding_dict) == store.count() > 0
    reference.close()
