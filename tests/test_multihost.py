"""Two local processes as two hosts of one job (jax.distributed over the CPU's gloo collectives): a SIGTERM to one
host stops both at the same step, each saves it (with its own data position), and both resume from it."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_hosts(model_dir, *bindings) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for host in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(host), XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_PLATFORMS="cpu")
        cmd = [sys.executable, "-m", "musiclm_jax.train", "--gin_file=gin/experiments/lm_tiny_synthetic.gin",
               f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=5000", "--gin.train.log_period=5",
               "--gin.train.eval_period=0", "--gin.train.checkpoint_period=100000", "--gin.train.progress=False",
               "--gin.train.tensorboard=False", *bindings]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def _finish(procs, timeout=240) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a host did not finish: the other one may be waiting for it in a collective")
        out.append((p.returncode, text))
    return out


def _done_step(text: str) -> int:
    line = next(ln for ln in text.splitlines() if ln.startswith("done: step"))
    return int(line.split()[2].rstrip(","))


def test_sigterm_on_one_host_stops_both_at_the_same_step_and_they_resume(tmp_path):
    model_dir = tmp_path / "lm"
    procs = _start_hosts(model_dir)
    metrics = model_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # both hosts are stepping
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("the two hosts did not start training: " + (procs[0].communicate()[0] or "")[-2000:])
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # preemption notice reaches one host only
    results = _finish(procs)
    for rc, text in results:
        assert rc == 143, text[-2000:]  # launch.PREEMPTED_EXIT: the job runner must not take it for completion
        assert "preempted True" in text
    stopped = {_done_step(text) for _, text in results}
    assert len(stopped) == 1, results
    step = stopped.pop()
    assert 10 <= step < 5000
    saved = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == step
    meta = json.loads((model_dir / "checkpoints" / str(step) / "meta" / "metadata").read_text())
    # Each host's data position is kept (the primary writes them all) and both consumed `step` batches.
    assert [s["position"] for s in meta["data_states"]] == [step, step]

    results = _finish(_start_hosts(model_dir, "--gin.train.max_steps_this_run=7"))
    for rc, text in results:
        assert rc == 0, text[-2000:]
        assert _done_step(text) == step + 7  # resumed at `step` on both hosts
