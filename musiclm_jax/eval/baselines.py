"""Baselines and ceilings, as systems (lists of `Item`s aligned with the reference clips) scored by the same code.

    real        the reference clips themselves: the ceiling for adherence, MCC and KLD (0); its FAD is between two
                random halves of the reference set (the floor at that sample size, since FAD of a set with itself is 0)
    codec       the reference clips round-tripped through a SoundStream checkpoint (what tokenization alone costs)
    retrieval   per prompt, the training clip whose MuLan audio embedding is nearest the prompt's MuLan text
                embedding (a generator that only retrieves)
    random      per prompt, a random training clip (right distribution, unrelated to the prompt)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from musiclm_jax.eval.data import Item

BASELINES = ("real", "codec", "retrieval", "random")


def _as_answer(ref: Item, wave: np.ndarray, sample_rate: int, source: str = "") -> Item:
    return Item(prompt=ref.prompt, wave=np.asarray(wave, np.float32), sample_rate=int(sample_rate), id=ref.id,
                path=source, truth=dict(ref.truth), reference=ref.path, tokens=None)


def real_audio(refs: Sequence[Item]) -> list[Item]:
    return [dataclasses.replace(r, reference=r.path) for r in refs]


def random_training_clip(refs: Sequence[Item], train: Sequence[Item], seed: int = 0) -> list[Item]:
    if not train:
        raise ValueError("the random baseline needs training clips: pass --train_dir (an exported train split)")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(train), len(refs))
    return [_as_answer(r, train[k].wave, train[k].sample_rate, train[k].path) for r, k in zip(refs, picks)]


def nearest_training_clip(refs: Sequence[Item], train: Sequence[Item], mulan) -> list[Item]:
    if not train:
        raise ValueError("the retrieval baseline needs training clips: pass --train_dir (an exported train split)")
    if mulan is None:
        raise ValueError("the retrieval baseline needs a MuLan: pass --mulan_dir DIR")
    audio = np.stack([mulan.embed_audio(t.wave, t.sample_rate) for t in train])
    text = mulan.embed_text([r.prompt for r in refs])
    best = np.argmax(text @ audio.T, axis=1)
    return [_as_answer(r, train[k].wave, train[k].sample_rate, train[k].path) for r, k in zip(refs, best)]


def codec_round_trip(refs: Sequence[Item], codec_dir: str | None = None, codec=None,
                     num_levels: int | None = None) -> list[Item]:
    if codec is None:
        if not codec_dir:
            raise ValueError("the codec baseline needs a codec: --baselines codec:DIR")
        from musiclm_jax.codec.api import SoundStream

        codec = SoundStream.from_checkpoint(codec_dir)
    out = []
    for r in refs:
        codes = codec.encode(r.wave, sample_rate=r.sample_rate, num_levels=num_levels)
        wave = np.asarray(codec.decode(codes))[0][: int(round(len(r.wave) * codec.sample_rate / r.sample_rate))]
        out.append(_as_answer(r, wave, codec.sample_rate, f"codec({r.path})"))
    return out


def build_baselines(specs: Sequence[str], refs: Sequence[Item], train: Sequence[Item] | None = None, mulan=None,
                    seed: int = 0) -> dict[str, tuple[list[Item], bool]]:
    """{"name": (items, split_half_fad)} for specs "real", "random", "retrieval", "codec:DIR"."""
    out = {}
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if kind == "real":
            out["real audio"] = (real_audio(refs), True)
        elif kind == "random":
            out["random training clip"] = (random_training_clip(refs, train or [], seed), False)
        elif kind == "retrieval":
            out["MuLan retrieval"] = (nearest_training_clip(refs, train or [], mulan), False)
        elif kind == "codec":
            out["codec round trip"] = (codec_round_trip(refs, arg or None), False)
        else:
            raise ValueError(f"unknown baseline {spec!r}: use real, random, retrieval or codec:DIR")
    return out
