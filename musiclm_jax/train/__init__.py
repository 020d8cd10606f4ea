"""The shared training stack: one trainer for every model family.

partitioning  meshes (data, fsdp, model, replica), logical-axis rules, shardings, global batches, multi-host start
trainer       `Family` (what a model family supplies), `Trainer` (sharded jitted steps), `train()` (the loop)
optimizers    Adafactor (T5X settings) / AdamW / SGD with warmup + constant, rsqrt, cosine or linear decay
checkpoints   orbax checkpoints with the data iterator state and gin config; restore onto any mesh
data          the dataset-function hook and the built-in synthetic token data
gin_utils     --gin_file / --gin.KEY=VALUE parsing and the %gin.REQUIRED check
loader        the one inference loader: a family's modules as shapes, restored (no Trainer, no optimizer)
launch        how every training starts (distributed, gin registrations, configs, logging, entry)
inference     sampling from a trained token LM to JSONL
Entry points: `python -m musiclm_jax.train` (train) and `python -m musiclm_jax.infer` (sample).
"""
