"""The dashboard end to end in headless Chromium (Debian's package, driven by Playwright): a real server
process with one worker; enter the key, submit through the form, wait in the job list, open the job,
see the heatmap and its tooltip, every group on the page; a screenshot is saved in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from service_processes import served

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_SECONDS = 600  # the built-in job takes about 2½ minutes on 2 cores (README); a loaded machine gets slack


def _required() -> bool:
    return bool(os.environ.get("TASK_AFFINITY_REQUIRE_POSTGRES") or os.environ.get("CI"))


def _missing(reason: str):
    if _required():
        pytest.fail(f"{reason} (required in CI: .ci/run installs Debian's chromium and sets TASK_AFFINITY_CHROMIUM)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("TASK_AFFINITY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        _missing(f"no Chromium executable at {path} (apt-get install chromium; set TASK_AFFINITY_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    return path


@pytest.fixture
def server(tmp_path):
    with served(tmp_path) as (url, key, _):
        yield url, key


@contextmanager
def _dashboard_page(chromium, tmp_path):
    """A headless Chromium page on the dashboard's viewport: a screenshot where a step fails, and no JavaScript
    error on the page allowed."""
    from playwright.sync_api import sync_playwright

    page_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.set_default_timeout(30_000)
            yield page
        except Exception:
            if page is not None:
                failed = tmp_path / "dashboard-failure.png"
                page.screenshot(path=str(failed), full_page=True)
                print(f"dashboard screenshot at the failure: {failed}")
            raise
        finally:
            browser.close()
    assert not page_errors, page_errors


def _sign_in(page, base: str, key: str) -> None:
    """Open the dashboard, give the key and go to the submit page."""
    page.goto(base + "/")
    page.get_by_test_id("key-input").fill(key)
    page.get_by_test_id("key-submit").click()
    page.get_by_test_id("nav-submit").click()


def test_dashboard_submit_watch_and_inspect_a_job(chromium, server, tmp_path):
    from playwright.sync_api import expect

    base, key = server
    auth = {"Authorization": f"Bearer {key}"}
    foreign: list[str] = []

    with _dashboard_page(chromium, tmp_path) as page:
        page.on("request", lambda req: None if req.url.startswith((base, "data:", "blob:"))
                else foreign.append(req.url))

        # the key: a wrong one is refused with the server's detail, the right one is kept for the session
        page.goto(base + "/")
        page.get_by_test_id("key-input").fill("ta_not_a_real_key_000000000000")
        page.get_by_test_id("key-submit").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("unknown or revoked API key")
        page.get_by_test_id("key-input").fill(key)
        page.get_by_test_id("key-submit").click()
        expect(page.get_by_test_id("jobs-table")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('task-affinity-key')") == key

        # a bad manifest: 422 with the field named on the form (the JSON box, for experts)
        page.get_by_test_id("nav-submit").click()
        page.get_by_test_id("expert-toggle").click()
        manifest_box = page.get_by_test_id("manifest-input")
        expect(manifest_box).not_to_have_value("", timeout=60_000)  # the kinds load with the engine
        manifest_box.fill(json.dumps({"dataset": {"source": "planted"}, "estimation": {"num_subsets": -3}}))
        page.get_by_test_id("manifest-submit").click()
        expect(page.locator("[data-testid=form-error][data-field='estimation.num_subsets']")).to_be_visible()

        # the built-in manifest (the same job as `task-affinity run`), loaded and submitted through the form
        from affinity.defaults import builtin_manifest
        from affinity.manifest import parse_manifest

        page.get_by_test_id("source-builtin").check()
        page.get_by_test_id("example-select").select_option("planted")
        prefilled = json.loads(manifest_box.input_value())
        assert parse_manifest(prefilled) == builtin_manifest("planted")
        page.get_by_test_id("manifest-submit").click()
        expect(page.get_by_test_id("flash")).to_contain_text("Submitted job")
        row = page.locator("[data-testid=job-row]").first
        expect(row).to_be_visible()
        job_id = row.get_attribute("data-job-id")
        done = page.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
        expect(done).to_have_attribute("data-status", "succeeded", timeout=JOB_SECONDS * 1000)
        page.screenshot(path=str(tmp_path / "dashboard-jobs.png"), full_page=True)

        # the job page: heatmap, tooltip on hover, every group, metadata, downloads
        done.get_by_test_id("job-link").click()
        expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
        heatmap = page.get_by_test_id("heatmap")
        expect(heatmap).to_be_visible()
        expect(heatmap).to_have_attribute("data-cell", re.compile(r"^\d+$"))
        record = httpx.get(f"{base}/v1/jobs/{job_id}/groups", headers=auth).json()
        groups = record["groups"]
        expect(page.get_by_test_id("job-verdict")).to_have_text(record["advice"]["verdict"])
        expect(page.get_by_test_id("job-advice")).to_contain_text("predicted gain over one model for all")
        noise = record["advice"]["training_noise"]  # 3 trainings per check fold (the default)
        expect(page.get_by_test_id("job-advice")).to_contain_text("one training's spread from seed to seed")
        expect(page.get_by_test_id("job-advice")).to_contain_text(
            f"± {100 * noise['gain_sd']:.1f}% of one model for all's loss on a check fold (3 seeds per fold)")
        affinity = httpx.get(f"{base}/v1/jobs/{job_id}/affinity", headers=auth).json()

        n, cell, margin = (int(heatmap.get_attribute(f"data-{a}")) for a in ("tasks", "cell", "margin"))
        assert n == len(affinity["tasks"])
        tooltip = page.get_by_test_id("heatmap-tooltip")
        expect(tooltip).to_be_hidden()
        heatmap.hover(position={"x": margin + (n - 0.5) * cell, "y": margin + 0.5 * cell})  # top-right cell
        expect(tooltip).to_be_visible()
        first, last = groups[0][0], groups[-1][-1]  # tasks are drawn in group order
        expect(tooltip).to_contain_text(f"{first} × {last}")
        i, j = affinity["tasks"].index(first), affinity["tasks"].index(last)
        assert float(tooltip.get_attribute("data-value")) == pytest.approx(affinity["matrix"][i][j])

        shown = [set(t.split(", ")) for t in page.get_by_test_id("group-tasks").all_inner_texts()]
        assert shown == [set(g) for g in groups], "the page must show every group with its tasks"
        for name in (t for g in groups for t in g):
            expect(page.get_by_test_id("groups-table")).to_contain_text(name)
        expect(page.get_by_test_id("job-metadata")).to_contain_text(affinity["method"])
        links = page.get_by_test_id("download-link").all_inner_texts()
        assert {"affinity.csv", "affinity.json", "groups.json", "heatmap.png"} <= set(links)

        # a download goes through fetch with the bearer key
        with page.expect_download() as dl:
            page.get_by_test_id("download-link").filter(has_text="groups.json").click()
        saved = tmp_path / "downloaded-groups.json"
        dl.value.save_as(saved)
        assert json.loads(saved.read_text())["groups"] == groups

        heatmap.hover(position={"x": margin + (n - 0.5) * cell, "y": margin + 0.5 * cell})
        expect(tooltip).to_be_visible()
        shot = tmp_path / "dashboard-job.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshots: {shot} and {tmp_path / 'dashboard-jobs.png'}")
        assert shot.stat().st_size > 10_000

    assert not foreign, f"the dashboard fetched something not served by the app: {foreign}"


def test_dashboard_assets_are_served_by_the_app_and_not_in_the_api_schema(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    app = create_app(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}"))
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            assert client.get(ref).status_code == 200, ref
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text), "no asset from another host"
        examples = client.get("/static/examples.json").json()
        assert examples["small"]["dataset"]["source"] == "planted" and "planted" in examples
        from affinity.manifest import parse_manifest

        for manifest in examples.values():
            parse_manifest(manifest)  # every example the form offers is a valid manifest
        assert client.get("/static/..%2F..%2Fapp.py").status_code == 404
        assert client.get("/static/missing.js").headers["content-type"] == "application/problem+json"
        paths = client.get("/openapi.json").json()["paths"]
        assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    app.state.store.engine.dispose()


def _submit_and_wait(page):
    """Submit the form; (the new job's id, its row in the jobs list) once the job has succeeded."""
    from playwright.sync_api import expect

    page.get_by_test_id("manifest-submit").click()
    expect(page.get_by_test_id("flash")).to_contain_text("Submitted job")
    job_id = page.locator("[data-testid=job-row]").first.get_attribute("data-job-id")
    done = page.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
    expect(done).to_have_attribute("data-status", "succeeded", timeout=JOB_SECONDS * 1000)
    return job_id, done


def test_dashboard_form_uploads_texts_and_runs_a_text_job(chromium, server, tmp_path):
    """The submit form as a person uses it: upload a CSV, see its columns, pick the kind (listed by the server),
    the text and task columns, the model and k; the manifest it writes is submitted and runs; the job page shows
    the model kind and what was trained and differentiated against the whole model."""
    from playwright.sync_api import expect

    from test_text_service import text_csv

    base, key = server
    auth = {"Authorization": f"Bearer {key}"}
    csv = tmp_path / "texts.csv"
    csv.write_bytes(text_csv())
    with _dashboard_page(chromium, tmp_path) as page:
        _sign_in(page, base, key)

        # the kinds come from the server
        kinds = httpx.get(f"{base}/v1/schema/kinds", timeout=120).json()
        options = page.get_by_test_id("data-kind").locator("option")
        expect(options).to_have_count(len(kinds["data"]))  # the page fills the list once the server answers
        listed = options.all_inner_texts()
        assert listed == [k["name"] for k in kinds["data"]] and "text" in listed

        # upload: the detected columns, each with a role
        page.get_by_test_id("dataset-file").set_input_files(str(csv))
        page.get_by_test_id("dataset-upload").click()
        expect(page.get_by_test_id("upload-result")).to_contain_text("36 rows")
        rows = page.get_by_test_id("column-row")
        expect(rows).to_have_count(5)
        assert [r.get_attribute("data-column") for r in rows.all()] == ["sentence", "id", "label_0", "label_1",
                                                                        "label_2"]
        page.get_by_test_id("data-kind").select_option("text")
        expect(page.get_by_test_id("model-kind")).to_have_value("transformer")  # the kind that takes texts
        def role(column):
            return page.locator(f"[data-testid=column-role][data-column='{column}']")

        role("sentence").select_option("field:text")
        role("id").select_option("ignore")
        role("label_0").select_option("task:binary")
        role("label_1").select_option("task:binary")
        role("label_2").select_option("task:regression")
        expect(page.get_by_test_id("model-field-pretrained")).to_have_value("all-MiniLM-L6-v2")
        page.get_by_test_id("model-field-max_length").fill("16")
        page.get_by_test_id("model-field-max_length").dispatch_event("change")
        page.get_by_test_id("model-field-lora_rank").fill("4")
        page.get_by_test_id("model-field-lora_rank").dispatch_event("change")
        page.get_by_test_id("k-input").fill("2")
        page.get_by_test_id("k-input").dispatch_event("change")
        page.screenshot(path=str(tmp_path / "dashboard-form.png"), full_page=True)

        # the manifest the form wrote, in the JSON box; an expert trims the run to seconds there
        page.get_by_test_id("expert-toggle").click()
        box = page.get_by_test_id("manifest-input")
        manifest = json.loads(box.input_value())
        ds_id = page.get_by_test_id("dataset-id").inner_text()
        assert manifest["dataset"] == {"kind": "text", "source": ds_id, "text": "sentence",
                                       "tasks": [{"name": "label_0", "type": "binary"},
                                                 {"name": "label_1", "type": "binary"},
                                                 {"name": "label_2", "type": "regression"}]}
        assert manifest["model"]["kind"] == "transformer" and manifest["model"]["max_length"] == 16
        assert manifest["model"]["lora_rank"] == 4 and manifest["grouping"]["k"] == 2
        manifest["training"].update({"epochs": 2, "patience": 2})
        manifest["estimation"].update({"num_subsets": 6, "subset_size": 2, "projection_dim": 16})
        manifest["grouping"]["selection"] = "affinity"  # no transformer per group and fold
        box.fill(json.dumps(manifest))
        job_id, done = _submit_and_wait(page)
        expect(done.get_by_test_id("job-model")).to_have_text("transformer")

        # the job page: model kind, LoRA and heads against the whole model
        done.get_by_test_id("job-link").click()
        expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
        model = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth, timeout=60).json()["summary"]["model"]
        meta = page.get_by_test_id("job-metadata")
        expect(meta).to_contain_text("transformer")
        expect(meta).to_contain_text(f"{model['parameters']:,}")
        expect(meta).to_contain_text(f"LoRA {model['lora']:,} + heads {model['heads']:,}")
        expect(meta).to_contain_text(f"differentiated{model['differentiated']:,}")
        expect(meta).to_contain_text("up to")
        page.screenshot(path=str(tmp_path / "dashboard-text-job.png"), full_page=True)


def test_dashboard_form_uploads_a_graph_as_two_files_and_runs_it(chromium, server, tmp_path):
    """Data kind graph: the form asks for the edge list beside the node table and sends both in one upload; the
    node table's columns get their roles (node id, features, tasks) and the job runs."""
    from playwright.sync_api import expect

    from test_graph_api import JOB, _graph

    base, key = server
    nodes, edges = _graph()
    (tmp_path / "nodes.csv").write_bytes(nodes)
    (tmp_path / "edges.csv").write_bytes(edges)
    with _dashboard_page(chromium, tmp_path) as page:
        _sign_in(page, base, key)
        expect(page.get_by_test_id("edges-file")).to_be_hidden()  # tables are one file
        page.get_by_test_id("data-kind").select_option("graph")
        expect(page.get_by_test_id("model-kind")).to_have_value("sign")
        page.get_by_test_id("dataset-file").set_input_files(str(tmp_path / "nodes.csv"))
        page.get_by_test_id("dataset-upload").click()
        expect(page.get_by_test_id("upload-result")).to_contain_text("edge list")  # asked for, not sent
        page.get_by_test_id("edges-file").set_input_files(str(tmp_path / "edges.csv"))
        page.get_by_test_id("dataset-upload").click()
        expect(page.get_by_test_id("upload-result")).to_contain_text("60 rows")
        expect(page.get_by_test_id("upload-result")).to_contain_text("nodes.csv + edges.csv")

        def role(column):
            return page.locator(f"[data-testid=column-role][data-column='{column}']")

        role("node").select_option("field:node_column")
        role("a").select_option("task:binary")
        role("b").select_option("task:binary")
        page.get_by_test_id("expert-toggle").click()
        box = page.get_by_test_id("manifest-input")
        manifest = json.loads(box.input_value())
        ds_id = page.get_by_test_id("dataset-id").inner_text()
        assert manifest["dataset"]["kind"] == "graph" and manifest["dataset"]["source"] == ds_id
        assert manifest["dataset"]["node_column"] == "node"
        assert manifest["dataset"]["tasks"] == [{"name": "a", "type": "binary"}, {"name": "b", "type": "binary"}]
        assert manifest["model"]["kind"] == "sign"
        for section in ("model", "training", "estimation", "grouping"):
            manifest[section] = {**manifest.get(section, {}), **JOB[section]}
        manifest["model"]["kind"] = "sign"
        box.fill(json.dumps(manifest))
        job_id, done = _submit_and_wait(page)


def test_dashboard_form_alone_submits_a_table_job_that_runs(chromium, server, tmp_path):
    """The form without the JSON box: upload a table, the columns' roles as the page guesses them (labels are tasks,
    the rest features), k typed in; Submit sends the manifest the form wrote, with every other setting the
    product's default, and the job runs."""
    from playwright.sync_api import expect

    base, key = server
    auth = {"Authorization": f"Bearer {key}"}
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 4))
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)])
    for t in range(3):
        y = (X[:, t % 2] + 0.3 * rng.normal(size=90) > 0).astype(float)
        y[rng.random(90) < 0.3] = np.nan  # some rows unlabelled for the task
        frame[f"label_{t}"] = y
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    with _dashboard_page(chromium, tmp_path) as page:
        _sign_in(page, base, key)
        kinds = httpx.get(f"{base}/v1/schema/kinds", timeout=120).json()
        expect(page.get_by_test_id("data-kind").locator("option")).to_have_count(len(kinds["data"]))
        page.get_by_test_id("dataset-file").set_input_files(str(path))
        page.get_by_test_id("dataset-upload").click()
        expect(page.get_by_test_id("upload-result")).to_contain_text("90 rows")
        expect(page.get_by_test_id("column-row")).to_have_count(7)
        expect(page.get_by_test_id("data-kind")).to_have_value("table")
        expect(page.get_by_test_id("model-kind")).to_have_value("mlp")
        page.get_by_test_id("k-input").fill("2")
        page.get_by_test_id("k-input").dispatch_event("change")
        ds_id = page.get_by_test_id("dataset-id").inner_text()
        job_id, done = _submit_and_wait(page)
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth, timeout=60).json()
    dataset = job["manifest"]["dataset"]
    assert dataset["source"] == ds_id and dataset.get("kind", "table") == "table"
    assert dataset["features"] == ["f0", "f1", "f2", "f3"]
    assert [t["name"] if isinstance(t, dict) else t for t in dataset["tasks"]] == ["label_0", "label_1", "label_2"]
    assert job["manifest"]["grouping"]["k"] == 2


def test_dashboard_shows_why_a_split_gave_way_to_one_model_per_task(chromium, server, tmp_path):
    """A job of unrelated tasks whose best split (the output agreement's 5 groups) does not beat one model per task
    (tests/test_advice.py has the same job through the engine, at one training per check fold): the job page's advice
    names that split, its gain over one model per task and that it is not advised, beside the verdict the API
    records."""
    from playwright.sync_api import expect

    base, key = server
    auth = {"Authorization": f"Bearer {key}"}
    manifest = {"dataset": {"source": "synthetic",
                            "params": {"mechanism": "unrelated", "tasks": 10, "rows_per_task": 60, "seed": 3}},
                "estimation": {"num_subsets": 80}, "grouping": {"check_seeds": 1, "min_gain_alone_se": 0.5}}
    with _dashboard_page(chromium, tmp_path) as page:
        _sign_in(page, base, key)
        page.get_by_test_id("expert-toggle").click()
        box = page.get_by_test_id("manifest-input")
        expect(box).not_to_have_value("", timeout=60_000)  # the kinds load with the engine
        box.fill(json.dumps(manifest))
        job_id, done = _submit_and_wait(page)
        done.get_by_test_id("job-link").click()
        expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
        advice = httpx.get(f"{base}/v1/jobs/{job_id}/groups", headers=auth, timeout=60).json()["advice"]
        over = advice["split_over_alone"]
        assert advice["recommendation"] == "separately" and over["instead_of"] == 5
        expect(page.get_by_test_id("job-verdict")).to_have_text(advice["verdict"])
        shown = page.get_by_test_id("job-advice")
        expect(shown).to_contain_text("best split against one model per task")
        expect(shown).to_contain_text(f"{over['instead_of']} groups: ")
        expect(shown).to_contain_text("(no better: not advised)")
        record = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth, timeout=60).json()
        assert record["summary"]["reliability"]["best_split_vs_one_model_per_task"] == \
            pytest.approx(over["gain_over_alone"])
        page.screenshot(path=str(tmp_path / "dashboard-over-alone.png"), full_page=True)
