"""Claim definitions: ``loss`` (C.1-C.5), ``ddim`` (C.6-C.9), ``attention`` (C.10-C.14)."""
