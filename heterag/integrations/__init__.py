"""heterag inside LangChain and LlamaIndex.

* :mod:`heterag.integrations.langchain`: :class:`HeteragRetriever`, a LangChain ``BaseRetriever``.
* :mod:`heterag.integrations.llamaindex`: :class:`HeteragLlamaRetriever`, a LlamaIndex ``BaseRetriever``.

Each module imports its framework only when imported itself.
"""
