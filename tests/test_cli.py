import subprocess
import sys

import pytest
import torch

from mmldm.checkpoint import save_checkpoint
from mmldm.cli import build_parser, main
from mmldm.config import load_config

SUBCOMMANDS = [
    "info",
    "config",
    "synth-data",
    "preprocess",
    "train-vae",
    "train-autoencoder",
    "distill-decoder",
    "distill-vae",
    "reconstruct",
    "cache-latents",
    "train-generator",
    "sample",
    "export",
    "app",
    "demo",
    "evaluate",
]


def test_console_script_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "mmldm", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_with_example(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"mmldm {name}" in out


def test_parser_lists_exactly_the_working_commands():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    assert sorted(action.choices) == sorted(SUBCOMMANDS)


def test_info_prints_step_parameters_and_config(tmp_path, capsys):
    cfg = load_config("tiny", ["dit.depth=1"])
    net = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20))
    ema = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(net.parameters())
    save_checkpoint(
        tmp_path / "run" / "checkpoints",
        modules={"model": net, "ema": ema},
        config=cfg,
        kind="generator",
        step=123,
        training_state={"optimizers": {"m": optimizer.state_dict()}},
    )
    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "step            123" in out
    assert "kind            generator" in out
    assert "resumable" in out
    # parameters: Linear 10*20+20 = 220, BatchNorm 2*20 = 40 -> 260 (buffers excluded)
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["model"][0] == "260"
    assert lines["ema"][0] == "12"
    assert lines["total"][0] == "272"
    assert "dit:" in out and "depth: 1" in out and "config (tiny)" in out

    assert main(["info", str(tmp_path / "run"), "--no-config"]) == 0
    assert "dit:" not in capsys.readouterr().out


def test_info_on_missing_checkpoint_fails_cleanly(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_config_command_prints_overrides_and_reports_errors(tmp_path, capsys):
    assert main(["config", "--config", "tiny", "--set", "dit.depth=7"]) == 0
    assert "depth: 7" in capsys.readouterr().out
    out_file = tmp_path / "c.yaml"
    assert main(["config", "--config", "tiny", "--out", str(out_file)]) == 0
    assert load_config(out_file) == load_config("tiny")
    assert main(["config", "--set", "dit.dept=7"]) == 2
    assert "unknown config key 'dit.dept'" in capsys.readouterr().err
    assert main(["config", "--list"]) == 0
    assert "paper_aist" in capsys.readouterr().out


def test_user_errors_are_one_line_without_a_traceback(trained, tmp_path, capsys):
    from mmldm.audio.hifigan import HiFiGANConfig

    def one_line(argv: list[str], *expected: str) -> None:
        assert main([*argv, "-q"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        for text in expected:
            assert text in err, err

    # a latent cache that cache-latents never finished (or never wrote)
    (tmp_path / "half").mkdir()
    argv = ["train-generator", "--config", "tiny", "--out", str(tmp_path / "gen")]
    one_line([*argv, "--latents", str(tmp_path / "half")], "not a finished latent cache")
    # a HiFi-GAN made for another mel (22.05 kHz) than the model's data (16 kHz); refused from
    # its config.json before any weight is read
    voc = tmp_path / "hifigan"
    voc.mkdir()
    HiFiGANConfig.preset("V1").to_json(voc / "config.json")
    (voc / "generator_v1").write_bytes(b"")
    runs = ["--generator", str(trained["gen"]), "--autoencoder", str(trained["ae"])]
    sample = ["sample", *runs, "--task", "svg", "--out", str(tmp_path / "out")]
    one_line([*sample, "--vocoder", str(voc)], "sampling_rate=22050", "data.sample_rate=16000")
    # a condition the task needs, missing
    one_line(["sample", *runs, "--task", "a2v", "--out", str(tmp_path / "o")], "needs --audio")
