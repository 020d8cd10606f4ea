"""SeqIO preprocessors of the stage tasks.

Before the cache (`CacheDatasetPlaceholder`): `tokenize` runs the three tokenizers on each clip.
After it: `drop_failed`, `aligned_crop`
(one random window cut from every token stream at the same seconds) and `to_stage` (the (inputs, targets) of a
stage, from musiclm_jax/lm/stages.py, the one token layout). `check_tokenizers` (a cache made by other
checkpoints is refused) is not a preprocessor: `tasks.registry.StageTask` runs it when a read uses the cache.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os

import gin
import numpy as np
import seqio
import tensorflow as tf

from musiclm_jax import tokenizers as tok_lib

log = logging.getLogger("tasks")
TOKENIZERS_FILE = "tokenizers.json"
TOKEN_FEATURES = ("mulan_tokens", "semantic_tokens", "acoustic_tokens")
ERROR_KEY = "tokenize_error"
ID_KEYS = ("clip_id", "id")  # synthcaps, audio_captions

# Paper crop lengths per stage (seconds); gin: `aligned_crop.crop_seconds`, or per task at registration.
PAPER_CROP_SECONDS = {"semantic": 30.0, "coarse": 10.0, "fine": 3.0}


@gin.configurable
def tokenizer_spec(codec: str | None = None, semantic: str | None = None, mulan: str | None = None,
                   melody: str | None = None) -> tok_lib.TokenizerSpec:
    """The configured tokenizers: gin bindings, else $MUSICLM_CODEC_DIR / _SEMANTIC_DIR / _MULAN_DIR (and the
    optional melody embedder: `melody`, else $MUSICLM_MELODY_DIR, else none)."""
    if melody is None:
        melody = os.environ.get(tok_lib.MELODY_ENV, "")
    if codec and semantic and mulan:
        return tok_lib.TokenizerSpec(codec, semantic, mulan, melody)
    env = tok_lib.TokenizerSpec.from_env()
    return tok_lib.TokenizerSpec(codec or env.codec, semantic or env.semantic, mulan or env.mulan, melody)


# What the cache job's driver recorded, per tokenizer spec: {spec env JSON: fingerprints}. Set on every Beam worker by
# `configure_worker` (seqio's setup_fn); `tokenize` then refuses to run tokenizers that differ from the driver's.
_JOB_FINGERPRINTS: dict[str, dict] = {}


def configure_worker(spec_env: dict[str, str], fingerprints: dict[str, str]) -> None:
    """Run by each Beam worker before it builds the tasks: the job's tokenizer checkpoints (a worker on Dataflow or
    Flink has neither the driver's gin config nor its environment) and the fingerprints the driver recorded."""
    os.environ.update(spec_env)
    _JOB_FINGERPRINTS[json.dumps(spec_env, sort_keys=True)] = dict(fingerprints)


def check_worker_tokenizers(spec: tok_lib.TokenizerSpec, fingerprints: dict[str, str]) -> None:
    """Raises when this worker loaded other tokenizers than the cache job's driver did for the same `spec`."""
    expected = _JOB_FINGERPRINTS.get(json.dumps(spec.to_env(), sort_keys=True))
    diff = [k for k in expected or {} if fingerprints.get(k) != expected[k]]
    if diff:
        raise ValueError(f"this worker's tokenizers are not the job's ({', '.join(f'{k}: worker {fingerprints.get(k)} '
                         f'vs job {expected[k]}' for k in diff)}): every worker must read the same checkpoints (put "
                         "them on storage all workers see, e.g. gs://, and point tokenizer_spec there)")


def _audio_sample_rate(task_name: str, audio_key: str) -> int:
    source = seqio.get_mixture_or_task(task_name).source
    return int(source.tfds_dataset.builder.info.features[audio_key].sample_rate)


def tokenize(ds: tf.data.Dataset, *, task_name: str, audio_key: str = "audio",
             keep: tuple[str, ...] = ()) -> tf.data.Dataset:
    """Clip -> {mulan_tokens [Qm], semantic_tokens [Ts], acoustic_tokens [Ta, Qa], tokenize_error, *keep}, +
    melody_tokens [Tl, Ql] when the spec names a melody tokenizer (the pitch-class one reads the clip's
    `lead_notes` when it has some: a SynthCaps example without a lead line gets "no melody").

    A clip that fails keeps empty tokens and its error message (counted and named by the cache job)."""
    sample_rate = _audio_sample_rate(task_name, audio_key)
    spec = tokenizer_spec()
    toks = tok_lib.Tokenizers.get(spec)
    check_worker_tokenizers(spec, toks.fingerprints())
    melody = toks.melody is not None

    def run(audio, clip_id, has_notes, pitches, starts, ends):
        wave = audio.astype(np.float32) / (32768.0 if audio.dtype == np.int16 else 1.0)
        try:
            out = toks.tokenize(wave, sample_rate, notes=(pitches, starts, ends) if has_notes else None)
            mel = out["melody_tokens"] if melody else np.zeros((0, 0), np.int32)
            return out["mulan_tokens"], out["semantic_tokens"], out["acoustic_tokens"], mel, b""
        except Exception as e:  # noqa: BLE001 -- one bad clip must not stop the job
            name = clip_id.decode(errors="replace")
            log.warning("tokenize: skipping clip %s: %s", name, e)
            try:  # a Beam counter when running inside a Beam worker
                import apache_beam as beam
                beam.metrics.Metrics.counter("musiclm_tokenize", "failed_clips").inc()
            except Exception:  # noqa: BLE001
                pass
            q, ql = toks.codec.num_levels, toks.melody.cfg.rvq_levels if melody else 0
            return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, q), np.int32),
                    np.zeros((0, ql), np.int32), f"{name}: {e}".encode())

    def fn(ex):
        clip_id = next((ex[k] for k in ID_KEYS if k in ex), tf.constant(""))
        has_notes = "lead_notes" in ex   # the pitch-class melody reads a score's lead line (none: no melody)
        notes = ex["lead_notes"] if has_notes else {"pitch": tf.zeros([0], tf.int32), "start": tf.zeros([0]),
                                                    "end": tf.zeros([0])}
        m, s, a, mel, err = tf.numpy_function(run, [ex[audio_key], clip_id, has_notes, notes["pitch"],
                                                    notes["start"], notes["end"]],
                                              [tf.int32, tf.int32, tf.int32, tf.int32, tf.string], stateful=False)
        m.set_shape([None]), s.set_shape([None]), a.set_shape([None, None]), mel.set_shape([None, None])
        err.set_shape([])
        out = {"mulan_tokens": m, "semantic_tokens": s, "acoustic_tokens": a, ERROR_KEY: err,
               "clip_id": clip_id}
        if melody:
            out["melody_tokens"] = mel
        out.update({k: ex[k] for k in keep if k in ex})
        return out

    return ds.map(fn, num_parallel_calls=1)  # tokenizers hold a lock: parallel calls would only queue


def speed_variants(ds: tf.data.Dataset, *, semitones: tuple[int, ...], audio_key: str = "audio") -> tf.data.Dataset:
    """Every clip, followed (as a second pass over the data) by one copy per k of `semitones` played 2^(k/12)
    times faster, as a tape at another speed: key +k semitones, tempo x 2^(k/12), length / 2^(k/12). A copy's
    id gets "@+k"/"@-k", and its stated bpm, key and caption are restated (`captions.restate`) when the example
    has them. Before `tokenize`: each copy gets the tokens of its own audio, MuLan's included, so a stage LM
    trained on them sees the same music in several keys and tempi with conditioning that says which, and has to
    read it (the issue-16 augmentation; MuLan's transposed twins do the same for MuLan). Training data only."""
    from musiclm_jax.audio.io import change_speed
    from musiclm_jax.data.synthcaps import captions, theory

    if any(int(k) != k or k == 0 for k in semitones):
        raise ValueError(f"speed_variants: semitones must be non-zero integers, got {semitones}")

    def variant(k: int):
        ratio = 2.0 ** (k / 12.0)

        def resample(audio):
            wave = change_speed(audio.astype(np.float32), ratio)
            return np.clip(np.round(wave), -32768, 32767).astype(audio.dtype) if audio.dtype == np.int16 \
                else wave.astype(audio.dtype)

        def restate(caption, key, mode, bpm):
            caption, key, mode = (x.decode() for x in (caption, key, mode))
            if key and mode:
                key = theory.tonic_name(theory.pitch_class(key) + k, mode)
            return (captions.restate(caption, semitones=k, bpm=float(bpm) * ratio).encode(), key.encode(),
                    np.float32(bpm * ratio))

        def fn(ex):
            ex = dict(ex)
            audio = tf.numpy_function(resample, [ex[audio_key]], ex[audio_key].dtype, stateful=False)
            ex[audio_key] = tf.ensure_shape(audio, [None])
            for id_key in ID_KEYS:
                if id_key in ex:
                    ex[id_key] = tf.strings.join([ex[id_key], f"@{k:+d}"])
            if "lead_notes" in ex:   # the same notes k semitones up, ratio times faster
                notes = dict(ex["lead_notes"])
                notes["pitch"] = notes["pitch"] + k
                notes["start"], notes["end"] = notes["start"] / ratio, notes["end"] / ratio
                ex["lead_notes"] = notes
            if all(name in ex for name in ("caption", "key", "mode", "bpm")):
                cap, key, bpm = tf.numpy_function(restate, [ex["caption"], ex["key"], ex["mode"], ex["bpm"]],
                                                  [tf.string, tf.string, tf.float32], stateful=False)
                ex["caption"], ex["key"], ex["bpm"] = (tf.ensure_shape(cap, []), tf.ensure_shape(key, []),
                                                       tf.ensure_shape(bpm, []))
            return ex
        return fn

    out = ds   # concatenate relaxes the audio's static length: the copies' lengths differ
    for k in semitones:
        out = out.concatenate(ds.map(variant(int(k))))
    return out


def read_cache_record(task_name: str) -> dict | None:
    """The tokenizer record stored with a task's cache, or None when the task is not cached."""
    task = seqio.get_mixture_or_task(task_name)
    try:
        cache_dir = task.cache_dir
    except (ValueError, AssertionError):
        return None
    path = os.path.join(cache_dir, TOKENIZERS_FILE) if cache_dir else None
    if not path or not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def check_geometry(record: dict, sizes, semantic_rate: float, acoustic_rate: float, where: str,
                   melody_rate: float | None = None) -> None:
    """Raises when the tokenizers' sizes or frame rates disagree with what the task was registered with."""
    if sizes.has_melody and "melody" not in record:
        raise ValueError(f"the task's token sizes want melody tokens but {where} has none: tokenize with a melody "
                         "embedder (tokenizer_spec.melody or $MUSICLM_MELODY_DIR)")
    want = {"mulan levels": (record["mulan"]["levels"], sizes.mulan_levels),
            "mulan codes": (record["mulan"]["codebook_size"], sizes.mulan_codes),
            "semantic codes": (record["semantic"]["codebook_size"], sizes.semantic_codes),
            "codec levels": (record["acoustic"]["levels"], sizes.codec_levels),
            "codec codes": (record["acoustic"]["codebook_size"], sizes.codec_codes),
            "semantic frame rate": (record["semantic"]["frame_rate"], semantic_rate),
            "acoustic frame rate": (record["acoustic"]["frame_rate"], acoustic_rate)}
    if sizes.has_melody:
        want.update({"melody levels": (record["melody"]["levels"], sizes.melody_levels),
                     "melody codes": (record["melody"]["codebook_size"], sizes.melody_codes)})
        if melody_rate is not None:
            want["melody frame rate"] = (record["melody"]["frame_rate"], melody_rate)
    # The codec may have more levels than the layout uses: its first `codec_levels` are kept (quantizer dropout
    # trained every prefix to decode), so one token cache serves several bitrates.
    bad = [f"{k} {got} vs {exp}" for k, (got, exp) in want.items()
           if (float(got) < float(exp) if k == "codec levels" else float(got) != float(exp))]
    if bad:
        raise ValueError(f"tokenizers of {where} do not fit the task's token layout ({'; '.join(bad)}): register "
                         "the task with TokenSizes and frame rates matching the tokenizers")


def check_record(record: dict, configured: dict, where: str) -> None:
    """Raises a one-line ValueError when a cache was made by other tokenizers than the configured ones."""
    diff = [k for k in configured["fingerprints"] if record["fingerprints"].get(k) != configured["fingerprints"][k]]
    if diff:
        parts = ", ".join(f"{k}: cache {record['fingerprints'].get(k)} ({record['sources'].get(k)}) vs configured "
                          f"{configured['fingerprints'][k]} ({configured['sources'][k]})" for k in diff)
        raise ValueError(f"token cache {where} was made by other tokenizer checkpoints ({parts}): configure the "
                         "same checkpoints, or re-tokenize with `python -m musiclm_jax.tasks.cache --overwrite`")


def check_tokenizers(task_name: str, *, sizes, semantic_rate: float, acoustic_rate: float,
                     melody_rate: float | None = None) -> None:
    """Refuses to read a cache whose tokenizer fingerprints differ from the configured tokenizers', or whose
    token sizes and rates do not fit the task's layout. Called by `StageTask.get_dataset` only when it reads the
    cache (`use_cached=True`): an on-the-fly read tokenizes with the configured tokenizers and needs no record."""
    record = read_cache_record(task_name)
    if record is not None:
        where = f"the cache of task {task_name!r}"
        check_geometry(record, sizes, semantic_rate, acoustic_rate, where, melody_rate)
        configured = tok_lib.Tokenizers.get(tokenizer_spec()).describe()
        check_record(record, configured, where)


def drop_failed(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Drops clips that failed to tokenize (the cache job named them) and the error field."""
    ds = ds.filter(lambda ex: tf.equal(tf.strings.length(ex[ERROR_KEY]), 0))
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != ERROR_KEY})


def crop_grid(semantic_rate: float, acoustic_rate: float) -> tuple[float, int, int]:
    """(grid rate in Hz, semantic frames per grid step, acoustic frames per grid step): crops start and end on
    this grid, so every stream is cut at exactly the same second."""
    if semantic_rate != int(semantic_rate) or acoustic_rate != int(acoustic_rate) or min(semantic_rate,
                                                                                          acoustic_rate) < 1:
        raise ValueError(f"aligned crops need integer frame rates >= 1, got semantic {semantic_rate} Hz and "
                         f"acoustic {acoustic_rate} Hz")
    g = math.gcd(int(semantic_rate), int(acoustic_rate))
    return float(g), int(semantic_rate) // g, int(acoustic_rate) // g


@gin.configurable
def stage_crop_seconds(semantic: float = 30.0, coarse: float = 10.0, fine: float = 3.0) -> dict[str, float]:
    """Crop length per stage in seconds (paper: 30 / 10 / 3). Read when a dataset is built, after gin parsing."""
    return {"semantic": semantic, "coarse": coarse, "fine": fine}


def aligned_crop(ds: tf.data.Dataset, *, stage: str, crop_seconds: float | None = None,
                 semantic_rate: float = 25.0, acoustic_rate: float = 50.0,
                 melody_rate: float = 2.0) -> tf.data.Dataset:
    """One random window of the stage's crop length from all token streams at the same seconds (the whole clip
    if shorter). Deterministic given seqio's seed: the same seed gives the same crops. A melody stream (a
    `melody_rate` Hz stream, not on the grid) is cut at the nearest melody frames of the same seconds."""
    crop_seconds = stage_crop_seconds()[stage] if crop_seconds is None else crop_seconds
    if crop_seconds <= 0:
        raise ValueError(f"crop_seconds must be > 0, got {crop_seconds}")
    g, ks, ka = crop_grid(semantic_rate, acoustic_rate)
    crop = max(1, int(round(crop_seconds * g)))

    @seqio.map_over_dataset(num_seeds=1)
    def fn(ex, seed):
        steps = tf.minimum(tf.shape(ex["semantic_tokens"])[0] // ks, tf.shape(ex["acoustic_tokens"])[0] // ka)
        length = tf.minimum(steps, crop)
        start = tf.random.stateless_uniform([], seed, 0, steps - length + 1, dtype=tf.int32)
        out = dict(ex)
        out["semantic_tokens"] = ex["semantic_tokens"][start * ks:(start + length) * ks]
        out["acoustic_tokens"] = ex["acoustic_tokens"][start * ka:(start + length) * ka]
        out["crop_start_seconds"] = tf.cast(start, tf.float32) / g
        if "melody_tokens" in ex:
            m0 = tf.cast(tf.math.floor(tf.cast(start, tf.float32) / g * melody_rate + 0.5), tf.int32)
            n = tf.maximum(1, tf.cast(tf.math.round(tf.cast(length, tf.float32) / g * melody_rate), tf.int32))
            m0 = tf.maximum(0, tf.minimum(m0, tf.shape(ex["melody_tokens"])[0] - n))
            out["melody_tokens"] = ex["melody_tokens"][m0:m0 + n]
        return out

    return fn(ds)  # seeds come from seqio's seed manager (the `seed` of get_dataset)


def to_stage(ds: tf.data.Dataset, *, stage: str, sizes, semantic_rate: float = 25.0) -> tf.data.Dataset:
    """Raw token streams -> {"inputs", "targets"} of `stage` (layout from musiclm_jax/lm/stages.py). A stage with
    tempo conditioning reads the clip's stated `bpm` (beat 0 at 0 s, as SynthCaps renders) and the crop's start;
    a clip without `bpm` gets "unknown tempo". A stage with key conditioning reads the clip's `key` (tonic) and
    `mode`; a clip without them gets "unknown key"."""
    from musiclm_jax.lm.stages import StageLayout, tempo_of
    from musiclm_jax.musical_key import key_index

    layout = StageLayout(stage, sizes)

    def build(mulan, semantic, acoustic, melody, bpm, start, tonic, mode):
        acoustic = acoustic[:, :sizes.codec_levels]   # a cache of a codec with more levels: its first ones
        tempo = tempo_of(bpm, start, semantic_rate) if layout.has_beat else None
        key = None
        if layout.has_key:
            key = np.asarray([key_index(tonic.decode(), mode.decode()) if tonic and mode else -1])
        inputs, targets = layout.build(mulan=mulan[None], semantic=semantic[None], acoustic=acoustic[None],
                                       melody=melody[None] if layout.has_melody else None, tempo=tempo, key=key)
        return inputs[0].astype(np.int32), targets[0].astype(np.int32)

    def fn(ex):
        if layout.has_melody and "melody_tokens" not in ex:
            raise ValueError("the task's token sizes want melody tokens but its clips have none: tokenize with a "
                             "melody embedder (tokenizer_spec.melody or $MUSICLM_MELODY_DIR)")
        melody = ex["melody_tokens"] if layout.has_melody else tf.zeros((0, 0), tf.int32)
        bpm = tf.cast(ex["bpm"], tf.float32) if "bpm" in ex else tf.constant(0.0)
        start = ex.get("crop_start_seconds", tf.constant(0.0))
        tonic, mode = (ex.get(k, tf.constant("")) for k in ("key", "mode"))
        inputs, targets = tf.numpy_function(build, [ex["mulan_tokens"], ex["semantic_tokens"],
                                                    ex["acoustic_tokens"], melody, bpm, start, tonic, mode],
                                            [tf.int32, tf.int32], stateful=False)
        inputs.set_shape([None]), targets.set_shape([None])
        keep = {k: ex[k] for k in ("clip_id", "crop_start_seconds") if k in ex}
        return {"inputs": inputs, "targets": targets, **keep}

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def partial(fn, **kwargs):
    """functools.partial that keeps the name (seqio logs preprocessor names)."""
    p = functools.partial(fn, **kwargs)
    p.__name__ = fn.__name__
    return p
