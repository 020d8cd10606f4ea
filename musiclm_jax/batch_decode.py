"""Batch text-to-music over a JSONL file of prompts, resumable and sharded over hosts (`musiclm-jax infer` is its
command: musiclm_jax/cli/infer.py).

    musiclm-jax infer --prompts prompts.jsonl --out_dir out/ --model_dir weights/musiclm --duration 10
    musiclm-jax infer --prompts prompts.jsonl --out_dir out/ --random_init --tiny --duration 0.5   # untrained noise

    from musiclm_jax.batch_decode import run_infer             # the same job from Python
    summary = run_infer(MusicLM.from_pretrained("weights/musiclm"), "prompts.jsonl", "out/", duration_s=10)

Input: one prompt per line, a JSON object {"prompt": str, "id": str (optional), "seed": int (optional),
"duration_s": float (optional), "melody": audio path (optional; melody-conditioned models), "bpm": float (optional;
tempo-conditioned models, default: the tempo the prompt states), "key": a key name such as "F# minor" (optional;
key-conditioned models, default: the key the prompt states)} or a bare JSON string.
Blank lines are ignored. A malformed line (bad JSON, missing or empty prompt, bad id / seed / duration, unknown key,
duplicate id) is reported with its line number, counted and skipped; it never stops the job.

Work unit: the lines are cut into chunks of `--chunk_size` consecutive lines (chunk k = lines k*C+1 .. (k+1)*C, fixed
by the file alone). For each chunk, every prompt's wav and tokens are written first, then
`chunks/chunk-0000k.jsonl` (one row per prompt), then `chunks/chunk-0000k.done`; every file is written to a
temporary name and moved into place with `os.replace`, so a marker exists only when its chunk is complete. A rerun
with the same arguments skips chunks that have a marker and redoes the others whole, overwriting any partial files:
every prompt ends up produced exactly once. A chunk in which a prompt failed gets no marker (a rerun retries it).
`job.json` records the settings and the prompts file's hash; a rerun into the same --out_dir with different ones is
refused. When every chunk of the job has its marker, `results.jsonl` (all rows, in line order) is written.

Seeds: a prompt's seed is its line's "seed", else derived from --seed and its line number. With --batch_size N
(default 1), up to N prompts of a chunk with the same duration are decoded in one pipeline call, each row with its
own seed (the pipeline draws every row from its own key), so a prompt's audio depends only on (prompt, seed,
duration, sampling options, model): not on --batch_size, chunking, sharding or order, and (with --model_dir)
`musiclm-jax generate --prompt P --seed S --duration D` reproduces it. Each row records its seed and its place in
its call ("batch": size and row).

What is sharded: chunks over hosts, round robin (chunk k goes to shard k % num_shards; shard = jax.process_index()
of jax.process_count(), after `jax.distributed.initialize` when the environment asks for it, or --num_shards /
--shard_index). What is not: inside one process the pipeline runs each call on the default device, so batch rows
are not split over a host's local devices (other local devices stay idle). To use every accelerator of a host, run
one process per device, each with its own --shard_index (e.g. CUDA_VISIBLE_DEVICES=i ... --num_shards 8
--shard_index i).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import socket
import time
from typing import Callable

from musiclm_jax.sampling import MAX_DURATION_S, check_duration
from musiclm_jax.musical_key import check_key, key_from_text, key_name
from musiclm_jax.tempo import bpm_from_text, check_bpm

PROMPT_KEYS = ("prompt", "id", "seed", "duration_s", "melody", "bpm", "key")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
STAGES = ("semantic", "coarse", "fine")


# -- input ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prompt:
    line: int            # 1-based line number in the prompts file
    id: str
    prompt: str
    seed: int
    duration_s: float
    melody: str | None = None   # an audio file to follow (melody-conditioned models)
    bpm: float | None = None    # the tempo (tempo-conditioned models); None: what the prompt states
    key: int | None = None      # the key index (key-conditioned models); None: what the prompt states


def derive_seed(base_seed: int, line: int) -> int:
    """A per-line seed in [0, 2**31) from the base seed and the line number (independent of chunks and batches)."""
    digest = hashlib.sha256(f"musiclm-jax-infer:{base_seed}:{line}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _parse_line(text: str, line: int, *, duration_s: float, base_seed: int, max_duration_s: float) -> Prompt:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object with 'prompt' or a string, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(PROMPT_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} (allowed: {', '.join(PROMPT_KEYS)})")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("missing or empty 'prompt' (a non-empty string)")
    pid = obj.get("id", f"line-{line:06d}")
    if isinstance(pid, int) and not isinstance(pid, bool):
        pid = str(pid)
    if not isinstance(pid, str) or not _ID.fullmatch(pid):
        raise ValueError(f"bad 'id' {pid!r}: use 1-128 letters, digits, '.', '_' or '-' (it names the files), "
                         "not starting with '.' or '-'")
    seed = obj.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63):
        raise ValueError(f"bad 'seed' {seed!r}: a non-negative integer")
    dur = check_duration(obj.get("duration_s", duration_s), max_duration_s, "'duration_s'")
    melody = obj.get("melody")
    if melody is not None and (not isinstance(melody, str) or not melody.strip()):
        raise ValueError(f"bad 'melody' {melody!r}: the path of an audio file")
    bpm = obj.get("bpm")
    if bpm is not None:
        if isinstance(bpm, bool) or not isinstance(bpm, (int, float)):
            raise ValueError(f"bad 'bpm' {bpm!r}: a number of beats per minute")
        bpm = check_bpm(bpm, 1, "'bpm'")[0]
    key = obj.get("key")
    if key is not None:
        if not isinstance(key, str):
            raise ValueError(f"bad 'key' {key!r}: a key name such as 'F# minor'")
        key = check_key(key, 1, "'key'")[0]
    return Prompt(line=line, id=pid, prompt=prompt, seed=derive_seed(base_seed, line) if seed is None else seed,
                  duration_s=float(dur), melody=melody, bpm=bpm, key=key)


def read_prompts(path: str, *, duration_s: float, base_seed: int,
                 max_duration_s: float = MAX_DURATION_S) -> tuple[list[Prompt], list[dict], int]:
    """Parses the whole prompts file -> (prompts, malformed [{line, error}], number of lines)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"prompts file not found: {path} (JSONL: one {{\"prompt\": ...}} per line)")
    if os.path.isdir(path):
        raise ValueError(f"--prompts {path} is a directory: pass a JSONL file (one {{\"prompt\": ...}} per line)")
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()
    prompts, malformed, seen = [], [], {}
    for line, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            p = _parse_line(text, line, duration_s=duration_s, base_seed=base_seed, max_duration_s=max_duration_s)
            if p.id in seen:
                raise ValueError(f"duplicate id {p.id!r} (already used on line {seen[p.id]})")
        except UnicodeDecodeError:
            malformed.append({"line": line, "error": "not UTF-8 text"})
            continue
        except ValueError as e:
            malformed.append({"line": line, "error": str(e)})
            continue
        seen[p.id] = line
        prompts.append(p)
    return prompts, malformed, len(raw_lines)


# -- output helpers ---------------------------------------------------------------------------------------------------
def _atomic(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Writes via `write(tmp)` to a temporary name in the same directory, then `os.replace`s it into `path`."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.{socket.gethostname()}.{os.getpid()}.tmp{suffix}")  # unique per writer
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _atomic(path, write)


def _write_npy(path: str, array) -> None:
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    _atomic(path, write)


def _write_wav(path: str, wave, rate: int) -> None:
    from musiclm_jax.audio.io import write_wav
    _atomic(path, lambda tmp: write_wav(tmp, wave, rate), suffix=".wav")  # soundfile picks the format by suffix


def _chunk_name(k: int) -> str:
    return f"chunk-{k:05d}"


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _batches(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
    """Calls of one chunk: prompts grouped by duration, in line order, at most `batch_size` per call."""
    calls, groups = [], {}
    for p in prompts:
        groups.setdefault(p.duration_s, []).append(p)
    for group in groups.values():
        calls += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return sorted(calls, key=lambda c: c[0].line)


def _melodies(call: list[Prompt], prompts_path: str) -> dict:
    """generate_full's melody kwargs for one call: each row's 'melody' file (relative paths: from the working
    directory, else beside the prompts file) at one sample rate; {} when no row has one."""
    from musiclm_jax.audio.io import load_audio

    if not any(p.melody for p in call):
        return {}
    waves, rate = [], None
    for p in call:
        if not p.melody:
            waves.append(None)
            continue
        path = p.melody
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(os.path.dirname(os.path.abspath(prompts_path)), path)
        wave, sr = load_audio(path, sample_rate=rate)
        rate = rate or sr
        waves.append(wave)
    return {"melody": waves, "melody_sample_rate": rate}


def resolve_shard(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    if (num_shards is None) != (shard_index is None):
        raise ValueError("pass --num_shards and --shard_index together (or neither: jax.process_count/index)")
    if num_shards is None:
        import jax
        return jax.process_count(), jax.process_index()
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need --num_shards >= 1 and 0 <= --shard_index < --num_shards, got {num_shards} and "
                         f"{shard_index}")
    return num_shards, shard_index


# -- the job ----------------------------------------------------------------------------------------------------------
# Settings that do not change any prompt's audio, so a resumed job may change them (e.g. a smaller batch after
# running out of memory).
NOT_JOB_IDENTITY = ("prompts", "batch_size", "max_duration_s")


def _key_fields(index: int | None) -> dict:
    """A result row's key as the eval suite's truth fields (tonic in "key", "mode"), like SynthCaps' metadata."""
    if index is None:
        return {"key": None, "mode": None}
    tonic, mode = key_name(index).split()
    return {"key": tonic, "mode": mode}


def check_job(prompts_path: str, out_dir: str, *, duration_s: float = 10.0, batch_size: int = 1,
              chunk_size: int = 64, seed: int = 0, temperatures=(1.0, 0.95, 0.4), top_k: int = 0,
              top_p: float = 1.0, guidance_scale: float = 1.0, guide_tempo: bool = False, guide_key=False,
              guide_melody: bool = False, coarse_guidance_scale: float | None = None, num_samples: int = 1,
              model_desc: str = "",
              max_duration_s: float = MAX_DURATION_S,
              not_compared: tuple = ()) -> tuple[dict, list[Prompt], list[dict], int]:
    """Validates a job without a model -> (job.json record, prompts, malformed lines, number of lines).

    Raises ValueError when a setting is bad, when the file holds no valid prompt, or when `out_dir` holds a job
    whose settings would give other audio. `infer` calls it before loading the model, so mistakes cost a second."""
    check_duration(duration_s, max_duration_s, "--duration")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    if chunk_size < 1:
        raise ValueError(f"--chunk_size must be >= 1, got {chunk_size}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if len(temperatures) != 3 or min(temperatures) < 0 or top_k < 0 or not 0 < top_p <= 1 or num_samples < 1:
        raise ValueError(f"need 3 --temperatures >= 0, --top_k >= 0, 0 < --top_p <= 1 and --num_samples >= 1, got "
                         f"{list(temperatures)}, {top_k}, {top_p}, {num_samples}")
    prompts, malformed, num_lines = read_prompts(prompts_path, duration_s=duration_s, base_seed=seed,
                                                 max_duration_s=max_duration_s)
    if not prompts:
        first = f"; line {malformed[0]['line']}: {malformed[0]['error']}" if malformed else ""
        raise ValueError(f"{prompts_path} holds no valid prompt ({num_lines} lines, {len(malformed)} malformed"
                         f"{first}): one {{\"prompt\": ...}} object or JSON string per line")
    sampling = dict(temperatures=[float(t) for t in temperatures], top_k=int(top_k), top_p=float(top_p),
                    guidance_scale=float(guidance_scale), num_samples=int(num_samples),
                    **({"guide_tempo": True} if guide_tempo else {}),   # absent when off: older jobs still resume
                    **({"guide_key": guide_key} if guide_key else {}),
                    **({"guide_melody": True} if guide_melody else {}),
                    **({"coarse_guidance_scale": float(coarse_guidance_scale)}
                       if coarse_guidance_scale is not None else {}))
    with open(prompts_path, "rb") as f:
        prompts_sha = hashlib.sha256(f.read()).hexdigest()
    job = {"prompts": os.path.abspath(prompts_path), "prompts_sha256": prompts_sha, "model": model_desc,
           "duration_s": duration_s, "seed": seed, "batch_size": batch_size, "chunk_size": chunk_size,
           "sampling": sampling}
    job_path = os.path.join(out_dir, "job.json")
    if os.path.exists(job_path):
        with open(job_path) as f:
            old = json.load(f)
        skip = (*NOT_JOB_IDENTITY, *not_compared)
        diff = sorted(k for k in set(job) | set(old) if k not in skip and job.get(k) != old.get(k))
        if diff:
            raise ValueError(f"{out_dir} holds a job with other settings ({', '.join(diff)} differ): rerun with "
                             "the same arguments and prompts file to resume, or use a new --out_dir")
    return job, prompts, malformed, num_lines


def run_infer(model, prompts_path: str, out_dir: str, *, duration_s: float = 10.0, batch_size: int = 1,
              chunk_size: int = 64, seed: int = 0, temperatures=None, top_k: int | None = None,
              top_p: float | None = None, guidance_scale: float | None = None,
              coarse_guidance_scale: float | None = None, num_samples: int = 1,
              num_shards: int | None = None, shard_index: int | None = None, model_desc: str = "",
              untrained: bool = False, progress: bool = False, log: Callable[[str], None] = print,
              after_chunk: Callable[[int], None] | None = None, max_duration_s: float = MAX_DURATION_S) -> dict:
    """Decodes this shard's chunks of `prompts_path` into `out_dir` with `model` (a `MusicLM`); returns the summary
    (also written to summary.json, or summary-shard-IIIII-of-NNNNN.json when there are several shards).

    Sampling options left None take the model's own (`model.sampling`). `model_desc` names the model in job.json
    (a rerun with another is refused); `after_chunk(k)` is called after chunk k is complete (tests use it to
    simulate a crash)."""
    import numpy as np

    given = dict(temperatures=temperatures, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale,
                 coarse_guidance_scale=coarse_guidance_scale)
    opts = {**getattr(model, "sampling", {}), **{k: v for k, v in given.items() if v is not None}}
    num_shards, shard_index = resolve_shard(num_shards, shard_index)
    job, prompts, malformed, num_lines = check_job(
        prompts_path, out_dir, duration_s=duration_s, batch_size=batch_size, chunk_size=chunk_size, seed=seed,
        num_samples=num_samples, model_desc=model_desc, max_duration_s=max_duration_s, **opts)
    sampling = job["sampling"]
    chunk_dir = os.path.join(out_dir, "chunks")
    os.makedirs(chunk_dir, exist_ok=True)
    job_path = os.path.join(out_dir, "job.json")
    if not os.path.exists(job_path):
        _write_text(job_path, json.dumps(job, indent=1) + "\n")

    num_chunks = math.ceil(num_lines / chunk_size)
    mine = [k for k in range(num_chunks) if k % num_shards == shard_index]
    by_chunk: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_chunk.setdefault((p.line - 1) // chunk_size, []).append(p)
    my_malformed = [m for m in malformed if (m["line"] - 1) // chunk_size % num_shards == shard_index]
    for m in my_malformed:
        log(f"infer: malformed line {m['line']} of {prompts_path}: {m['error']} (skipped)")
    counts = {"done": 0, "skipped": 0, "malformed": len(my_malformed), "failed": 0}
    failed, audio_s, chunks_done, chunks_skipped = [], 0.0, 0, 0
    t_start = time.perf_counter()
    rate = model.sample_rate
    for k in mine:
        todo = by_chunk.get(k, [])
        marker = os.path.join(chunk_dir, _chunk_name(k) + ".done")
        if os.path.exists(marker):
            counts["skipped"] += len(todo)
            chunks_skipped += 1
            continue
        rows, chunk_failed = [], []
        for call in _batches(todo, batch_size):
            texts = [p.prompt for p in call]
            try:
                melody = _melodies(call, prompts_path)
                tempo = ({"bpm": [bpm_from_text(p.prompt) if p.bpm is None else p.bpm for p in call]}
                         if any(p.bpm is not None for p in call) else {})
                if any(p.key is not None for p in call):
                    tempo["key"] = [key_from_text(p.prompt) if p.key is None else p.key for p in call]
                gen = model.generate_full(texts, call[0].duration_s, **sampling, seed=[p.seed for p in call],
                                         progress=progress, max_duration_s=max_duration_s, **melody, **tempo)
                timings = dict(gen.timings)
                scores = gen.scores[:, 0]
                if not np.isfinite(scores).all():  # num_samples == 1: not reranked; score the kept waves here
                    t0 = time.perf_counter()
                    scores = model.mulan_scores(texts, gen.waves)
                    timings["score"] = time.perf_counter() - t0
                for row, p in enumerate(call):
                    wave = np.asarray(gen.waves[row])
                    if not np.isfinite(wave).all():
                        raise FloatingPointError(f"non-finite audio for line {p.line}")
                    wav = p.id + ".wav"
                    tokens = {s: f"{p.id}.{s}.npy" for s in STAGES}
                    for s in STAGES:
                        _write_npy(os.path.join(out_dir, tokens[s]), np.asarray(gen.tokens[s][row, 0]))
                    _write_wav(os.path.join(out_dir, wav), wave, gen.sample_rate)
                    rows.append({"id": p.id, "line": p.line, "prompt": p.prompt, "seed": p.seed,
                                 "duration_s": p.duration_s, "sample_rate": gen.sample_rate,
                                 "seconds": wave.shape[-1] / gen.sample_rate, "settings": sampling,
                                 "batch": {"size": len(call), "row": row}, "wav": wav, "tokens": tokens,
                                 "timings_s": {n: round(v, 4) for n, v in timings.items()},
                                 "mulan_score": _finite(scores[row]), "untrained": untrained,
                                 **({"melody": p.melody} if p.melody else {}),
                                 **({"bpm": gen.bpm[row]} if gen.bpm is not None else {}),
                                 **(_key_fields(gen.key[row]) if gen.key is not None else {})})
                    audio_s += wave.shape[-1] / gen.sample_rate
            except Exception as e:  # noqa: BLE001 - a failed prompt is counted and named; the job goes on
                rows = [r for r in rows if r["line"] not in {p.line for p in call}]
                message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                for p in call:
                    chunk_failed.append({"line": p.line, "id": p.id, "prompt": p.prompt, "error": message})
                    log(f"infer: FAILED line {p.line} (id {p.id}): {message}")
        name = _chunk_name(k)
        _write_text(os.path.join(chunk_dir, name + ".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        counts["done"] += len(rows)
        if chunk_failed:
            failed += chunk_failed
            counts["failed"] += len(chunk_failed)
            continue  # no marker: a rerun redoes this chunk
        first, last = k * chunk_size + 1, min((k + 1) * chunk_size, num_lines)
        _write_text(marker, json.dumps({"chunk": k, "lines": [first, last], "ids": [r["id"] for r in rows]}) + "\n")
        chunks_done += 1
        if after_chunk is not None:
            after_chunk(k)

    wall = time.perf_counter() - t_start
    complete = all(os.path.exists(os.path.join(chunk_dir, _chunk_name(k) + ".done")) for k in range(num_chunks))
    if complete:
        merged = []
        for k in range(num_chunks):
            with open(os.path.join(chunk_dir, _chunk_name(k) + ".jsonl")) as f:
                merged += [line for line in f if line.strip()]
        _write_text(os.path.join(out_dir, "results.jsonl"), "".join(merged))
    summary = {**counts, "failed_prompts": failed, "malformed_lines": my_malformed, "out_dir": out_dir,
               "shard_index": shard_index, "num_shards": num_shards, "chunks": len(mine),
               "chunks_done": chunks_done, "chunks_skipped": chunks_skipped, "job_complete": complete,
               "wall_s": round(wall, 3), "prompts_per_s": round(counts["done"] / wall, 4) if wall > 0 else None,
               "audio_s_per_s": round(audio_s / wall, 4) if wall > 0 else None, "sample_rate": rate,
               "untrained": untrained}
    name = "summary.json" if num_shards == 1 else f"summary-shard-{shard_index:05d}-of-{num_shards:05d}.json"
    _write_text(os.path.join(out_dir, name), json.dumps(summary, indent=1) + "\n")
    log(f"infer: {counts['done']} done, {counts['skipped']} skipped (already done), {counts['malformed']} malformed, "
        f"{counts['failed']} failed; shard {shard_index}/{num_shards}: {len(mine)} chunks "
        f"({chunks_done} written, {chunks_skipped} skipped) in {wall:.1f} s -> {out_dir}"
        + (" (job complete: results.jsonl)" if complete else ""))
    return summary
