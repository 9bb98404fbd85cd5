"""Projects and keys: the admin API through the official SDK's `client.admin.organization.projects`,
and isolation — every object project Alpha makes is a 404 to project Beta's key on every route,
through the SDK and over raw HTTP, exactly as an id that never existed is."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server, make_home, running_server
from tests.support import chat_rows, upload_rows, wait_for_job

pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")  # served here

ADMIN_KEY = "sk-admin-test-0123456789"
ADMIN_SPEC = Path(__file__).resolve().parents[1] / "spec" / "openai-organization-projects.json"


def assert_schema(instance: Any, name: str) -> None:
    """`instance` is valid under OpenAI's admin schema `name` (vendored from the shared spec)."""
    spec = json.loads(ADMIN_SPEC.read_text())
    jsonschema.validate(instance, {"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


GIVEN = [{"item": {"question": "Capital of France?", "answer": "Paris"}, "sample": {"output_text": "Paris"}}]
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}
EXACT = {"type": "string_check", "name": "Exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


@dataclass
class Team:
    server: Server
    admin: OpenAI
    alpha_project: str
    alpha: OpenAI
    beta: OpenAI
    ids: dict[str, str]

    def http(self, client: OpenAI) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url, headers={"Authorization": f"Bearer {client.api_key}"}, timeout=60
        )


def _project_client(server: Server, admin: OpenAI, name: str) -> tuple[str, OpenAI]:
    project = admin.admin.organization.projects.create(name=name)
    account = admin.admin.organization.projects.service_accounts.create(project.id, name=f"{name} CI")
    assert account.api_key is not None
    return project.id, server.client(account.api_key.value)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path) -> Iterator[Team]:
    """A server with an admin key; project Alpha owns one of everything, project Beta nothing."""
    home = make_home(tmp_path_factory.mktemp("projects-home"), shipped_model_dir)
    env = {"TUNEHOUSE_ADMIN_KEY": ADMIN_KEY, "TUNEHOUSE_ALLOWED_OUTBOUND": "127.0.0.1"}
    with running_server(home, tiny_model_dir, env=env) as server:
        admin = OpenAI(base_url=server.base_url, api_key="unused", admin_api_key=ADMIN_KEY, max_retries=0)
        alpha_project, alpha = _project_client(server, admin, "Alpha Team")
        _, beta = _project_client(server, admin, "Beta")
        data = tmp_path_factory.mktemp("projects-data")
        file_id = upload_rows(alpha, data, chat_rows(12))
        job = alpha.fine_tuning.jobs.create(
            model=TINY_ID, training_file=file_id, suffix="iso", seed=3, hyperparameters={"n_epochs": 1}
        )
        done = wait_for_job(alpha, job.id)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model is not None
        checkpoint = alpha.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
        evaluation = alpha.evals.create(
            name="iso",
            data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
            testing_criteria=[{**EXACT, "operation": "eq"}],  # type: ignore[list-item]
        )
        run = alpha.evals.runs.create(
            evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": GIVEN}}
        )
        while (finished := alpha.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in (
            "queued",
            "in_progress",
        ):
            time.sleep(0.2)
        assert finished.status == "completed", finished.error
        item = alpha.evals.runs.output_items.list(run.id, eval_id=evaluation.id).data[0]
        endpoint = alpha.webhooks.create(
            name="iso", url="http://127.0.0.1:9/hooks", event_types=["fine_tuning.job.succeeded"]
        )
        ids = {
            "file": file_id,
            "job": job.id,
            "model": done.fine_tuned_model,
            "checkpoint": checkpoint,
            "eval": evaluation.id,
            "run": run.id,
            "item": item.id,
            "endpoint": endpoint.id,
        }
        yield Team(server, admin, alpha_project, alpha, beta, ids)


def test_a_fine_tuned_model_carries_its_projects_name_as_org(team: Team) -> None:
    assert re.fullmatch(rf"ft:{TINY_ID}:alpha-team:iso:[A-Za-z0-9]{{8}}", team.ids["model"])
    assert team.alpha.models.retrieve(team.ids["model"]).owned_by == "alpha-team"


# (method, path, JSON body): every route that names an object of Alpha's. Mutating ones are refused to
# Beta before anything changes, so Alpha's objects are all still there afterwards.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/files/{file}", None),
    ("GET", "/files/{file}/content", None),
    ("DELETE", "/files/{file}", None),
    ("GET", "/fine_tuning/jobs/{job}", None),
    ("GET", "/fine_tuning/jobs/{job}/events", None),
    ("GET", "/fine_tuning/jobs/{job}/checkpoints", None),
    ("GET", "/fine_tuning/jobs/{job}/deliveries", None),
    ("POST", "/fine_tuning/jobs/{job}/cancel", None),
    ("POST", "/fine_tuning/jobs/{job}/pause", None),
    ("POST", "/fine_tuning/jobs/{job}/resume", None),
    ("POST", "/fine_tuning/jobs", {"model": "{model}", "training_file": "{file}"}),
    ("POST", "/fine_tuning/jobs", {"model": TINY_ID, "training_file": "{file}"}),
    ("GET", "/fine-tunes/{job}", None),
    ("GET", "/fine-tunes/{job}/events", None),
    ("GET", "/fine-tunes/{job}/events?stream=true", None),
    ("POST", "/fine-tunes/{job}/cancel", None),
    ("DELETE", "/fine-tunes/{job}", None),
    ("GET", "/models/{model}", None),
    ("GET", "/models/{checkpoint}", None),
    ("DELETE", "/models/{model}", None),
    ("POST", "/models/{model}/export", {"format": "adapter", "verify": False}),
    ("POST", "/chat/completions", {"model": "{model}", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/chat/completions", {"model": "{checkpoint}", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/completions", {"model": "{model}", "prompt": "hi", "max_tokens": 2}),
    ("GET", "/evals/{eval}", None),
    ("POST", "/evals/{eval}", {"name": "taken"}),
    ("DELETE", "/evals/{eval}", None),
    ("GET", "/evals/{eval}/runs", None),
    (
        "POST",
        "/evals/{eval}/runs",
        {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": GIVEN}}},
    ),
    ("GET", "/evals/{eval}/runs/{run}", None),
    ("POST", "/evals/{eval}/runs/{run}", None),
    ("DELETE", "/evals/{eval}/runs/{run}", None),
    ("GET", "/evals/{eval}/runs/{run}/output_items", None),
    ("GET", "/evals/{eval}/runs/{run}/output_items/{item}", None),
    ("GET", "/webhook_endpoints/{endpoint}", None),
    ("POST", "/webhook_endpoints/{endpoint}", {"name": "taken"}),
    ("POST", "/webhook_endpoints/{endpoint}/rotate_secret", None),
    ("GET", "/webhook_endpoints/{endpoint}/deliveries", None),
    ("DELETE", "/webhook_endpoints/{endpoint}", None),
]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(ROUTES)])
def test_another_projects_object_is_not_found_over_http(
    team: Team, method: str, path: str, body: dict[str, Any] | None
) -> None:
    path, sent = _fill(path, team.ids), _fill(body, team.ids)
    with team.http(team.beta) as http:
        response = http.request(method, path, json=sent)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] in ("not_found", "model_not_found")
    asked = path + json.dumps(sent)
    for name in ("model", "checkpoint"):  # a not-found never lists the other project's models
        assert team.ids[name] not in error["message"] or team.ids[name] in asked


def test_the_objects_beta_was_refused_are_all_still_alphas(team: Team) -> None:
    alpha, ids = team.alpha, team.ids
    assert alpha.files.retrieve(ids["file"]).id == ids["file"]
    assert alpha.files.content(ids["file"]).text.count("\n") == 12
    assert alpha.fine_tuning.jobs.retrieve(ids["job"]).status == "succeeded"
    assert alpha.models.retrieve(ids["model"]).id == ids["model"]
    assert alpha.evals.retrieve(ids["eval"]).name == "iso"
    assert alpha.evals.runs.retrieve(ids["run"], eval_id=ids["eval"]).status == "completed"
    assert alpha.webhooks.retrieve(ids["endpoint"]).name == "iso"
    reply = alpha.chat.completions.create(
        model=ids["model"], messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.model == ids["model"]


SDK_CALLS: dict[str, Callable[[OpenAI, dict[str, str]], Any]] = {
    "files.retrieve": lambda c, i: c.files.retrieve(i["file"]),
    "files.content": lambda c, i: c.files.content(i["file"]),
    "files.delete": lambda c, i: c.files.delete(i["file"]),
    "jobs.retrieve": lambda c, i: c.fine_tuning.jobs.retrieve(i["job"]),
    "jobs.list_events": lambda c, i: c.fine_tuning.jobs.list_events(i["job"]),
    "jobs.checkpoints.list": lambda c, i: c.fine_tuning.jobs.checkpoints.list(i["job"]),
    "jobs.cancel": lambda c, i: c.fine_tuning.jobs.cancel(i["job"]),
    "jobs.pause": lambda c, i: c.fine_tuning.jobs.pause(i["job"]),
    "jobs.resume": lambda c, i: c.fine_tuning.jobs.resume(i["job"]),
    "jobs.create from its model": lambda c, i: c.fine_tuning.jobs.create(model=i["model"], training_file=i["file"]),
    "models.retrieve": lambda c, i: c.models.retrieve(i["model"]),
    "models.delete": lambda c, i: c.models.delete(i["model"]),
    "chat.completions.create": lambda c, i: c.chat.completions.create(
        model=i["model"], messages=[{"role": "user", "content": "hi"}]
    ),
    "completions.create": lambda c, i: c.completions.create(model=i["model"], prompt="hi"),
    "evals.retrieve": lambda c, i: c.evals.retrieve(i["eval"]),
    "evals.update": lambda c, i: c.evals.update(i["eval"], name="taken"),
    "evals.delete": lambda c, i: c.evals.delete(i["eval"]),
    "evals.runs.list": lambda c, i: c.evals.runs.list(i["eval"]),
    "evals.runs.retrieve": lambda c, i: c.evals.runs.retrieve(i["run"], eval_id=i["eval"]),
    "evals.runs.cancel": lambda c, i: c.evals.runs.cancel(i["run"], eval_id=i["eval"]),
    "evals.runs.output_items.retrieve": lambda c, i: c.evals.runs.output_items.retrieve(
        i["item"], eval_id=i["eval"], run_id=i["run"]
    ),
    "webhooks.retrieve": lambda c, i: c.webhooks.retrieve(i["endpoint"]),
    "webhooks.delete": lambda c, i: c.webhooks.delete(i["endpoint"]),
}


@pytest.mark.parametrize("call", list(SDK_CALLS))
def test_another_projects_object_is_not_found_through_the_sdk(team: Team, call: str) -> None:
    with pytest.raises(openai.NotFoundError):
        SDK_CALLS[call](team.beta, team.ids)


def test_lists_show_each_project_only_its_own(team: Team) -> None:
    ids = team.ids
    for client, sees in ((team.alpha, True), (team.beta, False)):
        listed = {
            *(f.id for f in client.files.list()),
            *(j.id for j in client.fine_tuning.jobs.list()),
            *(m.id for m in client.models.list()),
            *(e.id for e in client.evals.list()),
            *(w.id for w in client.webhooks.list()),
        }
        mine = {ids["file"], ids["job"], ids["model"], ids["eval"], ids["endpoint"]}
        assert (mine <= listed) if sees else not (mine & listed)
        assert TINY_ID in listed  # base models are every project's
    with team.http(team.beta) as http:
        assert http.get("/fine-tunes").json()["data"] == []
        for path, cursor in (
            ("/files", "file"),
            ("/fine_tuning/jobs", "job"),
            ("/evals", "eval"),
            ("/webhook_endpoints", "endpoint"),
        ):
            assert http.get(path, params={"after": ids[cursor]}).status_code == 404  # no cursor either
        assert http.get("/evals", params={"after": ids["eval"], "order_by": "updated_at"}).status_code == 404


def test_a_model_grader_on_another_projects_model_is_told_as_a_missing_model(team: Team) -> None:
    def grade(model: str) -> str:
        grader = {
            "type": "score_model",
            "name": "judge",
            "model": model,
            "input": [{"role": "user", "content": "Score {{sample.output_text}} from 0 to 1."}],
        }
        with team.http(team.beta) as http:
            response = http.post("/fine_tuning/alpha/graders/run", json={"grader": grader, "model_sample": "Paris"})
        assert response.status_code == 200, response.text
        return re.sub(r'"\w+_time":[0-9.e-]+', "", response.text.replace(model, "MODEL"))

    told = grade(team.ids["model"])
    assert "model_grader" in told and told == grade(team.ids["model"][:-8] + "zzzzzzzz")


def test_admin_routes_refuse_every_key_but_the_admin_key(team: Team) -> None:
    for headers in ({"Authorization": f"Bearer {team.alpha.api_key}"}, {"Authorization": "Bearer sk-local"}, {}):
        response = httpx.get(f"{team.server.base_url}/organization/projects", headers=headers)
        assert response.status_code == 401, response.text
    with pytest.raises(openai.AuthenticationError, match="admin key"):  # and the admin key no data route
        OpenAI(base_url=team.server.base_url, api_key=ADMIN_KEY, max_retries=0).files.list()
    with pytest.raises(openai.AuthenticationError):
        team.server.client("sk-svcacct-not-a-key").models.list()


def test_projects_are_listed_renamed_and_archived_and_their_keys_stop(team: Team) -> None:
    projects = team.admin.admin.organization.projects
    listed = {p.id: p.name for p in projects.list()}
    assert listed["proj_default"] == "Default project" and listed[team.alpha_project] == "Alpha Team"
    gamma, client = _project_client(team.server, team.admin, "Gamma")
    assert client.models.list().data
    assert projects.update(gamma, name="Gamma 2").name == "Gamma 2"
    archived = projects.archive(gamma)
    assert (archived.status, archived.archived_at is not None) == ("archived", True)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert gamma not in {p.id for p in projects.list()}
    assert gamma in {p.id for p in projects.list(include_archived=True)}
    with pytest.raises(openai.NotFoundError):
        projects.retrieve("proj_nope")


def test_a_key_is_shown_once_listed_redacted_and_refused_once_deleted(team: Team) -> None:
    projects = team.admin.admin.organization.projects
    account = projects.service_accounts.create(team.alpha_project, name="deploy")
    assert account.api_key is not None
    value, key_id = account.api_key.value, account.api_key.id
    client = team.server.client(value)
    assert client.files.retrieve(team.ids["file"]).id == team.ids["file"]  # Alpha's key sees Alpha's file

    keys = projects.api_keys.list(team.alpha_project).data
    shown = next(k for k in keys if k.id == key_id)
    assert shown.redacted_value != value and value not in str(shown.model_dump())
    assert shown.redacted_value.startswith("sk-svcacct-") and shown.redacted_value.endswith(value[-4:])
    assert shown.owner.service_account is not None and shown.owner.service_account.name == "deploy"
    assert shown.last_used_at is not None  # it was used just now
    assert projects.api_keys.retrieve(key_id, project_id=team.alpha_project).redacted_value == shown.redacted_value

    assert projects.api_keys.delete(key_id, project_id=team.alpha_project).deleted
    with pytest.raises(openai.AuthenticationError):
        client.files.retrieve(team.ids["file"])
    with pytest.raises(openai.NotFoundError):
        projects.api_keys.retrieve(key_id, project_id=team.alpha_project)


def test_the_cli_creates_lists_and_archives_projects_and_their_keys(team: Team) -> None:
    def cli(*args: str) -> Any:
        done = team.server.cli(*args, "--base-url", team.server.base_url)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if "--json" in args else done.stdout

    project = cli("projects", "create", "Delta", "--json")
    listed = cli("projects", "list", "--json")
    assert project["name"] == "Delta" and project["id"] in [p["id"] for p in listed]
    assert "Delta" in cli("projects", "list")  # and as a table
    account = cli("keys", "create", project["id"], "--name", "laptop", "--json")
    value, key_id = account["api_key"]["value"], account["api_key"]["id"]
    assert team.server.client(value).models.list().data
    listed = cli("keys", "list", project["id"], "--json")
    assert [k["id"] for k in listed] == [key_id] and value not in json.dumps(listed)
    cli("keys", "delete", project["id"], key_id)
    with pytest.raises(openai.AuthenticationError):
        team.server.client(value).models.list()
    cli("projects", "archive", project["id"])
    assert project["id"] not in [p["id"] for p in cli("projects", "list", "--json")]
    refused = team.server.cli("projects", "list", "--base-url", team.server.base_url, "--admin-key", "sk-wrong")
    assert refused.returncode == 1 and "Incorrect API key" in refused.stderr


def test_the_default_project_takes_keys_like_any_other(team: Team) -> None:
    account = team.admin.admin.organization.projects.service_accounts.create("proj_default", name="ops")
    assert account.api_key is not None
    default = team.server.client(account.api_key.value)
    made = default.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert made.id in {f.id for f in default.files.list()}
    with pytest.raises(openai.NotFoundError):
        team.alpha.files.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        default.files.retrieve(team.ids["file"])


def test_the_admin_routes_answer_in_openais_schemas(team: Team) -> None:
    admin = httpx.Client(base_url=team.server.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with admin:
        created = admin.post("/organization/projects", json={"name": "Schema"}).json()
        assert_schema(created, "Project")
        assert_schema(admin.get("/organization/projects", params={"limit": 2}).json(), "ProjectListResponse")
        assert_schema(
            admin.post(f"/organization/projects/{created['id']}", json={"name": "Schema 2"}).json(), "Project"
        )
        account = admin.post(f"/organization/projects/{created['id']}/service_accounts", json={"name": "svc"}).json()
        assert_schema(account, "ProjectServiceAccountCreateResponse")
        assert_schema(
            admin.get(f"/organization/projects/{created['id']}/service_accounts").json(),
            "ProjectServiceAccountListResponse",
        )
        keys = admin.get(f"/organization/projects/{created['id']}/api_keys").json()
        assert_schema(keys, "ProjectApiKeyListResponse")
        key_id = keys["data"][0]["id"]
        assert_schema(
            admin.delete(f"/organization/projects/{created['id']}/api_keys/{key_id}").json(),
            "ProjectApiKeyDeleteResponse",
        )
        deleted = admin.delete(f"/organization/projects/{created['id']}/service_accounts/{account['id']}").json()
        assert_schema(deleted, "ProjectServiceAccountDeleteResponse")
        assert_schema(admin.post(f"/organization/projects/{created['id']}/archive").json(), "Project")
        missing = admin.post("/organization/projects", json={"name": ""})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "name"
