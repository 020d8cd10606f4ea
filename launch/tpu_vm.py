"""Train on a Cloud TPU VM slice (one host or a pod): create it, copy this checkout to every worker, `make setup` with
the TPU wheel, start the same gin experiment on all workers, tail the log, copy the run to a bucket, delete.

    python launch/tpu_vm.py --name musiclm-v5e --zone us-west4-a --accelerator_type v5litepod-16 \\
        --gin_file=gin/experiments/lm_large_pod.gin --model_dir=gs://BUCKET/lm_large --steps create,sync,setup,train \\
        --dry_run

Every worker runs the identical command; `jax.distributed` starts itself from the TPU environment
(TPU_WORKER_HOSTNAMES, see `musiclm_jax/train/partitioning.maybe_initialize_distributed`). A pod's model dir must be a
bucket path all workers write (orbax writes each host's shards there). A preempted (spot) slice: every worker saves
the same step on SIGTERM; recreate it and run `--steps sync,setup,train` again to resume from the bucket.
"""
from __future__ import annotations

import shlex
import sys

import plan as plan_lib

STEPS = ("create", "sync", "setup", "train", "tail", "copy", "delete")
# requirements.lock is resolved for Python 3.12; TPU VM images ship an older python3.
PYTHON312 = ("(command -v python3.12 >/dev/null || (sudo add-apt-repository -y ppa:deadsnakes/ppa && "
             "sudo apt-get install -y -qq python3.12 python3.12-venv))")


def build(argv=None) -> plan_lib.Plan:
    p = plan_lib.job_parser(__doc__)
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--accelerator_type", default="v5litepod-16", help="e.g. v5litepod-16, v4-32, v5p-64")
    p.add_argument("--runtime_version", default="v2-alpha-tpuv5-lite", help="TPU VM image (tpu-ubuntu2204-base ...)")
    p.add_argument("--spot", action="store_true", help="create a spot (preemptible) slice")
    p.add_argument("--steps", default="sync,setup,train", help=f"comma-separated, of {', '.join(STEPS)}; or all")
    p.add_argument("--copy_to", default=None, help="copy: a local model dir on worker 0 -> this bucket path")
    args = plan_lib.parse(p, argv, needs_job=True)
    where = [f"--zone={args.zone}", *([f"--project={args.project}"] if args.project else [])]
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]

    def ssh(command: str, worker: str = "all") -> list[str]:
        return [*tpu, "ssh", args.name, *where, f"--worker={worker}", f"--command={command}"]

    archive = f"/tmp/musiclm-jax-{args.name}.tar.gz"
    repo = plan_lib.REMOTE_REPO
    log = f"{repo}/train.log"
    jax_version = plan_lib.locked_version("jax")
    out = plan_lib.Plan()
    for step in plan_lib.select(args.steps, STEPS):
        if step == "create":
            out.add("create the slice", [*tpu, "create", args.name, *where,
                                         f"--accelerator-type={args.accelerator_type}",
                                         f"--version={args.runtime_version}", *(["--spot"] if args.spot else [])])
        elif step == "sync":
            out.add("pack this checkout (committed files only: commit first)",
                    ["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"])
            out.add("copy it to every worker", [*tpu, "scp", archive, f"{args.name}:/tmp/musiclm-jax.tar.gz", *where,
                                                "--worker=all"])
            out.add("unpack on every worker",
                    ssh(f"mkdir -p {repo} && tar -xzf /tmp/musiclm-jax.tar.gz -C {repo}"))
        elif step == "setup":
            out.add("install on every worker (the CPU lock, then the TPU wheel of the same JAX)",
                    ssh(f"cd {repo} && {PYTHON312} && make venv PYTHON_BOOT=python3.12 && "
                        f".venv/bin/pip install -q 'jax[tpu]=={jax_version}'"))
        elif step == "train":
            command = shlex.join(plan_lib.train_argv(args))
            out.add("start the same experiment on every worker (detached; the log stays on each worker)",
                    ssh(f"cd {repo} && setsid nohup {command} > {log} 2>&1 < /dev/null &"))
        elif step == "tail":
            out.add("follow worker 0's log", ssh(f"tail -f {log}", worker="0"))
        elif step == "copy":
            if not args.copy_to:
                raise SystemExit("launch: --steps copy needs --copy_to gs://BUCKET/PATH")
            out.add("copy worker 0's model dir to the bucket",
                    ssh(f"cd {repo} && gcloud storage rsync --recursive {args.model_dir} {args.copy_to}", worker="0"))
        elif step == "delete":
            out.add("delete the slice", [*tpu, "delete", args.name, *where, "--quiet"])
    return out, args


if __name__ == "__main__":
    sys.exit(plan_lib.main(build))
