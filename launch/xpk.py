"""Train on GKE with xpk: build and push the image (launch/Dockerfile), then one workload on a TPU slice or a GPU
node pool running the same gin experiment on every pod.

    python launch/xpk.py --cluster my-cluster --workload lm-large --image gcr.io/PROJECT/musiclm-jax:v1 \\
        --tpu_type v5litepod-256 --num_slices 1 --gin_file=gin/experiments/lm_large_pod.gin \\
        --model_dir=gs://BUCKET/lm_large --dry_run
    (GPU node pool: --device_type h100-80gb-8 --num_nodes 2 instead of --tpu_type)

On a TPU slice every pod gets TPU_WORKER_HOSTNAMES and `jax.distributed` starts itself; on GPU nodes the workload
sets MUSICLM_DISTRIBUTED=1 and JAX detects the cluster. Preemption: xpk restarts the workload (--max_restarts) and the
run resumes from the bucket, every pod at the same saved step.
"""
from __future__ import annotations

import shlex
import sys

import plan as plan_lib

STEPS = ("build", "push", "create", "logs", "delete")


def build(argv=None):
    p = plan_lib.job_parser(__doc__)
    p.add_argument("--cluster", required=True)
    p.add_argument("--workload", required=True, help="workload name (lowercase, dashes)")
    p.add_argument("--image", required=True, help="registry path of the training image")
    p.add_argument("--project", default=None)
    p.add_argument("--zone", default=None)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--tpu_type", default=None, help="e.g. v5litepod-256")
    kind.add_argument("--device_type", default=None, help="GPU node pool, e.g. h100-80gb-8")
    p.add_argument("--num_slices", type=int, default=1, help="TPU slices (multislice when > 1)")
    p.add_argument("--num_nodes", type=int, default=1, help="GPU nodes")
    p.add_argument("--max_restarts", type=int, default=3, help="restarts after a preemption (each resumes)")
    p.add_argument("--steps", default="build,push,create", help=f"comma-separated, of {', '.join(STEPS)}; or all")
    args = plan_lib.parse(p, argv)
    where = [*([f"--project={args.project}"] if args.project else []), *([f"--zone={args.zone}"] if args.zone else [])]
    common = [f"--cluster={args.cluster}", *where]
    out = plan_lib.Plan()
    for step in plan_lib.select(args.steps, STEPS):
        if step == "build":
            extra = "tpu" if args.tpu_type else "cuda12"
            out.add("build the image (this checkout + the accelerator wheel)",
                    ["docker", "build", "-f", "launch/Dockerfile", f"--build-arg=JAX_EXTRA={extra}", "-t", args.image,
                     "."])
        elif step == "push":
            out.add("push it where the cluster pulls from", ["docker", "push", args.image])
        elif step == "create":
            command = shlex.join(plan_lib.train_argv(args, python="python"))
            if args.tpu_type:
                kind = [f"--tpu-type={args.tpu_type}", f"--num-slices={args.num_slices}"]
            else:
                kind = [f"--device-type={args.device_type}", f"--num-nodes={args.num_nodes}"]
                command = f"MUSICLM_DISTRIBUTED=1 {command}"
            out.add("one workload: the same command on every pod",
                    ["xpk", "workload", "create", *common, f"--workload={args.workload}",
                     f"--docker-image={args.image}",
                     *kind, f"--max-restarts={args.max_restarts}", f"--command=cd /musiclm-jax && {command}"])
        elif step == "logs":
            out.add("the workload's state and where its logs are", ["xpk", "workload", "list", *common,
                                                                     f"--filter-by-job={args.workload}"])
        elif step == "delete":
            out.add("delete the workload", ["xpk", "workload", "delete", *common, f"--workload={args.workload}"])
    return out, args


if __name__ == "__main__":
    sys.exit(plan_lib.main(build))
