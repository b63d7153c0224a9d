"""The files under tests/ are transformers' shared test mixins, imported by ../test_modeling_ferret_common.py;
they hold no test of their own, so pytest does not collect them."""

collect_ignore = ["tests"]
