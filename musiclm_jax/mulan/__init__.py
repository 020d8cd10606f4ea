"""MuLan: joint text/audio embedding (audio ResNet on log-mel, MiniLM/BERT text tower, 128-d shared space) and the
conditioning tokens MusicLM is trained on (residual VQ of the embeddings).

Modules: text.py (BERT tower + MiniLM weights + tokenizer), audio.py (ResNet tower, windows), model.py (both towers
+ projections), losses.py, family.py (the shared trainer's family), data.py, quantizer.py, api.py (`MuLan`),
evaluate.py (retrieval / zero-shot), run.py (train + quantizer fit), commands.py (`musiclm-jax mulan ...`).
Nothing heavy is imported here: `from musiclm_jax.mulan.api import MuLan`.
"""
