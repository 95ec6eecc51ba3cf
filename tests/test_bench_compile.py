"""The benchmark suite's cold-compile cases: each gets an empty kernel cache of its own, and the
60 s goal is judged on physim's default compile settings only (no Taichi kernels run here)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import run  # noqa: E402


def _record(name, seconds, fast=False):
    return {"case": name, "group": "compile", "dim": 3, "grid": 32, "particles": 4096, "arch": "cpu",
            "precision": "f64", "fast_compile": fast, "build_seconds": 1.0, "compile_forward_seconds": 5.0,
            "compile_reverse_seconds": seconds - 6.0, "cold_total_seconds": seconds,
            "cold_total_cpu_seconds": seconds / 2, "load_average_before": 1.0, "peak_memory_bytes": 2**29}


def test_compile_cases_in_both_suites_with_a_fresh_cache():
    for quick in (True, False):
        cases = [c for c in run.make_cases(quick) if c.group == "compile"]
        assert cases, f"quick={quick}: no cold-compile case"
        for c in cases:
            assert c.physim["mode"] == "compile" and c.physim["dim"] == 3
            assert c.physim["substeps"] > c.physim["checkpoint_every"]  # the checkpoint kernels compile too


def test_cold_compile_target_ignores_fast_compile_runs():
    over = run.evaluate_targets([_record("compile_3d_f64", 90.0), _record("compile_3d_f64_fast", 30.0, True)])
    (target,) = [t for t in over if t["target"].startswith("cold compile")]
    assert not target["met"] and target["value"] == 90.0 and "compile_3d_f64_fast" not in target["all"]
    under = run.evaluate_targets([_record("compile_3d_f64", 59.0), _record("compile_3d_f64_fast", 70.0, True)])
    (target,) = [t for t in under if t["target"].startswith("cold compile")]
    assert target["met"]
    table = run.format_tables([_record("compile_3d_f64", 59.0)])
    assert "compile_3d_f64" in table and "rev compile s" in table and "53.0" in table
