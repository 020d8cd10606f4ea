"""Render one clip spec to audio + features with the `fluidsynth` CLI. One call per clip, safe in any worker."""
from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np

from musiclm_jax.audio import io as audio_io
from musiclm_jax.data.synthcaps import captions, instruments as inst, sources, theory
from musiclm_jax.data.synthcaps.specs import ClipSpec

FLUIDSYNTH_BIN = "fluidsynth"


def fluidsynth_render(midi: bytes, soundfont: str, sample_rate: int) -> np.ndarray:
    """MIDI bytes -> mono float32 wave at `sample_rate` (fast offline render, reverb and chorus on)."""
    with tempfile.TemporaryDirectory(prefix="synthcaps_fs_") as tmp:
        mid, wav = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        with open(mid, "wb") as f:
            f.write(midi)
        cmd = [FLUIDSYNTH_BIN, "-ni", "-q", "-g", "0.6", "-r", str(sample_rate), "-F", wav, "-T", "wav",
               inst.soundfont_path(soundfont), mid]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            raise ValueError("the `fluidsynth` program is missing; run `make apt` (Debian package fluidsynth)") from None
        if proc.returncode != 0 or not os.path.exists(wav):
            raise sources.SourceError(f"fluidsynth failed: {(proc.stderr or proc.stdout).strip()[-200:]}")
        wave, sr = audio_io.load_audio(wav, mono=True)
    if sr != sample_rate:  # fluidsynth honours -r; guard anyway
        wave = audio_io.resample(wave, sr, sample_rate)
    return wave


def make_score(spec: ClipSpec, clip_seconds: float) -> sources.Score:
    programs = dict(spec.programs)
    vel = captions.DYNAMICS_LEVELS[spec.dynamics][1]
    if spec.source == "groove":
        return sources.groove_score(spec.groove, spec.bpm, spec.tonic, spec.mode, spec.progression, spec.bars,
                                    programs, spec.with_lead, spec.seed, vel)
    return sources.tune_score(spec.tune_id, spec.bpm, spec.tonic, spec.with_accompaniment, programs,
                              clip_seconds, vel)


def instrument_names(spec: ClipSpec) -> list[str]:
    names = []
    for role, program in spec.programs:
        names.append(inst.drum_kits(spec.soundfont)[program] if role == "drums" else inst.table(role)[program])
    return list(dict.fromkeys(names))  # e.g. accordion as lead and harmony is named once


def render_clip(spec: ClipSpec, sample_rate: int, clip_seconds: float) -> dict:
    """Renders a spec; returns a plain dict of numpy/python values (the tfds example, plus 'clip_id').

    Raises `sources.SourceError` when the clip cannot be made (the caller skips and counts it).
    """
    score = make_score(spec, clip_seconds)
    wave = fluidsynth_render(score.midi, spec.soundfont, sample_rate)
    n = int(round(clip_seconds * sample_rate))
    wave = wave[:n] if wave.shape[0] >= n else np.pad(wave, (0, n - wave.shape[0]))
    if audio_io.is_silent(wave):
        raise sources.SourceError(f"{spec.clip_id}: rendered audio is silent")
    wave = audio_io.normalize_loudness(wave, captions.DYNAMICS_LEVELS[spec.dynamics][0])
    mode = score.mode
    tonic = theory.tonic_name(theory.pitch_class(score.tonic), mode)
    mood = captions.mood_of(mode, score.bpm)
    names = instrument_names(spec)
    rng = np.random.default_rng([spec.seed, sum(map(ord, spec.soundfont))])
    caption = captions.make_caption(rng, spec.genre, score.bpm, tonic, mode, names, mood, spec.dynamics)
    lead = [(p, s, e) for p, s, e in score.lead_notes if s < clip_seconds]
    return {
        "clip_id": spec.clip_id,
        "score_id": spec.score_id,
        "audio": wave.astype(np.float32),
        "caption": caption,
        "genre": spec.genre,
        "bpm": np.float32(score.bpm),
        "key": tonic,
        "mode": mode,
        "mood": mood,
        "dynamics": spec.dynamics,
        "instruments": names,
        "lead_instrument": spec.lead_instrument,
        "soundfont": spec.soundfont,
        "source": spec.source,
        "groove": spec.groove,
        "tune_id": spec.tune_id,
        "heldout": spec.heldout,
        "midi": score.midi,
        "lead_notes": {
            "pitch": np.array([p for p, _, _ in lead], np.int32),
            "start": np.array([s for _, s, _ in lead], np.float32),
            "end": np.array([min(e, clip_seconds) for _, _, e in lead], np.float32),
        },
    }


def render_example(spec: ClipSpec, sample_rate: int, clip_seconds: float):
    """For dataset builders: (clip_id, example with int16 audio), or (clip_id, reason) when the clip cannot be made.

    Module-level and free of tfds imports, so multiprocessing and Beam workers load it cheaply.
    """
    try:
        ex = render_clip(spec, sample_rate, clip_seconds)
    except sources.SourceError as e:
        return spec.clip_id, str(e)
    ex["audio"] = np.round(np.clip(ex["audio"], -1.0, 1.0) * 32767.0).astype(np.int16)
    return spec.clip_id, ex


def render_example_star(args):
    return render_example(*args)
