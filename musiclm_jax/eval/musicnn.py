"""musicnn (Pons & Serra, 2019) music tagger in JAX, reading the TF1 checkpoints that the `musicnn` package ships.

The `musicnn==0.1.0` wheel (installed by `make`, without dependencies: its code wants TF1-era numpy and
`tf.compat.v1.layers`, gone with Keras 3) holds the trained weights; this module reads them with a small pure-python
reader of TensorFlow's checkpoint format (no TensorFlow import, no `import musicnn`) and runs the same network in JAX:

    input      16 kHz mono; |STFT|^2 (n_fft 512, hop 256, periodic Hann, centred frames, reflect padding as in the
               librosa 0.7 that musicnn used), librosa's Slaney mel filterbank (96 bands), rounded to float16 as
               musicnn does, log10(10000 x + 1) (in float16 like the original, see `log_compress`);
               non-overlapping patches of 187 frames (3 s); a clip shorter than one patch is repeat-padded
    front-end  batchnorm; timbral convs (7 x 38 and 7 x 67 mel bins, 204 filters) and temporal convs (128 / 64 / 32
               frames x 1 bin, 51 filters), each relu + batchnorm + max over frequency -> 561 features per frame
    mid-end    three 1-D convs (width 7, 64 filters, relu + batchnorm), the last two residual; dense concat -> 753
    back-end   max and mean over time (interleaved, 1506), batchnorm, dense 200 relu, batchnorm ("penultimate"),
               dense 50, sigmoid

`MusicnnBackend.embed` gives the 200-d "penultimate" layer (the batchnormed dense layer before the tag logits, the
`features['penultimate']` of musicnn's extractor), averaged over the clip's 3 s patches; `classify` gives the 50 tag
probabilities averaged over patches (musicnn's `top_tags` averages its taggram the same way).
Parity with the original checkpoint executed by TensorFlow: tests/test_musicnn.py.
"""
from __future__ import annotations

import functools
import importlib.util
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
N_FRAMES = 187          # librosa.time_to_frames(3 s) + 1, as in musicnn's extractor
BN_EPS = 1e-3           # tf.layers.batch_normalization default

MTT_LABELS = ['guitar', 'classical', 'slow', 'techno', 'strings', 'drums', 'electronic', 'rock', 'fast', 'piano',
              'ambient', 'beat', 'violin', 'vocal', 'synth', 'female', 'indian', 'opera', 'male', 'singing',
              'vocals', 'no vocals', 'harpsichord', 'loud', 'quiet', 'flute', 'woman', 'male vocal', 'no vocal',
              'pop', 'soft', 'sitar', 'solo', 'man', 'classic', 'choir', 'voice', 'new age', 'dance', 'male voice',
              'female vocal', 'beats', 'harp', 'cello', 'no voice', 'weird', 'country', 'metal', 'female voice',
              'choral']
MSD_LABELS = ['rock', 'pop', 'alternative', 'indie', 'electronic', 'female vocalists', 'dance', '00s',
              'alternative rock', 'jazz', 'beautiful', 'metal', 'chillout', 'male vocalists', 'classic rock', 'soul',
              'indie rock', 'Mellow', 'electronica', '80s', 'folk', '90s', 'chill', 'instrumental', 'punk', 'oldies',
              'blues', 'hard rock', 'ambient', 'acoustic', 'experimental', 'female vocalist', 'guitar', 'Hip-Hop',
              '70s', 'party', 'country', 'easy listening', 'sexy', 'catchy', 'funk', 'electro', 'heavy metal',
              'Progressive rock', '60s', 'rnb', 'indie pop', 'sad', 'House', 'happy']

# model name -> (mid-end filters, penultimate units, labels). The vgg baselines of the package are not ported;
# MSD_musicnn_big is only in musicnn's source tree (not the wheel) but is accepted when its files are there.
MODELS = {
    "MTT_musicnn": (64, 200, MTT_LABELS),
    "MSD_musicnn": (64, 200, MSD_LABELS),
    "MSD_musicnn_big": (512, 500, MSD_LABELS),
}
EMBEDDINGS = ("penultimate", "mean_pool", "max_pool")
_INSTALL_HINT = "run `make`, which installs musicnn (pip install --no-deps musicnn==0.1.0)"


# ------------------------------------------------------------------------------------------------ checkpoint files

def package_dir() -> Path:
    """The installed `musicnn` package folder, found without importing it (its __init__ chain needs TF1 APIs)."""
    try:
        spec = importlib.util.find_spec("musicnn")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"the musicnn model files are not installed: {_INSTALL_HINT}")
    return Path(locations[0])


def checkpoint_prefix(model: str = "MTT_musicnn") -> str:
    """The TF checkpoint prefix of `model` (the package stores ``MODEL/.index`` + ``MODEL/.data-00000-of-00001``)."""
    if model not in MODELS:
        raise ValueError(f"unknown or unported musicnn model {model!r}: use one of {sorted(MODELS)}")
    folder = package_dir() / model
    if not (folder / ".index").is_file():
        raise FileNotFoundError(f"musicnn model {model!r} has no checkpoint at {folder}/.index: "
                                + ("it is only in musicnn's source tree, not the PyPI wheel"
                                   if model == "MSD_musicnn_big" else _INSTALL_HINT))
    return str(folder) + "/"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes):
    """(field number, wire type, value) of a serialized protobuf message (varint, fixed64/32, bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _table_block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Entries of one uncompressed LevelDB-table block (TensorFlow writes bundle indexes uncompressed)."""
    if data[offset + size] != 0:
        raise ValueError("compressed checkpoint index blocks are not supported")
    block = data[offset:offset + size]
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * n_restarts
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        n_value, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + n_value]))
        pos += n_value
    return entries


_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16, 10: np.bool_}


def read_tf_checkpoint(prefix: str | Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Variables of a TF (v1 or v2 bundle) checkpoint as numpy arrays, without TensorFlow.

    `prefix` is the path that TensorFlow's Saver was given (``PREFIX.index``, ``PREFIX.data-00000-of-00001``).
    Only single-shard, unsliced checkpoints of the dtypes in `_TF_DTYPES` (what musicnn ships) are supported.
    """
    prefix = str(prefix)
    index = Path(prefix + ".index").read_bytes()
    magic = struct.unpack_from("<Q", index, len(index) - 8)[0]
    if magic != 0xDB4775248B80FB57:
        raise ValueError(f"{prefix}.index is not a TensorFlow checkpoint index")
    footer = index[-48:]
    _, p = _varint(footer, 0)                 # metaindex handle (unused)
    _, p = _varint(footer, p)
    index_offset, p = _varint(footer, p)
    index_size, p = _varint(footer, p)
    entries: dict[str, bytes] = {}
    for _, handle in _table_block(index, index_offset, index_size):
        block_offset, q = _varint(handle, 0)
        block_size, _ = _varint(handle, q)
        for key, value in _table_block(index, block_offset, block_size):
            entries[key.decode()] = value
    entries.pop("", None)                     # the bundle header
    wanted = list(entries) if names is None else list(names)
    data = None
    out = {}
    for name in wanted:
        if name not in entries:
            raise KeyError(f"{prefix}: no variable {name!r}")
        dtype, shape, shard, offset, size = None, [], 0, 0, 0
        for field, _, value in _proto_fields(entries[name]):
            if field == 1:
                dtype = value
            elif field == 2:
                shape = [next((v for f, _, v in _proto_fields(dim) if f == 1), 0)
                         for f, _, dim in _proto_fields(value) if f == 2]
            elif field == 3:
                shard = value
            elif field == 4:
                offset = value
            elif field == 5:
                size = value
            elif field == 7:
                raise ValueError(f"{prefix}: variable {name!r} is sliced (unsupported)")
        if dtype not in _TF_DTYPES or shard != 0:
            raise ValueError(f"{prefix}: variable {name!r} has unsupported dtype {dtype} / shard {shard}")
        if data is None:
            data = Path(prefix + ".data-00000-of-00001").read_bytes()
        arr = np.frombuffer(data, dtype=np.dtype(_TF_DTYPES[dtype]).newbyteorder("<"), count=int(np.prod(shape)),
                            offset=offset)
        if arr.nbytes != size:
            raise ValueError(f"{prefix}: variable {name!r} has {size} bytes, expected {arr.nbytes}")
        out[name] = arr.reshape(shape).copy()
    return out


# ------------------------------------------------------------------------------------------------ parameters

# tf.layers default names in the order models.build_musicnn creates them.
_CONVS = ["timbral_38", "timbral_67", "temporal_128", "temporal_64", "temporal_32", "mid_1", "mid_2", "mid_3"]


def _bn_names(i: int) -> str:
    return "batch_normalization" + (f"_{i}" if i else "")


def load_params(model: str = "MTT_musicnn") -> dict[str, dict[str, np.ndarray]]:
    """The inference weights of a musicnn model as ``{layer: {kernel, bias} or {scale, offset}}`` numpy arrays.

    Batchnorms are folded to ``y = x * scale + offset`` (scale = gamma / sqrt(moving_variance + 1e-3),
    offset = beta - moving_mean * scale), exactly the inference transform of `tf.layers.batch_normalization`.
    """
    prefix = checkpoint_prefix(model)
    names = []
    for i in range(11):
        names += [f"{_bn_names(i)}/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")]
    for i in range(8):
        names += [f"conv2d{'_' + str(i) if i else ''}/{v}" for v in ("kernel", "bias")]
    names += ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias"]
    raw = read_tf_checkpoint(prefix, names)
    params: dict[str, dict[str, np.ndarray]] = {}
    bn_layers = ["bn_input"] + [f"bn_{c}" for c in _CONVS] + ["bn_pool", "bn_dense"]
    for i, layer in enumerate(bn_layers):
        n = _bn_names(i)
        scale = raw[f"{n}/gamma"] / np.sqrt(raw[f"{n}/moving_variance"] + BN_EPS)
        params[layer] = {"scale": scale.astype(np.float32),
                         "offset": (raw[f"{n}/beta"] - raw[f"{n}/moving_mean"] * scale).astype(np.float32)}
    for i, layer in enumerate(_CONVS):
        n = f"conv2d{'_' + str(i) if i else ''}"
        kernel = raw[f"{n}/kernel"]                     # [time, freq, 1, out] (HWIO)
        if layer.startswith("mid"):
            kernel = kernel[:, :, 0, :]                 # the mid-end convs span all features: a 1-D conv [7, in, out]
        elif layer.startswith("timbral"):               # time taps become input channels: [1, freq, 7, out]
            kernel = np.ascontiguousarray(np.transpose(kernel[:, :, 0, :], (1, 0, 2))[None])
        params[layer] = {"kernel": kernel, "bias": raw[f"{n}/bias"]}
    params["dense"] = {"kernel": raw["dense/kernel"], "bias": raw["dense/bias"]}
    params["logits"] = {"kernel": raw["dense_1/kernel"], "bias": raw["dense_1/bias"]}
    return params


# ------------------------------------------------------------------------------------------------ JAX model

def round_to_float16(x):
    """float32 -> the nearest float16 value (ties to even, overflow to inf, float16 denormals kept), as float32.

    Written with `reduce_precision` (normal range) and an exact power-of-two rescale (denormals, which
    `reduce_precision` flushes to zero): unlike a pair of dtype casts, XLA never elides it (excess precision).
    """
    import jax
    import jax.numpy as jnp

    denormal = jnp.round(x * 2.0 ** 24) * 2.0 ** -24
    return jnp.where(jnp.abs(x) < 2.0 ** -14, denormal, jax.lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10))


def log_compress(mel):
    """musicnn's input scaling: mel power rounded to float16, then ``log10(10000 x + 1)`` in float16 arithmetic.

    The original runs it on a float16 numpy array, so each step rounds to float16; we reproduce that (up to rare
    one-ulp flips from float32 log10 / STFT round-off), except where ``10000 x`` overflows float16 (mel power above
    6.55, e.g. a loud pure tone): there the original gives inf (and NaN tags); we keep the float32 value instead.
    """
    import jax.numpy as jnp

    mel = mel.astype(jnp.float32)
    a = round_to_float16(round_to_float16(mel) * 10000.0)
    c = round_to_float16(jnp.log10(round_to_float16(a + 1.0)))
    return jnp.where(jnp.isfinite(a), c, jnp.log10(10000.0 * mel + 1.0))


def mel_basis() -> np.ndarray:
    """librosa's Slaney mel filterbank ``[257, 96]`` (what librosa.feature.melspectrogram uses by default)."""
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).T.astype(np.float32)


def patch_frames(wave: np.ndarray) -> np.ndarray:
    """A 16 kHz mono wave -> ``[patches, 187, 512]`` STFT frames of its non-overlapping 3 s mel patches.

    Frames are centred (librosa ``center=True``, reflect padding); patch k holds frames 187 k .. 187 k + 186;
    trailing frames that do not fill a patch are dropped (as in musicnn); a clip shorter than one patch has its
    frames repeated up to 187 (musicnn's training-time "repeat-pad"; the original extractor fails on such clips).
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"expected a non-empty 1-D wave, got shape {wave.shape}")
    pad = N_FFT // 2
    if wave.size <= pad:   # reflect padding needs more samples than the pad: repeat the wave first
        wave = np.tile(wave, pad // wave.size + 1)
    padded = np.pad(wave, pad, mode="reflect")
    n_frames = 1 + (padded.size - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    if n_frames < N_FRAMES:
        frames = np.resize(frames, (N_FRAMES, N_FFT))     # repeats whole frames in time order
    n_patches = (len(frames) - N_FRAMES) // N_FRAMES + 1
    return np.ascontiguousarray(frames[:n_patches * N_FRAMES]).reshape(n_patches, N_FRAMES, N_FFT)


def frontend(frames, basis):
    """``[B, 187, 512]`` frames -> ``[B, 187, 96]`` musicnn input (log-compressed mel power)."""
    import jax.numpy as jnp

    n = jnp.arange(N_FFT, dtype=jnp.float32)
    window = 0.5 - 0.5 * jnp.cos(2.0 * jnp.pi * n / N_FFT)          # periodic Hann (scipy get_window 'hann')
    spec = jnp.fft.rfft(frames * window, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.einsum("btf,fm->btm", power, basis)
    return log_compress(mel)


def _bn(x, p):
    return x * p["scale"] + p["offset"]


def _conv2d(x, p, padding):
    import jax

    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y + p["bias"])


def _conv1d(x, p):
    import jax

    y = jax.lax.conv_general_dilated(x, p["kernel"], (1,), [(3, 3)], dimension_numbers=("NWC", "WIO", "NWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y + p["bias"])


def forward(params, x):
    """musicnn on ``[B, 187, 96]`` log-mel patches (any number of frames works) -> dict of ``[B, ...]`` outputs:
    logits [50], penultimate [200] (or 500), mean_pool / max_pool [753] (or 2097), taggram = sigmoid(logits)."""
    import jax
    import jax.numpy as jnp

    hi = jax.lax.Precision.HIGHEST
    x = _bn(x[..., None], params["bn_input"])                         # [B, T, 96, 1]
    # timbral convs (7 frames x 38 / 67 bins, time padded by 3, 'valid' in frequency) run with the 7 time-shifted
    # copies of the input as channels: the same sums, ~1.7x faster on CPU than a 1-channel 7 x 38 conv
    n_time = x.shape[1]
    x_pad = jnp.pad(x[..., 0], ((0, 0), (3, 3), (0, 0)))
    x_taps = jnp.stack([x_pad[:, i:i + n_time] for i in range(7)], axis=-1)          # [B, T, 96, 7]
    front = []
    for layer in _CONVS[:5]:
        if layer.startswith("timbral"):
            y = _conv2d(x_taps, params[layer], [(0, 0), (0, 0)])
        else:
            k = params[layer]["kernel"].shape[0]
            y = _conv2d(x, params[layer], [((k - 1) // 2, k - 1 - (k - 1) // 2), (0, 0)])  # TF 'same'
        y = _bn(y, params[f"bn_{layer}"])
        front.append(y.max(axis=2))                                   # max over frequency -> [B, T, C]
    f = jnp.concatenate(front, axis=-1)                               # [B, T, 561]
    m1 = _bn(_conv1d(f, params["mid_1"]), params["bn_mid_1"])
    m2 = _bn(_conv1d(m1, params["mid_2"]), params["bn_mid_2"]) + m1
    m3 = _bn(_conv1d(m2, params["mid_3"]), params["bn_mid_3"]) + m2
    feats = jnp.concatenate([f, m1, m2, m3], axis=-1)                 # [B, T, 753]
    max_pool, mean_pool = feats.max(axis=1), feats.mean(axis=1)
    pooled = jnp.stack([max_pool, mean_pool], axis=-1).reshape(x.shape[0], -1)  # TF flattens [753, 2]: interleaved
    pooled = _bn(pooled, params["bn_pool"])
    dense = jax.nn.relu(jnp.dot(pooled, params["dense"]["kernel"], precision=hi) + params["dense"]["bias"])
    penultimate = _bn(dense, params["bn_dense"])
    logits = jnp.dot(penultimate, params["logits"]["kernel"], precision=hi) + params["logits"]["bias"]
    return {"logits": logits, "taggram": jax.nn.sigmoid(logits), "penultimate": penultimate,
            "mean_pool": mean_pool, "max_pool": max_pool}


@functools.lru_cache(maxsize=None)
def _jitted():
    import jax

    return (jax.jit(lambda params, x: forward(params, x)),
            jax.jit(lambda params, frames, basis: forward(params, frontend(frames, basis))),
            jax.jit(frontend))


# ------------------------------------------------------------------------------------------------ backend

class MusicnnBackend:
    """The musicnn tagger as an evaluation backend: `embed` -> [n, 200] penultimate features, `classify` -> [n, 50]
    tag probabilities, both averaged over each clip's non-overlapping 3 s patches (see the module doc)."""

    name = "musicnn"
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str = "MTT_musicnn", embedding: str = "penultimate", batch_size: int = 32):
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        import jax.numpy as jnp

        self.model = model
        self.embedding = embedding
        self.batch_size = int(batch_size)
        params = load_params(model)           # validates the name, raises the install hint when files are missing
        self.class_names = list(MODELS[model][2])
        self.params = {k: {n: jnp.asarray(v) for n, v in d.items()} for k, d in params.items()}
        self.basis = jnp.asarray(mel_basis())

    # -- inputs
    def _waves(self, waves, sample_rate: int) -> list[np.ndarray]:
        from musiclm_jax.audio.io import check_samples, resample, to_mono

        if isinstance(waves, np.ndarray) and waves.ndim == 2:
            waves = list(waves)
        elif isinstance(waves, np.ndarray) and waves.ndim == 1:
            waves = [waves]
        elif isinstance(waves, np.ndarray):
            raise ValueError(f"waves must be [samples], [n, samples] or a list of waves, got shape {waves.shape}")
        out = []
        for i, w in enumerate(waves):
            w = check_samples(to_mono(np.asarray(w, np.float32)), f"wave {i}")
            out.append(resample(w, int(sample_rate), SAMPLE_RATE))
        return out

    def _run(self, patches: np.ndarray, from_frames: bool, keys=None) -> dict[str, np.ndarray]:
        """Forward over [P, 187, 512] frames (or [P, 187, 96] log-mels), P <= batch_size, padded to a power of two
        (few jit shapes); returns the `keys` outputs (all when None) for the P patches."""
        net, full, _ = _jitted()
        n = len(patches)
        size = min(self.batch_size, 1 << max(0, (n - 1).bit_length()))
        chunk = np.concatenate([patches, np.zeros((size - n,) + patches.shape[1:], patches.dtype)])
        res = full(self.params, chunk, self.basis) if from_frames else net(self.params, chunk)
        return {k: np.asarray(v)[:n] for k, v in res.items() if keys is None or k in keys}

    def patch_outputs(self, waves, sample_rate: int, keys=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-patch outputs (see `forward`; only `keys` when given) of every wave, and the wave index of each
        patch. Patches stream through the network `batch_size` at a time, so memory stays bounded."""
        outs: dict[str, list] = {}
        owners, pending = [], []

        def flush(frames):
            for k, v in self._run(frames, True, keys).items():
                outs.setdefault(k, []).append(v)

        for i, w in enumerate(self._waves(waves, sample_rate)):
            frames = patch_frames(w)
            owners.append(np.full(len(frames), i))
            pending.append(frames)
            if sum(len(f) for f in pending) >= self.batch_size:
                frames = np.concatenate(pending)
                cut = len(frames) - len(frames) % self.batch_size
                for start in range(0, cut, self.batch_size):
                    flush(frames[start:start + self.batch_size])
                pending = [frames[cut:]] if cut < len(frames) else []
        if pending:
            flush(np.concatenate(pending))
        owner = np.concatenate(owners) if owners else np.zeros(0, int)
        return {k: np.concatenate(v) for k, v in outs.items()}, owner

    def log_mel(self, waves, sample_rate: int) -> list[np.ndarray]:
        """The network input of each wave: ``[patches, 187, 96]`` log-compressed mel patches."""
        fe = _jitted()[2]
        return [np.asarray(fe(patch_frames(w), self.basis)) for w in self._waves(waves, sample_rate)]

    def _clip_mean(self, key: str, waves, sample_rate: int, width: int) -> np.ndarray:
        outs, owner = self.patch_outputs(waves, sample_rate, keys=(key,))
        if len(owner) == 0:
            return np.zeros((0, width), np.float32)
        n = int(owner.max()) + 1
        sums = np.zeros((n, outs[key].shape[1]), np.float64)
        np.add.at(sums, owner, outs[key])
        return (sums / np.bincount(owner, minlength=n)[:, None]).astype(np.float32)

    def embed(self, waves, sample_rate: int) -> np.ndarray:
        """``[n, 200]`` float32: the penultimate layer (or `embedding`), mean over each clip's 3 s patches."""
        width = self.params["dense"]["bias"].shape[0] if self.embedding == "penultimate" else 561 + 3 * (
            self.params["mid_1"]["bias"].shape[0])
        return self._clip_mean(self.embedding, waves, sample_rate, int(width))

    def classify(self, waves, sample_rate: int) -> np.ndarray:
        """``[n, 50]`` float32 tag probabilities (independent sigmoids), mean over each clip's 3 s patches."""
        return self._clip_mean("taggram", waves, sample_rate, len(self.class_names))
