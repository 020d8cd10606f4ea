"""Codec quality on held-out audio: the bitrate curve (1..Q levels) and Opus at matching bitrates.

Metrics per clip, averaged: multi-scale log-mel distance (lower is better), SI-SNR in dB (higher), log-spectral
distance in dB (lower); per level: fraction of codes used and perplexity of the code histogram.

`autoencoder_row` decodes the encoder's output without the quantizer: when it is no better than all Q levels, the
encoder/decoder (not the codebooks) limit quality, and more levels cannot help.

Musical columns (where the clips' truth is known, i.e. SynthCaps: its metadata has bpm, key, mode): tempo and key
accuracy of each round trip, scored with the eval suite's estimators (`musiclm_jax.eval.metrics`: librosa tempo,
Krumhansl-Schmuckler key on chroma), and the frame-rate comb (`frame_rate_comb`): a decoder that buzzes at multiples
of its frame rate (the transposed-convolution artefact that made every shipped reconstruction read as G) shows
peaks there; the table reports it as a ratio to the same measure on the real clips (1.0 = no more comb than the
music itself).
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
               data_dir: str | None = None, seconds: float = 4.0, limit: int = 32,
               with_info: bool = False):
    """Held-out clips as one ``[n, samples]`` array (all cut to the shortest, at most `seconds`) and their names.

    With `with_info`, also a dict: ``truths`` (per clip ``{"bpm", "key", "mode"}`` where known, SynthCaps only) and
    ``skipped`` (every file that could not be used, with the reason).
    """
    from musiclm_jax.audio.io import resample
    from musiclm_jax.audio.io import list_audio_files, load_clips

    if bool(audio_dir) == bool(synthcaps):
        raise ValueError("pass exactly one of --audio_dir DIR or --synthcaps CONFIG")
    skipped: list[str] = []
    if audio_dir:
        files = list_audio_files(os.path.expanduser(audio_dir))[:limit]
        waves, skipped = load_clips(files, sample_rate)
        bad = {s.split(" (", 1)[0] for s in skipped}
        names = [os.path.basename(f) for f in files if os.path.basename(f) not in bad]
        truths = [{} for _ in waves]
    else:
        from musiclm_jax.data.synthcaps.clips import synthcaps_clips

        clips = synthcaps_clips(split="test", config=synthcaps, data_dir=data_dir, limit=limit)
        waves = [resample(c["audio"], c["sample_rate"], sample_rate) for c in clips]
        names = [str(c.get("caption", i)) for i, c in enumerate(clips)]
        truths = [{k: c[k] for k in ("bpm", "key", "mode") if c.get(k) not in (None, "")} for c in clips]
    if not waves:
        raise ValueError("no usable audio to evaluate on" + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
    length = min(int(seconds * sample_rate), min(w.shape[-1] for w in waves))
    batch = np.stack([w[:length] for w in waves]).astype(np.float32)
    if with_info:
        return batch, names, {"truths": truths, "skipped": skipped}
    return batch, names


# --- frame-rate comb -------------------------------------------------------------------------------------------

def comb_spectrum(wave: np.ndarray, sample_rate: int, n_fft: int = 8192) -> np.ndarray:
    """Long-term average power spectrum (Welch: Hann windows of `n_fft`, 75 % overlap) ``[n_fft // 2 + 1]``."""
    wave = np.asarray(wave, np.float64)
    if wave.shape[-1] < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.shape[-1]))
    hop = n_fft // 4
    window = np.hanning(n_fft)
    starts = range(0, wave.shape[-1] - n_fft + 1, hop)
    frames = np.stack([wave[s:s + n_fft] * window for s in starts])
    return np.mean(np.abs(np.fft.rfft(frames, axis=-1)) ** 2, axis=0)


def frame_rate_comb(wave: np.ndarray, sample_rate: int, frame_rate: float, max_hz: float | None = None,
                    n_fft: int = 8192) -> float:
    """How much a clip's spectrum peaks at multiples of `frame_rate`: per harmonic h * frame_rate (h >= 1, up to
    `max_hz`, default Nyquist minus one frame rate), the peak power within +-1 bin over the median power of the
    bins between the neighbouring half-harmonics (excluding +-3 bins around the harmonic); the geometric mean over
    harmonics. 1.0 means no comb; a buzzing decoder gives many times more. Silent clips give nan."""
    power = comb_spectrum(wave, sample_rate, n_fft)
    if not np.isfinite(power).all() or power.max() <= 0:
        return float("nan")
    bin_hz = sample_rate / n_fft
    max_hz = sample_rate / 2 - frame_rate if max_hz is None else min(max_hz, sample_rate / 2 - frame_rate)
    floor = power.max() * 1e-12
    logs = []
    for h in range(1, int(max_hz // frame_rate) + 1):
        c = int(round(h * frame_rate / bin_hz))
        half = int(frame_rate / 2 / bin_hz)
        lo, hi = max(c - half, 0), min(c + half + 1, power.shape[-1])
        idx = np.arange(lo, hi)
        ring = power[idx[np.abs(idx - c) > 3]]
        if ring.size == 0:
            continue
        peak = power[max(c - 1, 0):c + 2].max()
        logs.append(np.log((peak + floor) / (np.median(ring) + floor)))
    return float(np.exp(np.mean(logs))) if logs else float("nan")


def mean_comb(waves: np.ndarray, sample_rate: int, frame_rate: float) -> float:
    """`frame_rate_comb` averaged (geometrically) over clips, ignoring silent ones."""
    values = [frame_rate_comb(w, sample_rate, frame_rate) for w in waves]
    values = [v for v in values if np.isfinite(v)]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def musical_scores(waves: np.ndarray, sample_rate: int, truths: list[dict], frame_rate: float,
                   real_comb: float | None = None) -> dict:
    """Tempo and key accuracy against the clips' truth (the eval suite's estimators) and the frame-rate comb.

    ``tempo_acc``: within 5 % of the true BPM, or of 1/2, 2, 3, 1/3 of it (octave-tolerant, as in `eval`);
    ``tempo_acc_strict``: within 5 %; ``key_acc``: tonic and mode; ``mode_acc``; ``comb``: `mean_comb`;
    ``comb_ratio``: comb / `real_comb` (when given).
    """
    from musiclm_jax.eval import metrics as M

    out = {}
    idx = [i for i, t in enumerate(truths) if t.get("bpm")]
    if idx:
        est = [M.estimate_tempo(waves[i], sample_rate) for i in idx]
        res = M.tempo_adherence(est, [float(truths[i]["bpm"]) for i in idx])
        out["tempo_acc"], out["tempo_acc_strict"] = res["tempo_acc_octave"], res["tempo_acc"]
    idx = [i for i, t in enumerate(truths) if t.get("mode")]
    if idx:
        est = [M.estimate_key(waves[i], sample_rate) for i in idx]
        res = M.key_adherence(est, [(truths[i].get("key"), truths[i]["mode"]) for i in idx])
        out["key_acc"], out["mode_acc"] = res["key_acc"], res["mode_acc"]
        out["key_estimates"] = [" ".join(e) for e in est]
    out["comb"] = mean_comb(waves, sample_rate, frame_rate)
    if real_comb:
        out["comb_ratio"] = out["comb"] / real_comb
    return out


def _metrics(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> dict:
    from musiclm_jax.codec import losses

    scales = tuple(s for s in (256, 512, 1024, 2048) if s <= ref.shape[-1])
    return {"mel_distance": float(np.mean(losses.mel_distance(ref, est, sample_rate, scales))),
            "si_snr_db": float(np.mean(losses.si_snr(ref, est))),
            "lsd_db": float(np.mean(losses.log_spectral_distance(ref, est, min(1024, ref.shape[-1]))))}


def bitrate_curve(codec, waves: np.ndarray, batch_size: int = 8, truths: list[dict] | None = None,
                  real_comb: float | None = None) -> list[dict]:
    """One row per level count 1..Q: kbps and the quality metrics; plus that level's usage and perplexity; with
    `truths`, the musical scores (`musical_scores`) of each round trip."""
    import jax.numpy as jnp

    from musiclm_jax.quantization.rvq import usage_and_perplexity

    codes = np.concatenate([codec.encode(waves[i:i + batch_size], codec.sample_rate)
                            for i in range(0, len(waves), batch_size)])
    usage, perplexity = usage_and_perplexity(jnp.asarray(codes), codec.config.codebook_size)
    rows = []
    for n in range(1, codec.num_levels + 1):
        recon = np.concatenate([codec.decode(codes[i:i + batch_size, :, :n], num_samples=waves.shape[-1])
                                for i in range(0, len(waves), batch_size)])
        row = {"levels": n, "kbps": codec.bitrate(n) / 1000, **_metrics(waves, recon, codec.sample_rate),
               "level_usage": float(usage[n - 1]), "level_perplexity": float(perplexity[n - 1])}
        if truths is not None:
            row.update(musical_scores(recon, codec.sample_rate, truths, codec.frame_rate, real_comb))
        rows.append(row)
    return rows


def autoencoder_row(codec, waves: np.ndarray, batch_size: int = 8, truths: list[dict] | None = None,
                    real_comb: float | None = None) -> dict:
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
    row = _metrics(waves, recon, codec.sample_rate)
    if truths is not None:
        row.update(musical_scores(recon, codec.sample_rate, truths, codec.frame_rate, real_comb))
    return row


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


def opus_curve(waves: np.ndarray, sample_rate: int, kbps_list: list[float], truths: list[dict] | None = None,
               frame_rate: float = 50.0, real_comb: float | None = None) -> list[dict]:
    """Opus at each bitrate (raised to Opus' 6 kbps floor; duplicates dropped). Needs Debian's opus-tools."""
    if not (shutil.which("opusenc") and shutil.which("opusdec")):
        raise ValueError("opusenc/opusdec not found: install the Debian package opus-tools, or drop --opus")
    rows = []
    for kbps in sorted({max(k, OPUS_MIN_KBPS) for k in kbps_list}):
        with tempfile.TemporaryDirectory(prefix="codec_opus_") as tmp:
            recon = np.stack([opus_round_trip(w, sample_rate, kbps, tmp) for w in waves])
        row = {"kbps": kbps, **_metrics(waves, recon, sample_rate)}
        if truths is not None:
            row.update(musical_scores(recon, sample_rate, truths, frame_rate, real_comb))
        rows.append(row)
    return rows


def _music_cells(r: dict) -> str:
    def f(key, fmt):
        v = r.get(key)
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)
    return f"{f('tempo_acc', '.2f')} | {f('key_acc', '.2f')} | {f('mode_acc', '.2f')} | {f('comb_ratio', '.2f')} |"


def markdown_table(results: dict) -> str:
    """The table `codec eval` prints: one row per codec setting; musical columns where the clips' truth is known."""
    music = "real" in results
    head = "| codec | levels | kbps | mel distance | SI-SNR (dB) | LSD (dB) | level perplexity |"
    rule = "|---|---|---|---|---|---|---|"
    if music:
        head += " tempo acc | key acc | mode acc | comb vs real |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    name = results.get("codec_name", "SoundStream")
    tail = (lambda r: " " + _music_cells(r)) if music else (lambda r: "")
    if music:
        r = results["real"]
        lines.append(f"| real audio | - | - | 0.000 | - | 0.00 | - |{tail(r)}")
    for r in results.get("soundstream", []):
        lines.append(f"| {name} | {r['levels']} | {r['kbps']:.2f} | {r['mel_distance']:.3f} | "
                     f"{r['si_snr_db']:.2f} | {r['lsd_db']:.2f} | {r['level_perplexity']:.1f} |{tail(r)}")
    if "autoencoder" in results:
        r = results["autoencoder"]
        lines.append(f"| {name}, no quantizer | - | - | {r['mel_distance']:.3f} | {r['si_snr_db']:.2f} | "
                     f"{r['lsd_db']:.2f} | - |{tail(r)}")
    for r in results.get("opus", []):
        lines.append(f"| Opus | - | {r['kbps']:.2f} | {r['mel_distance']:.3f} | {r['si_snr_db']:.2f} | "
                     f"{r['lsd_db']:.2f} | - |{tail(r)}")
    return "\n".join(lines)
