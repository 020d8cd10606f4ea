"""Offline tokenization of one clip by the three MusicLM tokenizers.

    toks = Tokenizers.from_spec(TokenizerSpec.from_env())      # or TokenizerSpec.tiny() for tests
    out = toks.tokenize(wave, sample_rate)
    # {"mulan_tokens": [Q_m], "semantic_tokens": [T_s], "acoustic_tokens": [T_a, Q_a]} (int32)
    # + "melody_tokens" [T_l, Q_l] when the spec names a melody embedder (melody conditioning, optional)
    toks.fingerprints()   # {"codec": ..., "semantic": ..., "mulan": ...}: which checkpoints made the tokens

A tokenizer is named by a checkpoint directory or by `random:<seed>`, a tiny random-initialised model (tests and
speed runs). Every tokenizer is fingerprinted by a hash of its parameters, so a token cache records exactly
what made it, and reading a cache with other tokenizers fails (see tasks/cache.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading

import numpy as np

from musiclm_jax.audio.io import check_samples
from musiclm_jax.melody.pitch import SOURCE, PitchMelody, notes_tokens
from musiclm_jax.quantization.fingerprint import array_digest, module_fingerprint

log = logging.getLogger("musiclm_jax.tokenizers")

ENV = {"codec": "MUSICLM_CODEC_DIR", "semantic": "MUSICLM_SEMANTIC_DIR", "mulan": "MUSICLM_MULAN_DIR"}
MELODY_ENV = "MUSICLM_MELODY_DIR"   # optional: the melody embedder of melody conditioning
RANDOM_PREFIX = "random:"


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Where each tokenizer comes from: a checkpoint directory, or `random:<seed>` (tiny, untrained). `melody`
    (optional, "" = none): a melody embedder with its quantizer (`musiclm-jax melody train` + `fit-quantizer`), or
    "pitch": the pitch-class melody stream (melody/pitch.py), taken from a clip's lead-line notes when it has them."""

    codec: str
    semantic: str
    mulan: str
    melody: str = ""

    @classmethod
    def tiny(cls, seed: int = 0, melody: bool = False) -> "TokenizerSpec":
        r = f"{RANDOM_PREFIX}{seed}"
        return cls(r, r, r, r if melody else "")

    @classmethod
    def from_env(cls) -> "TokenizerSpec":
        """From $MUSICLM_CODEC_DIR, $MUSICLM_SEMANTIC_DIR, $MUSICLM_MULAN_DIR (+ optional $MUSICLM_MELODY_DIR);
        Beam workers inherit them."""
        missing = [v for v in ENV.values() if not os.environ.get(v)]
        if missing:
            raise ValueError(f"set {', '.join(missing)} to tokenizer checkpoint directories (or to 'random:0' for "
                             "tiny random-initialised tokenizers)")
        return cls(**{k: os.environ[v] for k, v in ENV.items()}, melody=os.environ.get(MELODY_ENV, ""))

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(ENV) + (("melody",) if self.melody else ())

    def to_env(self) -> dict[str, str]:
        return {**{ENV[k]: getattr(self, k) for k in ENV}, **({MELODY_ENV: self.melody} if self.melody else {})}


def _seed(source: str) -> int | None:
    if not source.startswith(RANDOM_PREFIX):
        return None
    try:
        return int(source[len(RANDOM_PREFIX):])
    except ValueError:
        raise ValueError(f"bad tokenizer source {source!r}: use a checkpoint directory or 'random:<int seed>'")


# -- the three tokenizers, tiny random or from checkpoints ----------------------------------------------------------

def tiny_codec_config():
    from musiclm_jax.codec.model import CodecConfig
    # 16 kHz / hop 320 = 50 Hz frames like the paper's 24 kHz / 480; sizes match musiclm_jax.lm.stages.TINY.
    return CodecConfig(sample_rate=16000, channels=2, strides=(2, 4, 5, 8), embed_dim=8, num_levels=4,
                       codebook_size=16)


def tiny_mulan_config():
    from musiclm_jax.mulan.audio import AudioConfig
    from musiclm_jax.mulan.model import MuLanConfig
    from musiclm_jax.mulan.text import TextConfig
    audio = AudioConfig(sample_rate=16000, window_seconds=1.0, stride_seconds=1.0, n_fft=256, hop_length=256,
                        n_mels=16, stage_sizes=(1,), width=8, block="basic", groups=4)
    text = TextConfig(vocab_size=1000, hidden=16, layers=1, heads=2, mlp=32, max_length=16, pretrained=None)
    return MuLanConfig(audio=audio, text=text, embed_dim=16, rvq_levels=2, rvq_codebook_size=8)


def load_codec(source: str):
    """-> (SoundStream, fingerprint)."""
    from musiclm_jax.codec.api import SoundStream
    seed = _seed(source)
    codec = SoundStream.random(tiny_codec_config(), seed) if seed is not None else SoundStream.from_checkpoint(source)
    return codec, module_fingerprint(codec.model)


def load_semantic(source: str):
    """-> (SemanticTokenizer, fingerprint of w2v-BERT and k-means)."""
    from flax import nnx

    from musiclm_jax.semantic import w2v_bert as wb
    from musiclm_jax.semantic.api import SemanticTokenizer
    from musiclm_jax.quantization.kmeans import KMeans
    seed = _seed(source)
    if seed is None:
        tok = SemanticTokenizer.from_checkpoint(source)
    else:
        cfg = wb.preset("tiny", num_contrastive_layers=1, num_mlm_layers=1, embed_dim=16, mlp_dim=32)
        model = wb.W2vBert(cfg, nnx.Rngs(seed))
        centers = np.random.default_rng(seed).normal(size=(16, cfg.embed_dim)).astype(np.float32)
        fp = module_fingerprint(model)
        tok = SemanticTokenizer(model, KMeans(centers, fingerprint=fp), fp, chunk_frames=125, chunk_batch=2)
    if tok.kmeans is None:
        raise ValueError(f"semantic tokenizer {source} has no k-means: run `musiclm-jax semantic fit-kmeans`")
    return tok, f"{tok.fingerprint}-{tok.kmeans.fingerprint or 'kmeans'}-{_cache_digest(tok.kmeans.centers)}"


def load_mulan(source: str):
    """-> (MuLan with a quantizer, fingerprint of model and quantizer)."""
    from flax import nnx

    from musiclm_jax.quantization import embeddings as rvq_lib
    from musiclm_jax.mulan.api import MuLan
    from musiclm_jax.mulan.model import MuLanModel
    seed = _seed(source)
    if seed is None:
        mulan = MuLan.from_checkpoint(source)
    else:
        cfg = tiny_mulan_config()
        mulan = MuLan(MuLanModel(cfg, nnx.Rngs(seed)),
                      rvq_lib.new_rvq(cfg.rvq_levels, cfg.rvq_codebook_size, cfg.embed_dim, seed=seed), batch_size=8)
    if mulan.quantizer is None:
        raise ValueError(f"MuLan {source} has no quantizer: run `musiclm-jax mulan fit-quantizer` first")
    return mulan, f"{module_fingerprint(mulan.model)}-{_cache_digest(mulan.quantizer.codebook[...])}"


def load_melody(source: str):
    """-> (melody tokenizer, its fingerprint): the learned embedder with its quantizer (a `melody train`
    model_dir or `random:<seed>`), or "pitch": the pitch-class stream (melody/pitch.py; no weights)."""
    from musiclm_jax.melody.api import Melody
    if source == SOURCE:
        melody = PitchMelody()
        return melody, melody.token_fingerprint
    seed = _seed(source)
    melody = Melody.from_checkpoint(source) if seed is None else Melody.random(seed)
    return melody, melody.token_fingerprint   # raises without a quantizer (`melody fit-quantizer`)


def local_copy(source: str, root: str | None = None) -> str:
    """`source` itself, or for a bucket path (gs://..., any tf.io.gfile scheme) a local copy of that directory
    (made once per process and path, under $TMPDIR/musiclm_tokenizers): the loaders read local files, and a Beam
    worker on Dataflow sees the tokenizers only on the bucket."""
    from musiclm_jax.train.checkpoints import is_remote

    if not is_remote(source):   # also "random:<seed>" and the melody source "pitch"
        return source
    import hashlib
    import tempfile

    import tensorflow as tf

    root = root or os.path.join(tempfile.gettempdir(), "musiclm_tokenizers")
    dst = os.path.join(root, hashlib.sha256(source.encode()).hexdigest()[:16])
    if os.path.exists(os.path.join(dst, ".complete")):
        return dst
    if not tf.io.gfile.isdir(source):
        raise ValueError(f"tokenizer checkpoint {source} is not a directory this process can read: check the path "
                         "and this machine's access to the bucket")
    for folder, _, files in tf.io.gfile.walk(source):
        rel = os.path.relpath(folder, source) if folder != source else ""
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for name in files:
            tf.io.gfile.copy(f"{folder.rstrip('/')}/{name}", os.path.join(dst, rel, name), overwrite=True)
    open(os.path.join(dst, ".complete"), "w").close()
    return dst


def _cache_digest(a) -> str:
    return array_digest(a, chars=8, include_shape=False)


class Tokenizers:
    """The three tokenizers of one spec. Build with `get(spec)`: one instance per process and spec."""

    _cache: dict[TokenizerSpec, "Tokenizers"] = {}
    _lock = threading.Lock()

    def __init__(self, spec: TokenizerSpec):
        from flax import nnx

        self.spec = spec
        local = {part: local_copy(getattr(spec, part)) for part in spec.parts}  # a bucket's: read from a copy
        self.melody = None
        with nnx.use_eager_sharding(False):  # single-device inference: no mesh needed for the annotated params
            self.codec, fp_codec = load_codec(local["codec"])
            self.semantic, fp_semantic = load_semantic(local["semantic"])
            self.mulan, fp_mulan = load_mulan(local["mulan"])
            if spec.melody:
                self.melody, fp_melody = load_melody(local["melody"])
        self._fingerprints = {"codec": fp_codec, "semantic": fp_semantic, "mulan": fp_mulan}
        if self.melody is not None:
            self._fingerprints["melody"] = fp_melody
        self._call_lock = threading.Lock()  # tf.data may call from several threads; the jitted models are not reentrant

    @classmethod
    def get(cls, spec: TokenizerSpec) -> "Tokenizers":
        with cls._lock:
            if spec not in cls._cache:
                cls._cache[spec] = cls(spec)
            return cls._cache[spec]

    def fingerprints(self) -> dict[str, str]:
        return dict(self._fingerprints)

    def describe(self) -> dict:
        """What a cache records: sources, fingerprints, and the token geometry the stage layout needs."""
        out = {"sources": {k: getattr(self.spec, k) for k in self.spec.parts}, "fingerprints": self.fingerprints(),
               "acoustic": {"frame_rate": self.codec.frame_rate, "levels": self.codec.num_levels,
                            "codebook_size": self.codec.config.codebook_size},
               "semantic": {"frame_rate": self.semantic.cfg.frame_rate, "codebook_size": self.semantic.num_tokens},
               "mulan": {"levels": self.mulan.cfg.rvq_levels, "codebook_size": self.mulan.cfg.rvq_codebook_size}}
        if self.melody is not None:
            out["melody"] = {"frame_rate": self.melody.frame_rate, "levels": self.melody.cfg.rvq_levels,
                             "codebook_size": self.melody.cfg.rvq_codebook_size}
        return out

    def tokenize(self, wave, sample_rate: int, notes=None) -> dict[str, np.ndarray]:
        """One mono clip [samples] (float in [-1, 1]) -> its three token streams (int32), + melody_tokens
        [round(seconds * melody rate), Ql] with a melody tokenizer. `notes` (pitches, starts, ends) of the clip's
        melody (SynthCaps' lead line): the pitch-class stream reads them instead of tracking the mix.

        Semantic (25 Hz) and acoustic (50 Hz) streams are cut to the same duration, so frame i of one stream
        and frame i * ratio of the other cover the same time; the melody stream covers that duration too.
        """
        wave = np.asarray(wave, np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"a clip must be a non-empty mono waveform [samples], got shape {wave.shape}")
        check_samples(wave, "clip")
        with self._call_lock:
            acoustic = self.codec.encode(wave, sample_rate)[0]
            semantic = self.semantic.tokens(wave, sample_rate)[0]
            mulan = self.mulan.tokens_from_audio(wave, sample_rate)
        seconds = min(len(semantic) / self.semantic.cfg.frame_rate, len(acoustic) / self.codec.frame_rate)
        semantic = semantic[:int(round(seconds * self.semantic.cfg.frame_rate))]
        acoustic = acoustic[:int(round(seconds * self.codec.frame_rate))]
        out = {"mulan_tokens": np.asarray(mulan, np.int32), "semantic_tokens": np.asarray(semantic, np.int32),
               "acoustic_tokens": np.asarray(acoustic, np.int32)}
        if self.melody is not None:
            frames = max(1, int(round(seconds * self.melody.frame_rate)))
            if notes is not None and isinstance(self.melody, PitchMelody):
                out["melody_tokens"] = notes_tokens(*notes, frames, self.melody.frame_rate)
            else:
                with self._call_lock:
                    out["melody_tokens"] = np.asarray(self.melody.frame_tokens(wave, sample_rate, frames), np.int32)
        return out


def tokenize_clips(tokenizers: Tokenizers, clips, report: dict | None = None):
    """Yields (clip_id, tokens) for each (clip_id, wave, sample_rate); a clip that fails is logged, counted in
    `report["failed"]` and named in `report["failed_ids"]`, not fatal."""
    report = report if report is not None else {}
    report.setdefault("ok", 0), report.setdefault("failed", 0), report.setdefault("failed_ids", [])
    for clip_id, wave, sr in clips:
        try:
            tokens = tokenizers.tokenize(wave, sr)
        except Exception as e:  # noqa: BLE001 -- a bad clip must not stop a batch job
            log.warning("skipping clip %s: %s", clip_id, e)
            report["failed"] += 1
            report["failed_ids"].append(str(clip_id))
            continue
        report["ok"] += 1
        yield clip_id, tokens


def write_json(path: str, obj) -> None:
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True))
