"""Counterexample search: random sampling of the hypotheses, hypothesis property testing with
``target()`` steering, and gradient-based adversarial ascent on ``log(quantity / bound)``.

Everything runs in float64 inside ``jax.enable_x64(True)`` and is deterministic (fixed PRNG
keys, ``derandomize=True``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from theory.registry import Claim, Part, Statement

CE_DIR = Path(__file__).parent / "counterexamples"
WIT_DIR = Path(__file__).parent / "witnesses"


@dataclasses.dataclass
class SearchConfig:
    n_random: int = 40          # random admissible samples per static config
    n_hypothesis: int = 30      # hypothesis examples per static config
    restarts: int = 2           # adversarial restarts (from the best random samples)
    steps: int = 80             # Adam steps per restart
    lr: float = 0.05
    seed: int = 0
    max_grid: int | None = None  # static configurations searched per statement (None: all)

    @classmethod
    def quick(cls):
        return cls(n_random=16, n_hypothesis=15, restarts=2, steps=50, max_grid=1)

    @classmethod
    def full(cls):
        return cls(n_random=96, n_hypothesis=80, restarts=4, steps=200, max_grid=None)

    def statics(self, grid):
        return grid if self.max_grid is None else grid[: self.max_grid]

    def budget(self, n_static: int) -> dict:
        return {"static_configs": n_static, "random": self.n_random,
                "hypothesis": self.n_hypothesis, "adversarial_restarts": self.restarts,
                "adam_steps": self.steps}


def _to_py(x):
    if isinstance(x, (jnp.ndarray, np.ndarray)):
        return np.asarray(x, np.float64).tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, dict):
        return {k: _to_py(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_py(v) for v in x]
    return x


def _from_py(x):
    if isinstance(x, list):
        return jnp.asarray(np.asarray(x, np.float64))
    if isinstance(x, dict):
        return {k: _from_py(v) for k, v in x.items()}
    return x


@dataclasses.dataclass
class SearchRecord:
    worst_ratio: float
    worst_static: dict | None
    worst_raw: Any
    worst_inputs: dict | None
    worst_q: float
    worst_b: float
    n_evals: int
    budget: dict
    seconds: float
    samples: list  # (params dict, ratio) for plots
    by_method: dict
    by_static: list = dataclasses.field(default_factory=list)  # per static config: worst ratio
    worst_hypotheses: dict | None = None   # the predicate on the worst input

    @property
    def violated(self) -> bool:
        return self._violated

    def set_tol(self, tol):
        self._violated = self.worst_ratio > 1.0 + tol
        return self


def _ratio(stmt: Statement, static: dict):
    def f(raw):
        inp = stmt.to_inputs(raw, static)
        q = stmt.q(inp, static)
        b = stmt.b(inp, static)
        return q, b
    return f


def _safe_ratio(q, b, atol=0.0):
    """quantity/bound; an excess of at most ``atol`` (round-off) is not counted."""
    q, b = float(q), float(b)
    if not (math.isfinite(q) and math.isfinite(b)):
        return float("nan")
    if q <= b + atol:   # not a violation; degenerate (round-off sized) bounds do not count
        return q / max(b, atol) if max(b, atol) > 0 else 0.0
    if b <= 0:
        return math.inf
    return q / b


def run_statement(stmt: Statement, cfg: SearchConfig, *, hypothesis: bool = True) -> SearchRecord:
    """Search the admissible set of ``stmt`` for the largest quantity/bound ratio."""
    t0 = time.time()
    best = dict(r=-math.inf, static=None, raw=None, q=float("nan"), b=float("nan"))
    n_evals = 0
    samples = []
    by_method = {"random": -math.inf, "hypothesis": -math.inf, "adversarial": -math.inf}
    by_static = []
    with jax.enable_x64(True):
        for si, static in enumerate(cfg.statics(stmt.grid)):
            f = jax.jit(_ratio(stmt, static))
            local = {"r": -math.inf, "n": 0}
            pf = None
            if stmt.params is not None:
                pf = jax.jit(lambda raw, static=static: stmt.params(stmt.to_inputs(raw, static), static))
            n = stmt.dim(static)

            def consider(raw, method, record=False):
                nonlocal n_evals
                q, b = f(raw)
                r = _safe_ratio(q, b, stmt.atol)
                n_evals += 1
                local["n"] += 1
                if math.isnan(r):
                    return r
                local["r"] = max(local["r"], r)
                by_method[method] = max(by_method[method], r)
                if r > best["r"]:
                    best.update(r=r, static=static, raw=np.asarray(raw), q=float(q), b=float(b))
                if record and pf is not None and len(samples) < 4000:
                    samples.append((_to_py(pf(raw)), r))
                return r

            key = jax.random.PRNGKey(cfg.seed * 1000 + si)
            raws = stmt.raw_scale * jax.random.normal(key, (cfg.n_random, n))
            starts = []
            for i in range(cfg.n_random):
                r = consider(raws[i], "random", record=True)
                if not math.isnan(r):
                    starts.append((r, raws[i]))
            if hypothesis and cfg.n_hypothesis > 0:
                _hypothesis_search(stmt, static, n, consider, cfg.n_hypothesis)
            if stmt.adversarial and cfg.restarts > 0 and cfg.steps > 0 and starts:
                starts.sort(key=lambda t: -t[0] if math.isfinite(t[0]) else -1e300)
                ascend = _make_ascent(stmt, static, cfg)
                for r0, raw0 in starts[: cfg.restarts]:
                    consider(ascend(raw0), "adversarial", record=True)
            by_static.append({"static": _to_py(static), "worst_ratio": local["r"],
                              "n_evals": local["n"]})
        worst_inputs, worst_hyp = None, None
        if best["static"] is not None:
            wi = stmt.to_inputs(jnp.asarray(best["raw"]), best["static"])
            worst_inputs = _to_py(wi)
            if stmt.check is not None:
                worst_hyp = stmt.admissible(_from_py(worst_inputs), best["static"])[1]
    rec = SearchRecord(worst_ratio=best["r"], worst_static=best["static"],
                       worst_raw=None if best["raw"] is None else best["raw"].tolist(),
                       worst_inputs=worst_inputs, worst_q=best["q"], worst_b=best["b"],
                       n_evals=n_evals, budget=cfg.budget(len(cfg.statics(stmt.grid))),
                       seconds=time.time() - t0, samples=samples,
                       by_method={k: (v if math.isfinite(v) else None) for k, v in by_method.items()},
                       by_static=by_static, worst_hypotheses=worst_hyp)
    return rec.set_tol(stmt.tol)


def _make_ascent(stmt: Statement, static: dict, cfg: SearchConfig):
    import optax

    def obj(raw):
        inp = stmt.to_inputs(raw, static)
        q = stmt.q(inp, static)
        b = stmt.b(inp, static)
        return -(jnp.log(jnp.maximum(q, 1e-300)) - jnp.log(jnp.maximum(b, 1e-300)))

    opt = optax.adam(cfg.lr)

    @jax.jit
    def run(raw0):
        def body(carry, _):
            raw, st, best_v, best_raw = carry
            v, g = jax.value_and_grad(obj)(raw)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            better = jnp.isfinite(v) & (v < best_v)
            best_v = jnp.where(better, v, best_v)
            best_raw = jnp.where(better, raw, best_raw)
            upd, st = opt.update(g, st, raw)
            return (optax.apply_updates(raw, upd), st, best_v, best_raw), None

        init = (raw0, opt.init(raw0), jnp.asarray(jnp.inf, raw0.dtype), raw0)
        (raw, st, best_v, best_raw), _ = jax.lax.scan(body, init, None, length=cfg.steps)
        v = obj(raw)
        return jnp.where(jnp.isfinite(v) & (v < best_v), raw, best_raw)

    return run


def _hypothesis_search(stmt, static, n, consider, max_examples):
    from hypothesis import HealthCheck, Phase, given, settings, target
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    s = stmt.raw_scale
    elements = st.floats(-3.0 * s, 3.0 * s, allow_nan=False, allow_infinity=False,
                         allow_subnormal=False, width=64)

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.target])
    @given(arrays(np.float64, (n,), elements=elements))
    def prop(raw):
        r = consider(jnp.asarray(raw), "hypothesis")
        if math.isfinite(r):
            target(float(np.log(max(r, 1e-300))), label="log ratio")

    prop()


# --------------------------------------------------------------------------- counterexamples
def ce_path(claim_id: str, part: str) -> Path:
    return CE_DIR / f"{claim_id.replace('.', '_')}__{part}.json"


def save_counterexample(claim: Claim, part: Part, rec: SearchRecord) -> Path:
    CE_DIR.mkdir(parents=True, exist_ok=True)
    p = ce_path(claim.id, part.name)
    data = {"claim": claim.id, "part": part.name, "statement": part.original.text,
            "static": rec.worst_static, "inputs": rec.worst_inputs,
            "quantity": rec.worst_q, "bound": rec.worst_b, "ratio": rec.worst_ratio,
            "margin": rec.worst_q - rec.worst_b}
    p.write_text(json.dumps(_to_py(data), indent=1, allow_nan=True) + "\n")
    return p


def save_constructed_counterexample(data: dict) -> str:
    """Write a constructed counterexample (``data`` names its ``claim`` and ``part``) once: an
    existing file is kept. Returns its path relative to the repository, as the reports cite it."""
    p = ce_path(data["claim"], data["part"])
    if not p.exists():
        p.write_text(json.dumps(data, indent=1) + "\n")
    return str(p.relative_to(CE_DIR.parent.parent))


def replay_counterexample(claim: Claim, part: Part, path: Path | None = None) -> dict:
    """Recompute quantity and bound of a stored counterexample with the current library code."""
    path = path or ce_path(claim.id, part.name)
    data = json.loads(Path(path).read_text())
    stmt = part.original
    with jax.enable_x64(True):
        inputs = _from_py(data["inputs"])
        static = data["static"]
        q = float(stmt.q(inputs, static))
        b = float(stmt.b(inputs, static))
        ok, hyp = stmt.admissible(inputs, static)
    return {"quantity": q, "bound": b, "ratio": _safe_ratio(q, b, stmt.atol), "margin": q - b,
            "stored_ratio": data["ratio"], "admissible": ok, "hypotheses": hyp,
            "violated": q > b * (1 + stmt.tol) + stmt.atol}


# --------------------------------------------------------------------------- witnesses
def wit_path(claim_id: str, part: str) -> Path:
    return WIT_DIR / f"{claim_id.replace('.', '_')}__{part}.json"


def evaluate_witness(stmt: Statement, statics=None) -> list[dict]:
    """The closed-form witness of ``stmt`` at every static configuration of its grid (or of
    ``statics``): quantity, bound, ratio (a lower bound of the tightness) and the hypotheses
    predicate."""
    out = []
    with jax.enable_x64(True):
        for static in (stmt.grid if statics is None else statics):
            inputs = _from_py(_to_py(stmt.witness(static)))
            q, b = float(stmt.q(inputs, static)), float(stmt.b(inputs, static))
            ok, hyp = stmt.admissible(inputs, static)
            out.append({"static": _to_py(static), "inputs": _to_py(inputs), "quantity": q,
                        "bound": b, "ratio": q / b if b > 0 else math.nan,
                        "admissible": ok, "hypotheses": hyp})
    return out


def save_witness(claim: Claim, part: Part, which: str, entries: list[dict]) -> Path:
    WIT_DIR.mkdir(parents=True, exist_ok=True)
    stmt = getattr(part, which)
    p = wit_path(claim.id, part.name)
    data = {"claim": claim.id, "part": part.name, "statement": which, "text": stmt.text,
            "witness": stmt.witness_note, "entries": entries}
    p.write_text(json.dumps(_to_py(data), indent=1, allow_nan=True) + "\n")
    return p


def replay_witness(claim: Claim, part: Part, path: Path | None = None) -> list[dict]:
    """Recompute quantity, bound and hypotheses of a stored witness with the current code."""
    data = json.loads(Path(path or wit_path(claim.id, part.name)).read_text())
    stmt = getattr(part, data["statement"])
    out = []
    with jax.enable_x64(True):
        for e in data["entries"]:
            inputs, static = _from_py(e["inputs"]), e["static"]
            q, b = float(stmt.q(inputs, static)), float(stmt.b(inputs, static))
            ok, hyp = stmt.admissible(inputs, static)
            out.append({"static": static, "ratio": q / b, "stored_ratio": e["ratio"],
                        "admissible": ok, "hypotheses": hyp})
    return out


def eval_statement(stmt: Statement, inputs: dict, static: dict) -> tuple[float, float]:
    with jax.enable_x64(True):
        return float(stmt.q(inputs, static)), float(stmt.b(inputs, static))


# --------------------------------------------------------------------------- parts and claims
_CACHE: dict = {}


def _run_cached(stmt, cfg, hypothesis):
    key = (id(stmt), repr(cfg), hypothesis)
    if key not in _CACHE:
        _CACHE[key] = run_statement(stmt, cfg, hypothesis=hypothesis)
    return _CACHE[key]


_WCACHE: dict = {}


def _witness_cached(stmt, cfg):
    statics = cfg.statics(stmt.grid)
    key = (id(stmt), len(statics))
    if key not in _WCACHE:
        _WCACHE[key] = evaluate_witness(stmt, statics)
    return _WCACHE[key]


def run_part(claim: Claim, part: Part, cfg: SearchConfig, *, save: bool = False,
             hypothesis: bool = True, original: bool = True, witnesses: bool = True) -> dict:
    """Search the paper's statement (unless ``original=False``) and the corrected one; evaluate
    the witness of the statement whose tightness is reported.

    Result keys: ``verdict`` (of the paper's statement), ``violation`` (its worst ratio when
    refuted), ``tightness`` (the search's worst ratio of the corrected statement -- of the
    paper's where it holds: a lower bound of the true tightness found with ``budget``),
    ``tightness_witness`` (the closed-form witness's ratio, another lower bound) and
    ``tightness_bracket`` ([best lower bound, 1]; 1 is the proof)."""
    res: dict[str, Any] = {"claim": claim.id, "part": part.name, "note": part.note}
    if part.custom is not None:
        res.update(part.custom(cfg))
    if part.original is not None and original:
        rec = _run_cached(part.original, cfg, hypothesis)
        res["original"] = _summ(part.original, rec)
        res["verdict"] = "refuted" if rec.violated else "holds"
        res["_orig_rec"] = rec
        if rec.violated:
            res["violation"] = rec.worst_ratio
            p = ce_path(claim.id, part.name)
            if save or not p.exists():
                save_counterexample(claim, part, rec)
            res["counterexample"] = str(p.relative_to(CE_DIR.parent.parent))
            res["replay"] = replay_counterexample(claim, part, p)
    if part.corrected is not None:
        crec = _run_cached(part.corrected, cfg, hypothesis)
        res["corrected"] = _summ(part.corrected, crec)
        res["corrected_verdict"] = "refuted" if crec.violated else "holds"
        res["_corr_rec"] = crec
    # tightness: of the corrected statement when there is one, else of a holding original
    which = "corrected" if part.corrected is not None else (
        "original" if res.get("verdict") == "holds" else None)
    if which is not None and "tightness" not in res:
        src = res[which]
        res["tightness"] = src["worst_ratio"]
        res["tightness_of"] = which
        res["tightness_budget"] = src["budget"]
        stmt = getattr(part, which)
        lower = src["worst_ratio"]
        if witnesses and stmt.witness is not None:
            ent = _witness_cached(stmt, cfg)
            p = wit_path(claim.id, part.name)
            if (save or not p.exists()) and len(ent) == len(stmt.grid):
                save_witness(claim, part, which, ent)
            wr = max(e["ratio"] for e in ent)
            res["tightness_witness"] = wr
            res["witness"] = {"file": str(p.relative_to(WIT_DIR.parent.parent)),
                              "note": stmt.witness_note, "ratio": wr,
                              "admissible": all(e["admissible"] for e in ent),
                              "by_static": [{"static": e["static"], "ratio": e["ratio"]}
                                            for e in ent]}
            lower = max(lower, wr)
        if src.get("violated") is False:
            # (a witness can exceed 1 by round-off, ~1e-14, where the bound is attained)
            res["tightness_bracket"] = [min(lower, 1.0), 1.0]
    return res


def _summ(stmt: Statement, rec: SearchRecord) -> dict:
    return {"text": stmt.text, "hypotheses": stmt.hypotheses, "quantity": stmt.quantity,
            "bound": stmt.bound, "method": stmt.method, "proof": stmt.proof,
            "worst_ratio": rec.worst_ratio, "worst_q": rec.worst_q,
            "worst_b": rec.worst_b, "worst_static": rec.worst_static,
            "violated": rec.violated, "n_evals": rec.n_evals, "budget": rec.budget,
            "by_method": rec.by_method, "by_static": rec.by_static,
            "worst_hypotheses": rec.worst_hypotheses, "seconds": round(rec.seconds, 2)}


def run_claim(claim: Claim, cfg: SearchConfig, *, save: bool = False, symbolic: bool = True,
              hypothesis: bool = True) -> dict:
    t0 = time.time()
    parts = [run_part(claim, p, cfg, save=save, hypothesis=hypothesis) for p in claim.parts]
    sym = [f() for f in claim.symbolic] if symbolic else []
    verdict = "refuted" if any(p.get("verdict") == "refuted" for p in parts) else "holds"
    tight = [p["tightness"] for p in parts if p.get("tightness") is not None
             and math.isfinite(p["tightness"])]
    return {"id": claim.id, "kind": claim.kind, "title": claim.title, "paper": claim.paper,
            "verdict": verdict, "parts": parts, "symbolic": sym,
            "tightness": min(tight) if tight else None,
            "seconds": round(time.time() - t0, 2)}
