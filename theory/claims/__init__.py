"""Claim definitions: ``loss`` (C.1-C.5, their statements in ``temporal_loss``), ``ddim``
(C.6-C.9), ``attention`` (C.10-C.14), ``symmetric`` (C.7-sym, C.8-sym)."""
