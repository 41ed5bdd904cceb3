"""Certified constants of the corrected statements (docs/theory.md), each an *upper bound*
computed rigorously: suprema over a continuous variable are taken cell by cell on a grid with an
interval bound on every cell (never a sampled maximum), suprema over boxes by branch and bound
with the same kind of cell bounds.

* Bilateral filter (Lemma C.7'): ``bilateral_lipschitz_bound`` (the diagonal/off-diagonal split,
  round two), ``bilateral_lipschitz_bound_v1`` (round one: ``sqrt(||J||_1 ||J||_inf)``), the
  displacement constant ``filter_displacement`` (fixed-point part) and the relative-mode constant
  ``relative_mode_bound``.
* Temporal loss: ``grad_const`` (Lemma C.3', exact up to the grid margin) and ``hess_const``
  (Theorem C.1', branch and bound over the similarities).

The basic device ("log-sum bound", docs/theory.md#c7): for a pixel with window offsets j != 0,
spatial weights g_j (W = sum g_j) and range exponents a_j = d_j^2 / (2 sigma_r^2) >= 0, the
normalised weights are p_j = g_j e^{-a_j} / Z with Z >= 1 + sum_j g_j e^{-a_j} (the centre).
For any psi with e^{-a} psi(a) -> 0,

    sum_{j != 0} p_j psi(a_j) <= F*   where F* is the least F >= 0 with W m(F) <= F,
    m(F) = sup_{a >= 0} e^{-a} (psi(a) - F),

because sum_j g_j e^{-a_j}(psi(a_j) - F) <= W m(F); equality when every a_j is the argmax.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------ rigorous 1-D suprema
_A_MAX = 60.0
_N_CELLS = 300_000


@functools.lru_cache(maxsize=1)
def _cells():
    # finer near 0 (the sqrt's steep part), uniform beyond
    a = np.concatenate([np.linspace(0.0, 1.0, 100_001)[:-1],
                        np.linspace(1.0, _A_MAX, _N_CELLS + 1)])
    return a[:-1], a[1:]


def _part_max(part, lo, hi):
    """Upper bound of a monotone or convex function on [lo, hi]: the larger end value."""
    return np.maximum(part(lo), part(hi))


class _Sup:
    """sup_{a >= 0} e^{-a} (psi(a) - F) bounded cell by cell, psi = sum(parts), each part
    monotone or convex on every cell; a >= _A_MAX by the tail bound e^{-A} sum|part(A)| (parts of
    at most polynomial growth, for which e^{-a} psi(a) decreases beyond A)."""

    def __init__(self, parts):
        lo, hi = _cells()
        pmax = sum(_part_max(p, lo, hi) for p in parts)
        e_lo, e_hi = np.exp(-lo), np.exp(-hi)
        self.pos = np.where(pmax >= 0, e_lo, e_hi) * pmax
        self.e_hi = e_hi
        self.tail = math.exp(-_A_MAX) * float(sum(abs(p(np.asarray(_A_MAX))) for p in parts))

    def __call__(self, F):
        return max(float((self.pos - self.e_hi * F).max()), self.tail)


def f_star(parts, W: float) -> float:
    """Least F >= 0 with W m(F) <= F (bisection; the upper end is returned, so the bound is
    rigorous): sup over admissible weights of sum_{j != 0} p_j psi(a_j)."""
    m = _Sup(parts)
    lo, hi = 0.0, 1.0
    while W * m(hi) > hi:
        hi *= 2.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if W * m(mid) <= mid:
            hi = mid
        else:
            lo = mid
    return hi


# ------------------------------------------------------------------ the bilateral filter
def offsets(radius: int, window: str = "square"):
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if window == "square" or dy * dy + dx * dx <= radius * radius]


def spatial_weights(radius: int, sigma_spatial: float) -> dict:
    return {o: math.exp(-(o[0] ** 2 + o[1] ** 2) / (2 * sigma_spatial ** 2))
            for o in offsets(radius) if o != (0, 0)}


def window_mass(radius: int, sigma_spatial: float) -> float:
    """W = sum of the spatial weights of the offsets != 0."""
    return float(sum(spatial_weights(radius, sigma_spatial).values()))


_2a = lambda a: 2.0 * a
_2a_1 = lambda a: 2.0 * a - 1.0
_sqrt2a = lambda a: np.sqrt(2.0 * a)
_abs1_2a = lambda a: np.abs(1.0 - 2.0 * a)
_1p2a = lambda a: 1.0 + 2.0 * a
_t3 = lambda a: (2.0 * a) ** 1.5
_t4 = lambda a: 4.0 * a * a


@functools.lru_cache(maxsize=None)
def filter_pieces(W: float) -> dict:
    """The log-sum constants of one pixel with window mass W (docs/theory.md#c7)."""
    A = f_star([_2a], W)                          # sup E_p[d^2] / sigma_r^2
    diag = 1.0 + f_star([_2a_1], W)               # sup of the Jacobian's diagonal
    M1 = f_star([_sqrt2a], W)                     # sup E_p|d| / sigma_r  (>= |mu| / sigma_r)
    R_a = f_star([_1p2a], W)                      # row sum of the off-diagonal part, bound (a)
    R_b = f_star([_abs1_2a], W) + M1 ** 2         # bound (b)
    T3 = f_star([_t3], W)                         # sup E_p|t|^3, t = d / sigma_r
    T4 = f_star([_t4], W)                         # sup E_p t^4
    U = min(T3 + M1 * A, math.sqrt(A * T4))       # sup |Cov_p(t, t^2)| (relative mode)
    return {"W": W, "A": A, "diag": diag, "M1": M1, "row_off": min(R_a, R_b),
            "row_off_a": R_a, "row_off_b": R_b, "E_t3": T3, "E_t4": T4, "U": U}


def _h_cell(g: float, M1: float) -> float:
    """sup_{a >= 0} e^{-a} (|1 - 2a| + M1 sqrt(2a)) / (1 + g e^{-a}), cell bounds."""
    lo, hi = _cells()
    num = _part_max(_abs1_2a, lo, hi) + M1 * _sqrt2a(hi)
    return float(max((num / (np.exp(lo) + g)).max(),
                     (1 + 2 * _A_MAX + M1 * math.sqrt(2 * _A_MAX)) * math.exp(-_A_MAX)))


def _h_cell_v1(g: float, A: float) -> float:
    """round one: sup_a e^{-a} (1 + 2a + sqrt(2 A a)) / (1 + g e^{-a})."""
    lo, hi = _cells()
    num = _1p2a(hi) + math.sqrt(A) * _sqrt2a(hi)
    return float((num / (np.exp(lo) + g)).max())


def _column_weight(radius: int, sigma_spatial: float, hfun, *, exclude_self: bool) -> float:
    """max over pixels k (of every image size up to 4r+3 per axis, which covers every position
    relative to the borders) of sum over the (pixel i, offset j != 0) pairs that read k under
    edge padding of g_j h(g_j); with ``exclude_self`` the pairs with i == k (a clipped offset
    reading its own pixel: part of the diagonal) are left out."""
    g = spatial_weights(radius, sigma_spatial)
    hv = {v: hfun(v) for v in sorted(set(g.values()))}
    hs = {o: v * hv[v] for o, v in g.items()}
    n = 4 * radius + 3
    best = 0.0
    for h in range(1, n + 1):
        for w in range(1, n + 1):
            G = np.zeros((h, w))
            I, J = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            for (dy, dx), v in hs.items():
                Y = np.clip(I + dy, 0, h - 1)
                X = np.clip(J + dx, 0, w - 1)
                keep = ((Y != I) | (X != J)) if exclude_self else np.ones_like(I, bool)
                np.add.at(G, (Y[keep], X[keep]), v)
            best = max(best, float(G.max()))
    return best


@functools.lru_cache(maxsize=None)
def bilateral_certificate(radius: int, sigma_spatial: float) -> dict:
    """Round two (docs/theory.md#c7): J = Diag + Off,
    ||J||_2 <= max_i |J_ii| + sqrt(||Off||_inf ||Off||_1)."""
    W = window_mass(radius, sigma_spatial)
    pc = filter_pieces(W)
    col = _column_weight(radius, sigma_spatial, lambda v: _h_cell(v, pc["M1"]), exclude_self=True)
    lam = pc["diag"] + math.sqrt(pc["row_off"] * col)
    return {**pc, "col_off": col, "Lambda": lam, "radius": radius, "sigma_spatial": sigma_spatial}


def bilateral_lipschitz_bound(radius: int, sigma_spatial: float, window: str = "square") -> float:
    """Lambda(r, sigma_s): ||B(x) - B(y)||_2 <= Lambda ||x - y||_2 for the edge-padded,
    per-channel bilateral filter with absolute sigma_range (any sigma_range > 0, any image size);
    round two, docs/theory.md#c7."""
    if window != "square":
        raise ValueError("the certificate is computed for the square window")
    return bilateral_certificate(int(radius), float(sigma_spatial))["Lambda"]


@functools.lru_cache(maxsize=None)
def bilateral_lipschitz_bound_v1(radius: int, sigma_spatial: float) -> float:
    """Round one (the first review's constant): sqrt(R Col), R = 1 + 2A,
    Col = (1 + A) + max_k sum_{pairs reading k} g h1(g)."""
    W = window_mass(radius, sigma_spatial)
    A = filter_pieces(W)["A"]
    col = _column_weight(radius, sigma_spatial, lambda v: _h_cell_v1(v, A), exclude_self=False)
    return math.sqrt((1 + 2 * A) * ((1 + A) + col))


def filter_displacement(radius: int, sigma_spatial: float) -> float:
    """M1(W): |B(x)_i - x_i| <= M1 sigma_r for every pixel of every image (fixed-point part)."""
    return filter_pieces(window_mass(radius, sigma_spatial))["M1"]


def relative_mode_bound(radius: int, sigma_spatial: float, s_r: float) -> float:
    """Lipschitz bound of the relative range mode (sigma = s_r * std per image and channel):
    Lambda(r, sigma_s) + s_r U(W), docs/theory.md#c7-relative."""
    W = window_mass(radius, sigma_spatial)
    return bilateral_lipschitz_bound(radius, sigma_spatial) + s_r * filter_pieces(W)["U"]


def diagonal_witness_value(W: float) -> tuple[float, float]:
    """(max_S (1 - S) + 2 S log(W (1 - S) / S), a*): the Jacobian diagonal at a centre pixel
    whose neighbours all sit at |d| = sigma_r sqrt(2 a*) with balanced signs (mu = 0); a* =
    log(W (1 - S*) / S*). This equals the certified diagonal bound up to the grid margin."""
    S = np.linspace(1e-9, 1 - 1e-9, 2_000_001)
    f = (1 - S) + 2 * S * np.log(W * (1 - S) / S)
    k = int(np.argmax(f))
    return float(f[k]), float(math.log(W * (1 - S[k]) / S[k]))


# ------------------------------------------------------------------ temporal loss constants
def difference_matrix(T: int) -> np.ndarray:
    D = np.zeros((T - 2, T - 1))
    for i in range(T - 2):
        D[i, i], D[i, i + 1] = -1.0, 1.0
    return D


def branch_and_bound(upper, value, lo, hi, *, rel_tol: float, max_boxes: int,
                     batch: int = 512) -> dict:
    """Maximise over the box [lo, hi]: ``upper(L, H)`` bounds the function on each of a batch of
    boxes from above (rigorously), ``value(X)`` evaluates it at points. Best-first in batches;
    the returned ``upper`` is the largest upper bound among the boxes still open (or the best
    value when all are closed): a certified upper bound of the supremum whatever the budget."""
    L, H = lo[None].astype(float), hi[None].astype(float)
    U = upper(L, H)
    X = (L + H) / 2
    v = value(X)
    best, arg = float(v.max()), X[int(np.argmax(v))]
    n_eval = 1
    while True:
        keep = U > best * (1 + rel_tol)
        L, H, U = L[keep], H[keep], U[keep]
        if len(U) == 0 or n_eval >= max_boxes:
            break
        b = min(batch, len(U))
        top = np.argpartition(-U, b - 1)[:b]
        rest = np.ones(len(U), bool)
        rest[top] = False
        Ls, Hs = L[top], H[top]
        k = np.argmax(Hs - Ls, axis=1)
        mid = (Ls + Hs) / 2
        r = np.arange(b)
        L1, H1, L2, H2 = Ls.copy(), Hs.copy(), Ls.copy(), Hs.copy()
        H1[r, k] = mid[r, k]
        L2[r, k] = mid[r, k]
        Ln, Hn = np.concatenate([L1, L2]), np.concatenate([H1, H2])
        Un = upper(Ln, Hn)
        Xn = (Ln + Hn) / 2
        vn = value(Xn)
        n_eval += 2 * b
        j = int(np.argmax(vn))
        if vn[j] > best:
            best, arg = float(vn[j]), Xn[j]
        L, H, U = np.concatenate([L[rest], Ln]), np.concatenate([H[rest], Hn]), \
            np.concatenate([U[rest], Un])
    # boxes were closed when their bound fell below best * (1 + rel_tol)
    cert = max(float(U.max()) if len(U) else -np.inf, best * (1 + rel_tol))
    return {"upper": cert, "lower": best, "argmax": np.asarray(arg).tolist(), "boxes": n_eval,
            "rel_tol": rel_tol}


@functools.lru_cache(maxsize=None)
def grad_sup(T: int) -> dict:
    """The result of :func:`_grad_bb` for T (cached like :func:`hess_sup`)."""
    cached = _load_cache().get(f"grad_sup_T{T}")
    return cached if cached is not None else _grad_bb(T)


def _grad_bb(T: int, rel_tol: float = 1e-4) -> dict:
    """G_T = max_t sup_s sum_{k in {t-1, t}} |c_k(s)| sqrt(1 - s_k^2), c = D^T D s: the sharp
    constant of ||grad_{F_t} L|| <= (2/(T-1)) G_T / ||F_t|| (docs/theory.md#c3).

    c_k is linear in the similarities other than s_{t-1}, s_t, so their extremes +-1 suffice
    (|linear| is convex); s_k = cos phi_k, phi in [0, pi]^(1 or 2) by branch and bound: on a box
    |c_k| is largest at a corner (c_k is monotone in each phi) and sin phi_k at pi/2 or an end.
    Returns the upper bound and the maximiser (a realisable witness)."""
    DtD = difference_matrix(T).T @ difference_matrix(T)
    best = {"upper": 0.0, "lower": 0.0}
    for t in range(T):                               # frame t (0-based) enters s_{t-1}, s_t
        inv = [k for k in (t - 1, t) if 0 <= k < T - 1]
        others = sorted({int(l) for k in inv for l in np.nonzero(DtD[k])[0] if l not in inv})
        for signs in itertools.product([-1.0, 1.0], repeat=len(others)):
            base = np.array([sum(DtD[k, l] * sg for l, sg in zip(others, signs)) for k in inv])
            C = DtD[np.ix_(inv, inv)]

            def value(X, base=base, C=C):
                return (np.abs(base + np.cos(X) @ C.T) * np.sin(X)).sum(axis=1)

            def upper(L, H, base=base, C=C):
                n = L.shape[1]
                cm = np.zeros_like(L)
                for ch in itertools.product([0, 1], repeat=n):
                    Xc = np.where(np.array(ch, bool), H, L)
                    cm = np.maximum(cm, np.abs(base + np.cos(Xc) @ C.T))
                sm = np.where((L <= math.pi / 2) & (H >= math.pi / 2), 1.0,
                              np.maximum(np.sin(L), np.sin(H)))
                return (cm * sm).sum(axis=1)

            n = len(inv)
            r = branch_and_bound(upper, value, np.zeros(n), np.full(n, math.pi),
                                 rel_tol=rel_tol, max_boxes=400_000)
            if r["upper"] > best["upper"]:
                best["upper"] = r["upper"]
            if r["lower"] > best["lower"]:
                best.update(lower=r["lower"], witness={
                    "frame": t, "involved": inv, "phis": r["argmax"], "others": others,
                    "signs": list(signs)})
    return {"T": T, "G_upper": best["upper"], "G_lower": best["lower"],
            "witness": best["witness"]}


def grad_const(T: int) -> float:
    """g_T (round two): ||grad_{F_t} L|| <= g_T / ||F_t||, g_T = (2/(T-1)) G_T."""
    return 2.0 / (T - 1) * grad_sup(T)["G_upper"]


def grad_const_v1(T: int) -> float:
    """round one: g_T = 2 c_T / (T-1), c_T = max_t (b_{t-1} + b_t)."""
    b = np.full(T - 1, 4.0)
    b[0] = b[-1] = 2.0
    if T == 3:
        b[:] = 2.0
    bb = np.concatenate([[0.0], b, [0.0]])
    return 2.0 / (T - 1) * float(max(bb[t] + bb[t + 1] for t in range(T)))


KAPPA_V1 = 1.0 + 2.0 / math.sqrt(3.0)


def lam_D(T: int) -> float:
    return 2.0 + 2.0 * math.cos(math.pi / (T - 1))


def hess_const_v1(T: int) -> float:
    """round one: K_T = (2/(T-1)) (4 lambda_D + kappa c_T)."""
    return 2.0 / (T - 1) * (4.0 * lam_D(T) + KAPPA_V1 * grad_const_v1(T) * (T - 1) / 2.0)


def h_ff(c):
    """||Hess_FF cos(F, G)|| at unit norms and cosine c: (|c| + sqrt(4 - 3c^2)) / 2."""
    c = np.abs(c)
    return (c + np.sqrt(4.0 - 3.0 * c * c)) / 2.0


_H_PEAK = 1.0 / math.sqrt(3.0)       # h_ff increases on [0, 1/sqrt 3], decreases beyond


class _HessBound:
    """The per-similarity-vector bound of Theorem C.1' (docs/theory.md#c1):
    (T-1)/2 ||Hess L|| m^2 <= F1(s) + F2(s),
    F1 = max_rho lambda_max(D Sigma N(rho) Sigma D^T), Sigma = diag(sqrt(1 - s^2)),
    N(rho) = tridiag(2; rho), rho in {-1, 1}^(T-2) (the extremes of [-1, 1]: lambda_max is convex
    in rho), monotone non-decreasing in each sigma_k;
    F2 = lambda_max of the T x T (nonnegative) matrix of block-norm bounds of sum_k c_k Hess s_k:
    diagonal |c_{t-1}| h(s_{t-1}) + |c_t| h(s_t), off-diagonal |c_t|, h = h_ff.
    Everything is batched over the first axis."""

    def __init__(self, T):
        self.T = T
        self.D = difference_matrix(T)
        self.DtD = self.D.T @ self.D
        rhos = list(itertools.product([-1.0, 1.0], repeat=T - 2))
        self.N = np.stack([2 * np.eye(T - 1) + np.diag(r, 1) + np.diag(r, -1) for r in rhos])

    def f1(self, sig):
        S = sig[:, None, :, None] * self.N[None] * sig[:, None, None, :]
        M = np.einsum("ij,brjk,lk->bril", self.D, S, self.D)
        return np.linalg.eigvalsh(M)[..., -1].max(axis=1)

    def f2(self, cabs, hk):
        T = self.T
        Mx = np.zeros((cabs.shape[0], T, T))
        for t in range(T):
            for k in (t - 1, t):
                if 0 <= k < T - 1:
                    Mx[:, t, t] += cabs[:, k] * hk[:, k]
            if t < T - 1:
                Mx[:, t, t + 1] = Mx[:, t + 1, t] = cabs[:, t]
        return np.linalg.eigvalsh(Mx)[:, -1]

    def value(self, S):
        sig = np.sqrt(np.clip(1 - S * S, 0, 1))
        return self.f1(sig) + self.f2(np.abs(S @ self.DtD.T), h_ff(S))

    def upper(self, L, H):
        a_lo = np.where((L <= 0) & (H >= 0), 0.0, np.minimum(np.abs(L), np.abs(H)))
        a_hi = np.maximum(np.abs(L), np.abs(H))
        sig_hi = np.sqrt(np.clip(1 - a_lo ** 2, 0, 1))
        mid, half = (L + H) / 2, (H - L) / 2
        cabs = np.abs(mid @ self.DtD.T) + half @ np.abs(self.DtD).T     # max |c_k| on the box
        hk = h_ff(np.clip(_H_PEAK, a_lo, a_hi))                         # sup of h on the box
        return self.f1(sig_hi) + self.f2(cabs, hk)


def _hess_bb(T: int, rel_tol: float = 2e-3, max_boxes: int = 3_000_000) -> dict:
    """sup_s F1(s) + F2(s) over s in [-1, 1]^(T-1) by branch and bound (the bound is even in s,
    so s_1 >= 0 suffices)."""
    hb = _HessBound(T)
    lo = -np.ones(T - 1)
    lo[0] = 0.0
    r = branch_and_bound(hb.upper, hb.value, lo, np.ones(T - 1), rel_tol=rel_tol,
                         max_boxes=max_boxes)
    return {"T": T, **r}


@functools.lru_cache(maxsize=None)
def hess_sup(T: int) -> dict:
    """The branch-and-bound result for T (from theory/report/constants_cache.json when present;
    ``python -m theory.constants`` recomputes it; tests re-check small T)."""
    cached = _load_cache().get(f"hess_sup_T{T}")
    return cached if cached is not None else _hess_bb(T)


def hess_const(T: int) -> float:
    """K_T (round two): ||Hess L(F)|| <= K_T / m^2 on S_m, K_T = (2/(T-1)) sup_s (F1 + F2)."""
    return 2.0 / (T - 1) * hess_sup(T)["upper"]


def f1_argmax_rho(T: int) -> list:
    """The rho vertex of N(rho) at which F1(s = 0) = lambda_max(D N(rho) D^T) is attained."""
    hb = _HessBound(T)
    M = np.einsum("ij,rjk,lk->ril", hb.D, hb.N, hb.D)
    r = int(np.argmax(np.linalg.eigvalsh(M)[:, -1]))
    return [float(hb.N[r][k, k + 1]) for k in range(T - 2)]


def f1_max(T: int) -> float:
    """F1 at s = 0 (all frames orthogonal to their neighbours): attained by the witness."""
    return float(_HessBound(T).value(np.zeros((1, T - 1)))[0])


# ------------------------------------------------------------------ cache of the slow ones
CACHE = Path(__file__).parent / "report" / "constants_cache.json"


@functools.lru_cache(maxsize=1)
def _load_cache() -> dict:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


# branch-and-bound settings of the cached constants: (relative gap, box budget)
BB_SETTINGS = {3: (2e-3, 3_000_000), 4: (2e-3, 3_000_000), 5: (2e-3, 3_000_000),
               6: (2e-2, 2_000_000)}


def write_cache(Ts=(3, 4, 5, 6), known: dict | None = None) -> dict:
    """Recompute the branch-and-bound constants and store them (about 20 minutes of one core;
    ``known`` results with the same settings are taken as they are)."""
    data = {}
    for T in Ts:
        if known and f"hess_sup_T{T}" in known:
            data[f"hess_sup_T{T}"] = known[f"hess_sup_T{T}"]
            data[f"grad_sup_T{T}"] = _grad_bb(T)
            continue
        tol, boxes = BB_SETTINGS[T]
        data[f"hess_sup_T{T}"] = _hess_bb(T, rel_tol=tol, max_boxes=boxes)
        data[f"grad_sup_T{T}"] = _grad_bb(T)
        print(T, data[f"hess_sup_T{T}"], flush=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(data, indent=1) + "\n")
    _load_cache.cache_clear()
    hess_sup.cache_clear()
    return data


if __name__ == "__main__":
    import time
    t0 = time.time()
    print(json.dumps(write_cache(), indent=1))
    print(f"{time.time() - t0:.1f} s")
