import os

# No model hub at test time: every weight is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from mmldm.cli import main
from mmldm.config import load_config
from mmldm.synthetic.families import synthesize_dataset

TINY = ["--config", "tiny", "-q"]


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
