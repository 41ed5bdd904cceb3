"""The corrected statements (and the paper's statements that hold) survive the same search that
breaks the refuted ones: random admissible samples + hypothesis (target-steered) + Adam ascent
on log(quantity/bound). Quick budgets here; ``python -m theory`` runs larger ones."""
import math

import pytest

from theory.registry import all_claims
from theory.search import SearchConfig, run_statement

CFG = SearchConfig.quick()

CORRECTED = []
HOLDING = []
for _c in all_claims():
    for _p in _c.parts:
        if _p.corrected is not None and _p.corrected not in [s for _, s in CORRECTED]:
            CORRECTED.append((f"{_c.id}-{_p.name}", _p.corrected))
HOLDING = [("C.5-similarities", [p for p in next(c for c in all_claims() if c.id == "C.5").parts
                                 if p.name == "similarities"][0].original),
           ("C.11-identity", next(c for c in all_claims() if c.id == "C.11").parts[0].original),
           ("C.12-softmax", [p for p in next(c for c in all_claims() if c.id == "C.12").parts
                             if p.name == "softmax"][0].original)]


@pytest.mark.parametrize("name,stmt", CORRECTED, ids=[n for n, _ in CORRECTED])
def test_corrected_statement_unbroken(name, stmt):
    rec = run_statement(stmt, CFG)
    assert not rec.violated, (name, rec.worst_ratio, rec.worst_inputs)
    assert rec.n_evals >= CFG.n_random
    # tightness: the bound is not vacuous (the usefulness threshold is 0.1);
    # C.9's unrolled product bound is the known exception (reported, see docs/theory.md)
    if not name.startswith("C.9"):
        assert rec.worst_ratio > 0.1, (name, rec.worst_ratio)


@pytest.mark.parametrize("name,stmt", HOLDING, ids=[n for n, _ in HOLDING])
def test_holding_statement_unbroken(name, stmt):
    rec = run_statement(stmt, CFG)
    assert not rec.violated, (name, rec.worst_ratio)


def test_search_finds_the_c2_counterexample_from_scratch():
    """The search itself (not just the stored file) breaks Lemma C.2 within the quick budget."""
    from theory.registry import get_claim
    rec = run_statement(get_claim("C.2").parts[0].original, CFG)
    assert rec.violated and rec.worst_ratio > 2


def test_search_finds_the_c7_counterexample_from_scratch():
    from theory.registry import get_claim
    rec = run_statement(get_claim("C.7").parts[0].original, CFG)
    assert rec.violated and rec.worst_ratio > 1.2
