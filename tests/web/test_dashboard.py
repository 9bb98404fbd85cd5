"""The web dashboard in headless Chromium, against a real server that requires an API key.

Needs Debian's chromium (`make chromium`, or `apt-get install -y chromium`) and Playwright's Python
package; without them these tests skip and say why. The job page screenshot is written to
`artifacts/dashboard/job-page.png` (git-ignored).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob
from playwright.sync_api import Browser, Page

from tests.conftest import REPO, TINY_ID, Server, make_home, running_server
from tests.support import chat_rows, upload_rows, wait_for_job

CHROMIUM = Path(os.environ.get("TUNEHOUSE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "artifacts" / "dashboard"
API_KEY = "sk-dashboard-test-key"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make chromium` (apt-get install -y chromium) as root")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def web_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    home = make_home(tmp_path_factory.mktemp("web"), shipped_model_dir)
    with running_server(home, tiny_model_dir, api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def web_client(web_server: Server) -> OpenAI:
    return web_server.client()


@pytest.fixture
def page(browser: Browser, web_server: Server) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"localStorage.setItem('tunehouse.apiKey', '{API_KEY}')")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def origin(server: Server) -> str:
    return server.base_url.removesuffix("/v1")


def chart_points(page: Page, chart: str, series: str) -> int:
    points = page.get_attribute(f"#{chart} polyline[data-series='{series}']", "points") or ""
    return len(points.split())


@pytest.fixture(scope="module")
def live_job(web_client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> FineTuningJob:
    """A job just created, not awaited: the first test opens its page while it is still starting."""
    tmp = tmp_path_factory.mktemp("web-files")
    train = upload_rows(web_client, tmp, chat_rows(12), "train.jsonl")
    valid = upload_rows(web_client, tmp, chat_rows(4, topic="shade"), "valid.jsonl")
    return web_client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=train,
        validation_file=valid,
        suffix="web",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )


def test_job_page_follows_a_job_live_and_charts_its_points(
    web_server: Server, live_job: FineTuningJob, page: Page
) -> None:
    job, train = live_job, live_job.training_file
    page.goto(f"{origin(web_server)}/#/jobs/{job.id}")  # opened while the job is still starting
    page.wait_for_selector("#job-header .status.succeeded", timeout=180_000)  # the page polls: live
    page.wait_for_function("document.querySelector('#job-events h2')?.textContent.includes('Events')")
    page.wait_for_selector("#result-file", timeout=10_000)

    assert chart_points(page, "loss-chart", "train") == 24  # 12 examples × 2 epochs at batch 1
    assert chart_points(page, "loss-chart", "validation") > 0
    assert chart_points(page, "loss-chart", "full validation") == 2  # one per epoch end
    assert chart_points(page, "accuracy-chart", "train") == 24
    assert "step 24/24 · epoch 2/2" in page.inner_text("#job-progress-text")
    assert "The job has successfully completed" in page.inner_text("#job-events")
    checkpoints = page.inner_text("#job-checkpoints")
    assert ":ckpt-step-24" in checkpoints and ":ckpt-step-12" in checkpoints
    details = page.inner_text("#job-details")
    assert "n_epochs" in details and train in details and "Download result file" in details
    # no endpoint and no email: the job's notifications, read once it ended, are none
    page.wait_for_function("document.querySelector('#job-deliveries')?.textContent.includes('None sent.')")

    with page.expect_download() as download:
        page.click("#result-file")
    assert download.value.suggested_filename == f"{job.id}_results.csv"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "job-page.png"), full_page=True)

    page.goto(f"{origin(web_server)}/#/jobs")
    page.wait_for_selector(f"tr[data-job='{job.id}'] .status.succeeded")


def test_playground_shows_base_and_fine_tuned_answers_side_by_side(
    web_client: OpenAI, web_server: Server, live_job: FineTuningJob, page: Page
) -> None:
    done = wait_for_job(web_client, live_job.id)
    assert done.status == "succeeded", done.error

    page.goto(f"{origin(web_server)}/#/playground?model={done.fine_tuned_model}")
    page.wait_for_function(f"document.querySelector('#model-b')?.value === {done.fine_tuned_model!r}")
    assert page.input_value("#model-a") == TINY_ID  # its base, for the before/after comparison
    page.fill("#prompt", "What is the colour of item 4?")
    page.fill("#max-tokens", "6")
    page.click("#send")
    page.wait_for_selector("#answer-a[data-done]", timeout=60_000)
    page.wait_for_selector("#answer-b[data-done]", timeout=60_000)
    answers = [page.inner_text("#answer-a"), page.inner_text("#answer-b")]
    assert all(a and a != "…" and not a.startswith("Error") for a in answers), answers


def test_the_job_page_pauses_and_resumes_its_job(
    web_client: OpenAI, web_server: Server, page: Page, tmp_path: Path
) -> None:
    train = upload_rows(web_client, tmp_path, chat_rows(12), "pause.jsonl")
    job = web_client.fine_tuning.jobs.create(model=TINY_ID, training_file=train, hyperparameters={"n_epochs": 3})
    page.goto(f"{origin(web_server)}/#/jobs/{job.id}")
    page.wait_for_selector("#pause-job", timeout=60_000)  # queued or running
    page.click("#pause-job")
    page.wait_for_selector("#job-header .status.paused", timeout=180_000)  # at once, or at the next step
    assert web_client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert page.locator("#pause-job").count() == 0 and page.locator("#cancel-job").count() == 1
    page.click("#resume-job")
    page.wait_for_selector("#job-header .status.succeeded", timeout=180_000)
    assert page.locator("#cancel-job").count() == 0
    assert any("Job resumed" in e.message for e in web_client.fine_tuning.jobs.list_events(job.id, limit=100))


def test_files_and_models_pages(web_client: OpenAI, web_server: Server, page: Page, tmp_path: Path) -> None:
    file_id = upload_rows(web_client, tmp_path, chat_rows(10), "listed.jsonl")
    page.goto(f"{origin(web_server)}/#/files")
    page.wait_for_selector(f"text={file_id}")
    assert "listed.jsonl" in page.inner_text("main")

    upload = tmp_path / "from-browser.jsonl"
    upload.write_text(Path(tmp_path / "listed.jsonl").read_text())
    page.set_input_files("#upload-input", str(upload))
    page.click("#upload-button")
    page.wait_for_selector("text=from-browser.jsonl")
    assert "from-browser.jsonl" in [f.filename for f in web_client.files.list()]

    page.goto(f"{origin(web_server)}/#/models")
    page.wait_for_selector(f"text={TINY_ID}")
    assert "base" in page.inner_text("main")


def test_the_page_asks_for_the_key_the_server_requires(browser: Browser, web_server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{origin(web_server)}/#/jobs")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "sk-wrong-key-0000")
        page.click("#key-save")
        page.wait_for_function("document.querySelector('#key-reason')?.textContent.includes('Incorrect API key')")
        page.fill("#key-input", API_KEY)
        page.click("#key-save")
        page.wait_for_selector("h1:has-text('Fine-tuning jobs')")
        page.wait_for_selector("#view table, #view p.muted:has-text('No jobs')")
        assert page.evaluate("localStorage.getItem('tunehouse.apiKey')") == API_KEY
    finally:
        context.close()


def insert_long_job(home: Path, n_steps: int) -> str:
    """A finished job with `n_steps` metrics events, written straight into the server's store."""
    os.environ["TUNEHOUSE_HOME"] = str(home)
    try:
        from tunehouse.ids import new_id
        from tunehouse.store.db import session
        from tunehouse.store.schema import EventRow, JobRow

        now = int(time.time())
        job_id = new_id("ftjob-")
        hyperparameters = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0}
        job = JobRow(
            id=job_id,
            created_at=now - 3600,
            model=TINY_ID,
            organization_id="org-tunehouse",
            training_file="file-synthetic",
            validation_file="file-synthetic-valid",
            status="succeeded",
            method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            hyperparameters=hyperparameters,
            training_options={},
            seed=1,
            result_files=[],
            finished_at=now,
        )

        def event(message: str, type: str = "message", data: dict | None = None) -> EventRow:
            return EventRow(
                id=new_id("ftevent-"),
                job_id=job_id,
                created_at=now,
                level="info",
                message=message,
                type=type,
                data=data,
            )

        rng = random.Random(0)
        events = [event("Fine-tuning job started")]
        for step in range(1, n_steps + 1):
            loss = 2.5 * math.exp(-step / 3000) + rng.random() * 0.3
            accuracy = min(1.0, 0.3 + step / n_steps * 0.6)
            data = {
                "step": step,
                "total_steps": n_steps,
                "train_loss": loss,
                "train_mean_token_accuracy": accuracy,
            }
            if step % 100 == 0:
                data |= {"valid_loss": loss + 0.1, "valid_mean_token_accuracy": accuracy - 0.05}
            events.append(event(f"Step {step}/{n_steps}: training loss={loss:.2f}", "metrics", data))
        events.append(event("The job has successfully completed"))
        with session() as s:
            s.add(job)
        with session() as s:
            s.add_all(events)
        return job_id
    finally:
        os.environ.pop("TUNEHOUSE_HOME", None)


def test_a_10000_step_job_page_stays_fast(web_server: Server, page: Page) -> None:
    job_id = insert_long_job(web_server.home, 10_000)
    started = time.monotonic()
    page.goto(f"{origin(web_server)}/#/jobs/{job_id}")
    page.wait_for_selector("#loss-chart polyline[data-series='train']", timeout=30_000)
    seconds = time.monotonic() - started
    assert "step 10000/10000 · epoch 2/2" in page.inner_text("#job-progress-text")
    drawn = chart_points(page, "loss-chart", "train")
    assert 100 < drawn <= 600, drawn  # downsampled: min and max of 300 buckets
    assert chart_points(page, "loss-chart", "validation") == 100
    assert page.locator("#job-events tr").count() <= 302  # events list is capped, not 10,000 rows
    assert seconds < 15, f"the 10,000-step job page took {seconds:.1f} s"
