"""Spectrogram pictures: one PNG with a mel spectrogram panel per wave (side by side for comparisons)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def save_spectrogram_png(path: str | os.PathLike, waves: Sequence[np.ndarray], sample_rate: int,
                         titles: Sequence[str] | None = None, n_mels: int = 80) -> str:
    """Writes log-mel spectrograms of `waves` (each ``[samples]``) in one row of panels. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from musiclm_jax.audio.features import log_mel_spectrogram

    waves = [np.asarray(w, np.float32) for w in waves]
    if not waves:
        raise ValueError("save_spectrogram_png needs at least one wave")
    titles = list(titles) if titles is not None else [f"wave {i}" for i in range(len(waves))]
    n_fft = 2048 if sample_rate > 32000 else 1024
    hop = n_fft // 4
    fig, axes = plt.subplots(1, len(waves), figsize=(5 * len(waves), 3.2), squeeze=False)
    for ax, wave, title in zip(axes[0], waves, titles):
        if wave.shape[-1] < n_fft:
            wave = np.pad(wave, (0, n_fft - wave.shape[-1]))
        mel = np.asarray(log_mel_spectrogram(wave, sample_rate, n_fft, hop, n_mels)) / np.log(10.0) * 10.0
        duration = wave.shape[-1] / sample_rate
        ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", extent=(0.0, duration, 0, n_mels),
                  vmin=mel.max() - 80.0, vmax=mel.max())
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("seconds")
        ax.set_ylabel("mel bin")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
