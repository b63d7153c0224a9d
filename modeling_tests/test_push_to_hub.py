"""conversion/push_to_hub.py: dry run lists the folder and writes a model card stating the weights' licence."""

import importlib.util
from pathlib import Path

import pytest
from tiny_models import tiny_ferret_model

REPO = Path(__file__).resolve().parents[1]


def _push_module():
    spec = importlib.util.spec_from_file_location("push_to_hub", REPO / "conversion" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_a_card_with_the_non_commercial_licence(tmp_path, capsys):
    tiny_ferret_model().save_pretrained(tmp_path)
    _push_module().main(["--folder", str(tmp_path), "--repo-id", "someone/ferret-tiny", "--weights", "original-ferret",
                         "--dry-run"])  # fmt: skip
    card = (tmp_path / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "deltas over Vicuna" in card and "someone/ferret-tiny" in card
    printed = capsys.readouterr().out
    assert "Would upload" in printed and "model.safetensors" in printed and "modeling_ferret.py" in printed


def test_original_format_folder_is_refused(parity_dir, tmp_path):
    with pytest.raises(ValueError, match="convert it first"):
        _push_module().push(parity_dir / "ferret_tiny", "someone/x", "original-ferret", dry_run=True)
