"""transformers-ferret stub for transformers' `utils/fetch_hub_objects_for_ci.py` (not vendored).

`tests/test_processing_common.py` and `tests/test_image_processing_common.py` put `../utils` on `sys.path` and import
`url_to_local_path` from this module at import time. In transformers' CI the real module maps the URLs of Hub test
files (sample images, videos, audio) to copies downloaded ahead of time. This project never downloads: the stub returns
each URL unchanged, and the Ferret tests skip the few mixin tests that would open one (see
`../test_processing_ferret.py` and `../test_image_processing_ferret.py`).
"""


def url_to_local_path(url):
    return url
