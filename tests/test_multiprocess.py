"""Two processes (DDP over gloo on CPU, as `accelerate launch` does on GPUs): one run folder, one events file."""

import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, cli_env, memorise_config, write_qa_jsonl

from phi3space.run import RunDir

pytestmark = pytest.mark.slow


def test_two_processes_share_the_data_and_write_one_run(tiny_model, tmp_path):
    data = write_qa_jsonl(tmp_path / "qa.jsonl")  # 4 rows
    run_dir = tmp_path / "run"
    cfg = memorise_config(tiny_model, str(data), run_dir, training__max_steps=4, training__batch_size=2,
                          training__logging_steps=1, training__save_steps=2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = cli_env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "phi3space", "train", str(tmp_path / "run.yaml")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    events, _ = RunDir(run_dir).read_events()
    assert [e["type"] for e in events].count("run_started") == 1 and events[-1]["status"] == "completed"
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]  # written once, by the main process
    # 4 rows, 2 per process per step, 2 processes: one step is one epoch (each process alone would need two).
    assert progress[1]["epoch"] == 2.0
    assert result.stdout.count("step 4/4") == 1
    assert (run_dir / "adapter_model.safetensors").exists() and (run_dir / "checkpoint-4").is_dir()
