"""Train again from a card, in Debian's chromium: the card's link (``?from=<repo>``) opens the form filled with that
run's settings for the visitor's own account, at 1280 px and on a phone; a card that is not a phi3space run says so
and leaves the form as it was. Screenshots go to test-artifacts/."""

import pytest
from helpers import ARTIFACTS, memorise_config
from test_browser import field, open_panel

from phi3space.jobs import spec

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]


@pytest.mark.parametrize("width", [1280, 390])
def test_a_cards_train_again_link_fills_the_form_for_the_visitor(browser, app, alice, tiny_model, tmp_path, width):
    from playwright.sync_api import expect

    url, _ = app
    cfg = spec.from_dict(memorise_config(tiny_model, "alice/qa", tmp_path / "run", output__push_to="alice/qa-run",
                                         training__learning_rate=0.003, training__max_steps=25, lora__r=8,
                                         data__revision="0123456789abcdef0123456789abcdef01234567"))
    alice.add_repo("alice/qa-run", {"config.yaml": cfg.to_yaml(), "README.md": "---\nlicense: mit\n---\n# qa-run\n"})
    alice.add_repo("alice/plain", {"README.md": "# a model phi3space did not train\n"})

    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{url.rstrip('/')}/?from=alice/qa-run")
    expect(field(page, "data.dataset")).to_have_value("alice/qa")
    expect(page.locator("#run-name textarea, #run-name input").first).to_have_value("qa-run again")
    for title in ("Dataset settings", "LoRA settings", "Training settings"):
        open_panel(page, title)
    expect(field(page, "training.learning_rate")).to_have_value("0.003")
    expect(field(page, "training.max_steps")).to_have_value("25")
    expect(field(page, "lora.r")).to_have_value("8")
    expect(field(page, "data.revision")).to_have_value("0123456789abcdef0123456789abcdef01234567")
    expect(field(page, "output.push_to")).to_have_value("auto")  # never alice/qa-run: a new repo of the visitor's
    expect(page.get_by_text("The form holds the run of alice/qa-run")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / f"train-again-{width}.png"), full_page=True)

    other = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    other.goto(f"{url.rstrip('/')}/?from=alice/plain")
    expect(other.get_by_text("alice/plain has no config.yaml: it was not trained with phi3space")).to_be_visible()
    expect(field(other, "data.dataset")).not_to_have_value("alice/qa")  # the form as it was
