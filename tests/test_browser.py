"""A person's path through the page, in Debian's chromium: load a config file into the form, type the dataset,
Inspect, Start, watch the loss chart and the finished status, open the run in the chat and get the trained answer.
Screenshots go to test-artifacts/."""

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import memorise_config, write_qa_jsonl
from ui_app import running_app

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        if os.environ.get("PHI3SPACE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and PHI3SPACE_REQUIRE_BROWSER=1 (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def test_train_watch_and_chat_in_the_browser(browser, tiny_model, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    data = write_qa_jsonl(tmp_path / "qa.jsonl")
    cfg = memorise_config(tiny_model, "user/not-this-one", tmp_path / "ignored")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))

    with running_app(tmp_path / "app-data") as (url, runner):
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.set_default_timeout(30_000)
        page.goto(url)

        # An uploaded YAML fills the form; then the dataset is typed in.
        page.locator("#config-accordion").get_by_text("Config file (YAML)").click()
        page.locator("#config-upload input[type=file]").set_input_files(str(config_file))
        base = page.locator("#model-base input")
        expect(base).to_have_value(str(tiny_model))
        page.get_by_role("button", name=re.compile("Training settings")).click()
        expect(page.locator("#training-max_steps input")).to_have_value("40")
        dataset = page.locator("#data-dataset textarea, #data-dataset input").first
        expect(dataset).to_have_value("user/not-this-one")
        dataset.fill(str(data))

        page.locator("#inspect").click()
        expect(page.locator("#example")).to_contain_text("Flimflam.")
        expect(page.locator("#plan")).to_contain_text("40 optimizer steps")
        expect(page.locator("#config-preview")).to_contain_text(str(data))
        page.screenshot(path=str(ARTIFACTS / "1-form-inspected.png"), full_page=True)

        page.locator("#start").click()
        progress = page.locator("#job-progress")
        expect(progress).to_contain_text(re.compile("running|loading"), timeout=30_000)
        expect(page.locator("#loss-plot canvas, #loss-plot svg").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "2-training.png"), full_page=True)
        expect(progress).to_contain_text("completed", timeout=120_000)
        expect(progress).to_contain_text("step 40/40")
        expect(page.locator("#job-log textarea")).to_have_value(re.compile("run completed at step 40"))
        page.screenshot(path=str(ARTIFACTS / "3-finished.png"), full_page=True)
        assert [runner.status(j)[0] for j in runner.list("local")] == ["completed"]

        page.locator("#open-chat").click()
        expect(page.locator("#chat-adapter input")).to_have_value(re.compile(runner.list("local")[0].id))
        page.locator("#chat-message textarea").fill("What colour is a snarkle?")
        page.locator("#chat-send").click()
        expect(page.locator("#chat-adapter-replies")).to_contain_text("Bright teal.", timeout=60_000)

        # Compare mode, in a fresh conversation: the same question to the base model, side by side.
        page.locator("#chat-clear").click()
        page.get_by_label("Compare with the base model").check()
        page.locator("#chat-message textarea").fill("How many legs does a drobble have?")
        page.locator("#chat-send").click()
        expect(page.locator("#chat-adapter-replies")).to_contain_text("Seven.", timeout=60_000)
        expect(page.locator("#chat-base-replies")).to_contain_text("How many legs does a drobble have?")
        expect(page.locator("#chat-base-replies .message.bot, #chat-base-replies [data-testid=bot]").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "4-chat.png"), full_page=True)

        # Reloading the page reattaches to the visitor's runs.
        page.reload()
        expect(page.locator("#job-progress")).to_contain_text("completed")
