"""Melody embedder (MusicLM's melody conditioning): a ViT over log-mel frames trained with a semi-hard triplet loss,
so the same melody played in another sound lands near, and a transposed copy or another tune far.

model.py    MelodyConfig, MelodyEmbedder (patches of frames -> transformer layers of lm/transformer.py -> unit vector)
losses.py   semi-hard triplet loss over the batch, retrieval metrics
data.py     a bank of pre-rendered renditions (data/synthcaps/melody.py) and its resumable triplet batches
family.py   MelodyFamily for the shared trainer
api.py      Melody.from_checkpoint(dir): window embeddings of any audio, held-out retrieval
commands.py `musiclm-jax melody render-bank | train | eval`
"""
