"""The web console in a real browser: Debian's chromium driven by Playwright.

`make console-screenshots` runs this module with EVAL_CONSOLE_SCREENSHOTS=docs/console to
refresh the pictures in docs/console.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devcluster.cluster import Cluster
from devcluster.fake_llm import FakeLLM
from evaluation_runner import layout

from tests.console.conftest import RESULTS_BUCKET, Completed, run_task_with_runner
from tests.support.requirements import require, require_module
from tests.support.s3 import S3Endpoint

pytestmark = [pytest.mark.cluster, pytest.mark.kwok]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


@pytest.fixture(scope="module")
def console_url(cluster: Cluster, s3_server: S3Endpoint, completed: Completed,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("console-home")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home),
           "KUBECONFIG": str(cluster.kubeconfig), "AWS_ACCESS_KEY_ID": s3_server.access_key,
           "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_EC2_METADATA_DISABLED": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "evaluation_console", "-n", completed.namespace, "console",
         "--no-open"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    first = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", first)
    assert match, first + (process.stdout.read() if process.poll() is not None else "")
    yield match.group(1)
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_module("playwright.sync_api")
    require(CHROMIUM.is_file(), f"{CHROMIUM} is missing (run `make browser`)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=CHROMIUM_FLAGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any, console_url: str, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860},
                                  accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    tab.goto(console_url)  # sets the access cookie, then redirects to the list
    yield tab
    context.close()


def shoot(page: Any, name: str, tmp_path: Path, full_page: bool = True) -> None:
    target = Path(os.environ.get("EVAL_CONSOLE_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"{name}.png"), full_page=full_page)


def s3_object(s3: S3Endpoint, status: dict[str, Any], name: str) -> bytes:
    prefix = status["results"]["uri"][len(f"s3://{RESULTS_BUCKET}/"):]
    body: bytes = s3.client().get_object(Bucket=RESULTS_BUCKET, Key=prefix + name)["Body"].read()
    return body


def test_list_shows_the_tasks(page: Any, completed: Completed, tmp_path: Path) -> None:
    rows = page.locator("table#tasks tbody tr")
    keys = rows.evaluate_all("rs => rs.map(r => r.dataset.key)")
    assert {f"{completed.namespace}/baseline", f"{completed.namespace}/better"} <= set(keys)
    baseline = page.locator(f'tr[data-key="{completed.namespace}/baseline"]')
    assert baseline.locator('[data-field="phase"]').inner_text() == "Completed"
    assert baseline.locator('[data-field="overall"]').inner_text() == (
        f"{completed.statuses['baseline']['overallScore']:.4f}")
    shoot(page, "list", tmp_path)
    page.select_option('select[name="status"]', "Failed")
    page.click("text=Filter")
    assert "No evaluation tasks here" in page.locator("table#tasks").inner_text()


def test_details_show_the_scores_from_the_bundle(page: Any, completed: Completed,
                                                 s3_server: S3Endpoint, tmp_path: Path) -> None:
    summary = json.loads(s3_object(s3_server, completed.statuses["baseline"],
                                   layout.SUMMARY_JSON))
    page.click("text=baseline")
    assert page.locator("#overall").inner_text() == f"{summary['overallScore']:.4f}"
    bars = page.locator(".bar-row").all_inner_texts()
    for bench in summary["benchmarks"]:
        assert any(bench["name"] in bar and f"{bench['score']:.4f}" in bar for bar in bars)
    metrics = page.locator("table#metrics").inner_text()
    assert f"{summary['benchmarks'][0]['metrics']['accuracy']:.4f}" in metrics
    assert f"{summary['benchmarks'][0]['stderr']['accuracy']:.4f}" in metrics
    assert summary["datasets"][0]["sha256"][:12] in page.content()
    shoot(page, "details", tmp_path)


def test_download_saves_the_s3_object(page: Any, completed: Completed, s3_server: S3Endpoint,
                                      tmp_path: Path) -> None:
    page.click("text=better")
    with page.expect_download() as info:
        page.click("#download")
    saved = tmp_path / "download.zip"
    info.value.save_as(str(saved))
    assert info.value.suggested_filename == "better-results.zip"
    assert saved.read_bytes() == s3_object(s3_server, completed.statuses["better"],
                                           layout.RESULTS_ZIP)


def test_sample_browser_filters_and_searches(page: Any, completed: Completed,
                                             tmp_path: Path) -> None:
    page.goto(page.url.split("?")[0] + f"tasks/{completed.namespace}/baseline/samples")
    assert page.locator("#sample-count").inner_text().startswith("6 of 6 samples match")
    page.check('input[name="verdict"][value="wrong"]')  # submits on change
    page.wait_for_url(re.compile(r"verdict=wrong"))
    assert page.locator("#sample-count").inner_text().startswith("2 of 6 samples match")
    assert page.locator("li.sample.wrong").count() == 2
    page.click("text=translate")
    page.fill('input[name="q"]', "gute nacht")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=gute"))
    assert page.locator("li.sample").count() == 1
    assert "Good night" in page.locator("li.sample").inner_text()
    page.goto(page.url.split("?")[0] + "?benchmark=arc-mini")
    shoot(page, "samples", tmp_path, full_page=False)


def test_compare_shows_the_deltas(page: Any, completed: Completed, tmp_path: Path) -> None:
    ns = completed.namespace
    page.check(f'input[value="{ns}/baseline"]')
    page.check(f'input[value="{ns}/better"]')
    page.click("#compare-button")
    table = page.locator("table#comparison")
    arc = table.locator("tr", has_text="arc-mini").inner_text()
    assert "+0.3333" in arc and "beyond noise" in arc
    assert "Overall" in table.inner_text()
    assert "samples differ" in page.content()
    shoot(page, "compare", tmp_path)


def test_delete_asks_then_purges(page: Any, completed: Completed, cluster: Cluster,
                                 s3_server: S3Endpoint, llm: FakeLLM, tmp_path: Path) -> None:
    ns = completed.namespace
    status = run_task_with_runner(cluster, s3_server, ns, "doomed-web", llm, tmp_path / "run")
    prefix = status["results"]["uri"][len(f"s3://{RESULTS_BUCKET}/"):]
    s3 = s3_server.client()

    def versions() -> int:
        listing = s3.list_object_versions(Bucket=RESULTS_BUCKET, Prefix=prefix)
        return len(listing.get("Versions", [])) + len(listing.get("DeleteMarkers", []))

    # The list reloads itself once its set of tasks changes (console.js): a reload of our
    # own raced it and was aborted (net::ERR_ABORTED) in a CI run of 2026-11-30.
    page.wait_for_selector("text=doomed-web")
    page.click("text=doomed-web")
    page.click("#delete")
    warning = page.locator(".danger-zone").inner_text()
    assert "cannot be undone" in warning and status["results"]["uri"] in warning
    assert f"{versions()} object versions" in warning
    shoot(page, "delete", tmp_path)
    # Without the right name the browser does not send the form.
    page.fill("#confirm", "something-else")
    page.click("#confirm-delete")
    assert "/delete" in page.url and versions() > 0
    # A POST without the form's CSRF token is refused, even with the access cookie.
    forged = page.request.post(page.url, form={"confirm": "doomed-web", "csrf": "guess"})
    assert forged.status == 403 and "CSRF" in forged.text()
    page.fill("#confirm", "doomed-web")
    page.click("#confirm-delete")
    assert f"Deleted {ns}/doomed-web" in page.locator(".notice.ok").inner_text()
    cluster.wait_until("the purge", lambda: versions() == 0, timeout=60)
    cluster.wait_until("the task to go", lambda: cluster.kubectl(
        "get", "evaluationtask", "doomed-web", "-n", ns, check=False).returncode != 0,
        timeout=60)


def test_requests_without_the_access_token_are_refused(browser: Any, console_url: str) -> None:
    context = browser.new_context()
    stranger = context.new_page()
    response = stranger.goto(console_url.split("?")[0])
    assert response.status == 403 and "kubectl evaluation console" in stranger.content()
    context.close()


def test_keyboard_reaches_the_details_and_download(page: Any, completed: Completed) -> None:
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "baseline":
            break
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/tasks/.*/baseline$"))
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "download":
            return
    pytest.fail("the Download button is not reachable by keyboard")
