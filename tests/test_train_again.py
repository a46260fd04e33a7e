"""Train again from any card: a pushed run's card and config.yaml hold what repeats it (every setting, the dataset's
commit, the app's and libraries' versions); the card links to the Space's form filled from it (``?from=<repo>``),
for the visitor's own account, and gives the same from a terminal."""

import pytest
import yaml
from helpers import BOB, CANARY, memorise_config

import phi3space
from phi3space import config


@pytest.mark.slow
def test_a_pushed_run_is_repeatable_from_its_card_with_the_data_it_read(hub_model, alice, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from phi3space.engine import data, training
    from phi3space.ui import forms

    monkeypatch.setenv("PHI3SPACE_PUBLIC_SPACE", "acme/phi3space")
    cfg = config.from_dict(memorise_config(hub_model, "alice/qa", tmp_path / "run", output__push_to="alice/qa-run",
                                           output__private=False, training__max_steps=4))
    training.train(cfg, token=CANARY)
    read = HfApi().dataset_info("alice/qa", token=CANARY).sha
    pushed = alice.files("alice/qa-run")
    assert yaml.safe_load(pushed["config.yaml"])["data"]["revision"] == read  # the commit it read, pinned
    card = pushed["README.md"].decode()
    assert "[**Train again**](https://huggingface.co/spaces/acme/phi3space?from=alice/qa-run)" in card
    assert f"the dataset `alice/qa` at commit `{read}`" in card and f"phi3space {phi3space.__version__}, torch " in card
    assert ("hf download alice/qa-run config.yaml --local-dir qa-run\n"
            "python -m phi3space train qa-run/config.yaml --set output.push_to=auto\n") in card

    # The dataset moves on; alice trains again from her card: the form is her run's, the data the commit it read.
    HfApi(token=CANARY).upload_file(path_or_fileobj=b'{"question": "new?", "answer": "new."}\n',
                                    path_in_repo="data/train.jsonl", repo_id="alice/qa", repo_type="dataset")
    values = forms.from_card("alice/qa-run", CANARY, push_to="auto")
    again = forms.config_from_form(values)
    assert again.training == cfg.training and again.lora == cfg.lora and again.data.revision == read
    assert again.output.push_to == "auto"  # a new repo of her own, never the card's
    rows, _, _ = data.prepare(again.data, again.training.seed, CANARY)
    assert len(rows) == 4 and "new?" not in str(rows[:])

    # bob trains again from alice's public card: for his own account (her dataset stays hers: he is told at Start)
    bobs = forms.config_from_form(forms.from_card("alice/qa-run", BOB, push_to="bob/qa-run-again"))
    assert bobs.output.push_to == "bob/qa-run-again" and bobs.data.dataset == "alice/qa"


def test_a_card_that_cannot_be_trained_again_says_why(alice):
    from phi3space.errors import Phi3SpaceError
    from phi3space.ui import forms

    alice.add_repo("alice/plain-model", {"README.md": "# not ours\n"})
    with pytest.raises(Phi3SpaceError) as err:
        forms.from_card("alice/plain-model", CANARY)
    assert err.value.message == "alice/plain-model has no config.yaml: it was not trained with phi3space"
    with pytest.raises(Phi3SpaceError) as err:
        forms.from_card("../etc/passwd", CANARY)
    assert "is not a Hub repo ID" in err.value.message
