"""MIDI sources for SynthCaps: mma grooves over chord progressions (+ a generated lead line) and music21 tunes.

Every function here is plain Python and deterministic given its arguments, so a clip can be rebuilt anywhere
(a multiprocessing worker, a Beam worker) from its spec alone.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import re
import subprocess
import tempfile

import mido
import numpy as np

from musiclm_jax.data.synthcaps import theory

MMA_BIN = "mma"
DRUM_CHANNEL = 9
TICKS_PER_BEAT = 480


class SourceError(RuntimeError):
    """A score could not be made (mma failed, a corpus tune would not parse). The builder skips and counts it."""


@dataclasses.dataclass(frozen=True)
class Groove:
    genre: str          # caption genre
    mma_name: str       # mma groove name (stdlib)
    bpm: tuple[int, int]
    beats: int          # quarter-note beats per bar (mma "Time")


# genre -> grooves. Tempo ranges are where the style sounds idiomatic and the drum pattern is steady.
GROOVES = [
    Groove("rock", "BasicRock", (100, 140), 4),
    Groove("rock", "60sRock", (110, 150), 4),
    Groove("soft rock", "SoftRock", (80, 110), 4),
    Groove("pop", "8Beat", (90, 130), 4),
    Groove("pop ballad", "PopBallad", (66, 84), 4),
    Groove("bossa nova", "BossaNova", (110, 140), 4),
    Groove("samba", "Samba", (90, 120), 4),
    Groove("salsa", "Salsa", (90, 120), 4),
    Groove("rhumba", "Rhumba", (90, 120), 4),
    Groove("tango", "Tango", (100, 130), 4),
    Groove("ska", "Ska", (100, 140), 4),
    Groove("funk", "BVFunk", (90, 115), 4),
    Groove("blues", "Blues", (70, 110), 4),
    Groove("country", "CountrySwing", (100, 140), 4),
    Groove("waltz", "Waltz", (110, 160), 3),
    Groove("polka", "Polka", (100, 130), 4),
    Groove("trance", "Trance", (120, 140), 4),
    Groove("rhythm and blues", "R&B", (80, 110), 4),
    Groove("bluegrass", "BlueGrass", (100, 140), 4),
    Groove("merengue", "Merengue", (110, 140), 4),
    Groove("jazz", "Swing", (110, 160), 4),
    Groove("zydeco", "Zydeco", (100, 140), 4),
    Groove("twist", "Twist", (110, 150), 4),
    Groove("folk", "Folk", (90, 120), 4),
]
GROOVES_BY_NAME = {g.mma_name: g for g in GROOVES}


@dataclasses.dataclass
class Score:
    """A finished MIDI score and the truth about it."""
    midi: bytes
    lead_notes: list[tuple[int, float, float]]  # (MIDI pitch, start s, end s) of the lead line, sorted by start
    bpm: float
    tonic: str
    mode: str
    seconds: float                              # musical length (before any release tail)


# --------------------------------------------------------------------------------------------- helpers

def _midi_bytes(mid: mido.MidiFile) -> bytes:
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def _abs_events(track) -> list[tuple[int, mido.Message]]:
    t, out = 0, []
    for msg in track:
        t += msg.time
        out.append((t, msg))
    return out


def _track_from_abs(events, name=None) -> mido.MidiTrack:
    """Absolute-time (tick, msg) list -> delta-time track (stable sort keeps note-offs before same-tick note-ons)."""
    track = mido.MidiTrack()
    if name:
        track.append(mido.MetaMessage("track_name", name=name, time=0))
    last = 0
    for t, msg in sorted(events, key=lambda e: (e[0], 0 if _is_off(e[1]) else 1)):
        track.append(msg.copy(time=t - last))
        last = t
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def _is_off(msg) -> bool:
    return msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0)


def _notes_track(notes, channel: int, program: int, velocity: int, name: str, spb: float) -> mido.MidiTrack:
    """notes: (pitch, start s, end s) -> a MIDI track at TICKS_PER_BEAT with seconds-per-beat `spb`."""
    ev = [(0, mido.Message("program_change", channel=channel, program=program))]
    for pitch, s, e in notes:
        on, off = round(s / spb * TICKS_PER_BEAT), round(e / spb * TICKS_PER_BEAT)
        ev.append((on, mido.Message("note_on", channel=channel, note=int(pitch), velocity=velocity)))
        ev.append((max(off, on + 1), mido.Message("note_off", channel=channel, note=int(pitch), velocity=0)))
    return _track_from_abs(ev, name)


def _scaled(vel: int, scale: float) -> int:
    return int(np.clip(round(vel * scale), 1, 127))


# ----------------------------------------------------------------------------------------------- grooves

def generate_melody(rng: np.random.Generator, chords: list[list[int]], tonic_pc: int, mode: str, beats: int,
                    low: int = 62, high: int = 81) -> list[tuple[int, float, float]]:
    """A lead line in beats: (pitch, start beat, end beat), chord tones on beat onsets, scale steps between."""
    rhythms = {4: [[1, 1, 1, 1], [2, 1, 1], [1, .5, .5, 2], [1.5, .5, 1, 1], [.5, .5, .5, .5, 2], [2, 2], [1, 1, 2],
                   [3, 1], [.5, .5, 1, .5, .5, 1]],
               3: [[1, 1, 1], [2, 1], [1, .5, .5, 1], [3], [.5, .5, 1, 1]]}[beats]
    scale = sorted({p for p in range(low, high + 1) if p % 12 in theory.scale_pcs(tonic_pc, mode)})
    prev = int(rng.choice([p for p in scale if 64 <= p <= 76 and p % 12 == tonic_pc] or scale))
    notes = []
    for bar, pcs in enumerate(chords):
        t = bar * beats
        for dur in rhythms[rng.integers(len(rhythms))]:
            on_beat = float(t).is_integer()
            if not on_beat and rng.random() < 0.1:   # an occasional off-beat rest
                t += dur
                continue
            if on_beat:
                cands = [p for p in scale if p % 12 in pcs and abs(p - prev) <= 7] or [p for p in scale if p % 12 in pcs]
            else:
                i = scale.index(min(scale, key=lambda p: abs(p - prev)))
                cands = [scale[j] for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < len(scale)]
            weights = np.array([1.0 / (1 + abs(p - prev)) for p in cands])
            prev = int(rng.choice(cands, p=weights / weights.sum()))
            notes.append((prev, t, t + dur * 0.95))
            t += dur
    return notes


def _mma_render(groove: str, bpm: float, chord_names: list[str], seed: int) -> mido.MidiFile:
    # mma humanises timing and velocity with Python's `random`: seed it (and string hashing) so a spec always
    # gives the same MIDI
    lines = [f"RndSeed {seed % 2**31}", f"Groove {groove}", f"Tempo {bpm:g}"]
    lines += [f"{i + 1} {c}" for i, c in enumerate(chord_names)]
    with tempfile.TemporaryDirectory(prefix="synthcaps_mma_") as tmp:
        src = os.path.join(tmp, "score.mma")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        try:
            proc = subprocess.run([MMA_BIN, "-f", "score.mid", "score.mma"], capture_output=True, text=True,
                                  timeout=60, cwd=tmp, env=dict(os.environ, PYTHONHASHSEED="0"))
        except FileNotFoundError:
            raise ValueError("the `mma` program is missing; run `make apt` (Debian package mma)") from None
        out = os.path.join(tmp, "score.mid")
        if proc.returncode != 0 or not os.path.exists(out):
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise SourceError(f"mma failed for groove {groove}: {msg[-1] if msg else 'no output'}")
        return mido.MidiFile(out)


def _role_of(track) -> str | None:
    channels = {m.channel for m in track if hasattr(m, "channel")}
    if not channels:
        return None
    if DRUM_CHANNEL in channels:
        return "drums"
    name = next((m.name for m in track if m.type == "track_name"), "").lower()
    return "bass" if name.startswith(("bass", "walk")) else "harmony"


def groove_score(groove: str, bpm: float, tonic: str, mode: str, progression: int, bars: int,
                 programs: dict[str, int], with_lead: bool, seed: int, velocity_scale: float = 1.0) -> Score:
    """mma groove over a chord progression, instruments set per role, optionally with a generated lead line."""
    g = GROOVES_BY_NAME[groove]
    tonic_pc = theory.pitch_class(tonic)
    prog = theory.PROGRESSIONS[mode][progression % len(theory.PROGRESSIONS[mode])]
    chords = [prog[i % len(prog)] for i in range(bars)]
    names = [theory.chord_symbol(tonic_pc, tonic, mode, d, q) for d, q in chords]
    mid = _mma_render(groove, bpm, names, seed)
    tpb = mid.ticks_per_beat
    out = mido.MidiFile(type=1, ticks_per_beat=tpb)
    used_channels = set()
    for track in mid.tracks:
        role = _role_of(track)
        events = []
        for t, msg in _abs_events(track):
            if msg.type in ("key_signature", "end_of_track", "track_name", "text"):  # text: mma's file name
                continue
            if msg.type == "program_change" and role in programs:
                msg = msg.copy(program=programs[role])
            elif msg.type == "note_on" and msg.velocity > 0:
                msg = msg.copy(velocity=_scaled(msg.velocity, velocity_scale))
            if hasattr(msg, "channel"):
                used_channels.add(msg.channel)
            events.append((t, msg))
        if role is None:  # the meta track: our key signature goes here
            events.append((0, mido.MetaMessage("key_signature", key=theory.mido_key(tonic, mode))))
        if role == "drums" and "drums" in programs and not any(m.type == "program_change" for _, m in events):
            events.append((0, mido.Message("program_change", channel=DRUM_CHANNEL, program=programs["drums"])))
        out.tracks.append(_track_from_abs(events, role or "meta"))
    spb = 60.0 / bpm
    lead = []
    if with_lead:
        rng = np.random.default_rng(seed)
        chord_pcs = [theory.chord_pcs(tonic_pc, d, q) for d, q in chords]
        beats_notes = generate_melody(rng, chord_pcs, tonic_pc, mode, g.beats)
        lead = [(p, s * spb, e * spb) for p, s, e in beats_notes]
        channel = min(set(range(16)) - used_channels - {DRUM_CHANNEL})
        track = _notes_track(lead, channel, programs["lead"], _scaled(96, velocity_scale), "lead", spb)
        # mma writes at its own resolution; rescale our track if it differs
        if tpb != TICKS_PER_BEAT:
            for msg in track:
                msg.time = round(msg.time * tpb / TICKS_PER_BEAT)
        out.tracks.append(track)
    return Score(_midi_bytes(out), lead, float(bpm), tonic, mode, bars * g.beats * spb)


# ------------------------------------------------------------------------------------------------- tunes

def _corpus_dir() -> str:
    import music21
    return os.path.join(os.path.dirname(music21.__file__), "corpus")


@functools.lru_cache(maxsize=None)
def tune_ids(kind: str) -> tuple[str, ...]:
    """All tune ids of a kind: 'chorale' -> 'bach/bwv66.6'; 'folk' -> 'essenFolksong/altdeu10#3'."""
    root = _corpus_dir()
    if kind == "chorale":
        names = sorted(f[:-4] for f in os.listdir(os.path.join(root, "bach"))
                       if f.endswith(".mxl") and re.fullmatch(r"bwv\d+\.\d+", f[:-4]))
        return tuple(f"bach/{n}" for n in names)
    if kind == "folk":
        ids = []
        folder = os.path.join(root, "essenFolksong")
        for f in sorted(os.listdir(folder)):
            if f.endswith(".abc") and not f.startswith("test"):
                with open(os.path.join(folder, f), encoding="latin-1") as fh:
                    nums = re.findall(r"^X:\s*(\d+)", fh.read(), flags=re.M)
                ids += [f"essenFolksong/{f[:-4]}#{n}" for n in nums]
        return tuple(ids)
    raise ValueError(f"unknown tune kind {kind!r}; use 'chorale' or 'folk'")


def _parse_tune(tune_id: str):
    from music21 import corpus
    path, _, num = tune_id.partition("#")
    try:
        s = corpus.parse(path, number=int(num)) if num else corpus.parse(path)
    except Exception as e:  # music21 raises many types for malformed files
        raise SourceError(f"music21 could not parse {tune_id}: {e}") from None
    if s is None or not getattr(s, "parts", None):
        raise SourceError(f"{tune_id} has no parts")
    return s


def _part_notes(part) -> list[tuple[int, float, float]]:
    """(pitch, start ql, end ql); chords become their top note; grace notes dropped."""
    out = []
    for n in part.stripTies().flatten().notes:
        ql = float(n.quarterLength)
        if ql <= 0:
            continue
        pitch = max(p.midi for p in n.pitches)
        start = float(n.getOffsetInHierarchy(part))
        out.append((pitch, start, start + ql))
    return sorted(out, key=lambda x: x[1])


def _simple_accompaniment(melody, tonic_pc: int, mode: str, bar_ql: float, length: float):
    """Per bar choose I, IV or V whose tones cover most of the melody there; block chord + bass root."""
    cands = [(0, "" if mode == "major" else "m"), (5, "" if mode == "major" else "m"), (7, "")]
    harmony, bass = [], []
    t = 0.0
    while t < length - 1e-6:
        weight = np.zeros(12)
        for p, s, e in melody:
            ov = min(e, t + bar_ql) - max(s, t)
            if ov > 0:
                weight[p % 12] += ov
        scores = [sum(weight[pc] for pc in theory.chord_pcs(tonic_pc, d, q)) for d, q in cands]
        d, q = cands[int(np.argmax(scores))]
        root = 48 + (tonic_pc + d) % 12  # C3..B3
        end = min(t + bar_ql, length)
        harmony += [(root + 12 + iv, t, end) for iv in theory.CHORD_TONES[q]]
        bass.append((root - 12, t, end))
        t += bar_ql
    return harmony, bass


def tune_score(tune_id: str, bpm: float, tonic: str, with_accompaniment: bool, programs: dict[str, int],
               seconds: float, velocity_scale: float = 1.0) -> Score:
    """A corpus tune looped to fill `seconds`, transposed so the key of what is heard has tonic `tonic`.

    The key (and so the mode) is estimated over the notes inside the clip, not the whole piece: chorales
    modulate, and a 10 s clip may never reach the home key. Chorales keep their own lower voices as the
    accompaniment; folk tunes get a simple I/IV/V one.
    """
    s = _parse_tune(tune_id)
    parts = list(s.parts)
    melody = _part_notes(parts[0])
    if not melody:
        raise SourceError(f"{tune_id} has an empty melody")
    length = max(e for _, _, e in melody)
    spb = 60.0 / bpm
    total_beats = seconds / spb

    def loop(notes):  # repeat the tune until the clip is full; drop notes that start after it (beats)
        out, off = [], 0.0
        while off < total_beats:
            out += [(p, a + off, min(b + off, total_beats)) for p, a, b in notes if a + off < total_beats]
            off += length
        return out

    harmony, bass = [], []
    if with_accompaniment and len(parts) >= 3:  # chorale: inner voices -> harmony, lowest voice -> bass
        for part in parts[1:-1]:
            harmony += _part_notes(part)
        bass = _part_notes(parts[-1])
    hist = np.zeros(12)
    for p, a, b in loop(melody + harmony + bass):
        hist[p % 12] += b - a
    src_pc, mode = theory.estimate_key(hist)
    target = theory.pitch_class(tonic)
    tonic = theory.tonic_name(target, mode)
    shift = (target - src_pc + 6) % 12 - 6
    # keep the lead in a comfortable register: move by octaves so its median sits near E5
    octave = 12 * round((76 - (np.median([p for p, _, _ in melody]) + shift)) / 12)
    melody = [(p + shift + octave, a, b) for p, a, b in melody]
    harmony = [(p + shift, a, b) for p, a, b in harmony]
    bass = [(p + shift, a, b) for p, a, b in bass]
    if with_accompaniment and len(parts) < 3:
        ts = s.recurse().getElementsByClass("TimeSignature").first()
        bar_ql = float(ts.barDuration.quarterLength) if ts is not None else 4.0
        harmony, bass = _simple_accompaniment(melody, target, mode, bar_ql, length)

    def secs(notes):
        return [(p, a * spb, b * spb) for p, a, b in loop(notes)]

    lead = secs(melody)
    out = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    meta = [(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))),
            (0, mido.MetaMessage("key_signature", key=theory.mido_key(tonic, mode)))]
    out.tracks.append(_track_from_abs(meta, "meta"))
    out.tracks.append(_notes_track(lead, 0, programs["lead"], _scaled(96, velocity_scale), "lead", spb))
    if harmony:
        out.tracks.append(_notes_track(secs(harmony), 1, programs["harmony"], _scaled(64, velocity_scale), "harmony", spb))
    if bass:
        out.tracks.append(_notes_track(secs(bass), 2, programs["bass"], _scaled(80, velocity_scale), "bass", spb))
    return Score(_midi_bytes(out), lead, float(bpm), tonic, mode, seconds)


def midi_pitch_histogram(midi: bytes) -> np.ndarray:
    """Duration-weighted pitch-class histogram of the pitched (non-drum) notes of a MIDI file."""
    mid = mido.MidiFile(file=io.BytesIO(midi))
    hist = np.zeros(12)
    on: dict[tuple[int, int], float] = {}
    t = 0.0
    for msg in mid:  # iterating a MidiFile yields messages with delta times in seconds
        t += msg.time
        if not hasattr(msg, "note") or msg.channel == DRUM_CHANNEL:
            continue
        if msg.type == "note_on" and msg.velocity > 0:
            on[(msg.channel, msg.note)] = t
        elif _is_off(msg) and (msg.channel, msg.note) in on:
            hist[msg.note % 12] += t - on.pop((msg.channel, msg.note))
    return hist
