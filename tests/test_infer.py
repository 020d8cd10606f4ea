"""`musiclm-jax infer`: batch decoding with chunk markers, resume, malformed lines, shards (tiny random parts).

Every run decodes 0.3 s (or 0.2 s) prompts at batch 1 (one test also at batch 4) so the compiled stage programs are
shared by all tests."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import batch_decode, cli, pipeline

RATE = 8000


@pytest.fixture(scope="module")
def lm():
    return pipeline.tiny_random(0)


def _write_prompts(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def _run(lm, prompts, out, **kw):
    logs = []
    kw.setdefault("duration_s", 0.3)
    summary = batch_decode.run_infer(lm, prompts, str(out), log=logs.append, **kw)
    return summary, logs


def _rows(out):
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _wav(out, pid):
    wave, rate = sf.read(os.path.join(out, pid + ".wav"), dtype="float32")
    return wave, rate


FIVE = [{"prompt": "a calm piano waltz", "id": "waltz", "seed": 7}, json.dumps("loud rock drums"),
        {"prompt": "sad violin", "duration_s": 0.2}, {"prompt": "upbeat jazz"}, {"prompt": "ambient pads", "id": 42}]


def test_outputs_rows_tokens_and_seed_independent_of_chunking(lm, tmp_path):
    prompts = _write_prompts(tmp_path / "p.jsonl", FIVE)
    s2, logs = _run(lm, prompts, tmp_path / "c2", chunk_size=2, seed=1)
    assert (s2["done"], s2["skipped"], s2["malformed"], s2["failed"]) == (5, 0, 0, 0)
    assert s2["chunks"] == 3 and s2["job_complete"] and "5 done, 0 skipped" in logs[-1]
    assert json.load(open(tmp_path / "c2" / "summary.json"))["done"] == 5
    rows = _rows(tmp_path / "c2")
    assert [r["id"] for r in rows] == ["waltz", "line-000002", "line-000003", "line-000004", "42"]
    assert rows[0]["seed"] == 7 and rows[1]["seed"] == batch_decode.derive_seed(1, 2)
    for r in rows:
        wave, rate = _wav(tmp_path / "c2", r["id"])
        assert rate == RATE == r["sample_rate"] and np.isfinite(wave).all()
        assert wave.shape == (round(r["duration_s"] * RATE),) and r["seconds"] == r["duration_s"]
        assert r["duration_s"] == (0.2 if r["id"] == "line-000003" else 0.3)
        assert set(r["timings_s"]) == {"semantic", "coarse", "fine", "codec", "score"}
        assert isinstance(r["mulan_score"], float) and r["settings"]["temperatures"] == [1.0, 0.95, 0.4]
        sem = np.load(tmp_path / "c2" / r["tokens"]["semantic"])
        coarse = np.load(tmp_path / "c2" / r["tokens"]["coarse"])
        assert sem.shape == (round(r["duration_s"] * lm.semantic_rate),) and coarse.shape[-1] == 2
    # the same seeds give the same audio with another chunk size and batch size (the four 0.3 s prompts, explicit
    # seed included, in one call), and `generate` with the row's seed reproduces it
    s5, _ = _run(lm, prompts, tmp_path / "c5", chunk_size=5, batch_size=4, seed=1)
    assert s5["done"] == 5 and s5["chunks"] == 1
    batched = {r["id"]: r for r in _rows(tmp_path / "c5")}
    assert [batched[r["id"]]["batch"] for r in rows] == [{"size": 4, "row": i} for i in (0, 1)] + [
        {"size": 1, "row": 0}] + [{"size": 4, "row": i} for i in (2, 3)]
    for r in rows:
        assert batched[r["id"]]["seed"] == r["seed"]
        np.testing.assert_allclose(_wav(tmp_path / "c2", r["id"])[0], _wav(tmp_path / "c5", r["id"])[0],
                                   atol=1 / 32767)
        for s in batch_decode.STAGES:
            np.testing.assert_array_equal(np.load(tmp_path / "c2" / r["tokens"][s]),
                                          np.load(tmp_path / "c5" / r["tokens"][s]))
    gen = lm.generate([rows[3]["prompt"]], 0.3, seed=rows[3]["seed"], progress=False)
    np.testing.assert_allclose(_wav(tmp_path / "c2", "line-000004")[0], gen[0], atol=1 / 32767)
    # another base seed changes derived seeds but not an explicit one
    s9, _ = _run(lm, prompts, tmp_path / "s9", chunk_size=5, seed=9)
    np.testing.assert_array_equal(_wav(tmp_path / "c2", "waltz")[0], _wav(tmp_path / "s9", "waltz")[0])
    assert not np.array_equal(_wav(tmp_path / "c2", "line-000004")[0], _wav(tmp_path / "s9", "line-000004")[0])
    # the same out_dir with other settings is refused
    with pytest.raises(ValueError, match="other settings"):
        _run(lm, prompts, tmp_path / "c2", chunk_size=2, seed=2)
    # ... but not a changed --batch_size: outputs do not depend on it, so a job may resume smaller
    resumed, _ = _run(lm, prompts, tmp_path / "c2", chunk_size=2, seed=1, batch_size=3)
    assert (resumed["done"], resumed["skipped"]) == (0, 5)


def test_crash_then_rerun_produces_every_prompt_once(lm, tmp_path):
    prompts = _write_prompts(tmp_path / "p.jsonl", [f"\"prompt number {i}\"" for i in range(5)])

    def crash(k):
        raise KeyboardInterrupt(f"simulated crash after chunk {k}")
    with pytest.raises(KeyboardInterrupt):
        _run(lm, prompts, tmp_path / "o", chunk_size=2, after_chunk=crash)
    out = tmp_path / "o"
    assert sorted(os.listdir(out / "chunks")) == ["chunk-00000.done", "chunk-00000.jsonl"]
    assert not (out / "results.jsonl").exists()
    s, logs = _run(lm, prompts, out, chunk_size=2)
    assert (s["done"], s["skipped"], s["chunks_skipped"], s["chunks_done"]) == (3, 2, 1, 2) and s["job_complete"]
    # a lost marker and wav (crash between writing a chunk's files and its marker): only that chunk is redone
    os.remove(out / "chunks" / "chunk-00001.done")
    os.remove(out / "line-000003.wav")
    before = _wav(out, "line-000004")[0]
    s, _ = _run(lm, prompts, out, chunk_size=2)
    assert (s["done"], s["skipped"], s["chunks_done"]) == (2, 3, 1)
    rows = _rows(out)
    ids = [f"line-{i:06d}" for i in range(1, 6)]
    assert [r["id"] for r in rows] == ids  # exactly once each, in line order
    assert sorted(f for f in os.listdir(out) if f.endswith(".wav")) == sorted(i + ".wav" for i in ids)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary files left behind
    np.testing.assert_array_equal(before, _wav(out, "line-000004")[0])


def test_malformed_lines_are_reported_counted_and_skipped(lm, tmp_path):
    lines = ['{"prompt": "ok one"}', '{"prompt": ', '{"id": "x"}', '{"prompt": "  "}', "",
             '{"prompt": "a", "duration_s": -1}', '{"prompt": "a", "duration_s": "long"}', '{"prompt": "a", "dur": 1}',
             '[1, 2]', '{"prompt": "a", "id": "../evil"}', '{"prompt": "a", "seed": -3}', '"ok two"',
             '{"prompt": "dup", "id": "line-000001"}', '{"prompt": "a", "bpm": 1000}', '{"prompt": "a", "bpm": "fast"}']
    prompts = _write_prompts(tmp_path / "p.jsonl", lines)
    s, logs = _run(lm, prompts, tmp_path / "o", chunk_size=4)
    bad = {m["line"]: m["error"] for m in s["malformed_lines"]}
    assert sorted(bad) == [2, 3, 4, 6, 7, 8, 9, 10, 11, 13, 14, 15]  # line 5 is blank: ignored, not malformed
    assert "not JSON" in bad[2] and "prompt" in bad[3] and "prompt" in bad[4] and "duration_s" in bad[6]
    assert "duration_s" in bad[7] and "unknown key" in bad[8] and "id" in bad[10] and "seed" in bad[11]
    assert "duplicate id" in bad[13] and "line 1" in bad[13] and "bpm" in bad[14] and "bpm" in bad[15]
    assert (s["done"], s["malformed"], s["failed"]) == (2, 12, 0)
    assert any(msg.startswith("infer: malformed line 7 ") for msg in logs)
    assert "12 malformed" in logs[-1]
    assert [r["id"] for r in _rows(tmp_path / "o")] == ["line-000001", "line-000012"]


def test_shards_cover_every_prompt_exactly_once(lm, tmp_path):
    prompts = _write_prompts(tmp_path / "p.jsonl", [f"\"shard prompt {i}\"" for i in range(5)] + ["{bad"])
    out = tmp_path / "o"
    a, _ = _run(lm, prompts, out, chunk_size=2, num_shards=2, shard_index=0)
    assert not a["job_complete"] and not (out / "results.jsonl").exists()
    b, _ = _run(lm, prompts, out, chunk_size=2, num_shards=2, shard_index=1)
    assert b["job_complete"] and a["done"] + b["done"] == 5 and a["malformed"] + b["malformed"] == 1
    assert (a["chunks"], b["chunks"]) == (2, 1)  # chunks 0, 2 | 1
    assert (out / "summary-shard-00000-of-00002.json").exists() and (out / "summary-shard-00001-of-00002.json").exists()
    assert [r["line"] for r in _rows(out)] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="together"):
        _run(lm, prompts, out, chunk_size=2, num_shards=2)
    with pytest.raises(ValueError, match="shard_index"):
        _run(lm, prompts, out, chunk_size=2, num_shards=2, shard_index=2)


class _Flaky:
    """Wraps the tiny model; raises for the prompt 'boom' (a generation failure)."""

    def __init__(self, lm):
        self.lm = lm
        self.sample_rate = lm.sample_rate

    def generate_full(self, prompts, *a, **kw):
        if "boom" in prompts:
            raise RuntimeError("out of memory (simulated)")
        return self.lm.generate_full(prompts, *a, **kw)

    def mulan_scores(self, *a):
        return self.lm.mulan_scores(*a)


def test_cli_failures_exit_code_and_errors(lm, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "tiny_random", lambda seed=0: _Flaky(lm))
    prompts = _write_prompts(tmp_path / "p.jsonl", ['"fine one"', '"boom"', '"fine two"'])
    argv = ["infer", "--prompts", prompts, "--out_dir", str(tmp_path / "o"), "--random_init", "--tiny",
            "--duration", "0.3", "--chunk_size", "2", "--num_shards", "1", "--shard_index", "0"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED line 2 (id line-000002): RuntimeError: out of memory" in out
    assert "2 done, 0 skipped (already done), 0 malformed, 1 failed" in out
    summary = json.load(open(tmp_path / "o" / "summary.json"))
    assert summary["failed_prompts"][0]["line"] == 2 and not summary["job_complete"]
    assert not (tmp_path / "o" / "chunks" / "chunk-00000.done").exists()  # retried by the next run
    # the cause gone (same file, same out_dir): the rerun redoes only the chunk without a marker and exits 0
    monkeypatch.setattr(pipeline, "tiny_random", lambda seed=0: lm)
    assert cli.main(argv) == 0
    assert "2 done, 1 skipped (already done), 0 malformed, 0 failed" in capsys.readouterr().out
    assert [r["id"] for r in _rows(tmp_path / "o")] == ["line-000001", "line-000002", "line-000003"]
    for bad, match in ((["--prompts", str(tmp_path / "missing.jsonl")], "prompts file not found"),
                       (["--batch_size", "0"], "batch_size"), (["--duration", "0"], "duration")):
        args = ["infer", "--prompts", prompts, "--out_dir", str(tmp_path / "e"), "--random_init", "--tiny",
                "--num_shards", "1", "--shard_index", "0", *bad]
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("musiclm-jax: error: ") and match in err and len(err.strip().splitlines()) == 1


def test_jobs_without_a_valid_prompt_fail_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def no_model(seed=0):
        raise AssertionError("the model was loaded before the job was checked")

    monkeypatch.setattr(pipeline, "tiny_random", no_model)
    empty = _write_prompts(tmp_path / "empty.jsonl", ["", "  "])
    bad = _write_prompts(tmp_path / "bad.jsonl", ['{"prompt": ', '{"prompt": "x", "duration_s": 1e7}'])
    good = _write_prompts(tmp_path / "good.jsonl", ['"fine one"'])
    base = ["infer", "--out_dir", str(tmp_path / "o"), "--random_init", "--tiny", "--num_shards", "1",
            "--shard_index", "0"]
    for argv, match in (([*base, "--prompts", empty], "holds no valid prompt (2 lines, 0 malformed"),
                        ([*base, "--prompts", bad], "holds no valid prompt (2 lines, 2 malformed; line 1: not JSON"),
                        ([*base, "--prompts", good, "--duration", "0"], "--duration must be"),
                        ([*base, "--prompts", good, "--duration", "1e9"], "over the limit"),
                        ([*base, "--prompts", good, "--top_k", "-1"], "--top_k >= 0")):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("musiclm-jax: error: ") and match in err and len(err.strip().splitlines()) == 1
    prompts, malformed, _ = batch_decode.read_prompts(bad, duration_s=1.0, base_seed=0)
    assert not prompts and "over the limit of 600 s" in malformed[1]["error"]
    prompts, malformed, _ = batch_decode.read_prompts(bad, duration_s=1.0, base_seed=0, max_duration_s=1e8)
    assert [p.duration_s for p in prompts] == [1e7]  # the limit can be lifted


def test_batches_group_by_duration():
    mk = lambda line, dur=0.3: batch_decode.Prompt(line, f"p{line}", "x", line, dur)
    ps = [mk(1), mk(2), mk(3, dur=0.2), mk(4), mk(5), mk(6, dur=0.2)]
    calls = [[p.line for p in c] for c in batch_decode._batches(ps, 2)]
    assert calls == [[1, 2], [3, 6], [4, 5]]
    assert [[p.line for p in c] for c in batch_decode._batches(ps, 1)] == [[i] for i in range(1, 7)]
    assert batch_decode.derive_seed(0, 1) == batch_decode.derive_seed(0, 1) != batch_decode.derive_seed(0, 2)


def test_a_coarse_guidance_scale_is_part_of_the_job(tmp_path):
    from musiclm_jax.batch_decode import check_job

    prompts = _write_prompts(tmp_path / "p.jsonl", ["\"a calm piano waltz\""])
    job, _, _, _ = check_job(prompts, str(tmp_path / "o"), guidance_scale=3.0, coarse_guidance_scale=1.5)
    assert job["sampling"]["coarse_guidance_scale"] == 1.5
    assert "coarse_guidance_scale" not in check_job(prompts, str(tmp_path / "o"), guidance_scale=3.0)[0]["sampling"]
    os.makedirs(tmp_path / "o")
    (tmp_path / "o" / "job.json").write_text(json.dumps(job))
    with pytest.raises(ValueError, match="sampling differ"):
        check_job(prompts, str(tmp_path / "o"), guidance_scale=3.0, coarse_guidance_scale=2.0)
