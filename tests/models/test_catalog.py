"""What a model runs on: an adapter over a full fine-tune runs on that fine-tune, not on its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_ID


def test_an_adapter_runs_on_the_weights_it_was_trained_on(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    from tunehouse.models.catalog import base_of, get_model, register_base_model, register_trained_model, weights_of

    register_base_model(TINY_ID, tiny_model_dir)
    trained = {"job_id": "ftjob-x"}
    register_trained_model(
        "ft:full", kind="fine-tuned", path=tmp_path / "full", base_model=TINY_ID, adapter=False, **trained
    )
    register_trained_model(
        "ft:lora-on-full", kind="fine-tuned", path=tmp_path / "a", base_model="ft:full", adapter=True, **trained
    )
    register_trained_model(
        "ft:lora", kind="fine-tuned", path=tmp_path / "b", base_model=TINY_ID, adapter=True, **trained
    )
    register_trained_model(
        "ft:lora-on-lora", kind="fine-tuned", path=tmp_path / "c", base_model="ft:lora", adapter=True, **trained
    )

    runs_on = {
        name: weights_of(get_model(name)).id for name in ("ft:full", "ft:lora-on-full", "ft:lora", "ft:lora-on-lora")
    }
    assert runs_on == {
        "ft:full": "ft:full",
        "ft:lora-on-full": "ft:full",
        "ft:lora": TINY_ID,
        "ft:lora-on-lora": TINY_ID,
    }
    assert base_of(get_model("ft:lora-on-full")).id == TINY_ID  # the root is still the base it all came from
