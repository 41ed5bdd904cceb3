"""The statements of claims C.1-C.5 (the temporal consistency loss), one module per claim;
:mod:`theory.claims.loss` registers them and re-exports their names."""
