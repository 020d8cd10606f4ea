"""Train on GPU machines: one node (one process drives all its GPUs), several nodes over ssh (one process per node,
`jax.distributed` told the coordinator), or N local processes (one per GPU, or CPU processes to rehearse a pod).

    python launch/gpu.py --gin_file=gin/experiments/lm_large_pod.gin --model_dir=/shared/lm_large --dry_run
    python launch/gpu.py --hosts gpu-a,gpu-b --gin_file=gin/experiments/lm_large_pod.gin \\
        --model_dir=gs://BUCKET/lm_large --dry_run
    python launch/gpu.py --local_processes 2 --platform cpu --gin_file=gin/experiments/lm_tiny_synthetic.gin \\
        --model_dir=/tmp/lm_2hosts --dry_run

Each process gets JAX_COORDINATOR_ADDRESS (the first host), JAX_NUM_PROCESSES and JAX_PROCESS_ID, which
`musiclm_jax/train/partitioning.maybe_initialize_distributed` passes to `jax.distributed.initialize`. The model dir
must be one every process writes (a bucket, or a shared filesystem). SIGTERM to any process stops all of them at the
same saved step; start the same command again to resume.
"""
from __future__ import annotations

import shlex
import sys

import plan as plan_lib


def build(argv=None):
    p = plan_lib.job_parser(__doc__)
    p.add_argument("--hosts", default=None, help="comma-separated ssh hosts, the first one coordinates")
    p.add_argument("--local_processes", type=int, default=0, help="N processes on this machine (one per GPU)")
    p.add_argument("--platform", choices=("gpu", "cpu"), default="gpu", help="cpu: rehearse on CPU processes")
    p.add_argument("--port", type=int, default=12355, help="coordinator port")
    p.add_argument("--repo", default=plan_lib.REMOTE_REPO, help="the checkout on each host (--hosts)")
    p.add_argument("--log_dir", default="logs", help="one log per process, relative to the checkout")
    args = plan_lib.parse(p, argv)
    args.one_shell = bool(args.local_processes)  # background processes and the final wait share one shell
    if args.hosts and args.local_processes:
        p.error("pass --hosts or --local_processes, not both")
    train = shlex.join(plan_lib.train_argv(args))
    out = plan_lib.Plan()
    if not args.hosts and not args.local_processes:
        out.add("one process drives every GPU of this node", train)
        return out, args
    if args.hosts:
        hosts = [h for h in args.hosts.split(",") if h]
        coordinator = f"{hosts[0].split('@')[-1]}:{args.port}"
        for i, host in enumerate(hosts):
            env = _env(coordinator, len(hosts), i, args.platform)
            out.add(f"process {i} of {len(hosts)} on {host}",
                    ["ssh", host, f"cd {args.repo} && mkdir -p {args.log_dir} && {env} setsid nohup {train} > "
                                  f"{args.log_dir}/process{i}.log 2>&1 < /dev/null &"])
        return out, args
    n, coordinator = args.local_processes, f"localhost:{args.port}"
    out.add("one log per process", ["mkdir", "-p", args.log_dir])
    for i in range(n):
        env = _env(coordinator, n, i, args.platform)
        devices = f"CUDA_VISIBLE_DEVICES={i} " if args.platform == "gpu" else ""
        out.add(f"process {i} of {n}", f"{devices}{env} {train} > {args.log_dir}/process{i}.log 2>&1 & "
                                       'pids="$pids $!"')
    out.add("wait for all of them; the first failure's exit code (143: stopped by SIGTERM, resumable)",
            "rc=0; for p in $pids; do wait $p || rc=${rc/#0/$?}; done; exit $rc")
    return out, args


def _env(coordinator: str, n: int, i: int, platform: str) -> str:
    env = f"JAX_COORDINATOR_ADDRESS={coordinator} JAX_NUM_PROCESSES={n} JAX_PROCESS_ID={i}"
    return env + (" JAX_PLATFORMS=cpu" if platform == "cpu" else "")


if __name__ == "__main__":
    sys.exit(plan_lib.main(build))
