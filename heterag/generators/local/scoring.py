"""Scoring fixed options with the local model: the log-likelihood of each option as the model's reply
(:meth:`OptionScoring.score_options`, giving :class:`OptionScores`), so closed questions (yes/no/maybe, a
label) measure knowledge use rather than formatting luck, and contextual calibration against
content-free inputs (:meth:`OptionScoring.content_free_probabilities`, :meth:`OptionScores.calibrated`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from typing import Any

import numpy as np

from heterag.core.errors import GeneratorError, InvalidInputError
from heterag.core.results import Hit
from heterag.generators.local.model import cache_of

#: Content-free inputs of contextual calibration (Zhao et al., 2021, section 5).
CONTENT_FREE = ("N/A", "[MASK]", "")


@dataclass(frozen=True)
class OptionScores:
    """Log-likelihoods of fixed options as the model's reply (natural log, summed over the option's tokens)."""

    options: tuple[str, ...]
    logprobs: tuple[float, ...]
    tokens: tuple[int, ...]  # tokens per option
    passages_used: int

    @property
    def best(self) -> str:
        return self.options[int(np.argmax(self.logprobs))]

    def probabilities(self) -> dict[str, float]:
        """The options' probabilities renormalised over the options (softmax of the log-likelihoods)."""
        lp = np.asarray(self.logprobs)
        p = np.exp(lp - lp.max())
        return dict(zip(self.options, (p / p.sum()).tolist(), strict=True))

    def calibrated(self, content_free: Mapping[str, float]) -> OptionScores:
        """Contextual calibration (Zhao et al., 2021, "Calibrate Before Use", ICML, section 5, eq. 1
        with W = diag(p_cf)^-1, b = 0): each option's probability divided by its probability
        ``content_free[option]`` for a content-free input (from
        :meth:`heterag.generators.local.LocalGenerator.content_free_probabilities`), renormalised. A small model that prefers
        one option whatever the passages say then answers from how far the passages move it.

        ``content_free`` maps every option to a probability in (0, 1]; the result's ``logprobs`` are
        the calibrated log-probabilities (they sum to 1 in probability). Raises
        :class:`InvalidInputError` when an option is missing or its probability is not positive.
        """
        missing = [o for o in self.options if o not in content_free]
        if missing:
            raise InvalidInputError(f"content-free probabilities lack option(s) {missing}; they have {sorted(content_free)}")
        ref = np.array([float(content_free[o]) for o in self.options])
        if not np.all(np.isfinite(ref)) or np.any(ref <= 0):
            raise InvalidInputError(f"content-free probabilities must be positive, got {dict(zip(self.options, ref.tolist(), strict=True))}")
        p = np.array(list(self.probabilities().values())) / ref
        return replace(self, logprobs=tuple(np.log(p / p.sum()).tolist()))


class OptionScoring:
    """Mixin of :class:`~heterag.generators.local.LocalGenerator`: the scoring mode."""

    def score_options(self, question: str, hits: Sequence[Hit], options: Sequence[str], *,
                      instruction: str | None = None) -> OptionScores:
        """Score each of ``options`` by its log-likelihood as the model's reply to ``question`` about ``hits``.

        The question is followed by ``instruction`` (default: "Answer with exactly one of: a, b, c.").
        Options are scored as the start of the assistant turn, with the prompt's key-value cache
        computed once. Returns :class:`OptionScores` (``best`` is the most likely option).
        Raises :class:`InvalidInputError` for fewer than two options, an empty or repeated option, a
        string instead of a list of options, or a question that is not a string (it may be empty).
        """
        if isinstance(options, str):
            raise InvalidInputError(f"options must be a list of options, got the string {options!r}")
        if not isinstance(question, str):
            raise InvalidInputError(f"question must be a string, got {type(question).__name__}")
        options = tuple(options)
        if len(options) < 2 or any(not isinstance(o, str) or not o.strip() for o in options):
            raise InvalidInputError(f"give at least two non-empty options, got {options!r}")
        if len(set(options)) < len(options):
            raise InvalidInputError(f"options must be distinct, got {options!r}")
        instruction = instruction or f"Answer with exactly one of: {', '.join(options)}."
        q = f"{question.strip()}\n{instruction}" if question.strip() else instruction
        hits = tuple(hits)
        with self._lock, self._threads():
            option_ids = [self.tokenizer.encode(o, add_special_tokens=False) for o in options]
            if hits:
                inputs, used = self.fit(q, hits, reserve=max(len(ids) for ids in option_ids) + 1)
            else:
                inputs, used = self.model_inputs(q, ()), ()
                need, context = self._prompt_tokens(inputs) + max(len(ids) for ids in option_ids) + 1, self.context_size
                if context is not None and need > context:
                    raise GeneratorError(f"the prompt and the longest option take {need} tokens, more than the model's "
                                         f"context of {context} tokens; ask a shorter question or give shorter options")
            if self.engine == "transformers":
                logprobs = self._option_logprobs(inputs, option_ids)
            else:
                logprobs = self._option_logprobs_llama([int(t) for t in inputs["input_ids"][0]], option_ids)
        return OptionScores(options, tuple(logprobs), tuple(len(ids) for ids in option_ids), len(used))

    def content_free_probabilities(self, options: Sequence[str], *, passages: int = 0, instruction: str | None = None,
                                   fillers: Sequence[str] = CONTENT_FREE) -> dict[str, float]:
        """The options' probabilities for content-free inputs, the reference of contextual calibration
        (Zhao et al., 2021, "Calibrate Before Use", ICML, section 5): for each string of ``fillers``
        (default "N/A", "[MASK]" and the empty string, the paper's choice), the question is that
        string and each of ``passages`` passages (0-100) holds it ("N/A" for the empty string, as a
        passage cannot be empty); the options' probabilities (:meth:`OptionScores.probabilities`) are
        averaged over the fillers. Use the same ``passages`` count (the scores' ``passages_used``, which is
        below the number of passages given when some did not fit) and ``instruction`` as the calls to
        :meth:`score_options` being calibrated, then :meth:`OptionScores.calibrated`.
        Raises :class:`InvalidInputError` for a passage count that is not an integer from 0 to 100, or no fillers.
        """
        if isinstance(passages, bool) or not isinstance(passages, Integral) or not 0 <= passages <= 100:
            raise InvalidInputError(f"passages must be an integer between 0 and 100, got {passages!r}")
        if not fillers:
            raise InvalidInputError("give at least one content-free filler string")
        options = tuple(options)
        total = np.zeros(len(options))
        for filler in fillers:
            hits = tuple(Hit(chunk_id=f"content-free-{i}", doc_id=f"content-free-{i}", text=filler or "N/A", view="",
                             score=0.0) for i in range(int(passages)))
            total += np.array(list(self.score_options(filler, hits, options, instruction=instruction).probabilities().values()))
        return dict(zip(options, (total / len(fillers)).tolist(), strict=True))

    def _option_logprobs(self, inputs: Any, option_ids: list[list[int]]) -> list[float]:
        """transformers: the prompt's key-value cache computed once, each option continued from a copy."""
        import torch

        logprobs: list[float] = []
        with torch.inference_mode():
            reuse = self._prefix_cache(inputs)
            if reuse:  # only the tokens after the shared prefix are computed
                done = next(iter(reuse.values())).get_seq_length()
                out = self.model(input_ids=inputs["input_ids"][:, done:].to(self.device), use_cache=True, **reuse)
            else:
                out = self.model(**inputs, use_cache=True)
            cache_name, prompt_cache = cache_of(out)
            last = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            for ids in option_ids:
                total = float(last[ids[0]])
                if len(ids) > 1:
                    step = self.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True,
                                      **{cache_name: copy.deepcopy(prompt_cache)})
                    lp = torch.log_softmax(step.logits[0].float(), dim=-1)
                    total += float(sum(lp[i, t] for i, t in enumerate(ids[1:])))
                logprobs.append(total)
        return logprobs

    def _llama_logits(self) -> np.ndarray:
        """Log-probabilities after the last evaluated token (llama.cpp keeps the last token's logits)."""
        import llama_cpp

        raw = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._llama.ctx, -1), shape=(self._llama.n_vocab(),))
        logits = raw.astype(np.float64)
        logits -= logits.max()
        return logits - np.log(np.exp(logits).sum())

    def _option_logprobs_llama(self, prompt: list[int], option_ids: list[list[int]]) -> list[float]:
        """llama.cpp: the prompt evaluated once (reusing the longest prefix already in the cache), each
        option's tokens evaluated after it and then dropped again."""
        llm = self._llama
        done = llm.input_ids[: llm.n_tokens].tolist()
        common = 0
        for a, b in zip(done, prompt, strict=False):
            if a != b:
                break
            common += 1
        llm.n_tokens = min(common, len(prompt) - 1)  # the last prompt token is evaluated again for its logits
        llm.eval(prompt[llm.n_tokens:])
        last = self._llama_logits()
        logprobs: list[float] = []
        for ids in option_ids:
            total = float(last[ids[0]])
            for i in range(1, len(ids)):
                llm.eval([ids[i - 1]])
                total += float(self._llama_logits()[ids[i]])
            llm.n_tokens = len(prompt)  # drop the option's tokens (eval clears the cache past n_tokens)
            logprobs.append(total)
        return logprobs


__all__ = ["CONTENT_FREE", "OptionScores", "OptionScoring"]
