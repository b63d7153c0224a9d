"""The original-code fixtures in `fixtures/original_ferret` are the files their generator wrote: every data file is
listed in `SHA256SUMS` with its checksum, so a fixture edited by hand (or a file added without regenerating the list)
fails here before any parity test compares against it."""

import hashlib

from tiny_models import ORIGINAL_FERRET_FIXTURES

NOT_DATA = {"README.md", "generate.py", "SHA256SUMS"}


def _listed_checksums() -> dict[str, str]:
    listed = {}
    for line in (ORIGINAL_FERRET_FIXTURES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    return listed


def test_every_fixture_file_has_the_checksum_listed_for_it():
    listed = _listed_checksums()
    on_disk = sorted(
        path.relative_to(ORIGINAL_FERRET_FIXTURES).as_posix()
        for path in ORIGINAL_FERRET_FIXTURES.rglob("*")
        if path.is_file() and path.name not in NOT_DATA and "__pycache__" not in path.parts
    )
    assert on_disk == sorted(listed), "fixture files and SHA256SUMS disagree: regenerate the list with sha256sum"
    digests = {name: hashlib.sha256((ORIGINAL_FERRET_FIXTURES / name).read_bytes()).hexdigest() for name in on_disk}
    wrong = [name for name in on_disk if digests[name] != listed[name]]
    assert wrong == []


def test_fixtures_hold_the_six_original_cases_and_their_checkpoint():
    listed = _listed_checksums()
    cases = sorted(name for name in listed if name.startswith("cases/") and name.endswith(".safetensors"))
    assert [name.split("/")[1].split("_")[0] for name in cases] == ["01", "02", "03", "04", "05", "06"]
    checkpoint = {"ferret_tiny/pytorch_model.bin", "ferret_tiny/tokenizer.model", "clip_tiny/pytorch_model.bin"}
    assert checkpoint <= set(listed)
