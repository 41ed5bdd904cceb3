"""Hypotheses as predicates: builders of ``check(inputs, static) -> {hypothesis: bool}`` for the
statements (evaluated on concrete arrays: every replayed counterexample and witness, and each
search's worst input). Tolerances are relative round-off allowances only."""
from __future__ import annotations

import numpy as np

RTOL = 1e-9


def _a(x):
    return np.asarray(x, np.float64)


def combine(*checks):
    def check(inputs, static):
        out = {}
        for c in checks:
            out.update(c(inputs, static))
        return out
    return check


def finite(*keys):
    def check(i, s):
        return {f"{k} finite": bool(np.all(np.isfinite(_a(i[k])))) for k in keys if k in i}
    return check


def frame_norms(F):
    F = _a(F)
    return np.linalg.norm(F.reshape(F.shape[0], -1), axis=1)


def frames_upper(*keys, bound="M"):
    """||F_t|| <= M (the paper's hypothesis) and F_t != 0 (L is defined)."""
    def check(i, s):
        out = {}
        for k in keys:
            n = frame_norms(i[k])
            out[f"||{k}_t|| <= {bound}"] = bool(np.all(n <= s[bound] * (1 + RTOL)))
            out[f"{k}_t != 0"] = bool(np.all(n > 0))
        return out
    return check


def frames_lower(*keys, bound="m"):
    """||F_t|| >= m > 0 (the corrected hypothesis)."""
    def check(i, s):
        out = {f"{bound} > 0": s[bound] > 0}
        for k in keys:
            out[f"||{k}_t|| >= {bound}"] = bool(np.all(frame_norms(i[k]) >= s[bound] * (1 - RTOL)))
        return out
    return check


def in_interval(key, lo, hi, *, lo_open=False, hi_open=False, name=None):
    def check(i, s):
        v = _a(i[key])
        ok_lo = np.all(v > lo) if lo_open else np.all(v >= lo - RTOL * max(1, abs(lo)))
        ok_hi = np.all(v < hi) if hi_open else np.all(v <= hi + RTOL * max(1, abs(hi)))
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        return {name or f"{key} in {lb}{lo}, {hi}{rb}": bool(ok_lo and ok_hi)}
    return check


def static(name, pred):
    """A hypothesis on the static configuration only (schedule values, filter parameters)."""
    def check(i, s):
        return {name: bool(pred(s))}
    return check


def inputs(name, pred):
    def check(i, s):
        return {name: bool(pred(i, s))}
    return check
