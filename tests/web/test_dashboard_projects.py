"""The dashboard's projects page in headless Chromium: the admin makes a project and a key, the page
reads with that key, and sees that project's objects only. Skips like tests/web/test_dashboard.py
without Chromium or Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page

from tests.conftest import Server, make_home, running_server
from tests.web.test_dashboard import browser, origin  # noqa: F401  # the Chromium fixture, shared

ADMIN_KEY = "sk-admin-dashboard-test"


@pytest.fixture(scope="module")
def team_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    home = make_home(tmp_path_factory.mktemp("web-projects"), shipped_model_dir)
    with running_server(home, tiny_model_dir, env={"TUNEHOUSE_ADMIN_KEY": ADMIN_KEY}) as srv:
        yield srv


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:  # noqa: F811  # `browser` is the imported fixture
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def test_the_admin_makes_a_project_and_a_key_the_page_then_reads_with(team_server: Server, page: Page) -> None:
    page.goto(f"{origin(team_server)}/#/projects")
    page.wait_for_selector("#key-dialog[open]")  # keys are required: the page asks for one
    page.evaluate("document.getElementById('key-dialog').close()")
    page.fill("#admin-key-input", ADMIN_KEY)
    page.click("#admin-key-save")
    page.wait_for_selector("tr[data-project='proj_default']")
    page.fill("#project-name", "Web team")
    page.click("#project-create")
    row = page.wait_for_selector("tr:has-text('Web team')")
    row.query_selector("button.new-key").click()  # type: ignore[union-attr]
    key = page.wait_for_selector("#new-key-value").inner_text()
    assert key.startswith("sk-svcacct-")
    page.wait_for_function("document.getElementById('projects-list').textContent.includes('sk-svcacct-')")
    assert key not in page.inner_text("#projects-list")  # listed redacted only

    page.click("#use-key")
    assert page.input_value("#project-select") == "Web team"
    client = OpenAI(base_url=team_server.base_url, api_key=key, max_retries=0)
    mine = client.files.create(file=("web.jsonl", b'{"a": 1}\n'), purpose="batch").id
    page.goto(f"{origin(team_server)}/#/files")
    page.wait_for_selector(f"text={mine}")
    assert not page.is_visible("#key-dialog[open]")
