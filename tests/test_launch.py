"""The launchers of launch/: each dry run prints a coherent command set (the same training command on every host, the
distributed environment, the steps in order); the local multi-process one really trains; the tokenizers a Beam
worker reads from a bucket are the ones the driver fingerprinted."""
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOB = ["--gin_file=gin/experiments/lm_large_pod.gin", "--model_dir=gs://B/lm_large", "--gin.TRAIN_STEPS=10"]
TRAIN = (".venv/bin/python -m musiclm_jax.train --gin_file=gin/experiments/lm_large_pod.gin "
         "--gin.MODEL_DIR=gs://B/lm_large --gin.TRAIN_STEPS=10")


def _launch(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                          cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _commands(out: str) -> list[tuple[str, list[str]]]:
    lines = out.strip().splitlines()
    assert all(ln.startswith("# ") for ln in lines[::2]), out
    return [(what[2:], shlex.split(cmd)) for what, cmd in zip(lines[::2], lines[1::2])]


def test_tpu_vm_dry_run_syncs_sets_up_and_starts_the_same_command_on_every_worker():
    steps = _commands(_launch("tpu_vm.py", "--name", "v5e", "--zone", "us-west4-a", "--steps", "all", "--spot",
                              "--copy_to", "gs://B/copy", *JOB, "--dry_run").stdout)
    argv = [cmd for _, cmd in steps]
    assert argv[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and "--spot" in argv[0]
    assert "--accelerator-type=v5litepod-16" in argv[0]
    assert argv[1][:2] == ["git", "archive"] and argv[-1][4] == "delete"
    ssh = [cmd for cmd in argv if cmd[4:5] == ["ssh"]]
    assert all("--zone=us-west4-a" in cmd for cmd in ssh)
    remote = {what: cmd[-1].removeprefix("--command=") for what, cmd in steps if cmd[4:5] == ["ssh"]}
    train = next(c for w, c in remote.items() if w.startswith("start"))
    assert TRAIN in train and "setsid nohup" in train
    assert "--worker=all" in next(cmd for w, cmd in steps if w.startswith("start"))
    setup = next(c for w, c in remote.items() if w.startswith("install"))
    lock = (ROOT / "requirements.lock").read_text()
    version = next(ln.split("==")[1] for ln in lock.splitlines() if ln.startswith("jax=="))
    assert f"jax[tpu]=={version}" in setup and "make venv" in setup
    default = [w for w, _ in _commands(_launch("tpu_vm.py", "--name", "v", "--zone", "z", *JOB, "--dry_run").stdout)]
    assert default[0].startswith("pack") and default[-1].startswith("start")  # sync, setup, train
    bad = _launch("tpu_vm.py", "--name", "v", "--zone", "z", *JOB, "--steps", "sync,bogus", "--dry_run", check=False)
    assert bad.returncode != 0 and "unknown step(s) ['bogus']" in bad.stderr
    missing = _launch("tpu_vm.py", "--name", "v", "--zone", "z", "--dry_run", check=False)
    assert missing.returncode == 2 and "a job needs --gin_file" in missing.stderr


def test_xpk_dry_run_builds_the_image_and_one_workload_for_tpu_or_gpu():
    tpu = _commands(_launch("xpk.py", "--cluster", "c", "--workload", "lm", "--image", "reg/img:1", "--tpu_type",
                            "v5litepod-256", *JOB, "--dry_run").stdout)
    assert [cmd[:2] for _, cmd in tpu] == [["docker", "build"], ["docker", "push"], ["xpk", "workload"]]
    assert "--build-arg=JAX_EXTRA=tpu" in tpu[0][1] and (ROOT / "launch" / "Dockerfile").exists()
    create = tpu[2][1]
    assert "--tpu-type=v5litepod-256" in create and "--docker-image=reg/img:1" in create
    assert create[-1] == "--command=cd /musiclm-jax && " + TRAIN.replace(".venv/bin/python", "python")
    gpu = _commands(_launch("xpk.py", "--cluster", "c", "--workload", "lm", "--image", "i", "--device_type",
                            "h100-80gb-8", "--num_nodes", "4", "--steps", "create", *JOB, "--dry_run").stdout)
    assert len(gpu) == 1 and "--num-nodes=4" in gpu[0][1] and "MUSICLM_DISTRIBUTED=1 python -m" in gpu[0][1][-1]


def test_gpu_dry_run_gives_each_host_the_distributed_environment():
    steps = _commands(_launch("gpu.py", "--hosts", "gpu-a,me@gpu-b", *JOB, "--dry_run").stdout)
    assert [cmd[:2] for _, cmd in steps] == [["ssh", "gpu-a"], ["ssh", "me@gpu-b"]]
    for i, (_, cmd) in enumerate(steps):
        assert (f"JAX_COORDINATOR_ADDRESS=gpu-a:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID={i} setsid nohup {TRAIN}"
                in cmd[2])
    single = _commands(_launch("gpu.py", *JOB, "--dry_run").stdout)
    assert [shlex.join(cmd) for _, cmd in single] == [TRAIN]


def test_local_processes_launcher_trains_two_cpu_hosts(tmp_path):
    done = _launch("gpu.py", "--local_processes", "2", "--platform", "cpu",
                   "--gin_file=gin/experiments/lm_tiny_synthetic.gin", f"--model_dir={tmp_path}/lm",
                   "--gin.TRAIN_STEPS=4", "--gin.train.progress=False", f"--log_dir={tmp_path}/logs")
    for i in range(2):
        log = (tmp_path / "logs" / f"process{i}.log").read_text()
        assert "done: step 4," in log, log[-2000:]
    assert (tmp_path / "lm" / "checkpoints" / "4").is_dir()
    assert done.returncode == 0


def test_dataflow_dry_run_puts_tokenizers_on_the_bucket_and_names_them():
    steps = _commands(_launch("dataflow.py", "tokenize", "--project", "P", "--region", "r", "--bucket", "gs://B",
                              "--upload", "--gin_file=gin/runs/tokenize_quickstart.gin", "--dry_run").stdout)
    uploads = [cmd for w, cmd in steps if cmd[:3] == ["gcloud", "storage", "rsync"]]
    assert [u[-1] for u in uploads] == [f"gs://B/tokenizers/{p}" for p in ("codec", "semantic", "mulan")]
    job = next(cmd for _, cmd in steps if "tokenize" in cmd)
    assert "--gin_bindings=tasks.preprocessors.tokenizer_spec.codec = 'gs://B/tokenizers/codec'" in job
    options = next(a for a in job if a.startswith("--pipeline_options="))
    assert "--runner=DataflowRunner" in options and "--setup_file=./setup.py" in options
    assert "--output_cache_dir=gs://B/cache" in job
    flink = _commands(_launch("dataflow.py", "synthcaps", "--runner", "flink", "--bucket", "gs://B",
                              "--dry_run").stdout)
    assert "--runner=FlinkRunner" in flink[0][1][-1] and "--beam" in flink[0][1]
    bad = _launch("dataflow.py", "tokenize", "--bucket", "gs://B", "--dry_run", check=False)
    assert bad.returncode == 2 and "Dataflow needs --project and --region" in bad.stderr


def test_tokenizers_on_a_bucket_path_load_from_a_local_copy_with_the_same_fingerprints(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    import tempfile

    from musiclm_jax import tokenizers as tok_lib

    local = {p: str(ROOT / "weights" / "musiclm" / p) for p in ("codec", "semantic", "mulan")}
    # A URL path that tf.io.gfile reads (file://) stands in for gs://: the same copy code runs.
    bucket = {p: f"file://{os.path.realpath(path)}" for p, path in local.items()}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    remote = tok_lib.Tokenizers(tok_lib.TokenizerSpec(**bucket))
    assert remote.fingerprints() == tok_lib.Tokenizers.get(tok_lib.TokenizerSpec(**local)).fingerprints()
    assert remote.describe()["sources"] == bucket  # tokenizers.json names where the job read them
    copies = sorted((tmp_path / "musiclm_tokenizers").iterdir())
    assert len(copies) == 3 and all((c / ".complete").exists() for c in copies)
    with pytest.raises(ValueError, match="is not a directory this process can read"):
        tok_lib.local_copy(f"file://{tmp_path}/nowhere")


def test_notebook_runtime_says_which_accelerator(monkeypatch):
    import shutil as sh

    from musiclm_jax.train import partitioning

    assert partitioning.describe_devices().startswith("CPU: ")  # what the suite's runtime has
    monkeypatch.setattr(sh, "which", lambda name: None)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    assert partitioning.accelerator_wheel() is None
    monkeypatch.setattr(sh, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert partitioning.accelerator_wheel() == "cuda12"
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert partitioning.accelerator_wheel() == "tpu"
