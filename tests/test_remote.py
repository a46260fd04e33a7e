"""The Hugging Face Jobs backend in parts: the compute settings, the job's command and spec, flavors and prices,
the cost estimate, the event lines a job prints and their mirror, and the platform's last word."""

import dataclasses
import json
import types

import pytest

from phi3space import config
from phi3space.errors import ConfigError
from phi3space.jobs import spec
from phi3space.jobs.hf import code, flavors
from phi3space.jobs.hf import follow as following
from phi3space.jobs.hf import platform as remote
from phi3space.jobs.hf import protocol as job_protocol
from phi3space.run import RunDir, RunState


def jobs_cfg(**compute):
    return spec.from_dict({"data": {"dataset": "alice/qa"}, "output": {"push_to": "auto"},
                             "compute": {"backend": "hf-jobs", **compute}})


def test_compute_settings_their_defaults_and_checks():
    local = spec.from_dict({"data": {"dataset": "x"}})
    assert (local.compute.backend, local.compute.flavor, local.compute.timeout) == ("local", "a10g-large", "4h")
    assert local.output.push_checkpoints is False
    cfg = jobs_cfg(flavor="l4x4", timeout=5400)
    assert cfg.compute.timeout == "5400" and spec.timeout_seconds(cfg.compute.timeout) == 5400
    assert cfg.output.push_checkpoints is True  # on Jobs, checkpoints go to the Hub unless told otherwise
    off = spec.from_dict({"data": {"dataset": "x"}, "output": {"push_to": "auto", "push_checkpoints": False},
                            "compute": {"backend": "hf-jobs"}})
    assert off.output.push_checkpoints is False
    assert [spec.timeout_seconds(t) for t in ("90m", "4h", "1.5d", "30s", "soon", "")] == [5400, 14400, 129600, 30, None, None]
    with pytest.raises(ConfigError) as info:
        spec.from_dict({"data": {"dataset": "x"}, "compute": {"backend": "gpu-cloud", "flavor": "A10G Large!",
                                                                "timeout": "30s"}})
    text = str(info.value)
    for expected in ("compute.backend: 'gpu-cloud' is not one of local, hf-jobs", "compute.flavor: 'A10G Large!'",
                     "compute.timeout: '30s' is outside 1m to 7d"):
        assert expected in text
    with pytest.raises(ConfigError, match="compute.backend: hf-jobs needs output.push_to"):
        spec.from_dict({"data": {"dataset": "x"}, "compute": {"backend": "hf-jobs"}})
    with pytest.raises(ConfigError, match="did you mean compute.flavor"):
        spec.from_dict({"data": {"dataset": "x"}, "hardware": "a10g-large"})
    assert "| `compute.flavor` | `a10g-large` |" in spec.reference()


def test_the_jobs_command_is_the_same_engine_one_process_per_gpu():
    assert remote.launch_command(1) == ["python", "-u", "-m", "phi3space", "train", "env:PHI3SPACE_RUN_CONFIG"]
    shell, flag, script = code.job_command(1)
    assert (shell, flag) == ("sh", "-c") and script.startswith("python -u -m phi3space train env:PHI3SPACE_RUN_CONFIG &")
    assert script.endswith('echo "@phi3space-exit $code"; exit $code') and "install" not in script
    wheel = code.Code("alice/x", "phi3space-1+abc-py3-none-any.whl")
    installing = code.job_command(2, resume=True, code=wheel)[2]
    # The wheel is installed from the platform's read-only mount of the repo's code branch: no download, no token.
    assert installing.index("pip install") < installing.index("/phi3space-code/phi3space-1+abc-py3-none-any.whl") < \
        installing.index("accelerate launch") and "--resume &" in installing
    assert not any(word in installing for word in ("HF_TOKEN", "Authorization", "http", "urllib", "PHI3SPACE_CODE"))
    (volume,) = code.code_volumes(wheel)
    assert volume.to_dict() == {"type": "model", "source": "alice/x", "mountPath": "/phi3space-code",
                                "revision": "phi3space-code", "readOnly": True, "path": "wheels"}
    assert code.code_volumes(None) == [] and not hasattr(code, "FETCH") and not hasattr(code, "code_env")
    assert remote.launch_command(4, resume=True) == [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "4", "--num_machines", "1",
        "-m", "phi3space", "train", "env:PHI3SPACE_RUN_CONFIG", "--resume"]
    names = ["cpu-basic", "t4-small", "l4x1", "l4x4", "a10g-large", "a10g-largex2", "a100x8", "h200x2", "rtx-pro-6000x4"]
    assert [flavors.gpus_in_name(n) for n in names] == [0, 1, 1, 4, 1, 2, 8, 2, 4]


def test_image_is_the_setting_or_the_spaces_own_else_a_public_pytorch_one_with_this_code(monkeypatch):
    monkeypatch.delenv("PHI3SPACE_JOBS_IMAGE", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    assert remote.job_image() == code.PUBLIC_IMAGE and code.ships_code()
    name, data = code.build_wheel()
    assert code.build_wheel() == (name, data) and name.startswith("phi3space-") and name.endswith("-py3-none-any.whl")
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "alice/phi3space")
    assert remote.job_image() == "hf.co/spaces/alice/phi3space" and remote.origin() == "alice--phi3space"
    assert not code.ships_code()
    monkeypatch.setenv("PHI3SPACE_JOBS_IMAGE", "ghcr.io/acme/phi3space:abc123")
    assert remote.job_image() == "ghcr.io/acme/phi3space:abc123"


def test_flavors_prices_and_the_cost_estimate_from_the_hubs_hardware_list(hub, monkeypatch):
    monkeypatch.setattr(flavors, "_hardware", None)
    listed = {f.name: f for f in flavors.hardware()}
    a10g, two = listed["a10g-large"], listed["a10g-largex2"]
    assert (a10g.gpus, a10g.gpu, a10g.memory_gb, a10g.price_per_hour) == (1, "A10G", 24.0, 1.5)
    assert (two.gpus, two.memory_gb, two.price_per_hour) == (2, 24.0, 3.0)  # memory per GPU: each process has one
    assert a10g.label() == "a10g-large · 1× A10G 24 GB · $1.50/h" and listed["cpu-basic"].gpus == 0
    with pytest.raises(ConfigError, match="'a10g-huge' is not a Hugging Face Jobs hardware flavor"):
        flavors.check_flavor("a10g-huge", None)

    cfg = jobs_cfg(flavor="a10g-large", timeout="4h")
    cfg.training.max_steps = None
    est = flavors.estimate(cfg, rows=10_000, lengths=[500] * 100)
    # 9,000 training rows x 500 tokens at 4,300 x 0.13 tokens/s, plus 10 minutes of start-up.
    assert est.hours == pytest.approx((600 + 9000 * 500 / (4300 * 0.13)) / 3600)
    assert est.cost == pytest.approx(1.5 * est.hours) and est.max_cost == pytest.approx(6.0)
    assert "about $" in est.markdown() and "at most $6.00 (timeout 4.0 h)" in est.markdown() and not est.warnings()
    slow = flavors.estimate(jobs_cfg(flavor="t4-small", timeout="1h"), rows=100_000, lengths=[2000] * 10)
    assert slow.cost == pytest.approx(0.4) and "raise the timeout" in slow.warnings()[0]  # capped at the timeout
    assert flavors.estimate(cfg).hours is None and "about" not in flavors.estimate(cfg).markdown()
    doubled = jobs_cfg(flavor="a10g-largex2")
    doubled.training.max_steps = 100
    single = jobs_cfg(flavor="a10g-large")
    single.training.max_steps = 100
    assert flavors.estimate(doubled).hours - 600 / 3600 == pytest.approx((flavors.estimate(single).hours - 600 / 3600) / 0.9)

    hub.fail_all(503)  # the Hub's list cannot be read: the names huggingface_hub knows, no prices
    monkeypatch.setattr(flavors, "_hardware", None)
    offline = {f.name: f for f in flavors.hardware()}
    assert offline["l4x4"].gpus == 4 and offline["l4x4"].price_per_hour is None
    assert flavors.check_flavor("a10g-huge", None).name == "a10g-huge"  # the platform decides then
    hub.heal()
    monkeypatch.setattr(flavors, "_hardware", None)


def test_an_export_on_jobs_gets_the_cheapest_machine_with_the_memory_its_base_needs(hub, monkeypatch):
    from phi3space.engine.estimates import export_memory_bytes

    monkeypatch.setattr(flavors, "_hardware", None)
    assert flavors.hardware()[0].ram_gb == 16.0  # cpu-basic, as list_jobs_hardware says
    mini = export_memory_bytes("microsoft/Phi-3-mini-4k-instruct")  # 0.5 GB + 1.2 x 7.64 GB (bench/export_memory.py)
    assert 9.5e9 < mini < 9.8e9 and flavors.flavor_with_memory(mini).name == "cpu-basic"  # 16 GB, $0.01/h, no GPU
    medium = export_memory_bytes("microsoft/Phi-3-medium-4k-instruct")  # 34 GB: more than cpu-upgrade's 32 GB
    assert flavors.flavor_with_memory(medium).name == "cpu-xl"  # 124 GB at $1.00/h: cheaper than a10g-large's 46 GB
    hub.fail_all(503)  # memory unknown (the names only): the smallest GPU flavor, as before
    monkeypatch.setattr(flavors, "_hardware", None)
    assert flavors.flavor_with_memory(mini).gpus == 1
    hub.heal()
    monkeypatch.setattr(flavors, "_hardware", None)


def test_event_lines_of_a_job_and_their_mirror(tmp_path, capsys, monkeypatch):
    echo = job_protocol.job_echo()
    echo({"type": "progress", "step": 1, "loss": float("nan")})
    echo({"type": "run_finished", "status": "completed", "adapter": "/tmp/phi3space/x"})
    lines = capsys.readouterr().out.splitlines()
    assert all(line.startswith("@phi3space-event {") for line in lines)
    events = [job_protocol.parse_event(line) for line in lines]
    assert [e["seq"] for e in events] == [1, 2] and events[0]["loss"] != events[0]["loss"]  # NaN survives
    assert job_protocol.parse_event("step 1/3 | loss 2.0") is None
    assert job_protocol.parse_event('@phi3space-event {"type": "nonsense", "seq": 1}') is None
    assert job_protocol.parse_event('@phi3space-event {"type": "progress", "seq": 3') is None  # a cut line

    run = RunDir(tmp_path / "run")
    ref = remote.JobRef("alice", "job1")
    mirror = following.Mirror(run, ref)
    mirror._append({"type": "push", "what": "adapter", "repo_id": "alice/x", "url": "u", "seq": 1})
    mirror._append(events[1] | {"seq": 2})
    mirror._append(events[1] | {"seq": 2})  # replayed: skipped
    again = following.Mirror(run, ref)  # a second follower of the same job (a restarted runner)
    again._append(events[1] | {"seq": 2})
    got, _ = run.read_events()
    assert [e["seq"] for e in got] == [1, 2] and {e["job"] for e in got} == {"job1"}
    assert got[-1]["adapter"] == "alice/x"  # the pushed adapter, not the job's own folder

    monkeypatch.setenv("PHI3SPACE_RUN_CONFIG", jobs_cfg().to_yaml())
    (tmp_path / "container-tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "container-tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    inside = job_protocol.job_config("env:PHI3SPACE_RUN_CONFIG", ["training.max_steps=3"])
    assert inside.output.dir == str(tmp_path / "container-tmp" / "phi3space" / "phi-3-mini-4k-instruct-qa-lora")
    assert inside.training.max_steps == 3
    monkeypatch.setenv("PHI3SPACE_RUN_CONFIG", "")
    with pytest.raises(ConfigError, match="PHI3SPACE_RUN_CONFIG is empty"):
        job_protocol.job_config("env:PHI3SPACE_RUN_CONFIG")


def _info(stage, message=None, running_secs=10):
    return types.SimpleNamespace(status=types.SimpleNamespace(stage=stage, message=message), url="https://hf.co/jobs/a/1",
                                 durations=types.SimpleNamespace(running_secs=running_secs))


DONE = [{"type": "run_started", "max_steps": 4}, {"type": "progress", "step": 4, "loss": 1.0},
        {"type": "push", "what": "adapter", "repo_id": "alice/x", "url": "u"},
        {"type": "run_finished", "status": "completed", "step": 4, "adapter": "alice/x"}]
CKPT = [{"type": "run_started", "max_steps": 9}, {"type": "progress", "step": 3, "loss": 1.0},
        {"type": "push", "what": "checkpoint-3", "repo_id": "alice/x", "url": "https://hub/alice/x/tree/checkpoints"}]


@pytest.mark.parametrize("stage, message, events, expected, exit_code", [
    ("COMPLETED", None, DONE, None, 0),
    ("COMPLETED", None, DONE[:2] + DONE[3:], ("failed", "jobs", "completed without pushing an adapter"), 0),
    ("COMPLETED", None, DONE[:2], ("failed", "jobs", "ended without finishing its run"), None),
    ("CANCELED", None, CKPT, ("cancelled", None, None), None),
    ("CANCELED", None, CKPT + [{"type": "run_finished", "status": "cancelled", "step": 3}], None, 0),
    ("ERROR", None, CKPT + [{"type": "error", "kind": "data", "message": "bad rows"},
                            {"type": "run_finished", "status": "failed"}], None, 2),
    # Keyed on the exit code and the running time; the service's message is shown as it is, never read.
    ("ERROR", None, CKPT, ("failed", "oom", "was killed (exit code 137, SIGKILL: most often for running out of memory)"), 137),
    ("ERROR", "OOMKilled", CKPT, ("failed", "jobs", "failed (OOMKilled)"), None),
    ("ERROR", "Job timeout", CKPT, ("failed", "timeout", "reached its time limit (4h) and was stopped (Job timeout)"), None),
    ("ERROR", "Job timeout", CKPT, ("failed", "jobs", "failed with exit code 1 (Job timeout)"), 1),  # ran 60 s of 4 h
    ("ERROR", "Some message", DONE, ("failed", "jobs", "failed with exit code 1 (Some message)"), 1),
    ("DELETED", None, CKPT, ("failed", "jobs", "was deleted"), None),
])
def test_the_platforms_last_word(stage, message, events, expected, exit_code):
    cfg = jobs_cfg()
    info = _info(stage, message, running_secs=4 * 3600 if message == "Job timeout" and exit_code is None else 60)
    state = RunState.from_events(events)
    verdict = following.last_word(info, state, cfg, exit_code)
    if expected is None:
        assert verdict is None
        return
    if verdict.kind:
        state.fold({"type": "error", "kind": verdict.kind, "message": verdict.message, "hint": verdict.hint})
    state.fold({"type": "run_finished", "status": verdict.status})
    status, kind, text = expected
    assert state.status == status
    if kind:
        assert state.error["kind"] == kind and text in state.error["message"]
        if events is CKPT:
            assert "Resume continues from the last checkpoint it pushed (https://hub/alice/x/tree/checkpoints)" in \
                state.error["hint"]
    assert json.dumps(dataclasses.asdict(verdict))  # plain data, ready for the events file


def test_the_forms_hardware_group_and_the_plans_cost_line(hub, monkeypatch):
    from phi3space.ui import compute_box, forms

    monkeypatch.setattr(flavors, "_hardware", None)
    values = forms.form_values(jobs_cfg(flavor="l4x4", timeout="90m"))
    assert [values[f"compute.{k}"] for k in ("backend", "flavor", "timeout", "gpus")] == ["hf-jobs", "l4x4", "90m", "1"]
    assert forms.config_from_form(values).compute == jobs_cfg(flavor="l4x4", timeout="90m").compute

    inspection = forms.Inspection("alice/qa", "", rows=8000, lengths=[300] * 50)
    cfg = jobs_cfg(flavor="l4x4", timeout="90m")
    cfg.data.eval_fraction = 0.0
    p = forms.plan(cfg, inspection, gpu_gb=None)
    assert p.steps == 125  # 8,000 rows / (4 per GPU x 4 GPUs) / 4 accumulated
    assert "**Hugging Face Jobs:** l4x4 · 4× L4 24 GB · $3.80/h · about" in p.markdown()
    assert "at most $5.70 (timeout 1.5 h), billed to you" in p.markdown()
    assert not any("no GPU on this machine" in w for w in p.warnings)
    big = jobs_cfg(flavor="t4-small")
    big.training.max_length, big.training.batch_size = 4096, 16
    assert any("not fit in this GPU's memory" in w and "16 GB free" in w for w in forms.plan(big).warnings)
    assert forms.plan(jobs_cfg(flavor="cpu-upgrade")).warnings[0].startswith("cpu-upgrade has no GPU")
    assert forms.plan(config.from_dict({"data": {"dataset": "x"}})).cost is None  # this machine: no price tag

    offline = compute_box.flavor_choices(fetch=False)
    assert ("a10g-largex2", "a10g-largex2") in offline and not any(v.startswith("cpu") for _, v in offline)
    priced = dict((v, label) for label, v in compute_box.flavor_choices())
    assert priced["a10g-large"] == "a10g-large · 1× A10G 24 GB · $1.50/h" and "cpu-basic" not in priced
    dropdown, push = compute_box.on_backend("hf-jobs", "l4x1", None)
    assert push is True and ("l4x1 · 1× L4 24 GB · $0.80/h", "l4x1") in dropdown.choices
    assert compute_box.on_backend("local", "l4x1", None)[1] is not True
    monkeypatch.setattr(flavors, "_hardware", None)


def test_a_code_volume_the_platform_cannot_mount_refuses_the_job_and_the_hint_names_the_wheel(alice, tmp_path,
                                                                                             monkeypatch):
    from helpers import CANARY

    from phi3space.errors import JobsError

    for name in ("PHI3SPACE_JOBS_IMAGE", "SPACE_ID", "SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    alice.add_repo("alice/snarkle")  # no branch phi3space-code: the wheel's branch is gone when the job starts
    monkeypatch.setattr(remote, "upload_code", lambda repo_id, token, log=None: code.Code(repo_id, "phi3space-1+a.whl"))
    cfg = jobs_cfg()
    cfg.output.push_to = "alice/snarkle"
    run = RunDir(tmp_path / "run")
    with pytest.raises(JobsError) as refused:
        remote.start(cfg, CANARY, flavors.Flavor("a10g-large", 1), "r1", run.writer())
    assert "refused to start the job (404: " in refused.value.message and "Invalid rev id" in refused.value.message
    assert "this code's wheel (alice/snarkle, branch phi3space-code)" in refused.value.hint
    assert alice.jobs.ids() == [] and run.state().status == "failed"


def test_an_eval_job_of_someone_elses_adapter_puts_its_wheel_in_the_users_own_repo(alice, tmp_path, monkeypatch):
    """Off a Space with no image of one's own the job installs this code from a repo: never the adapter's when the
    user may not write there (a 403 before anything ran), but their own private <user>/phi3space-code; their own
    adapter's repo keeps it as before."""
    from helpers import BOB, CANARY
    from huggingface_hub import HfApi

    from phi3space.jobs.backend import Task
    from phi3space.jobs.hf import tasks

    for name in ("PHI3SPACE_JOBS_IMAGE", "SPACE_ID", "SYSTEM"):
        monkeypatch.delenv(name, raising=False)
    alice.jobs.scheduling_s = 60  # nothing needs to run: where its code comes from is decided at start
    HfApi(token=BOB).create_repo("bob/snarkle", private=False)
    alice.add_repo("alice/mine", {"README.md": "mine"})
    for adapter, home in (("bob/snarkle", "alice/phi3space-code"), ("alice/mine", "alice/mine")):
        task, flavor = tasks.check_task(Task("eval", ("eval", adapter, "--rows", "3"), adapter, push_to=adapter,
                                             timeout="4h"), CANARY)
        run = RunDir(tmp_path / adapter.replace("/", "-"))
        ref = remote.start_task(task, CANARY, flavor, "r1", run.writer())
        (volume,) = alice.jobs.job(ref.id)["volumes"]
        assert (volume["source"], volume["revision"]) == (home, code.CODE_BRANCH)
        assert any(path.startswith("wheels/phi3space-") for path in alice.files(home, revision=code.CODE_BRANCH))
    assert alice.repo("alice/phi3space-code")["private"] is True
    assert list(alice.repo("bob/snarkle")["branches"]) == ["main"]  # bob's repo untouched


def test_a_runs_tracker_settings_travel_with_its_job_keys_as_secrets_only(alice, tmp_path, monkeypatch):
    """logging.report_to: trackio logs to a Space (the one named here, else <user>/phi3space-trackio); its settings
    go in the job's environment, its keys among its secrets, nothing in its command line."""
    from helpers import CANARY

    monkeypatch.setenv("PHI3SPACE_JOBS_IMAGE", "hf.co/spaces/alice/phi3space")
    for name in ("SPACE_ID", "SYSTEM", "TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_WRITE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    alice.jobs.scheduling_s = 60  # nothing needs to run: what the job is given is decided at start
    cfg = jobs_cfg()
    cfg.output.push_to, cfg.logging.report_to = "alice/snarkle", "trackio"

    def started(run_id):
        run = RunDir(tmp_path / run_id)
        ref = remote.start(cfg, CANARY, remote.check_job(cfg, CANARY), run_id, run.writer())
        return alice.jobs.job(ref.id), ref.id, run

    spec, _, run = started("r1")
    assert spec["environment"]["TRACKIO_SPACE_ID"] == "alice/phi3space-trackio" and spec["secrets"] == ["HF_TOKEN"]
    said = [e["message"] for e in run.read_events()[0] if e["type"] == "log"]
    assert "trackio logs this run to the Space alice/phi3space-trackio" in said

    monkeypatch.setenv("TRACKIO_SPACE_ID", "alice-lab/dashboard")
    monkeypatch.setenv("TRACKIO_WRITE_TOKEN", "trackio-write-key-123")
    spec, job_id, _ = started("r2")
    assert spec["environment"]["TRACKIO_SPACE_ID"] == "alice-lab/dashboard"
    assert spec["secrets"] == ["HF_TOKEN", "TRACKIO_WRITE_TOKEN"]
    assert alice.jobs.secrets(job_id)["TRACKIO_WRITE_TOKEN"] == "trackio-write-key-123"
    assert "trackio-write-key-123" not in json.dumps({k: v for k, v in spec.items() if k != "folder"})


def test_a_tracker_that_cannot_work_on_a_job_is_refused_before_it_is_submitted(alice, monkeypatch):
    from helpers import CANARY

    from phi3space.jobs.hf import trackers

    for name in ("PHI3SPACE_JOBS_IMAGE", "SPACE_ID", "SYSTEM", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    cfg = jobs_cfg()
    cfg.logging.report_to = "wandb"
    with pytest.raises(ConfigError, match="wandb is not installed in the image a Hugging Face job runs") as refused:
        remote.check_job(cfg, CANARY)  # the job installs the project's requirements: wandb is not among them
    assert "logging.report_to: trackio" in refused.value.hint

    monkeypatch.setattr(trackers, "image_has", lambda package: True)  # an image of one's own that has it
    with pytest.raises(ConfigError, match="WANDB_API_KEY is not set here") as refused:
        remote.check_job(cfg, CANARY)
    assert "export WANDB_API_KEY=" in refused.value.hint
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    assert remote.check_job(cfg, CANARY).name == "a10g-large"
    monkeypatch.setenv("SYSTEM", "spaces")  # a visitor's job on a Space: the owner's key is not theirs to use
    monkeypatch.setenv("SPACE_ID", "alice/phi3space")
    with pytest.raises(ConfigError, match="a visitor's job on this Space cannot be given a Weights & Biases key"):
        remote.check_job(cfg, CANARY)
    assert alice.jobs.ids() == []
