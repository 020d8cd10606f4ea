"""Codec quality on held-out audio: the bitrate curve (1..Q levels) and Opus at matching bitrates.

Metrics per clip, averaged: multi-scale log-mel distance (lower is better), SI-SNR in dB (higher), log-spectral
distance in dB (lower); per level: fraction of codes used and perplexity of the code histogram.

`autoencoder_row` decodes the encoder's output without the quantizer: when it is no better than all Q levels, the
encoder/decoder (not the codebooks) limit quality, and more levels cannot help.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile

import numpy as np

log = logging.getLogger(__name__)
OPUS_MIN_KBPS = 6.0  # libopus' lowest bitrate


def eval_clips(sample_rate: int, *, audio_dir: str | None = None, synthcaps: str | None = None,
               data_dir: str | None = None, seconds: float = 4.0, limit: int = 32) -> tuple[np.ndarray, list[str]]:
    """Held-out clips as one ``[n, samples]`` array (all cut to the shortest, at most `seconds`) and their names."""
    from musiclm_jax.audio.io import resample
    from musiclm_jax.codec.data import list_audio_files, load_clips

    if bool(audio_dir) == bool(synthcaps):
        raise ValueError("pass exactly one of --audio_dir DIR or --synthcaps CONFIG")
    if audio_dir:
        files = list_audio_files(os.path.expanduser(audio_dir))[:limit]
        waves, skipped = load_clips(files, sample_rate)
        names = [os.path.basename(f) for f in files if not any(s.startswith(os.path.basename(f)) for s in skipped)]
    else:
        from musiclm_jax.mulan.data import synthcaps_clips

        clips = synthcaps_clips(split="test", config=synthcaps, data_dir=data_dir, limit=limit)
        waves = [resample(c["audio"], c["sample_rate"], sample_rate) for c in clips]
        names = [str(c.get("caption", i)) for i, c in enumerate(clips)]
    if not waves:
        raise ValueError("no usable audio to evaluate on")
    length = min(int(seconds * sample_rate), min(w.shape[-1] for w in waves))
    return np.stack([w[:length] for w in waves]).astype(np.float32), names


def _metrics(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> dict:
    from musiclm_jax.codec import losses

    scales = tuple(s for s in (256, 512, 1024, 2048) if s <= ref.shape[-1])
    return {"mel_distance": float(np.mean(losses.mel_distance(ref, est, sample_rate, scales))),
            "si_snr_db": float(np.mean(losses.si_snr(ref, est))),
            "lsd_db": float(np.mean(losses.log_spectral_distance(ref, est, min(1024, ref.shape[-1]))))}


def bitrate_curve(codec, waves: np.ndarray, batch_size: int = 8) -> list[dict]:
    """One row per level count 1..Q: kbps and the quality metrics; plus that level's usage and perplexity."""
    import jax.numpy as jnp

    from musiclm_jax.codec.rvq import usage_and_perplexity

    codes = np.concatenate([codec.encode(waves[i:i + batch_size], codec.sample_rate)
                            for i in range(0, len(waves), batch_size)])
    usage, perplexity = usage_and_perplexity(jnp.asarray(codes), codec.config.codebook_size)
    rows = []
    for n in range(1, codec.num_levels + 1):
        recon = np.concatenate([codec.decode(codes[i:i + batch_size, :, :n], num_samples=waves.shape[-1])
                                for i in range(0, len(waves), batch_size)])
        rows.append({"levels": n, "kbps": codec.bitrate(n) / 1000, **_metrics(waves, recon, codec.sample_rate),
                     "level_usage": float(usage[n - 1]), "level_perplexity": float(perplexity[n - 1])})
    return rows


def autoencoder_row(codec, waves: np.ndarray, batch_size: int = 8) -> dict:
    """Quality of decoder(encoder(x)) with the quantizer bypassed: the ceiling the levels approach."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(codec.model)

    @jax.jit
    def round_trip(state, wave):
        model = nnx.merge(graphdef, state)
        return model.decoder(model.encoder(model._pad(wave)))[:, :wave.shape[-1]]

    recon = np.concatenate([np.asarray(round_trip(state, jnp.asarray(waves[i:i + batch_size])))
                            for i in range(0, len(waves), batch_size)])
    return _metrics(waves, recon, codec.sample_rate)


def opus_round_trip(wave: np.ndarray, sample_rate: int, kbps: float, tmp: str) -> np.ndarray:
    """Encodes with opusenc at `kbps` and decodes with opusdec back to `sample_rate` (same length)."""
    from musiclm_jax.audio.io import load_audio, write_wav

    src, enc, dec = (os.path.join(tmp, name) for name in ("in.wav", "x.opus", "out.wav"))
    write_wav(src, wave, sample_rate)
    subprocess.run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", "--hard-cbr", src, enc], check=True)
    subprocess.run(["opusdec", "--quiet", "--rate", str(sample_rate), enc, dec], check=True)
    out, _ = load_audio(dec, sample_rate)
    out = out[:wave.shape[-1]]
    return np.pad(out, (0, wave.shape[-1] - out.shape[-1]))


def opus_curve(waves: np.ndarray, sample_rate: int, kbps_list: list[float]) -> list[dict]:
    """Opus at each bitrate (raised to Opus' 6 kbps floor; duplicates dropped). Needs Debian's opus-tools."""
    if not (shutil.which("opusenc") and shutil.which("opusdec")):
        raise ValueError("opusenc/opusdec not found: install the Debian package opus-tools, or drop --opus")
    rows = []
    for kbps in sorted({max(k, OPUS_MIN_KBPS) for k in kbps_list}):
        with tempfile.TemporaryDirectory(prefix="codec_opus_") as tmp:
            recon = np.stack([opus_round_trip(w, sample_rate, kbps, tmp) for w in waves])
        rows.append({"kbps": kbps, **_metrics(waves, recon, sample_rate)})
    return rows


def markdown_table(results: dict) -> str:
    lines = ["| codec | levels | kbps | mel distance | SI-SNR (dB) | LSD (dB) | level perplexity |",
             "|---|---|---|---|---|---|---|"]
    for r in results.get("soundstream", []):
        lines.append(f"| SoundStream | {r['levels']} | {r['kbps']:.2f} | {r['mel_distance']:.3f} | "
                     f"{r['si_snr_db']:.2f} | {r['lsd_db']:.2f} | {r['level_perplexity']:.1f} |")
    if "autoencoder" in results:
        r = results["autoencoder"]
        lines.append(f"| SoundStream, no quantizer | - | - | {r['mel_distance']:.3f} | {r['si_snr_db']:.2f} | "
                     f"{r['lsd_db']:.2f} | - |")
    for r in results.get("opus", []):
        lines.append(f"| Opus | - | {r['kbps']:.2f} | {r['mel_distance']:.3f} | {r['si_snr_db']:.2f} | "
                     f"{r['lsd_db']:.2f} | - |")
    return "\n".join(lines)
