"""transformers-ferret stub for transformers' `tests/utils/test_configuration_utils.py` (not vendored).

`tests/test_configuration_common.py` imports `config_common_kwargs` for `ConfigTester.check_config_arguments_init`,
which returns before reading it for composite configs (`config_class.sub_configs` non-empty), as `FerretConfig` is.
The 5.23.0 file is not in the PyPI source distribution, so this stub only provides the name.
"""

config_common_kwargs = {}
