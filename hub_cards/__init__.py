"""Model-card template, Inference Endpoints handler and its requirements, shipped with every exported checkpoint.

These are data files for `videofirst.hub`; `handler.py` runs on the endpoint, not inside this package.
"""
