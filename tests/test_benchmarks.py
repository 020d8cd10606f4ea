"""benchmarks/accelerator.py in its CPU mode: the script a GPU node or TPU VM runs, at tiny sizes, end to end
(no timing asserted: figures are the script's job, the suite checks that it runs and what it records)."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_accelerator_script_runs_every_section_in_cpu_mode(tmp_path):
    out = tmp_path / "acc.json"
    done = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--cpu_small", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    s = result["sections"]
    assert result["platform"] == "cpu" and result["sizes"] == "cpu_small"
    assert s["peaks"]["bf16_flops"] > 0 and s["peaks"]["read_bytes_per_s"] > 0
    assert [(r["scan_layers"], r["remat"]) for r in s["lm_train"]] == [(True, "full"), (True, "dots"),
                                                                        (True, "none"), (False, "none")]
    for row in s["lm_train"]:
        assert row["batch"] == 8 and row["tokens_per_s"] > 0 and 0 < row["mfu_vs_bf16_peak"] < 1
    assert [r["batch"] for r in s["decode"]] == [1, 4]
    for row in s["decode"]:  # weights + K/V bytes: the bound is finite and the fraction is against it
        assert row["step_bytes"] > 0 and row["fraction_of_roofline"] == row["tokens_per_s"] / row["roofline_tokens_per_s"]
    assert s["codec_paper"]["encode_rtf"] > 0 and s["codec_paper"]["decode_rtf"] > 0
    assert s["quickstart"]["stage_coarse"]["length"] == 255 and s["quickstart"]["stage_coarse"]["steps_per_s"] > 0


def test_accelerator_script_skips_what_the_budget_does_not_reach(tmp_path):
    out = tmp_path / "acc.json"
    done = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--cpu_small", "--budget_s=0",
                           "--sections=peaks,codec_paper", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sections = json.loads(out.read_text())["sections"]
    assert sections == {"peaks": {"skipped": "budget of 0 s spent"}, "codec_paper": {"skipped": "budget of 0 s spent"}}
