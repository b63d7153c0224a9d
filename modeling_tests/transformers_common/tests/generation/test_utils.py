"""transformers-ferret stub for transformers' `tests/generation/test_utils.py` (not vendored).

The 5.23.0 version of that file is not in the PyPI source distribution of transformers 5.23.0, so it cannot be
vendored unchanged (see ../../README.md). `tests/test_modeling_common.py` imports `GenerationTesterMixin` only for
`test_generation_tester_mixin_inheritance`, which checks that a tester of a generative model declares generation
coverage. This marker class carries no tests: `modeling_tests/test_modeling_ferret_common.py` inherits it and
defines its own generation tests (greedy, sampling, beam search, num_return_sequences, cache equivalence, left
padding).
"""


class GenerationTesterMixin:
    pass
