"""The benchmark scripts stay runnable: they import what the package exports today, and the CPU
timings of the tiny config run end to end into their JSON report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=BENCH.parent
    )


@pytest.mark.parametrize(
    "script", ["flops.py", "cpu_timings.py", "gpu.py", "decoders.py", "memory.py"]
)
def test_benchmark_scripts_import_and_explain_themselves(script):
    result = _run(str(BENCH / script), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_cpu_timings_of_the_tiny_config_write_their_report(tmp_path):
    out = tmp_path / "cpu.json"
    result = _run(str(BENCH / "cpu_timings.py"), "--sections", "tiny", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["results"] if r["section"] == "tiny"}
    assert {"DiT train step", "autoencoder train step"} <= names
    assert all(r["median_s"] > 0 for r in report["results"])


def test_gpu_benchmark_refuses_to_run_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run(str(BENCH / "gpu.py"), "--out", str(tmp_path / "gpu.json"))
    assert result.returncode == 2
    assert "CUDA" in result.stdout + result.stderr


def test_memory_of_the_tiny_config_measures_activations(tmp_path):
    """Activations grow with the batch, gradient checkpointing keeps less of them, FSDP holds
    less per GPU than DDP."""
    out = tmp_path / "memory.json"
    result = _run(str(BENCH / "memory.py"), "--config", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "FSDP x8" in result.stdout and "141 GB (H200)" in result.stdout
    stages = {s["name"]: s for s in json.loads(out.read_text())["stages"]}
    dit = stages["generator (DiT)"]
    assert dit["trainable"] == dit["ema"] > 0
    slope = {key: per_clip for key, (_, per_clip) in dit["activations"].items()}
    assert all(v > 0 for v in slope.values())
    assert slope["fp32, checkpointing"] < slope["fp32"] / 2
    assert stages["autoencoder (decoder UNet)"]["frozen"] > 0  # the VAE
