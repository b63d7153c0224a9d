"""The original-code fixtures in `fixtures/original_ferret` (Ferret) and `fixtures/original_ferret_ui` (Ferret-UI) are
the files their generators wrote: every data file is listed in the folder's `SHA256SUMS` with its checksum, so a
fixture edited by hand (or a file added without regenerating the list) fails here before any parity test compares
against it."""

import hashlib
from pathlib import Path

import pytest

from tiny_models import ORIGINAL_FERRET_FIXTURES

ORIGINAL_FERRET_UI_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original_ferret_ui"
FOLDERS = {"original_ferret": ORIGINAL_FERRET_FIXTURES, "original_ferret_ui": ORIGINAL_FERRET_UI_FIXTURES}
NOT_DATA = {"README.md", "generate.py", "SHA256SUMS"}


def _listed_checksums(folder: Path) -> dict[str, str]:
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    return listed


@pytest.mark.parametrize("folder", FOLDERS.values(), ids=FOLDERS.keys())
def test_every_fixture_file_has_the_checksum_listed_for_it(folder):
    listed = _listed_checksums(folder)
    on_disk = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name not in NOT_DATA and "__pycache__" not in path.parts
    )
    assert on_disk == sorted(listed), "fixture files and SHA256SUMS disagree: regenerate the list with sha256sum"
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in on_disk}
    wrong = [name for name in on_disk if digests[name] != listed[name]]
    assert wrong == []


def test_fixtures_hold_the_six_original_cases_their_gradients_and_their_checkpoint():
    listed = _listed_checksums(ORIGINAL_FERRET_FIXTURES)
    tensors = [name for name in listed if name.startswith("cases/") and name.endswith(".safetensors")]
    cases = sorted(name for name in tensors if not name.endswith("_grads.safetensors"))
    assert [name.split("/")[1].split("_")[0] for name in cases] == ["01", "02", "03", "04", "05", "06"]
    gradients = sorted(name for name in tensors if name.endswith("_grads.safetensors"))
    assert gradients == ["cases/03_image_box_grads.safetensors", "cases/06_image_point_at_border_grads.safetensors"]
    checkpoint = {"ferret_tiny/pytorch_model.bin", "ferret_tiny/tokenizer.model", "clip_tiny/pytorch_model.bin"}
    assert checkpoint <= set(listed)


def test_ferret_ui_fixtures_hold_five_cases_per_backbone_and_both_checkpoints():
    listed = _listed_checksums(ORIGINAL_FERRET_UI_FIXTURES)
    for backbone in ("gemma", "llama3"):
        cases = sorted(name for name in listed if name.startswith(f"cases/{backbone}_"))
        assert [name.split("/")[1].split("_")[1] for name in cases] == ["01", "02", "03", "04", "05"]
        assert {f"{backbone}_tiny/config.json", f"{backbone}_tiny/model.safetensors",
                f"{backbone}_tiny/tokenizer.json"} <= set(listed)  # fmt: skip
    assert len([name for name in listed if name.startswith("cases/pixels_")]) == 5
    assert {"clip_tiny/model.safetensors", "clip_tiny/preprocessor_config.json", "manifest.json"} <= set(listed)
