import os
import socket

# No model hub at test time: every weight is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from mmldm.cli import main
from mmldm.config import load_config
from mmldm.synthetic.families import synthesize_dataset

TINY = ["--config", "tiny", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """The environment of the tests' mmldm subprocesses: one thread each (the same float
    reductions whatever the process count), offline, unbuffered."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny autoencoder (1 step), its latent cache and a long-capable generator (2 steps),
    trained once for every test that samples."""
    root = tmp_path_factory.mktemp("gen")
    synth = root / "synth"
    synthesize_dataset(synth, 6, seed=1, data=load_config("tiny").data)  # 0.8 s: 2 clips each
    ae, latents, gen = root / "ae", root / "latents", root / "gen"
    ae_args = ["--data", str(synth), "--out", str(ae), "--set", "train.sample_every=100"]
    assert main(["train-autoencoder", *ae_args, "--max-steps", "1", *TINY]) == 0
    cache_args = ["--autoencoder", str(ae), "--data", str(synth), "--out", str(latents)]
    assert main(["cache-latents", *cache_args, "--shard-size", "5", "-q"]) == 0
    gen_args = ["--latents", str(latents), "--out", str(gen), "--long"]
    assert main(["train-generator", *gen_args, "--max-steps", "2", *TINY]) == 0
    return {"synth": synth, "ae": ae, "latents": latents, "gen": gen, "root": root}
