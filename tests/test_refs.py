"""phi3space/hub/refs.py is the one owner of "a path on this machine, or a Hub ID?" and "a well-formed repo ID?":
the CLI, the Follow tab's merge, the bucket copy and the chat's adapter checks all ask it."""

import pytest

from phi3space import cli
from phi3space.errors import ConfigError
from phi3space.hub.bucket import BucketSync
from phi3space.refs import check_repo_id, is_hub_id, is_local_ref, is_repo_id


@pytest.mark.parametrize("name,ok", [
    ("alice/qa-adapter", True), ("my-org/Phi_3.5-merged", True), ("a/b.json", True),
    ("not a repo", False), ("alice", False), ("alice/", False), ("/alice/x", False), ("./alice/x", False),
    ("~alice/x", False), ("alice/x/y", False), ("-alice/x", False), ("alice/my model", False), ("", False),
    (None, False),
])
def test_a_repo_id_is_owner_slash_name(name, ok):
    assert is_repo_id(name) is ok


def test_a_destination_is_a_repo_id_even_where_a_folder_of_that_name_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alice" / "x").mkdir(parents=True)
    assert is_local_ref("alice/x") and not is_hub_id("alice/x")  # as a source: the folder here
    assert is_repo_id("alice/x") and check_repo_id(" alice/x ", "--push-to") == "alice/x"  # as a destination: a repo


def test_a_bad_repo_id_is_one_message_naming_the_setting():
    with pytest.raises(ConfigError) as err:
        check_repo_id("not a repo", "destination repo", hint="Type the repo.")
    assert err.value.message == "destination repo: 'not a repo' is not a Hub repo ID like your-name/my-model"
    assert err.value.hint == "Type the repo."


def test_cli_merge_refuses_a_push_to_that_is_no_repo_id(capsys, tmp_path):
    assert cli.main(["merge", str(tmp_path), "--push-to", "./merged/here"]) == 2
    err = capsys.readouterr().err
    assert "--push-to: './merged/here' is not a Hub repo ID like your-name/my-model" in err and "hint:" in err


@pytest.mark.parametrize("value,bucket", [("hf://buckets/owner/records", "owner/records"), ("owner/records/", "owner/records"),
                                          ("owner", None), ("owner/a/b", None), ("owner/has space", None)])
def test_the_bucket_setting_is_a_repo_id(value, bucket, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PHI3SPACE_BUCKET", value)
    sync = BucketSync.from_env(tmp_path / "jobs.sqlite", lambda: None)
    assert (sync.bucket_id if sync else None) == bucket
    if bucket is None:
        assert "is not owner/name" in capsys.readouterr().err
