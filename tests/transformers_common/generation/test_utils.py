# Stand-in for transformers' `tests/generation/test_utils.py`, which the 5.25.0 source distribution does not ship
# (see ../README.md). `test_modeling_common.py` uses `GenerationTesterMixin` only in an `issubclass` check that
# a tester of a model able to `generate` inherits it; VideoFirst's encoders cannot generate.


class GenerationTesterMixin:
    """Marker class: the VideoFirst testers do not (and must not) inherit it."""
