"""Skipping the tests of transformers' test mixins that cannot apply to Ferret, each with its reason."""

import pytest


def skip_mixin_tests(test_class: type, mixin: type, reasons: dict[str, str]) -> None:
    """Replaces each named test of `mixin` on `test_class` by one that is skipped with its reason. A name the mixin
    does not have (a test renamed upstream) fails here, so no test is skipped silently."""
    for name, reason in reasons.items():
        assert hasattr(mixin, name), name

        @pytest.mark.skip(reason=reason)
        def skipped(self):
            pass

        setattr(test_class, name, skipped)
