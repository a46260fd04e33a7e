"""What comes back from a visitor's own Hub repo after a restart is the visitor's input: it passes the same gate as a
submit. The attack: a visitor edits her repo's card record (a new job id, status training) and its config.yaml
(a server file as the dataset, a server folder as output.dir); after the restart her run is listed again, and
/resume_job must refuse it, writing nothing outside her own run folder."""

import json

import pytest
from helpers import client, running_app

from phi3space import config
from phi3space.hub.records import publish_queued
from phi3space.run import RunDir

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow  # the app, and (fairness) a trained run
ALICE = "hf_AliceRecords0123456789abcdef"


def test_a_record_edited_on_the_hub_cannot_reach_server_paths(hub, tmp_path):
    from huggingface_hub import HfApi

    hub.add_user("alice", ALICE)
    secret = tmp_path / "server-secret.jsonl"  # a file on the server she must never train on
    secret.write_text('{"prompt": "p", "completion": "c"}\n')
    elsewhere = tmp_path / "server-folder"
    evil = config.from_dict({"data": {"dataset": str(secret)}, "output": {"dir": str(elsewhere), "push_to": "alice/evil"}})
    HfApi(token=ALICE).create_repo("alice/evil")
    publish_queued(evil, "alice/evil", "0123456789ab", "alice", ALICE, created=1.0)  # as if by the app, then edited

    with running_app(tmp_path / "data", space=True) as (url, runner):
        alice = client(url, ALICE)
        jobs = json.loads(alice.predict(api_name="/list_jobs"))  # her first call after the restart brings it back
        assert [(j["id"], j["status"]) for j in jobs] == [("0123456789ab", "failed")]
        run = runner.get(jobs[0]["id"], "alice").run
        assert run.path.is_relative_to(runner.data.run("alice", "x").path.parent)  # under her own folder
        assert config.load(run.config).output.dir == str(run.path)  # the server chose it, not the repo's copy
        with pytest.raises(gradio_client.exceptions.AppError, match="is a path on the server"):
            alice.predict("0123456789ab", api_name="/resume_job")
        assert json.loads(alice.predict("0123456789ab", api_name="/job_status"))["status"] == "failed"
    assert not elsewhere.exists()


def test_a_record_whose_config_is_spoiled_is_skipped_not_fatal(hub, tmp_path):
    from huggingface_hub import HfApi

    hub.add_user("alice", ALICE)
    good = config.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "alice/good"}})
    for repo, job_id in (("alice/good", "aaaaaaaaaaaa"), ("alice/spoiled", "bbbbbbbbbbbb")):
        HfApi(token=ALICE).create_repo(repo)
        publish_queued(good, repo, job_id, "alice", ALICE, created=1.0)
    HfApi(token=ALICE).upload_file(path_or_fileobj=b"training: {lora_r: [", path_in_repo=RunDir.CONFIG,
                                   repo_id="alice/spoiled")
    with running_app(tmp_path / "data", space=True) as (_, runner):
        assert runner.restore_from_hub("alice", ALICE) == ["aaaaaaaaaaaa"]
