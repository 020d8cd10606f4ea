"""SoundStream codec: shapes, causality, streaming, RVQ mechanics, losses, API input checks (tiny, eager, CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musiclm_jax.codec import losses
from musiclm_jax.codec.api import SoundStream
from musiclm_jax.codec.discriminators import Discriminators
from musiclm_jax.codec.model import CodecConfig, build_generator, chunked_decode, chunked_encode
from musiclm_jax.quantization.kmeans import lloyd as kmeans
from musiclm_jax.quantization.rvq import ResidualVQ, usage_and_perplexity

# A micro codec: hop 8, so eager CPU tests run in seconds.
MICRO = CodecConfig(sample_rate=8000, channels=2, strides=(2, 4), embed_dim=8, num_levels=3, codebook_size=16)


@pytest.fixture(scope="module")
def micro():
    return build_generator(MICRO, seed=0)


def _wave(n, batch=2, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, n), minval=-0.5, maxval=0.5)


def test_shapes_frame_rate_and_code_range(micro):
    codes = micro.encode(_wave(85))
    assert codes.shape == (2, 11, 3) and codes.dtype == jnp.int32  # ceil(85 / 8) frames
    assert 0 <= int(codes.min()) and int(codes.max()) < MICRO.codebook_size
    assert micro.decode(codes).shape == (2, 88)
    assert micro.encode(_wave(80), num_levels=2).shape == (2, 10, 2)
    recon, vq, z = micro(_wave(85))
    assert recon.shape == (2, 85) and z.shape == (2, 11, 8)


@pytest.mark.parametrize("name,sr,hop,levels", [("tiny", 16000, 320, 4), ("paper", 24000, 480, 12)])
def test_gin_configs_frame_rate_and_paper_lowers(name, sr, hop, levels):
    import gin

    gin.clear_config()
    gin.parse_config_file(f"gin/models/codec_{name}.gin")
    config = CodecConfig()
    gin.clear_config()
    assert (config.sample_rate, config.hop_length, config.num_levels) == (sr, hop, levels)
    assert config.frame_rate == 50.0
    if name == "paper":
        assert config.codebook_size == 1024 and config.bitrate == 6000.0
    # Build and run abstractly (no memory, no compute): one second of audio -> 50 frames and back.
    model = nnx.eval_shape(lambda: build_generator(config))
    graphdef, state = nnx.split(model)
    wave = jax.ShapeDtypeStruct((2, sr), jnp.float32)
    codes = jax.eval_shape(lambda s, w: nnx.merge(graphdef, s).encode(w), state, wave)
    assert codes.shape == (2, 50, levels)
    out = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).decode(c), state, codes)
    assert out.shape == (2, sr)


def test_encoder_and_decoder_are_causal(micro):
    wave = _wave(96)
    cut = 48  # change everything from sample 48 on: frames 0..5 (ending at sample 47) must not move
    changed = wave.at[:, cut:].set(0.3)
    z1, z2 = micro.encoder(wave), micro.encoder(changed)
    np.testing.assert_allclose(z1[:, :cut // 8], z2[:, :cut // 8], atol=1e-6)
    assert not np.allclose(z1[:, cut // 8:], z2[:, cut // 8:])
    codes = micro.encode(wave)
    other = codes.at[:, 6:].set((codes[:, 6:] + 1) % MICRO.codebook_size)
    y1, y2 = micro.decode(codes), micro.decode(other)
    np.testing.assert_allclose(y1[:, :48], y2[:, :48], atol=1e-6)
    assert not np.allclose(y1[:, 48:], y2[:, 48:])


def test_chunked_streaming_equals_whole_file(micro):
    # Long enough that later chunks need their left context (encoder context is ~ hundreds of samples).
    n = 3 * micro.encoder_context + 13
    wave = 0.5 * jnp.sin(jnp.arange(n) * 0.05)[None] + 0.1 * _wave(n, batch=1)
    whole = micro.encode(wave)
    np.testing.assert_array_equal(chunked_encode(micro, wave, 16), whole)
    np.testing.assert_allclose(chunked_decode(micro, whole, 24), micro.decode(whole), atol=1e-5)
    # Too little context must break the equality: the test above would catch a wrong receptive field.
    hop = MICRO.hop_length
    start = 2 * micro.encoder_context // hop * hop
    short = micro.encode(wave[:, start - hop * 2:])[:, 2:]
    assert not np.array_equal(np.asarray(short), np.asarray(whole[:, start // hop:]))


# --- RVQ -------------------------------------------------------------------------------------------------------

def _rvq(levels=3, k=8, dim=4, **kw):
    with nnx.use_eager_sharding(False):
        return ResidualVQ(levels, k, dim, rngs=nnx.Rngs(0), **kw)


def _clusters(n_per=64, k=8, dim=4, seed=0):
    key1, key2 = jax.random.split(jax.random.key(seed))
    centres = 3.0 * jax.random.normal(key1, (k, dim))
    x = centres[:, None] + 0.05 * jax.random.normal(key2, (k, n_per, dim))
    return centres, x.reshape(1, k * n_per, dim)


def test_straight_through_gradient():
    rvq = _rvq()
    z = jax.random.normal(jax.random.key(1), (2, 5, 4))
    w = jax.random.normal(jax.random.key(2), (2, 5, 4))
    g = jax.grad(lambda z: jnp.sum(rvq(z).quantized * w))(z)
    np.testing.assert_allclose(g, w, rtol=1e-6)
    out = rvq(z)
    np.testing.assert_allclose(out.quantized, rvq.decode(out.codes), atol=1e-5)  # forward = the codes
    assert float(jax.grad(lambda z: rvq(z).commit_loss)(z).std()) > 0  # commitment pulls the encoder


def test_kmeans_init_finds_clusters():
    centres, x = _clusters()
    rvq = _rvq(levels=2, k=16)  # more codes than clusters: k-means from random points then covers every cluster
    assert not bool(rvq.initialized[...])
    rvq.maybe_kmeans_init(x, jax.random.key(3))
    assert bool(rvq.initialized[...])
    book = rvq.codebook[...][0]
    nearest = jnp.min(jnp.linalg.norm(centres[:, None] - book[None], axis=-1), axis=1)
    # Every true centre has a code close by (k-means from data; random init would be ~3 away).
    assert float(nearest.max()) < 0.5
    before = rvq.codebook[...]
    rvq.maybe_kmeans_init(x + 10.0, jax.random.key(4))  # second call: a no-op
    np.testing.assert_array_equal(rvq.codebook[...], before)


def test_ema_update_moves_codes_toward_data():
    rvq = _rvq(levels=1, k=4, dim=2, decay=0.5)
    x = jnp.full((1, 32, 2), 2.0)
    used = int(rvq(x).codes[0, 0, 0])
    d0 = float(jnp.linalg.norm(rvq.codebook[...][0, used] - 2.0))
    for i in range(5):
        rvq.ema_update(rvq(x).stats, jax.random.key(i))
    d1 = float(jnp.linalg.norm(rvq.codebook[...][0, used] - 2.0))
    assert d1 < 0.2 * d0


def test_dead_codes_are_replaced_by_data():
    centres, x = _clusters(k=4, dim=2)
    rvq = _rvq(levels=1, k=8, dim=2, decay=0.5, dead_threshold=0.5)
    rvq.codebook[...] = rvq.codebook[...].at[0, 7].set(100.0)  # far from all data: never chosen
    rvq.cluster_size[...] = rvq.cluster_size[...].at[0, 7].set(0.0)
    revived = rvq.ema_update(rvq(x).stats, jax.random.key(0))
    assert int(revived) >= 1
    code = rvq.codebook[...][0, 7]
    assert float(jnp.min(jnp.linalg.norm(x[0] - code, axis=-1))) < 1e-5  # it is now one of the batch's vectors


def test_quantizer_dropout_levels():
    rvq = _rvq(levels=4)
    mask = rvq.dropout_mask(512, jax.random.key(0))
    n = mask.sum(-1)
    assert set(np.unique(n).tolist()) == {1, 2, 3, 4}  # uniform 1..Q, all reached
    np.testing.assert_array_equal(mask, jnp.arange(4)[None] < n[:, None])  # always a prefix of levels
    assert bool(rvq.dropout_mask(64, jax.random.key(1), prob=0.0).all())
    z = jax.random.normal(jax.random.key(2), (2, 3, 4))
    m = jnp.array([[True, False, False, False], [True, True, True, False]])
    out = rvq(z, m)
    np.testing.assert_allclose(out.quantized[0], rvq.decode(out.codes[:1, :, :1])[0], atol=1e-5)
    np.testing.assert_allclose(out.quantized[1], rvq.decode(out.codes[1:, :, :3])[0], atol=1e-5)
    assert float(out.stats.counts[3].sum()) == 0.0  # a dropped level learns nothing
    with pytest.raises(ValueError, match="num_levels"):
        rvq.encode(z, num_levels=5)


def test_more_levels_lower_error():
    x = jax.random.normal(jax.random.key(0), (1, 512, 4))
    rvq = _rvq(levels=4, k=16)
    rvq.kmeans_init(x, jax.random.key(1))
    codes = rvq.encode(x)
    errors = [float(jnp.mean((rvq.decode(codes[..., :n]) - x) ** 2)) for n in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_kmeans_and_perplexity_helpers():
    centres, x = _clusters(k=4, dim=2)
    _, counts = kmeans(x[0], 4, 10, jax.random.key(0))
    assert float(counts.sum()) == x.shape[1]
    usage, ppl = usage_and_perplexity(jnp.array([[0, 0], [1, 0], [2, 0], [3, 0]]), 4)
    np.testing.assert_allclose(usage, [1.0, 0.25])
    np.testing.assert_allclose(ppl, [4.0, 1.0], rtol=1e-5)


# --- discriminators and losses -----------------------------------------------------------------------------------

def test_discriminators_and_losses_are_finite():
    with nnx.use_eager_sharding(False):
        disc = Discriminators(wave_scales=2, wave_channels=4, wave_depth=2, wave_max_channels=16, stft_channels=4,
                              stft_n_fft=64, stft_hop=16, stft_multipliers=(1, 2), rngs=nnx.Rngs(0))
    real, fake = _wave(512, seed=1), _wave(512, seed=2)
    outs_r, outs_f = nnx.jit(lambda d, r, f: (d(r), d(f)))(disc, real, fake)  # one compile, not one per op
    assert len(outs_r) == 3  # 2 wave scales + STFT
    # STFT logits: one per frame after the one time-halving block; the frequency axis is reduced to 1.
    assert outs_r[-1][-1].shape == (2, -(-(512 // 16 + 1) // 2), 1, 1)
    d = losses.discriminator_hinge_loss([o[-1] for o in outs_r], [o[-1] for o in outs_f])
    g = losses.generator_hinge_loss([o[-1] for o in outs_f])
    fm = losses.feature_matching_loss([o[:-1] for o in outs_r], [o[:-1] for o in outs_f])
    mel = losses.multiscale_mel_loss(real, fake, 8000, (64, 128, 256))
    for v in (d, g, fm, mel):
        assert np.isfinite(float(v)) and float(v) > 0
    assert float(losses.feature_matching_loss([o[:-1] for o in outs_r], [o[:-1] for o in outs_r])) == 0.0
    assert float(losses.multiscale_mel_loss(real, real, 8000, (64, 128))) < 1e-3
    # Hinge: a discriminator sure and right (logits +-2) has zero loss; the generator then pays 3.
    assert float(losses.discriminator_hinge_loss([jnp.full(3, 2.0)], [jnp.full(3, -2.0)])) == 0.0
    assert float(losses.generator_hinge_loss([jnp.full(3, -2.0)])) == 3.0


def test_quality_metrics():
    x, noise = _wave(4096, seed=1), 0.01 * _wave(4096, seed=2)
    assert float(losses.si_snr(x, x).min()) > 60
    np.testing.assert_allclose(losses.si_snr(x, 3.0 * (x + noise)), losses.si_snr(x, x + noise), atol=1e-3)
    assert 20 < float(losses.si_snr(x, x + noise).mean()) < 50
    assert float(losses.mel_distance(x, x, 8000).max()) < 1e-6
    assert float(losses.mel_distance(x, x + noise, 8000).mean()) < float(losses.mel_distance(x, noise, 8000).mean())
    assert float(losses.log_spectral_distance(x, x).max()) < 1e-4


# --- API input handling ----------------------------------------------------------------------------------------

def test_api_round_trip_and_bad_input(micro):
    codec = SoundStream(micro)
    wave = np.sin(np.arange(100) * 0.1).astype(np.float32) * 0.5
    codes = codec.encode(wave, 8000)
    assert codes.shape == (1, 13, 3)
    assert codec.decode(codes, num_samples=100).shape == (1, 100)
    assert codec.reconstruct(wave, 8000).shape == (1, 100)
    assert codec.encode(wave, 8000, num_levels=1).shape == (1, 13, 1)
    np.testing.assert_array_equal(codec.encode(np.stack([wave, wave])[None], 8000), codes)  # stereo mixes down
    assert codec.encode(np.sin(np.arange(200) * 0.05).astype(np.float32), 16000).shape == (1, 13, 3)  # resampled
    assert codec.encode(np.zeros(64, np.float32), 8000).shape == (1, 8, 3)  # silence is fine
    assert codec.encode(wave * 4, 8000).shape == (1, 13, 3)  # clipped, with a warning
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.full(64, np.nan, np.float32), 8000)
    with pytest.raises(ValueError, match="resample"):
        codec.encode(wave, 16000, resample=False)
    with pytest.raises(ValueError, match="out of range"):
        codec.decode(np.full((1, 4, 2), 16))
    with pytest.raises(ValueError, match="levels"):
        codec.decode(np.zeros((1, 4, 4), np.int32))
    with pytest.raises(ValueError, match="num_levels"):
        codec.encode(wave, 8000, num_levels=0)


def test_experiment_gin_files_parse():
    import gin

    from musiclm_jax.codec.family import CodecFamily
    from musiclm_jax.train import gin_utils

    for name, sr in (("tiny", 16000), ("paper", 24000)):
        gin.clear_config()
        gin_utils.parse_config([f"experiments/codec_{name}.gin"], ["MODEL_DIR = '/tmp/x'"])
        family = gin.query_parameter("train.family").scoped_configurable_fn()
        assert isinstance(family, CodecFamily) and family.config.sample_rate == sr
        assert family.disc_start_step > 0 and family.total_steps == gin.query_parameter("%TRAIN_STEPS")
    gin.clear_config()


def test_repeat_transpose_init_removes_the_frame_rate_comb_at_init():
    """Issue 15: the default init gives each output phase of a transposed conv its own taps, so the SoundStream
    decoder's output is periodic in the hop from the start (a comb at the frame rate); 'repeat' starts every layer
    as nearest-neighbour upsampling + a conv, so a steady latent decodes to a steady output."""
    from musiclm_jax.codec.layers import Decoder
    from musiclm_jax.eval.codec import frame_rate_comb

    latent = jnp.ones((1, 50, 32)) * jnp.linspace(-1, 1, 32)  # one second of one held latent, 50 Hz frames
    out = {}
    for init in ("lecun", "repeat"):
        with nnx.use_eager_sharding(False):
            decoder = Decoder(8, (2, 4, 5, 8), 32, transpose_init=init, rngs=nnx.Rngs(0))
        out[init] = np.asarray(decoder(latent))[0]
    steady = {k: w[8000:] for k, w in out.items()}  # past the causal receptive field's onset
    scale = {k: np.abs(w).mean() for k, w in steady.items()}
    assert steady["repeat"].std() < 1e-4 * scale["repeat"], (steady["repeat"].std(), scale["repeat"])
    assert steady["lecun"].std() > 1e-2 * scale["lecun"]  # periodic in the hop of 320 samples
    np.testing.assert_allclose(steady["lecun"][:-320], steady["lecun"][320:], rtol=1e-4, atol=1e-6 * scale["lecun"])
    combs = {k: frame_rate_comb(w, 16000, 50.0) for k, w in out.items()}
    assert combs["lecun"] > 100 * combs["repeat"], combs
    with pytest.raises(ValueError, match="transpose_init"):
        CodecConfig(transpose_init="nearest")
