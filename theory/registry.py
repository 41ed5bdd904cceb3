"""The claims registry: one :class:`Claim` per stated result of paper 004, appendix C.

A claim has one or more :class:`Part` s (a lemma that states two inequalities has two parts).
Each part holds the paper's statement as an executable :class:`Statement` -- hypotheses (a
sampler of admissible inputs), the quantity, the stated bound -- and, when the paper's
statement is refuted, a corrected :class:`Statement` that the same search must not break.

Executable statement contract: ``quantity(inputs, static) <= bound(inputs, static)`` for every
admissible input. Inputs are produced from a flat unconstrained vector ``raw`` by
``to_inputs(raw, static)``, which enforces the hypotheses by construction (so random sampling,
hypothesis strategies and gradient ascent all search the admissible set only). The hypotheses
are also written as a predicate ``check(inputs, static) -> {hypothesis: bool}``, evaluated on
every stored counterexample and witness when it is replayed (and on each search's worst input),
so an input that does not satisfy them cannot count.

A ``witness(static) -> inputs`` is a closed-form admissible input at which the bound is nearly
attained: quantity/bound there is a lower bound of the statement's tightness that does not
depend on a search's luck (the proof gives the upper bound 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["Statement", "Part", "Claim", "REGISTRY", "register", "get_claim"]


@dataclasses.dataclass
class Statement:
    text: str                      # the inequality, in words / formula
    hypotheses: str                # what is assumed
    quantity: str                  # description of the checked quantity
    bound: str                     # description of the bound
    grid: list[dict]               # static configurations (shapes, fixed parameters)
    dim: Callable[[dict], int]     # size of the flat raw vector for a static config
    to_inputs: Callable[[Any, dict], dict]   # raw (jnp vector) -> admissible inputs
    q: Callable[[dict, dict], Any]           # quantity(inputs, static) -> scalar
    b: Callable[[dict, dict], Any]           # bound(inputs, static) -> scalar
    params: Callable[[dict, dict], dict] | None = None  # scalars to plot tightness against
    raw_scale: float = 1.0         # std of the Gaussian raw sampler
    adversarial: bool = True       # gradient ascent on log(q/b)
    tol: float = 1e-7              # relative slack before a ratio > 1 counts as a violation
    atol: float = 1e-12            # absolute slack (round-off) on quantity - bound
    proof: str = ""                # where the written proof is (docs/theory.md anchor)
    # the hypotheses as a predicate: check(inputs, static) -> {hypothesis: satisfied?}
    check: Callable[[dict, dict], dict] | None = None
    witness: Callable[[dict], dict] | None = None   # closed-form near-extremal inputs
    witness_note: str = ""         # what the witness is
    method: str = ("random admissible samples + hypothesis arrays steered by target(log ratio) "
                   "+ Adam ascent on log(quantity/bound), float64")

    def admissible(self, inputs: dict, static: dict) -> tuple[bool, dict]:
        """(all hypotheses hold, {hypothesis: bool}) for concrete inputs."""
        if self.check is None:
            raise ValueError(f"statement {self.text[:60]!r} has no hypothesis predicate")
        res = {k: bool(v) for k, v in self.check(inputs, static).items()}
        return all(res.values()), res


@dataclasses.dataclass
class Part:
    name: str
    original: Statement | None = None
    corrected: Statement | None = None
    # custom check for statements that are not a single inequality (identities, dynamics);
    # returns a dict merged into the part result (see theory.search.run_part)
    custom: Callable[[Any], dict] | None = None
    note: str = ""


@dataclasses.dataclass
class Claim:
    id: str                        # "C.2"
    kind: str                      # "Theorem" / "Lemma"
    title: str
    paper: str                     # the statement as the paper gives it (equation numbers)
    parts: list[Part]
    symbolic: list[Callable[[], dict]] = dataclasses.field(default_factory=list)


REGISTRY: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    if claim.id in REGISTRY:
        raise KeyError(f"claim {claim.id} registered twice")
    REGISTRY[claim.id] = claim
    return claim


def get_claim(cid: str) -> Claim:
    _load()
    if cid not in REGISTRY:
        raise KeyError(f"unknown claim {cid!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[cid]


def all_claims() -> list[Claim]:
    _load()
    order = ["C.1", "C.2", "C.3", "C.4", "C.5", "C.6", "C.7", "C.8", "C.9", "C.10", "C.11",
             "C.12", "C.13", "C.14", "C.7-sym", "C.8-sym"]
    return [REGISTRY[c] for c in order if c in REGISTRY] + [
        c for k, c in REGISTRY.items() if k not in order]


def _load():
    # importing the claim modules registers them
    from theory.claims import attention, ddim, loss, symmetric  # noqa: F401
