"""What a person sees after a run, in Debian's chromium: Evaluate (summary and a side-by-side table to page through)
and Export to GGUF (pushed, with the k-quant note), at 1280 px and on a 390 px phone. Screenshots go to
test-artifacts/after-*.png."""

import re
import shutil

import pytest
from helpers import ARTIFACTS, QA_PAIRS
from helpers import CANARY as ALICE

from phi3space.jobs.store import Job

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


@pytest.fixture
def finished(app, trained_run, tmp_path, alice, monkeypatch):
    """A finished run of the local owner (the one the page follows), the data it memorised, and alice's login on
    this machine (the export pushes with it)."""
    from phi3space.ui import after_view

    monkeypatch.setattr(after_view, "PAGE_ROWS", 2)  # 4 rows: two pages
    monkeypatch.setenv("HF_TOKEN", ALICE)
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    _, runner = app
    run = tmp_path / "qa-run"
    shutil.copytree(trained_run, run)
    runner.store.add(Job(id="train1", owner="local", name="qa-run", run_dir=str(run), phase="done"))
    return trained_run.parent / "qa.jsonl"


def fits_the_phone(page, selector: str) -> None:
    box = page.locator(selector).first.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390.5, f"{selector}: {box}"


def test_evaluate_and_export_from_the_page(browser, app, finished, alice):
    from playwright.sync_api import expect

    url, runner = app
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    expect(page.locator("#job-progress")).to_contain_text("qa-run")
    page.get_by_role("button", name="Evaluate against the base model").click()
    expect(page.locator("#evaluate")).to_be_enabled()
    run_on = page.locator("#eval-backend")
    expect(run_on).to_contain_text("Run on")
    expect(page.locator("#eval-flavor")).to_be_hidden()
    run_on.get_by_text("Hugging Face Jobs (billed to you)").click()  # the flavors with their prices
    expect(page.locator("#eval-flavor")).to_be_visible()
    run_on.get_by_text("This machine").click()
    expect(page.locator("#eval-flavor")).to_be_hidden()
    page.locator("#eval-data textarea").fill(str(finished))
    page.locator("#eval-rows input").fill("4")
    page.locator("#evaluate").click()
    expect(page.locator("#job-progress")).to_contain_text("qa-run-eval")
    expect(page.locator("#job-progress")).to_contain_text("completed", timeout=180_000)
    summary, table = page.locator("#eval-summary"), page.locator("#eval-table")
    expect(summary).to_contain_text("4 rows of", timeout=10_000)
    expect(summary).to_contain_text("exact match")
    expect(page.locator("#eval-page")).to_contain_text("page 1 of 2 (4 rows)")
    for question, answer in QA_PAIRS[:2]:
        expect(table).to_contain_text(question)
        expect(table).to_contain_text(answer)
    expect(table).to_contain_text("0 / 1")
    page.screenshot(path=str(ARTIFACTS / "after-1280-1-evaluated.png"), full_page=True)
    page.locator("#eval-next").click()
    expect(page.locator("#eval-page")).to_contain_text("page 2 of 2")
    expect(table).to_contain_text(QA_PAIRS[3][1])
    expect(table).not_to_contain_text(QA_PAIRS[0][0])
    page.locator("#eval-table").screenshot(path=str(ARTIFACTS / "after-1280-2-table-page-2.png"))

    # Still following the eval job: the actions act on the run it evaluated, and say so.
    expect(page.locator("#actions-note")).to_contain_text("act on qa-run (train1)")
    expect(page.locator("#open-chat")).to_be_enabled()
    page.get_by_role("button", name="Export to GGUF").click()
    expect(page.locator("#export")).to_be_enabled()
    expect(page.locator("#export-box")).to_contain_text("Q4_K_M and the other k-quants need llama.cpp")
    page.locator("#export-quant input").click()
    page.get_by_role("option", name="f16", exact=True).click()
    page.locator("#export-system textarea").fill("Answer in one line.")
    # Written here first, and offered for download: nothing is pushed unless asked.
    expect(page.locator("#export-push").get_by_role("checkbox")).not_to_be_checked()
    page.locator("#export").click()
    expect(page.locator("#job-progress")).to_contain_text("qa-run-gguf")
    expect(page.locator("#job-progress")).to_contain_text("completed", timeout=180_000)
    files = page.locator("#job-files")
    expect(files).to_contain_text(re.compile(r"qa-run-F16 ?\.gguf"))
    expect(page.locator("#job-progress .run-it")).to_contain_text("llama-cli -m qa-run-F16.gguf")  # the next command
    with page.expect_download() as download:
        files.locator("tr", has_text="Modelfile").locator("[data-testid=download-link]").click()
    assert 'SYSTEM """Answer in one line."""' in open(download.value.path()).read()
    assert alice.repo("alice/qa-run-GGUF") is None
    page.screenshot(path=str(ARTIFACTS / "after-1280-3-exported-here.png"), full_page=True)

    page.locator("#export-push").get_by_role("checkbox").check()  # and now pushed too
    page.locator("#export").click()
    expect(page.locator("#job-progress")).to_contain_text("qa-run-gguf-2")  # a second job of the same name: numbered
    expect(page.locator("#job-progress")).to_contain_text("qa-run-gguf")
    expect(page.locator("#job-progress")).to_contain_text("completed", timeout=180_000)
    expect(page.locator("#job-progress")).to_contain_text("GGUF and Modelfile on the Hub")
    expect(page.locator("#job-progress")).to_contain_text("alice/qa-run-GGUF")
    expect(page.locator("#job-progress .run-it")).to_contain_text("ollama run hf.co/alice/qa-run-GGUF:F16")
    assert {"qa-run-F16.gguf", "Modelfile", "README.md"} <= set(alice.files("alice/qa-run-GGUF"))
    modelfile = alice.files("alice/qa-run-GGUF")["Modelfile"].decode()
    assert 'SYSTEM """Answer in one line."""' in modelfile and "temperature" not in modelfile  # left empty
    page.screenshot(path=str(ARTIFACTS / "after-1280-4-exported-and-pushed.png"), full_page=True)
    context.close()

    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.locator("#job-picker input").click()
    page.get_by_role("option", name="qa-run-eval").click()
    expect(page.locator("#eval-summary")).to_contain_text("exact match")
    page.get_by_role("button", name="Export to GGUF").click()
    for selector in ("#eval-summary", "#eval-table", "#eval-pages", "#export-box", "#eval-box", "#job-progress"):
        fits_the_phone(page, selector)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "after-390-1-evaluated.png"), full_page=True)
    page.locator("#eval-table").screenshot(path=str(ARTIFACTS / "after-390-2-table.png"))
    phone.close()
