"""Scale-out on this machine: two nodes simulated by two torchrun agents with a local c10d
rendezvous (one process each, gloo), and cache-latents ranks killed and resumed. Each result
is compared with a one-process run: latent caches identical, generator losses and weights
equal within float tolerance."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, free_port, subprocess_env
from mmldm.checkpoint import load_checkpoint
from mmldm.data.latents import shard_name


def _mmldm(*args):
    return [sys.executable, "-m", "mmldm", *args]


def _two_nodes(args, timeout=300):
    """``mmldm ARGS`` on 2 nodes x 1 process: two torchrun agents meeting at a local c10d
    rendezvous, as two machines would (``--node_rank`` each)."""
    port, env = free_port(), subprocess_env()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "test",
                "--max-restarts",
                "0",
                "-m",
                "mmldm",
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]


def _run(args, **env):
    result = subprocess.run(
        _mmldm(*args), env={**subprocess_env(), **env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_same_cache(a, b):
    meta = json.loads((a / "meta.json").read_text())
    shards = -(-meta["num_clips"] // meta["shard_size"])
    for k in range(shards):
        x, y = load_file(str(a / shard_name(k))), load_file(str(b / shard_name(k)))
        assert x.keys() == y.keys() and all(torch.equal(x[n], y[n]) for n in x), k
    assert json.loads((a / "stats.json").read_text()) == json.loads((b / "stats.json").read_text())


@pytest.fixture(scope="module")
def reference_cache(trained, tmp_path_factory):
    """The latent cache written by one process (shards of 2 clips: 6 shards)."""
    out = tmp_path_factory.mktemp("cache") / "one"
    args = ["cache-latents", "--autoencoder", str(trained["ae"]), "--data", str(trained["synth"])]
    _run([*args, "--out", str(out), "--shard-size", "2", "-q"])
    return out, args


def test_two_nodes_write_the_latent_cache_of_one_process(reference_cache, tmp_path):
    one, args = reference_cache
    two = tmp_path / "two"
    _two_nodes([*args, "--out", str(two), "--shard-size", "2", "-q"])
    _assert_same_cache(one, two)


def test_a_killed_cache_process_resumes_to_the_same_cache(reference_cache, tmp_path):
    """Rank 1 of 2 killed (SIGKILL) before it wrote a shard, a half-written shard left behind
    as a kill mid-write leaves it; rank 0 finishes its shards but cannot compute the statistics;
    running the command again completes the cache, identical to one process's."""
    one, args = reference_cache
    out = tmp_path / "killed"
    command = _mmldm(*args, "--out", str(out), "--shard-size", "2", "-q")
    env = {**subprocess_env(), "WORLD_SIZE": "2"}
    rank1 = subprocess.Popen(command, env={**env, "RANK": "1"}, start_new_session=True)
    time.sleep(2.0)  # loading: it waits for rank 0's meta.json before it encodes anything
    os.killpg(rank1.pid, signal.SIGKILL)
    assert rank1.wait(timeout=60) == -signal.SIGKILL
    _run([*args, "--out", str(out), "--shard-size", "2", "-q"], WORLD_SIZE="2", RANK="0")
    assert {p.name for p in out.glob("shard_*")} == {shard_name(k) for k in (0, 2, 4)}
    assert not (out / "stats.json").exists()  # rank 1's shards are missing
    (out / f".tmp-{shard_name(3)}").write_bytes(b"half a shard")
    _two_nodes([*args, "--out", str(out), "--shard-size", "2", "-q"])  # the same command again
    _assert_same_cache(one, out)


def _generator_args(trained):
    args = ["train-generator", "--latents", str(trained["latents"]), "--max-steps", "4", *TINY]
    return [*args, "--set", "train.log_every=1", "--set", "train.checkpoint_every=2"]


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process_generator(trained, tmp_path_factory):
    """4 steps of the generator on one process, global batch 4."""
    run = tmp_path_factory.mktemp("gen") / "one"
    _run([*_generator_args(trained), "--out", str(run), "--set", "train.generator.batch_size=4"])
    return run


def test_two_nodes_train_the_generator_as_one_process_does(
    trained, one_process_generator, tmp_path
):
    """The same global batch (4) as one process of 4 or two nodes of 2: the logged losses (the
    mean over processes) and the weights after 4 steps agree to float tolerance, because each
    sample's noise comes from (seed, step, its place in the global batch)."""
    one, two = one_process_generator, tmp_path / "two"
    _two_nodes(
        [*_generator_args(trained), "--out", str(two), "--set", "train.generator.batch_size=2"]
    )
    assert len(_losses(one)) == 4 and _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    ckpt_one, ckpt_two = load_checkpoint(one), load_checkpoint(two)
    assert ckpt_two.training_state()["world_size"] == 2
    for module in ("dit", "ema"):
        x, y = ckpt_one.state_dict(module), ckpt_two.state_dict(module)
        for key in x:
            assert torch.allclose(x[key], y[key], atol=1e-5), (module, key)


# --------------------------------------------------------------------------------------------
# FSDP2 through accelerate, with the launch configs the repository ships (accelerate/*.yaml).
# accelerate turns FSDP on for GPUs only; mmldm's make_accelerator applies it to CPU processes
# too (torch's FSDP2 runs over gloo), which is what these tests run.
# --------------------------------------------------------------------------------------------

ACCELERATE = Path(__file__).resolve().parent.parent / "accelerate"


def _fsdp(config, args):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ACCELERATE / config), "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--main_process_port", str(free_port()),
           "-m", "mmldm", *args]  # fmt: skip
    result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_fsdp_generator_matches_one_process_and_resumes_exactly(
    trained, one_process_generator, tmp_path
):
    """The DiT sharded over 2 processes (its DiTBlocks one unit each) trains as one process
    given the same global batch, and a run stopped at step 2 and resumed under FSDP ends
    where the uninterrupted one does, bit for bit (full weights and optimizer states saved)."""
    one, fsdp = one_process_generator, tmp_path / "fsdp"
    half = [*_generator_args(trained), "--set", "train.generator.batch_size=2"]
    _fsdp("fsdp_generator.yaml", [*half, "--out", str(fsdp)])

    def from_step_2(source, name):  # the run as if killed after its step-2 checkpoint
        shutil.copytree(source, tmp_path / name)
        shutil.rmtree(tmp_path / name / "checkpoints" / "step_00000004")
        return tmp_path / name

    resumed = from_step_2(fsdp, "resumed")
    _fsdp("fsdp_generator.yaml", ["train-generator", "--resume", str(resumed), "--max-steps", "4"])
    losses = [_losses(run) for run in (one, fsdp, resumed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == losses[1]
    # checkpoints cross over: one process's resumes under FSDP, FSDP's on one process
    to_fsdp, to_one = from_step_2(one, "to_fsdp"), from_step_2(fsdp, "to_one")
    _fsdp("fsdp_generator.yaml", ["train-generator", "--resume", str(to_fsdp), "--max-steps", "3"])
    _run(["train-generator", "--resume", str(to_one), "--max-steps", "3", "-q"])
    for crossed in (to_fsdp, to_one):
        assert load_checkpoint(crossed).step == 3 and len(_losses(crossed)) == 3
    a, b, c = (load_checkpoint(run) for run in (one, fsdp, resumed))
    assert b.step == c.step == 4
    for module in ("dit", "ema"):
        x, y, z = a.state_dict(module), b.state_dict(module), c.state_dict(module)
        for key in x:
            assert torch.allclose(x[key], y[key], atol=1e-5), (module, key)
            assert torch.equal(y[key], z[key]), (module, key)
    adam = b.training_state()["optimizers"]["dit"]["state"]  # full tensors, by parameter name
    assert adam["blocks.0.attn.qkv.weight"]["exp_avg"].shape == y["blocks.0.attn.qkv.weight"].shape


def test_fsdp_autoencoder_with_its_discriminator_saves_a_full_checkpoint(trained, tmp_path):
    run = tmp_path / "ae"
    args = ["train-autoencoder", "--data", str(trained["synth"]), "--out", str(run), *TINY]
    _fsdp("fsdp_autoencoder.yaml", [*args, "--max-steps", "2"])
    ckpt = load_checkpoint(run, kind="autoencoder")
    assert {"autoencoder", "discriminator", "vae"} <= set(ckpt.modules)
    from mmldm.codec import Codec

    codec = Codec.load(run)  # the full weights, loadable on one process
    state = ckpt.training_state()["optimizers"]
    params = dict(codec.autoencoder.named_parameters())
    for name, moments in state["autoencoder"]["state"].items():
        assert moments["exp_avg"].shape == params[name].shape, name
