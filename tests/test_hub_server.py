"""End-to-end checks of the Hub stand-in (tests/hub_server.py) with the real client libraries.

These pin down how huggingface_hub 2.4 and datasets 5.2 behave against it, so other tests can rely on it:

* huggingface_hub does NOT retry a failed commit POST (``_send_commit`` is called without ``retry_on_error``):
  a 5xx surfaces at once as ``HfHubHTTPError``. (preupload, tree listings and file HEADs after a cache miss do
  go through ``http_backoff`` and are retried with 1 s, 2 s, ... sleeps, so don't inject faults there.)
* ``hf_hub_download`` falls back to its local cache when the HEAD fails (401, 404, connection error), and the
  conftest shares one HF_HOME for the session: tests use their own ``cache_dir``.
* datasets wraps private, gated and missing repos alike into ``datasets.exceptions.DatasetNotFoundError``
  (a ``FileNotFoundError``); only the message differs ("gated dataset").
"""

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

ALICE, BOB, READER = "hf_canary_alice_0001", "hf_canary_bob_0002", "hf_canary_reader_0003"
WEIGHTS = bytes(range(256)) * 64 + b"\x00\xff"
ROWS = '{"text": "first"}\n{"text": "second"}\n'


@pytest.fixture
def users(hub):
    hub.add_user("alice", ALICE, orgs=["team"])
    hub.add_user("bob", BOB)
    hub.add_user("reader", READER, role="read")
    return hub


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\nlibrary_name: peft\n---\n# Adapter\n")
    (folder / "adapter_model.safetensors").write_bytes(WEIGHTS)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    return folder


def test_whoami_ok_and_unknown_token(users):
    me = HfApi(token=ALICE).whoami()
    assert me["name"] == "alice" and me["orgs"] == [{"name": "team", "type": "org", "roleInOrg": "write"}]
    assert me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_not_a_token").whoami()
    assert err.value.response.status_code == 401


def test_create_private_repo_in_own_namespace(users):
    api = HfApi(token=ALICE)
    url = api.create_repo("alice/private-model", private=True)
    assert url.repo_id == "alice/private-model"
    assert api.create_repo("alice/private-model", private=True, exist_ok=True).repo_id == "alice/private-model"
    assert users.repo("alice/private-model")["private"] is True
    assert api.model_info("alice/private-model").private is True
    api.create_repo("team/shared", repo_type="dataset")  # an org alice belongs to
    assert users.repo("team/shared", repo_type="dataset")["private"] is False
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=BOB).model_info("alice/private-model")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info("alice/private-model")


def test_create_repo_refused_outside_namespace_or_with_read_token(users):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=BOB).create_repo("alice/not-yours")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=READER).create_repo("reader/anything")
    assert err.value.response.status_code == 403
    assert users.repo("alice/not-yours") is None and users.repo("reader/anything") is None

    users.add_repo("reader/model", {"a.txt": "a"}, owner_token=READER)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=READER).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="reader/model")
    assert err.value.response.status_code == 403
    assert users.commits("reader/model") == []


def test_upload_folder_then_download_same_bytes(users, model_folder, tmp_path):
    api = HfApi(token=ALICE)
    api.create_repo("alice/adapter", private=True)
    info = api.upload_folder(repo_id="alice/adapter", folder_path=model_folder, commit_message="Add adapter")

    assert sorted(api.list_repo_files("alice/adapter")) == ["README.md", "adapter_config.json",
                                                            "adapter_model.safetensors"]
    path = hf_hub_download("alice/adapter", "adapter_model.safetensors", token=ALICE, cache_dir=tmp_path / "c")
    assert open(path, "rb").read() == WEIGHTS
    assert users.files("alice/adapter")["README.md"].startswith(b"---\nlicense: mit")

    [commit] = users.commits("alice/adapter")
    assert commit["token"] == ALICE and commit["branch"] == "main" and commit["message"] == "Add adapter"
    assert commit["oid"] == info.oid and sorted(commit["files"]) == sorted(users.files("alice/adapter"))
    assert ("POST", "/api/validate-yaml", ALICE) in users.requests
    assert api.model_info("alice/adapter").sha == info.oid

    # Same content again: the client sees unchanged oids in the preupload answer and skips the commit.
    api.upload_folder(repo_id="alice/adapter", folder_path=model_folder)
    assert len(users.commits("alice/adapter")) == 1


def test_checkpoint_branch_keeps_main_untouched(users, model_folder, tmp_path):
    api = HfApi(token=ALICE)
    api.create_repo("alice/run")
    main_oid = api.upload_folder(repo_id="alice/run", folder_path=model_folder).oid
    api.create_branch("alice/run", branch="checkpoints")
    api.create_branch("alice/run", branch="checkpoints", exist_ok=True)
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-10").mkdir(parents=True)
    (ckpt / "checkpoint-10" / "adapter_model.safetensors").write_bytes(b"step10")
    api.upload_folder(repo_id="alice/run", folder_path=ckpt, revision="checkpoints", commit_message="step 10")

    assert api.model_info("alice/run").sha == main_oid
    assert "checkpoint-10/adapter_model.safetensors" not in users.files("alice/run")
    assert users.files("alice/run", revision="checkpoints")["checkpoint-10/adapter_model.safetensors"] == b"step10"
    assert [(c["branch"], c["token"]) for c in users.commits("alice/run")] == [("main", ALICE), ("checkpoints", ALICE)]
    refs = {b.name: b.target_commit for b in api.list_repo_refs("alice/run").branches}
    assert refs["main"] == main_oid and refs["checkpoints"] == users.repo("alice/run")["branches"]["checkpoints"]
    titles = [c.title for c in api.list_repo_commits("alice/run", revision="checkpoints")]
    assert titles[0] == "step 10" and titles[-1] == "initial commit"

    snap = snapshot_download("alice/run", revision="checkpoints", token=ALICE, cache_dir=tmp_path / "c")
    assert open(f"{snap}/checkpoint-10/adapter_model.safetensors", "rb").read() == b"step10"
    assert open(f"{snap}/adapter_model.safetensors", "rb").read() == WEIGHTS  # branched off main
    only = snapshot_download("alice/run", revision="checkpoints", allow_patterns=["checkpoint-10/*"],
                             local_dir=tmp_path / "only", token=ALICE)
    assert sorted(p.name for p in (tmp_path / "only").iterdir() if p.name != ".cache") == ["checkpoint-10"]
    assert str(only) == str((tmp_path / "only").resolve())


def test_commit_deletions_and_tree_listing(users):
    users.add_repo("alice/tree", {"a/b/c.txt": "c", "a/d.txt": "d", "top.txt": "t"})
    api = HfApi(token=ALICE)
    assert {(e.path, type(e).__name__) for e in api.list_repo_tree("alice/tree")} == {
        ("a", "RepoFolder"), ("top.txt", "RepoFile")}
    assert sorted(e.path for e in api.list_repo_tree("alice/tree", "a", recursive=True)) == ["a/b", "a/b/c.txt",
                                                                                            "a/d.txt"]
    [entry] = api.list_repo_tree("alice/tree", "a/b", expand=True)
    assert entry.size == 1 and entry.last_commit.title == "initial commit"
    assert [p.path for p in api.get_paths_info("alice/tree", ["top.txt", "a", "nope"])] == ["a", "top.txt"]
    api.create_commit("alice/tree", commit_message="prune", operations=[
        CommitOperationDelete("a/"), CommitOperationDelete("top.txt"), CommitOperationAdd("new.txt", b"n")])
    assert users.files("alice/tree") == {"new.txt": b"n"}
    assert sorted(users.commits("alice/tree")[0]["files"]) == ["a/b/c.txt", "a/d.txt", "new.txt", "top.txt"]
    assert api.file_exists("alice/tree", "new.txt") and not api.file_exists("alice/tree", "top.txt")


def test_missing_file_revision_and_repo_errors(users, tmp_path):
    users.add_repo("alice/m", {"config.json": "{}"})
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/m", "nope.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/m", "config.json", revision="no-branch", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/absent", "config.json", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("alice/absent")


def test_commit_5xx_is_not_retried_by_huggingface_hub(users, model_folder):
    """huggingface_hub 2.4 posts commits once (no retry): callers must retry themselves."""
    api = HfApi(token=ALICE)
    api.create_repo("alice/flaky")
    users.fail_next(2, status=500, path_contains="/commit/")
    for _ in range(2):
        with pytest.raises(HfHubHTTPError) as err:
            api.upload_folder(repo_id="alice/flaky", folder_path=model_folder)
        assert err.value.response.status_code == 500
    assert sum("/commit/" in r.path for r in users.requests) == 2  # one POST per call
    api.upload_folder(repo_id="alice/flaky", folder_path=model_folder)
    assert len(users.commits("alice/flaky")) == 1

    users.fail_all(503)
    with pytest.raises(HfHubHTTPError) as err:
        api.whoami()
    assert err.value.response.status_code == 503
    users.heal()
    assert api.whoami()["name"] == "alice"


def test_load_dataset_from_seeded_repos(users, tmp_path):
    import datasets

    users.add_repo("alice/chat", {"data/train.jsonl": ROWS, "data/test.jsonl": '{"text": "held out"}\n'},
                   repo_type="dataset")
    users.add_repo("alice/flat", {"train.jsonl": ROWS}, repo_type="dataset")
    both = datasets.load_dataset("alice/chat", cache_dir=str(tmp_path))
    assert both["train"]["text"] == ["first", "second"] and both["test"]["text"] == ["held out"]
    train = datasets.load_dataset("alice/flat", split="train", cache_dir=str(tmp_path))
    assert train["text"] == ["first", "second"]


def test_private_dataset_needs_a_member_token(users, tmp_path):
    """datasets raises DatasetNotFoundError; huggingface_hub raises RepositoryNotFoundError (401 without a token,
    404 with another user's token, X-Error-Code RepoNotFound)."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    users.add_repo("alice/secret", {"train.jsonl": ROWS}, repo_type="dataset", private=True)
    for token in (None, BOB):
        with pytest.raises(DatasetNotFoundError, match="doesn't exist on the Hub or cannot be accessed"):
            datasets.load_dataset("alice/secret", token=token, cache_dir=str(tmp_path))
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("alice/secret", "train.jsonl", repo_type="dataset", token=token, cache_dir=tmp_path)
    rows = datasets.load_dataset("alice/secret", split="train", token=ALICE, cache_dir=str(tmp_path))
    assert rows.num_rows == 2
    assert (("GET", "/api/datasets/alice/secret", ALICE) in users.requests)


def test_gated_dataset_and_model(users, tmp_path):
    """Repo info and listings stay open; downloads answer X-Error-Code GatedRepo (401 anonymous, 403 others).
    huggingface_hub raises GatedRepoError (a RepositoryNotFoundError subclass); datasets turns it into
    DatasetNotFoundError whose message says the dataset is gated."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    users.add_repo("alice/gated-ds", {"train.jsonl": ROWS}, repo_type="dataset", gated=True)
    users.add_repo("alice/gated-model", {"config.json": "{}"}, gated=True)
    for token in (None, BOB):
        with pytest.raises(DatasetNotFoundError, match="gated dataset"):
            datasets.load_dataset("alice/gated-ds", token=token, cache_dir=str(tmp_path))
        with pytest.raises(GatedRepoError):
            hf_hub_download("alice/gated-model", "config.json", token=token, cache_dir=tmp_path)
    assert HfApi(token=BOB).model_info("alice/gated-model").gated == "auto"
    assert datasets.load_dataset("alice/gated-ds", split="train", token=ALICE, cache_dir=str(tmp_path)).num_rows == 2


def test_server_down_raises_connection_error(users):
    api = HfApi(token=ALICE)
    assert api.whoami()["name"] == "alice"  # keeps a pooled keep-alive connection open
    users.down = True
    try:
        with pytest.raises(httpx2.ConnectError):
            api.whoami()
        with pytest.raises(httpx2.ConnectError):
            api.create_repo("alice/while-down")
    finally:
        users.down = False
    assert api.whoami()["name"] == "alice"
