"""The "run it on bigger hardware" path in the browser: choose Hugging Face Jobs in the form, see the flavors with
their price per hour and the estimated cost, Start, watch the job's progress and its pushed adapter. Off a Space
the app runs jobs with the local login (HF_TOKEN), as it pushes with it. Screenshots go to test-artifacts/."""

import re

import pytest
import yaml
from helpers import ARTIFACTS, CANARY, memorise_config, running_app

# alice, bob and alice/qa, the tiny Phi-3 as acme/tiny-phi3 and the image jobs run
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("alice", "hub_model", "jobs_image")]


def test_choose_hugging_face_jobs_see_the_price_start_and_follow(browser, hub, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    from phi3space.jobs.hf import flavors

    monkeypatch.setattr(flavors, "_hardware", None)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(memorise_config("acme/tiny-phi3", "alice/qa", tmp_path / "ignored",
                                                          output__push_to="alice/snarkle")))
    ARTIFACTS.mkdir(exist_ok=True)

    hub.jobs.scheduling_s, hub.jobs.scheduling_message = 3.0, "Waiting for a free a10g-large"
    with running_app(tmp_path / "app-data") as (url, runner):
        monkeypatch.setenv("HF_TOKEN", CANARY)  # the local login (set once the page is built: no mocked sign-in)
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.locator("#config-accordion").get_by_text("Config file (YAML)").click()
        page.locator("#config-upload input[type=file]").set_input_files(str(config_file))
        expect(page.locator("#model-base input")).to_have_value("acme/tiny-phi3")

        page.locator("#compute").get_by_text("Hardware: this machine or Hugging Face Jobs").click()
        page.get_by_text("Hugging Face Jobs (billed to you)").click()
        expect(page.locator("#output-push_checkpoints input")).to_be_checked()
        plan = page.locator("#plan")
        expect(plan).to_contain_text("a10g-large · 1× A10G 24 GB · $1.50/h")
        expect(plan).to_contain_text(re.compile(r"about \d+ min → about \$\d+\.\d\d"))
        expect(plan).to_contain_text("at most $6.00 (timeout 4.0 h), billed to you")
        page.locator("#compute-flavor input").click()
        expect(page.get_by_role("option", name="l4x4 · 4× L4 24 GB · $3.80/h")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#config-preview")).to_contain_text("backend: hf-jobs")
        page.screenshot(path=str(ARTIFACTS / "jobs-1-form.png"), full_page=True)

        page.locator("#start").click()
        progress = page.locator("#job-progress")
        expect(progress).to_contain_text("running", timeout=30_000)
        expect(page.locator("#job-log textarea")).to_have_value(re.compile("submitted to Hugging Face Jobs"))
        # While the job waits for its hardware, the service's status message is on the page.
        expect(page.locator("#job-log textarea")).to_have_value(re.compile(r"scheduling \(Waiting for a free a10g-large\)"))
        expect(progress).to_contain_text("completed", timeout=180_000)
        expect(progress).to_contain_text("step 40/40")
        expect(progress).to_contain_text(f"Adapter on the Hub: {hub.url}/alice/snarkle")
        page.screenshot(path=str(ARTIFACTS / "jobs-2-finished.png"), full_page=True)
        (job,) = runner.list("local")
        assert runner.said(job)[0] == "completed" and job.handle  # (what the page shows: the run's last event)
        assert hub.jobs.secrets(job.handle.split("/")[1]) == {"HF_TOKEN": CANARY}
