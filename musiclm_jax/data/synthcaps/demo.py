"""`musiclm-jax demo` (until text-to-music exists): render a few SynthCaps clips, print captions, write wav + PNG."""
from __future__ import annotations

import json
import os

from musiclm_jax.data.synthcaps import sources
from musiclm_jax.data.synthcaps.render import render_clip
from musiclm_jax.data.synthcaps.specs import CorpusConfig, make_specs


def run_demo(out_dir: str, num_clips: int = 4, seed: int = 0, sample_rate: int = 16000,
             clip_seconds: float = 10.0) -> list[dict]:
    """Renders `num_clips` clips (each a different score, alternating soundfonts) into `out_dir`.

    Writes <clip>.wav, <clip>.png (mel spectrogram) and captions.json; returns one dict per clip with
    clip_id, caption, wav, png and the structured truth.
    """
    from musiclm_jax.audio.io import write_wav
    from musiclm_jax.audio.plot import save_spectrogram_png

    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    os.makedirs(out_dir, exist_ok=True)
    cfg = CorpusConfig("demo", num_scores=num_clips * 3, sample_rate=sample_rate, clip_seconds=clip_seconds,
                       seed=seed, groove_fraction=0.7)
    specs = make_specs(cfg)
    # one clip per score, alternating soundfonts so both timbres are heard
    by_score: dict[str, dict[str, object]] = {}
    for s in specs:
        by_score.setdefault(s.score_id, {})[s.soundfont] = s
    candidates = [clips.get(cfg.soundfonts[k % len(cfg.soundfonts)], next(iter(clips.values())))
                  for k, clips in enumerate(by_score.values())]
    results = []
    for spec in candidates:
        if len(results) == num_clips:
            break
        try:
            ex = render_clip(spec, sample_rate, clip_seconds)
        except sources.SourceError as e:
            print(f"skipped {spec.clip_id}: {e}")
            continue
        stem = os.path.join(out_dir, f"{len(results):02d}_{spec.clip_id}")
        wav = write_wav(stem + ".wav", ex["audio"], sample_rate)
        title = f"{ex['genre']}, {ex['key']} {ex['mode']}, {ex['bpm']:.0f} BPM ({ex['soundfont']})"
        png = save_spectrogram_png(stem + ".png", [ex["audio"]], sample_rate, titles=[title])
        info = {k: ex[k] for k in ("clip_id", "caption", "genre", "key", "mode", "mood", "dynamics", "instruments",
                                   "soundfont", "source", "tune_id")}
        info.update(bpm=float(ex["bpm"]), wav=wav, png=png)
        results.append(info)
        print(f"[{len(results)}/{num_clips}] {ex['caption']}\n        -> {wav}\n        -> {png}")
    with open(os.path.join(out_dir, "captions.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {len(results)} clips (wav + mel-spectrogram png) and captions.json to {os.path.abspath(out_dir)}")
    return results


if __name__ == "__main__":
    run_demo("demo_out/synthcaps")
