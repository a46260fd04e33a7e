"""What a person sees, in Debian's chromium.

At 1280 px: every field of the form filled by hand (every settings panel opened), a CSV with unusual column names
uploaded and mapped in the form, Inspect, Start; the page reloaded mid-run (the training process paused meanwhile)
finds the form and the followed job as they were; the run completes with the newest log line in view and both loss
lines on the chart; the chat answers with what the run learned.
At 390 px (a phone): a run config loaded into the form keeps every setting, and nothing is clipped or wider than
the screen. Screenshots go to test-artifacts/.
The DPO path at 1280 and 390 px: preference pairs uploaded, the objective chosen in the form, Inspect shows a pair,
the run trains and the chart draws its reward lines, the chat answers with its adapter.
"""

import csv
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from helpers import ARTIFACTS, PAIR_THINGS, QA_PAIRS, memorise_config, preference_pairs, write_pairs_jsonl

from phi3space.report import fmt_duration, fmt_price
from phi3space.run import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]  # one worker, in order: the second test follows the first's run

TRAIN_RGB, EVAL_RGB = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # the chart's colour_map


def field(page, key: str):
    """The input of the form field for a setting (a text box, number box or dropdown)."""
    return page.locator(f"#{key.replace('.', '-')}").locator("textarea, input:not([type=checkbox]):not([type=radio])").first


def choose(page, key: str, option: str) -> None:
    """Pick an option of a dropdown field the way a person does: open it, click the option."""
    field(page, key).click()
    page.get_by_role("option", name=option, exact=True).click()


def open_panel(page, title: str) -> None:
    page.get_by_role("button", name=re.compile(re.escape(title))).first.click()


def wait_for_event(run: RunDir, type: str, timeout: float = 60, **match) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events, _ = run.read_events()
        for e in events:
            if e["type"] == type and all(e.get(k) == v for k, v in match.items()):
                return e
        time.sleep(0.01)
    raise AssertionError(f"no {type} event in {run}")


def colour_pixels(png: bytes, rgb: tuple, tolerance: int = 40) -> int:
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(all(abs(c - t) <= tolerance for c, t in zip(px, rgb)) for px in image.getdata())


def log_at_bottom(page) -> None:
    page.wait_for_function("""() => { const t = document.querySelector('#job-log textarea');
        return t && t.value.includes('run completed') && t.scrollHeight > t.clientHeight + 10
               && t.scrollTop + t.clientHeight >= t.scrollHeight - 2; }""", timeout=10_000)


# Every setting, as typed by hand: (key, value). Values the tiny model memorises QA_PAIRS with in 40 steps.
BY_HAND = [
    ("data.split", "train"), ("data.config_name", "default"), ("data.eval_split", "train"),
    ("data.eval_fraction", "0.2"), ("data.max_samples", "4"), ("data.columns", "prompt: Frage, completion: Antwort"),
    ("lora.r", "16"), ("lora.alpha", "32"), ("lora.dropout", "0"),
    ("lora.target_modules", "qkv_proj, o_proj, gate_up_proj, down_proj"),
    ("training.learning_rate", "0.005"), ("training.warmup_ratio", "0"), ("training.epochs", "1"),
    ("training.max_steps", "40"), ("training.batch_size", "4"), ("training.grad_accum", "1"),
    ("training.max_length", "256"), ("training.weight_decay", "0"), ("training.seed", "42"),
    ("training.logging_steps", "5"), ("training.eval_steps", "10"), ("training.save_steps", "20"),
    ("training.save_total_limit", "1"),
]
CHOSEN = [("training.lr_scheduler", "constant"), ("model.attn_implementation", "eager")]
PANELS = ["Dataset settings", "LoRA settings", "Training settings", "Logging, checkpoints and hardware",
          "Config file (YAML)"]


def write_fragen_csv(path: Path) -> Path:
    """QA_PAIRS under column names no format uses: they train only through a column mapping."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Frage", "Antwort"])
        writer.writerows(QA_PAIRS)
    return path


def test_a_form_filled_by_hand_trains_a_mapped_csv_survives_a_reload_and_chats(browser, app, tiny_model, tmp_path):
    from playwright.sync_api import expect

    url, runner = app
    data = write_fragen_csv(tmp_path / "fragen.csv")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)

    # Every settings panel opened; the optional numbers stay empty (gradio's number box would show 0).
    for title in PANELS:
        open_panel(page, title)
    for key in ("training.max_steps", "training.eval_steps", "data.max_samples"):
        expect(field(page, key)).to_have_value("")
    expect(field(page, "training.learning_rate")).to_have_attribute("step", "0.00001")
    for upload in ("#data-upload", "#config-upload"):
        text_fits(page, upload, "Click to Upload")

    # Every field by hand; the uploaded file takes the dataset box's place.
    field(page, "data.dataset").fill("someone/not-this-dataset")
    page.locator("#data-upload input[type=file]").set_input_files(str(data))
    expect(page.locator("#data-upload")).to_contain_text(re.compile(r"fragen ?\.csv"))
    base = field(page, "model.base")
    base.fill(str(tiny_model))
    base.press("Enter")
    page.locator("#model-method").get_by_label("qlora").check()
    page.locator("#model-method").get_by_label("lora", exact=True).check()
    page.locator("#run-name textarea").fill("by hand")
    for key, value in BY_HAND:
        field(page, key).fill(value)
    for key, option in CHOSEN:
        choose(page, key, option)
    page.locator("#training-gradient_checkpointing").get_by_role("checkbox").uncheck()
    page.locator("#training-packing").get_by_role("checkbox").check()
    page.locator("#training-packing").get_by_role("checkbox").uncheck()
    page.locator("#output-private").get_by_role("checkbox").uncheck()
    page.locator("#output-push_checkpoints").get_by_role("checkbox").check()
    page.locator("#output-push_checkpoints").get_by_role("checkbox").uncheck()
    field(page, "output.push_to").fill("")

    preview = page.locator("#config-preview")
    for line in ("max_steps: 40", "eval_steps: 10", "max_samples: 4", "eval_split: train", "attn_implementation: eager",
                 "lr_scheduler: constant", "save_total_limit: 1", "gradient_checkpointing: false", "private: false",
                 "prompt: Frage", "completion: Antwort", "/uploads/local/"):
        expect(preview).to_contain_text(line)
    expect(page.locator("#plan")).not_to_contain_text("Settings to fix")

    page.locator("#inspect").click()
    # a training row (which one depends on the held-out 20%), its answer the trained span
    expect(page.locator("#example")).to_contain_text(re.compile("|".join(re.escape(a) for _, a in QA_PAIRS)))
    expect(page.locator("#inspection-report")).to_contain_text("format: prompt_completion")
    expect(page.locator("#inspection-report")).to_contain_text("training on 4 rows, evaluating on 4")
    expect(page.locator("#plan")).to_contain_text("40 optimizer steps")
    page.screenshot(path=str(ARTIFACTS / "1280-1-form-inspected.png"), full_page=True)

    # Plan: a few steps of this very run on this machine (a job of its own, queued like training), then whether it
    # fits, how long it takes here and what it costs on each Jobs flavor.
    page.locator("#plan-button").click()
    expect(page.locator("#job-progress")).to_contain_text("by hand-plan")
    expect(page.locator("#job-progress")).to_contain_text("It fits here", timeout=120_000)
    plan_job = runner.list("local")[-1]
    plan = plan_job.run.state().plan
    assert plan_job.name == "by hand-plan" and plan["fits"] is True and plan["tokens_per_s"] > 0
    assert plan["rows"] == 4 and plan["tokens"] == pytest.approx(40 * 4 * plan["mean_row_tokens"], rel=0.01)
    shown = page.locator(".plan-options tr")
    here = shown.filter(has_text="this machine's CPU").locator("td").all_inner_texts()
    assert here[:3] == ["here", fmt_duration(plan["options"][0]["eta_s"]), "-"] and here[3] == "yes"
    a10g = next(o for o in plan["options"] if o["flavor"] == "a10g-large")
    cells = shown.filter(has_text="a10g-large").first.locator("td").all_inner_texts()
    assert cells[:3] == ["a10g-large", fmt_duration(a10g["eta_s"]), fmt_price(a10g["cost_usd"])]
    expect(page.locator("#job-progress")).to_contain_text(f"{plan['tokens_per_s']} tokens/s")
    page.screenshot(path=str(ARTIFACTS / "1280-1b-plan.png"), full_page=True)

    # Start; pause the training process after its first progress event, and reload the page meanwhile.
    page.locator("#start").click()
    progress = page.locator("#job-progress")
    expect(progress).not_to_contain_text("by hand-plan")  # the page follows the new run
    expect(progress).to_contain_text("by hand")
    job = runner.list("local")[-1]
    assert job.name == "by hand" and job.kind == "train"
    started = wait_for_event(job.run, "run_started")
    assert started["dataset"]["format"] == "prompt_completion" and started["dataset"]["train_rows"] == 4
    wait_for_event(job.run, "progress")
    while runner.store.get(job.id).pid is None:
        time.sleep(0.01)
    pid = runner.store.get(job.id).pid
    os.killpg(pid, signal.SIGSTOP)
    try:
        expect(progress).to_contain_text(re.compile(r"running · step \d+/40"))
        page.reload()
        expect(progress).to_contain_text(job.id)
        expect(progress).to_contain_text("running")
        expect(page.locator("#stop")).to_be_enabled()
        expect(page.locator("#data-upload")).to_contain_text(re.compile(r"fragen ?\.csv"))
        expect(field(page, "model.base")).to_have_value(str(tiny_model))
        expect(page.locator("#run-name textarea")).to_have_value("by hand")
        for title in PANELS[:4]:
            open_panel(page, title)
        for key, value in BY_HAND:
            expect(field(page, key)).to_have_value(value)
        for key, option in CHOSEN:
            expect(field(page, key)).to_have_value(option)
        expect(page.locator("#training-gradient_checkpointing").get_by_role("checkbox")).not_to_be_checked()
        expect(page.locator("#output-private").get_by_role("checkbox")).not_to_be_checked()
        expect(page.locator("#model-method").get_by_label("lora", exact=True)).to_be_checked()
        page.screenshot(path=str(ARTIFACTS / "1280-2-reloaded-mid-run.png"), full_page=True)
    finally:
        os.killpg(pid, signal.SIGCONT)

    expect(progress).to_contain_text("completed", timeout=120_000)
    expect(progress).to_contain_text("step 40/40")
    log_at_bottom(page)
    # Both loss lines: the eval series appeared while the page watched, and the chart redrew for it.
    page.wait_for_timeout(1500)
    chart = page.locator("#loss-plot").screenshot()
    assert colour_pixels(chart, TRAIN_RGB) > 150 and colour_pixels(chart, EVAL_RGB) > 150
    expect(page.locator("#runs-table")).to_contain_text("40/40")
    table = page.locator("#runs-table").bounding_box()  # every column fits at 1280 px (the last one was cut off)
    last = page.locator("#runs-table th").last.bounding_box()
    assert last["x"] + last["width"] <= table["x"] + table["width"] + 0.5, (last, table)
    # Merge with a push checks the destination before it queues anything (this machine has no Hub login).
    open_panel(page, "Merge into the full model")
    page.locator("#merge-push").get_by_role("checkbox").check()
    page.locator("#merge-repo textarea").fill("someone/merged")
    page.locator("#merge").click()
    expect(page.get_by_text(re.compile("pushing the merged model needs a Hugging Face token")).first).to_be_visible()
    assert [j.kind for j in runner.list("local")] == ["plan", "train"]
    page.screenshot(path=str(ARTIFACTS / "1280-3-finished.png"), full_page=True)

    page.locator("#open-chat").click()
    expect(page.locator("#chat-adapter input")).to_have_value(re.compile(job.id))
    page.locator("#chat-message textarea").fill("What colour is a snarkle?")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-adapter-replies")).to_contain_text("Bright teal.", timeout=60_000)
    page.locator("#chat-clear").click()
    page.locator("#chat-compare").get_by_role("checkbox").check()
    page.locator("#chat-message textarea").fill("How many legs does a drobble have?")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-adapter-replies")).to_contain_text("Seven.", timeout=60_000)
    expect(page.locator("#chat-base-replies")).to_contain_text("How many legs does a drobble have?")
    expect(page.locator("#chat-base-replies .message.bot, #chat-base-replies [data-testid=bot]").first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "1280-4-chat.png"), full_page=True)
    context.close()


def inside_screen(page, selector: str, width: int = 390) -> None:
    """The element is shown whole: not wider than the screen, not cut at either side, and its content fits it."""
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not shown"
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, f"{selector} runs off the screen: {box}"
    overflow = page.locator(selector).first.evaluate("e => e.scrollWidth - e.clientWidth")
    assert overflow <= 1, f"{selector} clips {overflow}px of its content"


def text_fits(page, container: str, text: str, exact: bool = False) -> None:
    """A text inside ``container`` is drawn inside the container's box (not cut off by it)."""
    outer = page.locator(container).first.bounding_box()
    inner = page.locator(container).get_by_text(text, exact=exact).first.bounding_box()
    assert inner is not None, f"{text!r} is not shown in {container}"
    assert (inner["x"] >= outer["x"] - 0.5 and inner["y"] >= outer["y"] - 0.5
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5), f"{text!r} is clipped: {inner} {outer}"


def test_on_a_phone_nothing_is_clipped_and_a_config_file_fills_every_setting(browser, app, tiny_model, tmp_path):
    """The page at 390 x 844 (after the first test, it follows that test's finished run)."""
    from playwright.sync_api import expect

    url, runner = app
    data = write_fragen_csv(tmp_path / "fragen.csv")
    cfg = memorise_config(tiny_model, "someone/unused", tmp_path / "ignored", training__weight_decay=0.01,
                          training__save_total_limit=3, training__packing=True, model__attn_implementation="eager",
                          data__columns={"prompt": "Frage", "completion": "Antwort"})
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))

    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    open_panel(page, "Config file (YAML)")
    for upload in ("#data-upload", "#config-upload"):
        text_fits(page, upload, "Click to Upload")

    # A run config fills every setting it names, the ones the form used to drop included.
    page.locator("#config-upload input[type=file]").set_input_files(str(config_file))
    expect(field(page, "model.base")).to_have_value(str(tiny_model))
    for title in PANELS[:4]:
        open_panel(page, title)
    expect(field(page, "data.columns")).to_have_value("prompt: Frage, completion: Antwort")
    expect(field(page, "training.weight_decay")).to_have_value("0.01")
    expect(field(page, "training.save_total_limit")).to_have_value("3")
    expect(field(page, "training.max_steps")).to_have_value("40")
    expect(field(page, "model.attn_implementation")).to_have_value("eager")
    expect(page.locator("#training-packing").get_by_role("checkbox")).to_be_checked()

    page.locator("#data-upload input[type=file]").set_input_files(str(data))
    page.locator("#inspect").click()
    expect(page.locator("#inspection-report")).to_contain_text("format: prompt_completion")
    expect(page.locator("#example")).to_contain_text("Flimflam.")
    for selector in ("#header h1", "#header", "#dataset-row", "#data-upload", "#inspection-report",
                     "#inspection-report pre", "#model-row", "#output-row", "#output-push_to", "#output-private",
                     "#output-push_checkpoints", "#start", "#runs-title", "#job-progress", "#job-buttons",
                     "#loss-plot", "#job-log", "#runs-table", "#plan-button"):
        inside_screen(page, selector)
    for th in page.locator("#runs-table th").all():
        box = th.bounding_box()
        assert box["height"] < 60, f"a table header breaks over several lines: {th.inner_text()!r} {box}"
        assert th.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), f"{th.inner_text()!r} is cut off"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "390-1-train-tab.png"), full_page=True)

    page.locator("#plan-button").click()  # the plan's table scrolls sideways inside its own box, never the page
    expect(page.locator("#job-progress")).to_contain_text("It fits here", timeout=120_000)
    expect(page.locator(".plan-options")).to_contain_text("a10g-large")
    inside_screen(page, "#job-progress")
    box = page.locator(".plan-table").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390.5, box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.locator("#job-progress").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "390-1b-plan.png"))

    page.get_by_role("tab", name="Chat").click()
    for selector in ("#chat-adapter", "#chat-compare", "#chat-message", "#chat-send"):
        inside_screen(page, selector)
    text_fits(page, "#chat-compare", "Compare with the base model")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "390-2-chat-tab.png"), full_page=True)
    context.close()


DPO_BY_HAND = [("data.eval_fraction", "0.2"), ("training.learning_rate", "0.002"), ("training.warmup_ratio", "0"),
               ("training.max_steps", "12"), ("training.batch_size", "4"), ("training.grad_accum", "1"),
               ("training.max_length", "128"), ("training.beta", "0.1"), ("training.logging_steps", "2"),
               ("training.eval_steps", "6"), ("training.save_steps", "12")]


def test_dpo_chosen_in_the_form_on_a_phone_trains_and_draws_its_rewards_there_and_on_a_laptop(browser, app, tiny_model,
                                                                                              tmp_path):
    """On a phone (390 px): preference pairs uploaded, DPO chosen as the objective, Inspect shows a prompt with its
    chosen and rejected answers, Start; the run completes and the chart draws the reward accuracy and margin, with
    nothing clipped. Then the page opened on a laptop (1280 px) follows the finished run, draws the same charts, and
    the chat answers with the adapter."""
    from playwright.sync_api import expect

    url, runner = app
    data = write_pairs_jsonl(tmp_path / "pairs.jsonl", preference_pairs(PAIR_THINGS[:24]))
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.locator("#data-upload input[type=file]").set_input_files(str(data))
    base = field(page, "model.base")
    base.fill(str(tiny_model))
    base.press("Enter")
    page.locator("#training-objective").get_by_label("dpo").check()
    page.locator("#run-name textarea").fill("dpo by hand")
    for title in PANELS:
        open_panel(page, title)
    for key, value in DPO_BY_HAND:
        field(page, key).fill(value)
    choose(page, "training.loss_type", "sigmoid")
    choose(page, "training.lr_scheduler", "constant")
    field(page, "output.push_to").fill("")
    preview = page.locator("#config-preview")
    for line in ("objective: dpo", "beta: 0.1", "loss_type: sigmoid", "max_steps: 12"):
        expect(preview).to_contain_text(line)

    page.locator("#inspect").click()
    report = page.locator("#inspection-report")
    expect(report).to_contain_text("format: preference pairs")
    expect(report).to_contain_text("rows: 24 read, 24 kept, 0 dropped")
    expect(page.locator("#example")).to_contain_text("Gladly! The")
    expect(page.locator("#example")).to_contain_text("No. Go away,")
    page.screenshot(path=str(ARTIFACTS / "390-dpo-1-inspected.png"), full_page=True)

    page.locator("#start").click()
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text("dpo by hand", timeout=90_000)  # the submit checks the data again (busy CI)
    expect(progress).to_contain_text("completed", timeout=180_000)
    expect(progress).to_contain_text("step 12/12")
    job = next(j for j in runner.list("local") if j.name == "dpo by hand")
    assert job.run.state().eval_rewards and job.run.state().train_rewards[-1][1] == 1.0
    for width in (390, 1280):
        if width == 1280:  # the same run, opened on a laptop: the page follows it, charts and all
            laptop = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = laptop.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            expect(page.locator("#job-progress")).to_contain_text("dpo by hand")
        page.wait_for_timeout(1500)
        expect(page.locator("#loss-plot")).to_be_visible()
        charts = page.locator("#reward-charts")
        charts.scroll_into_view_if_needed()
        for metric in ("accuracy", "margin"):  # both lines, train and eval, on each reward chart
            png = page.locator(f"#reward-{metric}-plot").screenshot()
            assert colour_pixels(png, TRAIN_RGB) > 100 and colour_pixels(png, EVAL_RGB) > 100, (width, metric)
        expect(page.locator("#job-log textarea")).to_have_value(
            re.compile(r"eval  step 12 \| eval_loss [\d.]+ \| reward acc 1\.00"))
        if width == 390:
            for selector in ("#model-row", "#training-objective", "#inspection-report", "#example", "#job-progress",
                             "#loss-plot", "#reward-accuracy-plot", "#reward-margin-plot", "#job-log"):
                inside_screen(page, selector)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(ARTIFACTS / f"{width}-dpo-2-trained.png"), full_page=True)
        charts.screenshot(path=str(ARTIFACTS / f"{width}-dpo-3-reward-charts.png"))
    phone.close()

    page.locator("#open-chat").click()
    expect(page.locator("#chat-adapter input")).to_have_value(re.compile(job.id))
    page.locator("#chat-compare").get_by_role("checkbox").check()
    open_panel(page, "Generation settings")  # short replies: the tiny model's are noise after the first words
    tokens = page.locator("#chat-max-new-tokens input[type=number]")
    tokens.fill("16")
    tokens.press("Enter")
    page.locator("#chat-message textarea").fill("Tell me about the comet.")
    page.locator("#chat-send").click()
    for side in ("adapter", "base"):
        replies = page.locator(f"#chat-{side}-replies .message.bot, #chat-{side}-replies [data-testid=bot]")
        expect(replies.first).to_be_visible(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "1280-dpo-4-chat.png"), full_page=True)
    laptop.close()
