"""Melody renditions: one SynthCaps lead line in contrasting sounds, for the melody embedder's triplets.

A clip's `lead_notes` (MIDI pitch, start s, end s) is rendered alone, through whistle-, ocarina-, flute-, recorder-
and voice-like General MIDI programs (FluidSynth, either soundfont) and through a plain synthesized sine with a
little vibrato and noise (the nearest thing to a hummed recording that needs no microphone), each with a random
detuning of up to +-30 cents, level and timing jitter. Same melody, different sound: a positive pair; the same line
transposed by 1-6 semitones, or another clip's line: a negative.

    wave = render_melody(notes, "sine", sample_rate=16000, seconds=8.0, rng=np.random.default_rng(0))
    anchor, positive, negative = melody_triplet(notes, 16000, 8.0, rng)
"""
from __future__ import annotations

import mido
import numpy as np

from musiclm_jax.audio import io as audio_io
from musiclm_jax.data.synthcaps import sources

# General MIDI programs (0-based) of lead-line timbres a hummed or whistled tune resembles.
GM_TIMBRES = {"whistle": 78, "ocarina": 79, "flute": 73, "recorder": 74, "choir": 52, "voice": 53}
TIMBRES = tuple(GM_TIMBRES) + ("sine",)
MAX_DETUNE_CENTS = 30.0


def check_notes(notes) -> list[tuple[int, float, float]]:
    """(pitch, start, end) rows, sorted by start; one-line errors for an empty or malformed line."""
    rows = [(int(p), float(s), float(e)) for p, s, e in notes]
    if not rows:
        raise ValueError("the melody has no notes: use a clip with a lead line (SynthCaps `lead_notes`)")
    for p, s, e in rows:
        if not (0 <= p <= 127 and 0 <= s < e):
            raise ValueError(f"bad melody note (pitch {p}, start {s}, end {e}): pitch 0-127 and start < end")
    return sorted(rows, key=lambda r: r[1])


def notes_of(clip: dict) -> list[tuple[int, float, float]]:
    """The lead line of a SynthCaps example or clip dict (its `lead_notes` feature)."""
    lead = clip.get("lead_notes")
    if lead is None:
        raise ValueError("the clip has no lead_notes: melody renditions need SynthCaps examples")
    return list(zip(np.asarray(lead["pitch"]).tolist(), np.asarray(lead["start"]).tolist(),
                    np.asarray(lead["end"]).tolist()))


def transpose(notes, semitones: int) -> list[tuple[int, float, float]]:
    return [(int(np.clip(p + semitones, 0, 127)), s, e) for p, s, e in notes]


def _jitter(notes, rng: np.random.Generator, seconds: float) -> list[tuple[int, float, float]]:
    """Each onset and offset moved by up to 15 ms, notes kept inside the clip."""
    out = []
    for p, s, e in notes:
        s2 = max(0.0, s + rng.uniform(-0.015, 0.015))
        e2 = min(seconds, max(s2 + 0.03, e + rng.uniform(-0.015, 0.015)))
        if s2 < seconds:
            out.append((p, s2, e2))
    return out


def _midi(notes, program: int, velocity: int, cents: float) -> bytes:
    """A one-track MIDI file at 120 BPM (one beat = 0.5 s) with a pitch bend of `cents` (bend range 2 semitones)."""
    tpb, spb = sources.TICKS_PER_BEAT, 0.5
    events = [(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120))),
              (0, mido.Message("program_change", channel=0, program=program)),
              (0, mido.Message("pitchwheel", channel=0, pitch=int(np.clip(cents / 200.0 * 8191, -8192, 8191))))]
    for p, s, e in notes:
        on, off = round(s / spb * tpb), round(e / spb * tpb)
        events.append((on, mido.Message("note_on", channel=0, note=int(p), velocity=velocity)))
        events.append((max(off, on + 1), mido.Message("note_off", channel=0, note=int(p), velocity=0)))
    mid = mido.MidiFile(type=0, ticks_per_beat=tpb)
    mid.tracks.append(sources._track_from_abs(events))
    return sources._midi_bytes(mid)


def _sine(notes, sample_rate: int, n: int, cents: float, rng: np.random.Generator) -> np.ndarray:
    """A hum-like line: sine + a weak second harmonic, 5-6 Hz vibrato, 20 ms attack/release, faint noise."""
    t = np.arange(n) / sample_rate
    freq = np.zeros(n)
    amp = np.zeros(n)
    for p, s, e in notes:
        a, b = int(s * sample_rate), min(n, int(e * sample_rate))
        if b <= a:
            continue
        freq[a:b] = 440.0 * 2.0 ** ((p - 69 + cents / 100.0) / 12.0)
        ramp = min(int(0.02 * sample_rate), (b - a) // 2)
        env = np.ones(b - a)
        if ramp:
            env[:ramp] = np.linspace(0, 1, ramp)
            env[-ramp:] = np.linspace(1, 0, ramp)
        amp[a:b] = env
    vibrato = 1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(5.0, 6.0) * t)
    phase = 2 * np.pi * np.cumsum(freq * vibrato) / sample_rate
    wave = amp * (np.sin(phase) + 0.25 * np.sin(2 * phase))
    return wave + rng.normal(0, 0.003, n)


def render_melody(notes, timbre: str, sample_rate: int, seconds: float, rng: np.random.Generator,
                  soundfont: str = "fluidr3") -> np.ndarray:
    """The line in one timbre (`TIMBRES`), float32 [round(seconds * sample_rate)], at a random level of -28..-16 dBFS."""
    if timbre not in TIMBRES:
        raise ValueError(f"unknown melody timbre {timbre!r}: choose one of {TIMBRES}")
    from musiclm_jax.data.synthcaps.render import fluidsynth_render

    n = int(round(seconds * sample_rate))
    line = _jitter(check_notes(notes), rng, seconds)
    cents = rng.uniform(-MAX_DETUNE_CENTS, MAX_DETUNE_CENTS)
    if timbre == "sine":
        wave = _sine(line, sample_rate, n, cents, rng)
    else:
        wave = fluidsynth_render(_midi(line, GM_TIMBRES[timbre], int(rng.integers(70, 120)), cents), soundfont,
                                 sample_rate)
    wave = wave[:n] if wave.shape[0] >= n else np.pad(wave, (0, n - wave.shape[0]))
    if audio_io.is_silent(wave):
        raise sources.SourceError(f"the melody rendered silent in timbre {timbre!r}")
    return audio_io.normalize_loudness(wave, rng.uniform(-28.0, -16.0)).astype(np.float32)


def melody_triplet(notes, sample_rate: int, seconds: float, rng: np.random.Generator,
                   other_notes=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, positive, negative): the line in two different timbres, and either the line transposed by 1-6
    semitones in a third timbre or (`other_notes` given, half the time) another line."""
    a, b, c = rng.choice(len(TIMBRES), 3, replace=False)
    anchor = render_melody(notes, TIMBRES[a], sample_rate, seconds, rng)
    positive = render_melody(notes, TIMBRES[b], sample_rate, seconds, rng)
    if other_notes is not None and rng.uniform() < 0.5:
        negative_notes = other_notes
    else:
        negative_notes = transpose(notes, int(rng.choice([-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6])))
    negative = render_melody(negative_notes, TIMBRES[c], sample_rate, seconds, rng)
    return anchor, positive, negative
