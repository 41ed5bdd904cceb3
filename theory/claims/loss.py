"""Claims C.1-C.5: differentiability, gradient bound, Lipschitz gradient, gradient descent and
convexity of the temporal consistency loss -- checked on the library's own loss
(:func:`jaxvedit.losses.temporal_consistency_loss`).

The statements live one module per claim in :mod:`theory.claims.temporal_loss` (``common``: the
loss on small frames, samplers, grids, hypotheses, witness frames; ``c1`` .. ``c5``); this module
registers the five claims, in order, and re-exports their names.
"""
from __future__ import annotations

from theory import symbolic
from theory.claims.temporal_loss.c1 import (
    c1_any_constant_custom, c1_any_constant_ratio, C1_CANDIDATES, c1_corr, c1_hvp_custom,
    C1_LAMBDAS, c1_orig)
from theory.claims.temporal_loss.c2 import c2_corr, c2_orig
from theory.claims.temporal_loss.c3 import (
    c3_grad_corr, c3_grad_orig, c3_lip_corr, c3_lip_orig, _max_frame_grad)
from theory.claims.temporal_loss.c4 import (
    c3_descent_orig, c4_limit_corr, c4_limit_custom, c4_step_corr, c4_step_paper, _c4_sum,
    _eff_curv, _eff_curv_direct, _gd_step, HYP_STEP, K_STEPS)
from theory.claims.temporal_loss.c5 import c5_custom, c5_F_corr, c5_F_orig, c5_s, loss_of_s
from theory.claims.temporal_loss.common import (
    frame_norms_np, FRAME_SHAPE, grad_const, grad_const_v1, gradient_witness_frames, GRID_M, GRID_m,
    hess_const, hess_const_v1, hessian_witness_frames, HYP_LOWER, HYP_LOWER2, HYP_UPPER, HYP_UPPER2,
    lam_D, loss, N, sims)
from theory.registry import Claim, Part, register

# the names of the statements and helpers, importable from here as before the split (the
# tests reach some private helpers too)
__all__ = [
    "FRAME_SHAPE", "N", "loss", "sims", "grad_const", "hess_const", "grad_const_v1",
    "hess_const_v1", "lam_D", "GRID_M", "GRID_m", "HYP_UPPER", "HYP_UPPER2", "HYP_LOWER",
    "HYP_LOWER2", "hessian_witness_frames", "gradient_witness_frames", "c1_orig", "c1_corr",
    "frame_norms_np", "c1_any_constant_ratio", "C1_LAMBDAS", "C1_CANDIDATES",
    "c1_any_constant_custom", "c2_orig", "c2_corr", "_max_frame_grad", "c3_grad_orig",
    "c3_grad_corr", "c3_lip_orig", "c3_lip_corr", "_gd_step", "c3_descent_orig", "HYP_STEP",
    "_eff_curv_direct", "_eff_curv", "c4_step_corr", "c4_step_paper", "K_STEPS", "_c4_sum",
    "c4_limit_corr", "c4_limit_custom", "loss_of_s", "c5_s", "c5_custom", "c5_F_orig", "c5_F_corr",
    "c1_hvp_custom",
]


# ================================================================= registry
register(Claim(
    "C.1", "Theorem", "Optimizability of the temporal consistency loss",
    "If ||F_t||_F <= M for all t, L_temporal (eq. 22) is differentiable in {F_t} and its "
    "gradient is Lipschitz continuous.",
    [Part("lipschitz", c1_orig, c1_corr, custom=c1_hvp_custom,
          note="reading 1: with the only constant the appendix gives, 16/M. L is not even "
               "defined/differentiable at F_t = 0, which ||F_t|| <= M admits; its Hessian grows "
               "like 1/min_t ||F_t||^2. A lower bound m is what is needed; M is irrelevant (L is "
               "invariant to rescaling each frame)."),
     Part("any_constant", None, c1_corr, custom=c1_any_constant_custom,
          note="reading 2: with *some* constant. Homogeneity (L(lam F) = L(F)) scales the "
               "secant ratio of grad L by lam^-2 inside {||F_t|| <= M}: no constant works.")],
    symbolic=[symbolic.check_cosine_hessian]))

register(Claim(
    "C.2", "Lemma", "Gradient of the cosine similarity",
    "||F_t||_F <= M implies ||grad_{F_t} Sim(F_t, F_{t+1})||_F <= 2/M (eq. 23).",
    [Part("bound", c2_orig, c2_corr,
          note="eq. 26 inverts the inequality: ||F|| <= M gives 1/||F|| >= 1/M, not <=.")],
    symbolic=[symbolic.check_cosine_gradient]))

register(Claim(
    "C.3", "Lemma", "Gradient bound and Lipschitz constant of L_temporal",
    "||grad_{F_t} L|| <= 16(T-2)/(M(T-1)) (eq. 32/37) and grad L is Lipschitz with L <= 16/M "
    "(eq. 39).",
    [Part("gradient", c3_grad_orig, c3_grad_corr,
          note="inherits C.2's inverted inequality; also the proof's sum runs over all T-2 "
               "terms although only two similarities depend on F_t."),
     Part("lipschitz", c3_lip_orig, c3_lip_corr,
          note="a bound on the gradient does not bound its Lipschitz constant; the true "
               "constant scales like 1/m^2, not 1/M."),
     Part("descent", c3_descent_orig, c4_step_corr,
          note="the chain C.3 => C.4: C.3's constant 16/M plugged into Thm C.4's step rule "
               "eta < 2/L. 16/M is not a Lipschitz constant of grad L (C.3 'lipschitz'), so the "
               "step is far too large for features of small norm; with a valid constant the "
               "descent holds (C.4 'step').")]))

register(Claim(
    "C.4", "Theorem", "Convergence of gradient descent",
    "If grad L_temporal is L-Lipschitz and eta < 2/L, L_temporal decreases monotonically and "
    "GD converges to a local minimum.",
    [Part("step", c4_step_paper, c4_step_corr,
          note="the descent half is true with a valid Lipschitz constant (L_m = K_T/m0^2 on "
               "S_m0, which GD never leaves); the quantitative form is the corrected statement. "
               "Its failure with C.3's constant 16/M is a failure of C.3 (part 'descent' there)."),
     Part("limit", None, c4_limit_corr, custom=c4_limit_custom,
          note="the proof appeals to convexity (Lemma C.5) but L is convex in s, not in F; "
               "stationary points include global maxima."),
     Part("convexity", c5_F_orig, c5_F_corr,
          note="the proof's step 'by Lemma C.5, L is convex' (eq. 47 and the last paragraph) "
               "needs convexity in the parameters; Lemma C.5 gives it in s only.")]))

register(Claim(
    "C.5", "Lemma", "Convexity of the temporal consistency loss",
    "L_temporal = 1/(T-1) ||D s||^2 with D the (T-2)x(T-1) difference matrix (eq. 43); "
    "D^T D is PSD, so L_temporal is convex in the similarities.",
    [Part("similarities", c5_s, None, custom=c5_custom,
          note="holds as stated; eq. 43 calls D 'second-order' but it is the first-order "
               "difference of s. The convexity is in s only: Thm C.4's use of it as convexity "
               "in the parameters is refuted under C.4 (part 'convexity').")],
    symbolic=[symbolic.check_difference_operator]))
