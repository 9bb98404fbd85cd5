"""A shared blob root that is a folder every machine mounts (TUNEHOUSE_BLOB_URL=/mnt/…): two homes
see one set of blobs and folders, each through a local copy. (The S3 root is driven end to end by
tests/jobs/test_workers.py, against moto's server.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunehouse.errors import NotFound
from tunehouse.store.blobs import blob_path, delete_blob, existing_blob, fetch_tree, push_tree, write_blob


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEHOUSE_BLOB_URL", str(tmp_path / "shared"))
    return tmp_path / "shared"


def be(machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(machine))


def test_a_blob_written_on_one_machine_is_read_on_another(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    be(tmp_path / "api", monkeypatch)
    assert write_blob("files/file-1", [b"hello ", b"world"]) == 11
    assert (shared / "files" / "file-1").read_bytes() == b"hello world"

    be(tmp_path / "worker", monkeypatch)
    assert blob_path("files/file-1").read_bytes() == b"hello world"  # fetched into this home
    assert (tmp_path / "worker" / "blobs" / "files" / "file-1").is_file()
    assert not list((shared / "files").glob("*.tmp")) and not list((tmp_path / "worker").rglob("*.tmp"))

    delete_blob("files/file-1")
    be(tmp_path / "api", monkeypatch)
    (tmp_path / "api" / "blobs" / "files" / "file-1").unlink()
    with pytest.raises(NotFound, match="missing from the server's storage"):
        existing_blob("files/file-1", param="file_id")  # gone everywhere


def test_a_folder_is_fetched_whole_and_only_once_it_is_complete(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    be(tmp_path / "worker", monkeypatch)
    step = tmp_path / "worker" / "jobs" / "ftjob-1" / "checkpoints" / "step-5"
    (step / "nested").mkdir(parents=True)
    (step / "adapter_model.safetensors").write_bytes(b"weights")
    (step / "nested" / "extra.json").write_text("{}")
    (step / "trainer_state.pt").write_bytes(b"state")
    push_tree("jobs/ftjob-1/checkpoints/step-5", step, last="trainer_state.pt")

    be(tmp_path / "api", monkeypatch)
    here = tmp_path / "api" / "jobs" / "ftjob-1" / "checkpoints" / "step-5"
    assert fetch_tree("jobs/ftjob-1/checkpoints/step-5", here)
    assert sorted(p.relative_to(here).as_posix() for p in here.rglob("*") if p.is_file()) == [
        "adapter_model.safetensors",
        "nested/extra.json",
        "trainer_state.pt",
    ]
    assert not fetch_tree("jobs/ftjob-1/checkpoints/step-9", here.with_name("step-9"))  # never shared
    assert not here.with_name("step-9").exists() and len(list(here.parent.iterdir())) == 1  # no leftovers
