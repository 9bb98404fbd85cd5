"""The models page's Export button in headless Chromium: it downloads the checked archive, and says
why when the server refuses. Skips, saying why, without Debian's chromium (see test_dashboard.py)."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.conftest import TINY_ID, Server
from tests.models.conftest import _make_adapter
from tests.web.test_dashboard import browser, origin, page, web_server  # noqa: F401  (fixtures)

LORA_ID = f"ft:{TINY_ID}:tunehouse:web:ftjob-webexport01"


@pytest.fixture(scope="module")
def fine_tune(web_server: Server, tiny_model_dir: Path) -> str:  # noqa: F811
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNEHOUSE_HOME", str(web_server.home))
        from tunehouse.models.catalog import register_trained_model

        path = _make_adapter(tiny_model_dir, web_server.home / "models" / "ft" / "ftjob-webexport01", head=None, seed=6)
        register_trained_model(LORA_ID, kind="fine-tuned", path=path, base_model=TINY_ID, adapter=True, job_id="w1")
    return LORA_ID


def _row(view: Page, model: str):  # type: ignore[no-untyped-def]
    exact = re.compile(f"^{re.escape(model)}$")
    return view.locator("tr", has=view.locator("td.mono", has_text=exact))


def test_export_downloads_the_archive(page: Page, web_server: Server, fine_tune: str, tmp_path: Path) -> None:  # noqa: F811
    page.goto(f"{origin(web_server)}/#/models")
    row = _row(page, fine_tune)
    row.locator("select.export-format").select_option("adapter")
    with page.expect_download(timeout=300_000) as download:
        row.locator("button.export-button").click()
    assert download.value.suggested_filename == "ft-tiny-llama-tunehouse-web-ftjob-webexport01-adapter.tar"
    saved = tmp_path / "export.tar"
    download.value.save_as(saved)
    with tarfile.open(saved) as tar:
        names = tar.getnames()
    folder = "ft-tiny-llama-tunehouse-web-ftjob-webexport01-adapter"
    assert f"{folder}/adapter_config.json" in names and f"{folder}/export-report.json" in names
    assert row.locator("button.export-button").inner_text() == "Export"


def test_a_refused_export_shows_the_servers_reason(page: Page, web_server: Server, fine_tune: str) -> None:  # noqa: F811
    page.goto(f"{origin(web_server)}/#/models")
    row = _row(page, TINY_ID)
    row.locator("select.export-format").select_option("vllm")
    row.locator("button.export-button").click()
    page.wait_for_selector("#error:not([hidden])")
    assert "not a LoRA fine-tune" in page.inner_text("#error")
