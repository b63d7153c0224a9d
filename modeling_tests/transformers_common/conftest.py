"""The files under tests/ are transformers' shared test mixins, imported by ../test_modeling_ferret_common.py,
../test_processing_ferret.py and ../test_image_processing_ferret.py; they hold no test of their own, and utils/ holds
a stub they import, so pytest collects neither."""

collect_ignore = ["tests", "utils"]
