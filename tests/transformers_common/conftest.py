# These modules hold transformers' test mixins, not tests; tests/modeling/test_transformers_common.py imports them
# (after checking the installed transformers is the vendored version).
collect_ignore = ["test_modeling_common.py", "exporters", "generation"]
