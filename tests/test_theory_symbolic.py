"""sympy checks: eq. 24 gradient and the Hessian of cos vs JAX, D of Lemma C.5, the one-step
DDIM constant of Lemma C.8, the unrolled recursion of Lemma C.9."""
import pytest

from theory import symbolic


@pytest.mark.parametrize("check", [symbolic.check_cosine_gradient, symbolic.check_cosine_hessian,
                                   symbolic.check_difference_operator, symbolic.check_ddim_constant,
                                   symbolic.check_unrolled])
def test_symbolic(check):
    r = check()
    assert r["passed"], r


def test_difference_operator_rows():
    r = symbolic.check_difference_operator(range(3, 16))
    assert all(row["DtD_psd"] and row["quadratic_form_equals_eq22"] for row in r["rows"])


def test_cosine_hessian_kappa_is_two():
    # the scan finds sup ||Hess cos|| = 2 at unit norms (attained as the angle -> 0 or pi);
    # the corrected constants use the provable 1 + 2/sqrt(3)
    r = symbolic.check_cosine_hessian()
    assert abs(r["kappa_scan"] - 2.0) < 1e-6
