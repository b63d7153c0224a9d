"""transformers-ferret stub for transformers' `tests/exporters/test_export.py` (not vendored).

`tests/test_modeling_common.py` 5.23.0 makes `ModelTesterMixin` inherit `ExportTesterMixin`. The 5.23.0 version of
that file is not in the PyPI source distribution, and the export tests need exporter back ends (ONNX, ExecuTorch,
OpenVINO) that this project does not install; Ferret also declares `_can_compile_fullgraph = False` (the region
sampler has data-dependent shapes). This empty mixin keeps the vendored file unchanged and runs no export test.
"""


class ExportTesterMixin:
    pass
