"""Offline work on Apache Beam runners: build SynthCaps `large` and tokenize stage tasks on Dataflow (or Flink), the
data, tokenizer checkpoints and token cache on a bucket.

    python launch/dataflow.py tokenize --project P --region us-central1 --bucket gs://BUCKET \\
        --tasks 'synthcaps_quickstart_.*' --gin_file=gin/runs/tokenize_quickstart.gin \\
        --tokenizers gs://BUCKET/tokenizers --dry_run
    python launch/dataflow.py synthcaps --project P --region us-central1 --bucket gs://BUCKET --config large --dry_run
    (Flink: --runner flink --flink_master HOST:8081)

Workers install this package from `--setup_file=./setup.py`. They have neither the driver's gin config nor its
environment: the cache job hands each worker the tokenizer checkpoints it resolved (seqio's setup_fn) and every worker
checks that the checkpoints it loads have the fingerprints the driver wrote to tokenizers.json, or the job stops. So
the checkpoints must sit where every worker reads them (the bucket), which the `upload` step does.
"""
from __future__ import annotations

import argparse
import sys

import plan as plan_lib

PARTS = ("codec", "semantic", "mulan")


def _options(args) -> list[str]:
    if args.runner == "flink":
        return ["--runner=FlinkRunner", f"--flink_master={args.flink_master}", "--environment_type=LOOPBACK"]
    return ["--runner=DataflowRunner", f"--project={args.project}", f"--region={args.region}",
            f"--temp_location={args.bucket}/tmp", "--setup_file=./setup.py", f"--max_num_workers={args.max_workers}",
            "--experiments=use_runner_v2"]


def build(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=("tokenize", "synthcaps"))
    p.add_argument("--bucket", required=True, help="gs://BUCKET: tfds/, cache/, tokenizers/ and tmp/ go under it")
    p.add_argument("--runner", choices=("dataflow", "flink"), default="dataflow")
    p.add_argument("--project", default=None)
    p.add_argument("--region", default=None)
    p.add_argument("--flink_master", default="localhost:8081")
    p.add_argument("--max_workers", type=int, default=64)
    p.add_argument("--config", default="large", help="synthcaps: the corpus config")
    p.add_argument("--tasks", default="synthcaps_.*", help="tokenize: task regex(es)")
    p.add_argument("--gin_file", action="append", default=[], help="tokenize: gin file(s) (crops, tokenizers)")
    p.add_argument("--local_tokenizers", default="out/quickstart",
                   help="tokenize/upload: the folder holding codec/, semantic/, mulan/ checkpoints here")
    p.add_argument("--tokenizers", default=None, help="tokenize: where the checkpoints are on the bucket "
                                                      "(default BUCKET/tokenizers)")
    p.add_argument("--upload", action="store_true", help="tokenize: first copy the local checkpoints there")
    p.add_argument("--dry_run", action="store_true", help="print every command, run none")
    args = p.parse_args(argv)
    if args.runner == "dataflow" and not (args.project and args.region):
        p.error("Dataflow needs --project and --region (or --runner flink)")
    options = ",".join(_options(args))
    cli = [".venv/bin/python", "-m", "musiclm_jax.cli"]
    out = plan_lib.Plan()
    if args.job == "synthcaps":
        out.add(f"render SynthCaps {args.config} on the runner into {args.bucket}/tfds",
                [*cli, "data", "build", "--dataset", "synthcaps", "--config", args.config, "--data_dir",
                 f"{args.bucket}/tfds", "--beam", "--beam_options", options.replace(",", " ")])
        return out, args
    tokenizers = args.tokenizers or f"{args.bucket}/tokenizers"
    if args.upload:
        for part in PARTS:
            out.add(f"the {part} checkpoint, where every worker reads it",
                    ["gcloud", "storage", "rsync", "--recursive", f"{args.local_tokenizers}/{part}",
                     f"{tokenizers}/{part}"])
    bindings = [f"--gin_bindings=tasks.preprocessors.tokenizer_spec.{part} = '{tokenizers}/{part}'" for part in PARTS]
    out.add("tokenize the stage tasks into the bucket's token cache (workers check the tokenizer fingerprints)",
            [*cli, "tokenize", f"--tasks={args.tasks}", f"--output_cache_dir={args.bucket}/cache",
             f"--tfds_data_dir={args.bucket}/tfds", *(f"--gin_file={f}" for f in args.gin_file), *bindings,
             f"--pipeline_options={options}", f"--report={args.bucket}/cache/report.json"])
    out.add("the job report: examples and failed clips per task, the tokenizers' fingerprints",
            ["gcloud", "storage", "cat", f"{args.bucket}/cache/report.json"])
    return out, args


if __name__ == "__main__":
    sys.exit(plan_lib.main(build))
