"""Evaluate and export on Hugging Face Jobs (the Jobs stand-in, tests/jobs_server.py), like training there: through
the runner (what the page and /evaluate_job, /export_job call) and from a terminal (``--backend hf-jobs``). The job
runs ``python -m phi3space eval|export`` under the same wrapper as training, its events mirrored into the local run
folder; its inputs are Hub IDs, an export pushes, and the token is only ever the job's secret."""

import json
import shutil

import pytest
from helpers import CANARY, FINAL, run_cli, wait_job

from phi3space.jobs.followups import Evaluate, Export
from phi3space.jobs.scheduler import JobRunner
from phi3space.jobs.store import Job
from phi3space.run import RunDir

pytestmark = pytest.mark.usefixtures("hub_model", "jobs_image")
ADAPTER = "alice/snarkle"


@pytest.fixture
def runner(tmp_path):
    r = JobRunner(tmp_path / "data", slots=1, poll_s=0.1, space=True)
    yield r
    r.shutdown()


def finished_run(runner, trained_run, tmp_path, pushed=True, backend="local", job_id="train1") -> Job:
    """``trained_run`` (its base: acme/tiny-phi3 on the Hub) as alice's finished job, its adapter pushed to ADAPTER."""
    from phi3space.hub.push import push_run

    run = tmp_path / job_id
    shutil.copytree(trained_run, run)
    adapter_config = RunDir(run).adapter_config
    adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()),
                                          "base_model_name_or_path": "acme/tiny-phi3"}))
    if pushed:
        push_run(run, repo_id=ADAPTER, token=CANARY)
    job = Job(id=job_id, owner="alice", name="qa-run", run_dir=str(run), phase="done", backend=backend)
    runner.store.add(job)
    return job


def stand_in_run(runner, tmp_path, job_id, pushed, backend="local") -> str:
    """A run folder that ended with an adapter (pushed to ADAPTER when ``pushed``), as alice's finished job."""
    run = RunDir(tmp_path / job_id)
    run.path.mkdir()
    run.adapter_config.write_text('{"base_model_name_or_path": "acme/tiny-phi3"}')
    run.adapter_weights.write_bytes(b"w")
    run.append("run_started", max_steps=4)
    if pushed:
        run.append("push", what="adapter", repo_id=ADAPTER, url=f"https://hub/{ADAPTER}")
    run.append("run_finished", status="completed", step=4, adapter=str(run.path))
    runner.store.add(Job(id=job_id, owner="alice", name="qa-run", run_dir=str(run.path), phase="done", backend=backend))
    return job_id


def wipe(folder) -> None:
    """The disk wiped as on a Space's restart. SQLite may drop its shared-memory file (jobs.sqlite-shm) while the
    folder is being removed: a file that is gone by the time it is removed is fine, so remove again."""
    for _ in range(20):
        try:
            shutil.rmtree(folder)
            return
        except FileNotFoundError:
            continue
    assert not folder.exists()


def card_scores(hub, tmp_path) -> dict:
    from huggingface_hub.repocard import metadata_load

    card = tmp_path / "README.md"
    card.write_bytes(hub.files(ADAPTER)["README.md"])
    return {m["type"]: m["value"] for m in metadata_load(card)["model-index"][0]["results"][0]["metrics"]}


def assert_token_only_a_secret(hub, remote_id, *folders):
    spec = hub.jobs.job(remote_id)
    assert hub.jobs.secrets(remote_id) == {"HF_TOKEN": CANARY}
    assert CANARY not in json.dumps({k: v for k, v in spec.items() if k != "folder"})  # command, env, labels, lines
    for folder in folders:
        assert not [p for p in folder.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]


def test_what_a_job_elsewhere_cannot_read_is_refused_at_submit_with_a_hint(alice, runner, tmp_path):
    from phi3space.errors import ConfigError

    local_only = stand_in_run(runner, tmp_path, "train1", pushed=False, backend="hf-jobs")
    for submit in (lambda: runner.submit(Evaluate(local_only, data="alice/qa"), "alice", CANARY),  # its run's backend
                   lambda: runner.submit(Export(local_only, "q8_0", None, backend="hf-jobs"), "alice", CANARY)):
        with pytest.raises(ConfigError, match="only on this machine") as err:
            submit()
        assert "Push the run's adapter to the Hub first" in err.value.hint
    assert alice.repo("alice/qa-run-GGUF") is None  # nothing created for the export
    source = stand_in_run(runner, tmp_path, "train2", pushed=True)
    uploads = runner.data.uploads("alice")
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "qa.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="a Hugging Face job cannot read it") as err:
        runner.submit(Evaluate(source, data=str(uploads / "qa.jsonl"), backend="hf-jobs"), "alice", CANARY)
    assert "hf upload" in err.value.hint
    with pytest.raises(ConfigError, match="not a Hugging Face Jobs hardware flavor"):
        runner.submit(Evaluate(source, data="alice/qa", backend="hf-jobs", flavor="a10g-huge"), "alice", CANARY)
    assert alice.jobs.ids() == [] and [j.kind for j in runner.list("alice")] == ["train", "train"]


@pytest.mark.slow
def test_an_eval_on_jobs_gives_the_numbers_a_local_eval_gives_and_puts_them_on_the_card(trained_run, alice, runner,
                                                                                       tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    source = finished_run(runner, trained_run, tmp_path)
    here = runner.submit(Evaluate(source.id, data="alice/qa", rows=3), "alice", CANARY)  # where the run trained: here
    assert here.backend == "local"
    local = wait_job(runner, here.id, "alice", timeout=240)
    assert local["status"] == "completed", here.run.log.read_text()[-2000:]

    job = runner.submit(Evaluate(source.id, data="alice/qa", rows=3, backend="hf-jobs"), "alice", CANARY)
    assert job.backend == "hf-jobs" and job.handle.startswith("alice/") and job.pid is None
    s = wait_job(runner, job.id, "alice", until=lambda s: s["status"] in FINAL, timeout=300)
    assert s["status"] == "completed", (s, job.run.log.read_text()[-3000:])
    assert s["evaluation"] == local["evaluation"] and s["evaluation"]["adapter"]["exact_match"] == 1.0
    assert s["step"] == s["max_steps"] == 3
    state = job.run.state()
    assert [e["adapter"]["reply"] for e in state.examples] == [e["adapter"]["reply"] for e in here.run.state().examples]
    scores = card_scores(alice, tmp_path)
    assert scores == {k: pytest.approx(v, abs=1e-4) for k, v in s["evaluation"]["adapter"].items() if k in scores}

    remote_id = runner.store.get(job.id).handle.split("/")[1]
    spec = alice.jobs.job(remote_id)
    assert spec["flavor"] == "t4-small"  # the smallest GPU flavor: the run did not train on Jobs
    assert spec["command"][:2] == ["sh", "-c"] and (
        f"python -u -m phi3space eval {ADAPTER} --rows 3 --data alice/qa --run-dir env:PHI3SPACE_RUN_ID &"
        in spec["command"][2]) and "@phi3space-exit" in spec["command"][2]
    assert spec["labels"]["phi3space-run"] == job.id
    assert_token_only_a_secret(alice, remote_id, runner.data.root)


@pytest.mark.slow
def test_an_export_on_jobs_pushes_the_gguf_and_modelfile(trained_run, alice, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    source = finished_run(runner, trained_run, tmp_path, backend="hf-jobs")
    from phi3space.jobs import spec as job_spec

    job = runner.submit(Export(source.id, "q8_0", None), "alice", CANARY)  # where its run trained: Jobs
    assert job.backend == "hf-jobs"
    s = wait_job(runner, job.id, "alice", until=lambda s: s["status"] in FINAL, timeout=300)
    assert s["status"] == "completed", (s, job.run.log.read_text()[-3000:])
    repo = "alice/qa-run-GGUF"
    assert s["exported"] == ["qa-run-Q8_0.gguf", "Modelfile"] and job.run.state().model_url.endswith(repo)
    files = alice.files(repo)
    assert {"qa-run-Q8_0.gguf", "Modelfile", "README.md"} <= set(files) and alice.repo(repo)["private"] is True
    assert files["qa-run-Q8_0.gguf"][:4] == b"GGUF"
    remote_id = runner.store.get(job.id).handle.split("/")[1]
    spec = alice.jobs.job(remote_id)
    # Not the GPU it trained on: the cheapest machine with the memory an export of its base needs (cpu-basic, 16 GB)
    assert job_spec.load(source.run.config).compute.flavor != "cpu-basic" and spec["flavor"] == "cpu-basic"
    assert "--push-to alice/qa-run-GGUF" in spec["command"][2]
    assert "--out env:PHI3SPACE_RUN_ID" in spec["command"][2]
    assert_token_only_a_secret(alice, remote_id, runner.data.root)
    assert not any(CANARY.encode() in content for content in files.values())


@pytest.mark.slow
def test_eval_on_jobs_from_the_terminal_follows_it_and_prints_the_same_json(trained_run, alice, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    adapter_config = RunDir(run).adapter_config
    adapter_config.write_text(json.dumps({**json.loads(adapter_config.read_text()),
                                          "base_model_name_or_path": "acme/tiny-phi3"}))
    refused = run_cli("eval", str(run), "--data", "alice/qa", "--backend", "hf-jobs", token=CANARY)
    assert refused.returncode == 2 and "hint: Push the run's adapter to the Hub first" in refused.stderr
    assert "Traceback" not in refused.stderr and alice.jobs.ids() == []
    pushed = run_cli("push", str(run), "--to", ADAPTER, token=CANARY)
    assert pushed.returncode == 0, pushed.stderr

    args = ("eval", str(run), "--data", "alice/qa", "--rows", "3", "--max-new-tokens", "16", "--json", "--no-card")
    here = run_cli(*args, token=CANARY)
    assert here.returncode == 0, here.stderr[-3000:]
    job_dir = tmp_path / "job"
    there = run_cli(*args, "--backend", "hf-jobs", "--flavor", "l4x1", "--run-dir", str(job_dir), token=CANARY)
    assert there.returncode == 0, there.stdout[-3000:] + there.stderr[-3000:]
    assert json.loads(there.stdout.strip().splitlines()[-1]) == json.loads(here.stdout.strip().splitlines()[-1])
    assert "submitted to Hugging Face Jobs" in there.stdout and "[3/3] example 3/3" in there.stdout
    assert "evaluated on 3 rows" in there.stdout
    assert RunDir(job_dir).state().status == "completed"
    (remote_id,) = alice.jobs.ids()
    assert alice.jobs.job(remote_id)["labels"]["phi3space"] == "cli" and alice.jobs.job(remote_id)["flavor"] == "l4x1"
    assert_token_only_a_secret(alice, remote_id, job_dir)
    assert CANARY not in there.stdout + there.stderr


@pytest.mark.slow
def test_export_on_jobs_from_the_terminal_pushes_and_says_where(trained_run, alice, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert run_cli("push", str(run), "--to", ADAPTER, token=CANARY).returncode == 0
    done = run_cli("export", ADAPTER, "--quant", "q8_0", "--backend", "hf-jobs", token=CANARY)  # no --out: pushed
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    repo = "alice/snarkle-GGUF"  # auto: <you>/<name>-GGUF, resolved before the job started
    assert f"wrote snarkle-Q8_0.gguf and Modelfile; on the Hub: {alice.url}/{repo}" in done.stdout
    assert f"ollama run hf.co/{repo}:Q8_0" in done.stdout and f"llama-cli -hf {repo}:Q8_0" in done.stdout
    assert {"snarkle-Q8_0.gguf", "Modelfile", "README.md"} <= set(alice.files(repo))
    (remote_id,) = alice.jobs.ids()
    assert f"--push-to {repo} --run-dir env:PHI3SPACE_RUN_ID --out env:PHI3SPACE_RUN_ID &" in \
        alice.jobs.job(remote_id)["command"][2]
    assert_token_only_a_secret(alice, remote_id)
    assert CANARY not in done.stdout + done.stderr


@pytest.mark.slow
def test_an_eval_on_jobs_is_listed_again_and_followed_after_a_wiped_restart(trained_run, alice, tmp_path, monkeypatch):
    """A Space's disk is wiped on restart: the eval job the platform still runs comes back from what it carries (its
    task, no secret) when its owner is next seen, and is followed to its results."""
    monkeypatch.setenv("PHI3SPACE_RETRY_BASE_S", "0")
    alice.jobs.scheduling_s = 4.0  # still being scheduled while the app restarts
    data = tmp_path / "data"
    first = JobRunner(data, slots=1, poll_s=0.1, space=True)
    try:
        source = finished_run(first, trained_run, tmp_path)
        job = first.submit(Evaluate(source.id, data="alice/qa", rows=3, backend="hf-jobs"), "alice", CANARY)
    finally:
        first.shutdown()
    wipe(data)
    again = JobRunner(data, slots=1, poll_s=0.1, space=True)
    try:
        again.seen("alice", CANARY)
        found = again.store.get(job.id)
        assert found is not None and (found.kind, found.owner, found.backend) == ("eval", "alice", "hf-jobs")
        assert found.handle == job.handle
        s = wait_job(again, job.id, "alice", until=lambda s: s["status"] in FINAL, timeout=300)
        assert s["status"] == "completed", (s, found.run.log.read_text()[-3000:])
        assert s["evaluation"]["adapter"]["exact_match"] == 1.0 and s["step"] == 3
        remote = alice.jobs.job(job.handle.split("/")[1])
        assert CANARY not in json.dumps(remote["environment"])  # the task it carries holds no secret
    finally:
        again.shutdown()
