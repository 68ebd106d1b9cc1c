"""The no-signal rule: whether a membership-inference method's calibration shows signal.

A membership method's scores mean something only where, on images whose membership the attacker knows
(the shadow set: images it inserted itself, the *shadow members*, and images it kept out, the *shadow
non-members*), members score higher than non-members. Measured with the default offline extractive
generator on COCO photos, MrM's calibration put ``p_t`` at its floor (the generator never named a masked
object) and MrM's AUC was chance, while a report still headlined it. So a method is used (in an audit,
:mod:`sandbox.audit`) or reported as a result (in ``heterag sandbox run``, :mod:`sandbox.membership`) only
where :func:`judge` finds signal:

1. **MrM** (mask-and-recover; "Membership inference on multimodal RAG by masking"): ``p_t``, the per-trial
   success rate on the shadow members (:func:`sandbox.attacks.mrm.calibrate_p_t`), must be above its floor
   :data:`~sandbox.attacks.mrm.P_T_FLOOR` (0.01). At the floor the generator never names what a mask hides
   and the geometric test has no power.
2. **Every method, where shadow non-members were scored too**: the shadow AUC (members vs non-members,
   ties counted half) must be above 0.5 by a one-sided permutation test at level ``alpha`` (0.05): the
   share of relabellings of the shadow scores whose AUC is at least the observed one (exact enumeration
   up to 20,000 relabellings, else 5,000 seeded random ones, +1 corrected). With ``m`` members and ``n``
   non-members the smallest attainable p-value is ``1 / C(m + n, m)``: fewer than 4 + 3 shadow images can
   never show signal at 0.05.

A method that fails is marked :data:`NO_SIGNAL` ("no signal on calibration: not a result").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from heterag import InvalidInputError

from .attacks.mrm import P_T_FLOOR

#: How a method without signal is marked in reports, summaries and audits.
NO_SIGNAL = "no signal on calibration: not a result"
#: Level of the one-sided permutation test of the shadow AUC.
ALPHA = 0.05
_EXACT_MAX = 20_000
_RANDOM = 5_000


@dataclass(frozen=True)
class Signal:
    """The calibration verdict for one method (and pass): ``signal`` and why, in one line (``reason``).

    ``auc``: shadow AUC in [0, 1] and ``p_value`` its permutation p-value in (0, 1] (None without shadow
    non-members); ``p_t``: MrM's calibrated per-trial success rate in [floor, 1 - floor] (None for other
    methods); ``members`` / ``non_members``: shadow images scored."""

    method: str
    signal: bool
    reason: str
    auc: float | None = None
    p_value: float | None = None
    p_t: float | None = None
    members: int = 0
    non_members: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """P(member score > non-member score) + 0.5 P(tie), in [0, 1]; :class:`InvalidInputError` if a side is empty."""
    m, n = np.asarray(members, dtype=float), np.asarray(non_members, dtype=float)
    if not m.size or not n.size:
        raise InvalidInputError("shadow AUC needs at least one member and one non-member score")
    diff = m[:, None] - n[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def permutation_pvalue(members: Sequence[float], non_members: Sequence[float], *, seed: int = 0) -> float:
    """One-sided p-value of "shadow AUC > 0.5": the share of member/non-member relabellings of the pooled
    scores whose AUC is at least the observed one (exact where there are at most 20,000 relabellings, else
    5,000 random ones seeded by ``seed``, with the +1 correction). In (0, 1]."""
    pooled = np.concatenate([np.asarray(members, dtype=float), np.asarray(non_members, dtype=float)])
    k, total = len(members), len(pooled)
    observed = auc(members, non_members) - 1e-12
    if math.comb(total, k) <= _EXACT_MAX:
        hits = count = 0
        for idx in itertools.combinations(range(total), k):
            mask = np.zeros(total, dtype=bool)
            mask[list(idx)] = True
            count += 1
            hits += auc(pooled[mask], pooled[~mask]) >= observed
        return hits / count
    rng = np.random.default_rng([seed, 29])
    hits = 0
    for _ in range(_RANDOM):
        perm = rng.permutation(total)
        hits += auc(pooled[perm[:k]], pooled[perm[k:]]) >= observed
    return (1 + hits) / (1 + _RANDOM)


def judge(method: str, members: Sequence[float] | None = None, non_members: Sequence[float] | None = None, *,
          p_t: float | None = None, alpha: float = ALPHA, seed: int = 0) -> Signal:
    """Whether ``method``'s calibration shows signal (the criterion in the module docstring).

    ``members`` / ``non_members``: the method's scores on the shadow members and non-members (higher: more
    member-like), both or neither; ``p_t``: MrM's calibrated success rate. Raises :class:`InvalidInputError`
    when given neither scores nor ``p_t``."""
    if p_t is None and (members is None or non_members is None):
        raise InvalidInputError(f"{method}: a calibration needs shadow scores or p_t")
    n_m = len(members) if members is not None else 0
    n_n = len(non_members) if non_members is not None else 0
    if p_t is not None and p_t <= P_T_FLOOR:
        return Signal(method, False, f"{method}: p_t at its floor {P_T_FLOOR:g} (the generator never named what a mask "
                      "hides on the shadow members)", p_t=p_t, members=n_m, non_members=n_n)
    if members is None or non_members is None:
        return Signal(method, True, f"{method}: p_t = {p_t:.3f}, above its floor {P_T_FLOOR:g}", p_t=p_t, members=n_m)
    if not n_m or not n_n:
        return Signal(method, False, f"{method}: no shadow member or no shadow non-member could be scored", p_t=p_t,
                      members=n_m, non_members=n_n)
    a = auc(members, non_members)
    p = permutation_pvalue(members, non_members, seed=seed)
    ok = p < alpha
    tail = f"(p = {p:.3g}, {n_m} + {n_n} shadow images)"
    reason = (f"{method}: shadow AUC {a:.2f} is above chance {tail}" if ok
              else f"{method}: shadow AUC {a:.2f} is not above chance at {alpha:g} {tail}")
    return Signal(method, ok, reason, auc=a, p_value=p, p_t=p_t, members=n_m, non_members=n_n)
