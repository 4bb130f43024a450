# Stand-in for transformers' `tests/exporters/test_export.py`, which the 5.25.0 source distribution does not ship
# (see ../README.md). `ModelTesterMixin` only inherits this mixin; its tests are transformers' export tests
# (torch.export, ONNX, ExecuTorch, ...), which are not part of what this package runs.


class ExportTesterMixin:
    """Empty: no export tests run here (`test_torch_exportable = False` in the VideoFirst testers)."""
