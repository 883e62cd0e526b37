import os
import random

import numpy as np
import pytest
import torch
from torch import nn

import mmldm.checkpoint as ckpt
from mmldm.checkpoint import (
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from mmldm.config import load_config
from mmldm.weights import CheckpointError, load_state_dict_file, load_weights


class Net(nn.Module):
    def __init__(self, width=8, out=3):
        super().__init__()
        self.fc = nn.Linear(4, width)
        self.norm = nn.BatchNorm1d(width)  # has buffers (running stats, counter)
        self.head = nn.Linear(width, out)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.fc(x))))


@pytest.fixture
def cfg():
    return load_config("tiny")


def _train(net, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        loss = (net(x) - x[:, :3]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_round_trip_is_bit_exact(tmp_path, cfg):
    torch.manual_seed(0)
    net = Net()
    mixed = {
        "w_bf16": torch.randn(5, 3).to(torch.bfloat16),
        "w_f16": torch.randn(7).half(),
        "w_f64": torch.randn(2, 2, dtype=torch.float64),
        "idx": torch.arange(6, dtype=torch.int64).view(2, 3),
        "flag": torch.tensor([True, False]),
    }
    path = save_checkpoint(
        tmp_path / "checkpoints",
        modules={"model": net, "extra": mixed},
        config=cfg,
        kind="generator",
        step=42,
    )
    loaded = load_checkpoint(path, kind="generator")
    assert loaded.step == 42 and loaded.kind == "generator"
    assert loaded.config == cfg
    assert loaded.modules == ["extra", "model"]
    for key, value in net.state_dict().items():
        got = loaded.state_dict("model")[key]
        assert got.dtype == value.dtype and torch.equal(got, value)
    for key, value in mixed.items():
        got = loaded.state_dict("extra")[key]
        assert got.dtype == value.dtype and torch.equal(got, value)
    fresh = Net()
    report = load_weights(fresh, loaded.state_dict("model"))
    assert report.ok
    x = torch.randn(3, 4)
    net.eval()
    fresh.eval()
    assert torch.equal(net(x), fresh(x))


def test_saved_copy_is_independent_of_live_model(tmp_path, cfg):
    net = Net()
    path = save_checkpoint(tmp_path, modules={"model": net}, config=cfg, kind="test", step=1)
    before = net.fc.weight.detach().clone()
    with torch.no_grad():
        net.fc.weight.add_(1.0)
    assert torch.equal(load_checkpoint(path).state_dict("model")["fc.weight"], before)


def test_tied_weights_can_be_saved(tmp_path, cfg):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    path = save_checkpoint(tmp_path, modules={"model": net}, config=cfg, kind="test", step=1)
    sd = load_checkpoint(path).state_dict("model")
    assert torch.equal(sd["0.weight"], sd["1.weight"])


def test_exact_resume_of_training(tmp_path, cfg):
    """Train 6 steps straight vs. 3 steps, save, reload in a fresh process state, 3 more."""
    torch.manual_seed(0)
    ref = Net()
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    _train(ref, ref_opt, 3, seed=1)
    _train(ref, ref_opt, 3, seed=2)

    net = Net()
    net.load_state_dict(init)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    _train(net, opt, 3, seed=1)
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002
    torch.manual_seed(7)
    save_checkpoint(
        tmp_path / "checkpoints",
        modules={"model": net},
        config=cfg,
        kind="test",
        step=3,
        training_state={"optimizers": {"model": opt.state_dict()}, "rng": capture_rng_state()},
    )
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002

    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)  # disturb every generator
    loaded = load_checkpoint(tmp_path / "checkpoints")
    state = loaded.training_state()
    assert state["step"] == 3
    net2 = Net()
    load_weights(net2, loaded.state_dict("model"))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizers"]["model"])
    restore_rng_state(state["rng"])
    assert (random.random(), np.random.rand()) == expected_draws[:2]  # noqa: NPY002
    assert torch.equal(torch.rand(1), expected_draws[2])
    _train(net2, opt2, 3, seed=2)
    for key, value in ref.state_dict().items():
        assert torch.equal(net2.state_dict()[key], value), key


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, cfg, monkeypatch):
    root = tmp_path / "checkpoints"
    net = Net()
    save_checkpoint(
        root,
        modules={"model": net},
        config=cfg,
        kind="test",
        step=10,
        training_state={"note": torch.tensor([1])},
    )
    good = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.fc.weight.mul_(2)

    def crash(src, dst):
        raise KeyboardInterrupt("simulated kill between write and rename")

    monkeypatch.setattr(ckpt.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, modules={"model": net}, config=cfg, kind="test", step=20)
    monkeypatch.undo()

    assert [s for s, _ in list_checkpoints(root)] == [10]
    loaded = load_checkpoint(tmp_path / "checkpoints")
    assert loaded.step == 10
    for key, value in good.items():
        assert torch.equal(loaded.state_dict("model")[key], value)
    assert loaded.training_state()["note"].item() == 1


def test_half_written_temporary_folder_is_ignored_and_cleaned(tmp_path, cfg):
    root = tmp_path / "checkpoints"
    net = Net()
    save_checkpoint(root, modules={"model": net}, config=cfg, kind="test", step=5)
    # What a kill in the middle of writing leaves: a temporary folder with a torn file.
    torn = root / ".tmp-step_00000009-deadbeef"
    torn.mkdir()
    (torn / "weights.safetensors").write_bytes(b"\x10\x00\x00")
    assert load_checkpoint(root).step == 5
    save_checkpoint(root, modules={"model": net}, config=cfg, kind="test", step=6)
    assert not torn.exists()
    assert load_checkpoint(root).step == 6


def test_resaving_a_step_replaces_it(tmp_path, cfg):
    root = tmp_path / "checkpoints"
    net = Net()
    save_checkpoint(root, modules={"model": net}, config=cfg, kind="test", step=5)
    with torch.no_grad():
        net.head.bias.fill_(3.0)
    save_checkpoint(root, modules={"model": net}, config=cfg, kind="test", step=5)
    assert len(list_checkpoints(root)) == 1
    assert torch.all(load_checkpoint(root).state_dict("model")["head.bias"] == 3.0)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_keep_last_prunes_oldest(tmp_path, cfg):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        save_checkpoint(
            root, modules={"model": Net()}, config=cfg, kind="test", step=step, keep_last=2
        )
    assert [s for s, _ in list_checkpoints(root)] == [3, 4]


def test_resolve_run_checkpoint_folder_and_file(tmp_path, cfg):
    run = tmp_path / "run"
    path = save_checkpoint(
        run / "checkpoints", modules={"model": Net()}, config=cfg, kind="test", step=3
    )
    for where in (run, run / "checkpoints", path, path / "weights.safetensors"):
        assert load_checkpoint(where).step == 3
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_wrong_kind_is_refused(tmp_path, cfg):
    path = save_checkpoint(
        tmp_path, modules={"model": Net()}, config=cfg, kind="autoencoder", step=1
    )
    with pytest.raises(CheckpointError, match="'autoencoder' checkpoint, expected 'generator'"):
        load_checkpoint(path, kind="generator")


def test_generator_of_format_1_is_refused_other_kinds_load(tmp_path, cfg):
    """Format 1 put the DiT's position rows where DiT puts columns: such a generator would see
    its tokens transposed, so it is refused with a message; an autoencoder still loads."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    def as_format_1(path):
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata())
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        save_file(tensors, str(path), metadata={**meta, "mmldm.format": "1"})
        return path

    for kind in ("generator", "autoencoder"):
        folder = save_checkpoint(
            tmp_path / kind, modules={"model": Net()}, config=cfg, kind=kind, step=1
        )
        assert load_checkpoint(folder).metadata["mmldm.format"] == ckpt.FORMAT_VERSION
        as_format_1(resolve_checkpoint(folder))
    with pytest.raises(CheckpointError, match="generator of checkpoint format 1.*Train it again"):
        load_checkpoint(tmp_path / "generator", kind="generator")
    assert load_checkpoint(tmp_path / "autoencoder").kind == "autoencoder"


def test_mismatch_is_reported_and_strict_fails(tmp_path, cfg, caplog):
    path = save_checkpoint(tmp_path, modules={"model": Net(width=8)}, config=cfg, kind="t", step=1)
    sd = load_checkpoint(path).state_dict("model")
    sd["extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    target = Net(width=16)
    with pytest.raises(CheckpointError) as err:
        load_weights(target, sd)
    message = str(err.value)
    assert "missing: head.bias" in message
    assert "unexpected: extra.weight" in message
    assert "fc.weight: checkpoint (8, 4) vs model (16, 4)" in message

    # Non-strict: loads what fits, logs the rest, returns the report.
    target = Net(width=8)
    before = target.head.bias.detach().clone()
    report = load_weights(target, sd, strict=False)
    assert report.missing == ["head.bias"] and report.unexpected == ["extra.weight"]
    assert torch.equal(target.fc.weight, sd["fc.weight"])
    assert torch.equal(target.head.bias, before)
    assert "1 missing: head.bias" in caplog.text


def test_unknown_module_name(tmp_path, cfg):
    path = save_checkpoint(tmp_path, modules={"model": Net()}, config=cfg, kind="t", step=1)
    with pytest.raises(CheckpointError, match="no module 'ema'.*holds: model"):
        load_checkpoint(path).state_dict("ema")


def test_foreign_pt_loads_with_weights_only(tmp_path):
    net = Net()
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "lightning.ckpt")
    sd = load_state_dict_file(tmp_path / "lightning.ckpt", key="state_dict")
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    assert set(load_state_dict_file(tmp_path / "plain.pt")) == set(net.state_dict())
    with pytest.raises(CheckpointError, match="no entry 'generator'.*state_dict, epoch"):
        load_state_dict_file(tmp_path / "lightning.ckpt", key="generator")
    with pytest.raises(CheckpointError, match="pass key="):
        load_state_dict_file(tmp_path / "lightning.ckpt")


class Payload:
    """A pickled object whose unpickling would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": Payload()}, path)
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        load_state_dict_file(path)


def test_missing_and_corrupt_weight_files(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found: .*nope.pt"):
        load_state_dict_file(tmp_path / "nope.pt")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_state_dict_file(bad)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(bad)
