"""Executable claims for appendix C of paper 004 (GE-Adapter): every stated bound as a
checkable statement, with counterexample search, corrected statements and a report.

``python -m theory`` prints the claims table and writes ``theory/report/``.
"""
from theory.registry import REGISTRY, Claim, Part, Statement, all_claims, get_claim  # noqa: F401
