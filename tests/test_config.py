import dataclasses

import pytest

from mmldm.audio.mel import MelSettings
from mmldm.config import (
    DIT_SIZES,
    RETIRED_KEYS,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    list_presets,
    load_config,
    parse_overrides,
    save_config,
)


def test_presets_are_shipped_and_build():
    assert {"paper_landscape", "paper_aist", "tiny", "demo"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert cfg.name == name


def test_paper_presets_hold_the_papers_numbers():
    """docs/design.md §1 and §4: shapes and loss weights of the paper config."""
    for name, kl, classes in (("paper_landscape", 1e-9, 9), ("paper_aist", 1e-8, 60)):
        cfg = load_config(name)
        assert cfg.video_latent_shape == (16, 16, 16)
        assert cfg.audio_latent_shape == (16, 8, 8)
        assert cfg.semantic_shape == (768, 2, 2)
        assert cfg.vae_latent_size == 32
        assert (cfg.data.num_frames, cfg.data.fps, cfg.data.resolution) == (16, 10.0, 256)
        assert cfg.data.clip_seconds == pytest.approx(1.6)
        assert cfg.data.sample_rate == 22050 and cfg.data.n_mels == 80
        assert cfg.autoencoder.key_frames == [0, 5, 10, 15]
        assert cfg.autoencoder.kl_weight == kl
        assert cfg.autoencoder.cl_weight == cfg.autoencoder.co_weight == 0.1
        assert cfg.autoencoder.gan_weight == 0.1
        assert cfg.data.num_classes == classes
        assert (cfg.dit.hidden_size, cfg.dit.depth, cfg.dit.num_heads) == (1152, 28, 16)
        assert (cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (0.00085, 0.012)
        assert cfg.vae.scaling_factor == 0.18215
        assert (cfg.sample.steps, cfg.sample.eta) == (50, 0.0)


def test_aist_class_regex_reads_the_music_id():
    import re

    cfg = load_config("paper_aist")
    match = re.search(cfg.data.class_regex, "gBR_sBM_c01_d04_mBR0_ch01.mp4")
    assert match and match.group("label") == "mBR0"


def test_yaml_round_trip(tmp_path):
    cfg = load_config("tiny", ["dit.depth=3", "data.classes=[a,b,c]", "vae.pretrained=/x/vae"])
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_to_yaml(again) == config_to_yaml(cfg)


@pytest.mark.parametrize(
    ("override", "attr", "expected"),
    [
        ("dit.depth=12", ("dit", "depth"), 12),
        ("train.generator.lr=2e-4", ("train", "generator", "lr"), 2e-4),
        ("data.fps=25", ("data", "fps"), 25.0),  # an int where a float is expected is fine
        ("decoder.shared=false", ("decoder", "shared"), False),
        ("autoencoder.key_frames=[0, 3, 7]", ("autoencoder", "key_frames"), [0, 3, 7]),
        ("vae.pretrained=/models/sd-vae", ("vae", "pretrained"), "/models/sd-vae"),
        ("vae.pretrained=null", ("vae", "pretrained"), None),
        ("data.class_regex=a=b", ("data", "class_regex"), "a=b"),  # '=' inside the value
    ],
)
def test_overrides(override, attr, expected):
    cfg = load_config("paper_landscape", [override])
    value = cfg
    for a in attr:
        value = getattr(value, a)
    assert value == expected
    assert type(value) is type(expected)


def test_later_override_wins_and_others_untouched():
    cfg = load_config("tiny", ["dit.depth=3", "dit.depth=5"])
    base = load_config("tiny")
    assert cfg.dit.depth == 5
    assert dataclasses.replace(cfg.dit, depth=base.dit.depth) == base.dit
    assert cfg.data == base.data


def test_parse_overrides_rejects_malformed():
    assert parse_overrides(["a.b=1"]) == [("a.b", 1)]
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["dit.depth"])


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["dit.dept=3"])
    assert "unknown config key 'dit.dept'" in str(err.value)
    assert "did you mean 'dit.depth'" in str(err.value)
    assert "--set dit.dept=3" in str(err.value)


def test_unknown_key_in_file_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  generator:\n    learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "'train.generator.learning_rate'" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown config key 'model'"):
        load_config(None, ["model.width=3"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dit.depth=abc", "dit.depth"),
        ("data.num_frames=1.5", "data.num_frames"),
        ("data.fps=fast", "data.fps"),
        ("decoder.shared=maybe", "decoder.shared"),
        ("autoencoder.key_frames=3", "autoencoder.key_frames"),
        ("sample.seed=null", "sample.seed"),
        ("dit=3", "dit"),
    ],
)
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert f"'{key}'" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.resize=zoom", "data.resize"),
        ("sample.sampler=euler", "sample.sampler"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("data.hflip_prob=1.5", "data.hflip_prob"),
        ("dit.num_heads=5", "dit.hidden_size"),
        ("autoencoder.key_frames=[0,1,2,9]", "autoencoder.key_frames"),
        ("data.resolution=36", "data.resolution"),
        ("data.fmax=9000", "data.fmax"),
        ("train.generator.ema_decay=1.0", "train.generator.ema_decay"),
        ("data.layout=regex", "data.class_regex"),
    ],
)
def test_invalid_values_name_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert f"'{key}'" in str(err.value)


def test_missing_config_file_and_preset(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="presets: .*tiny"):
        load_config("no_such_preset")


def test_bad_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("dit: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_defaults_without_file_are_the_paper_landscape_values():
    assert load_config(None) == Config()
    assert load_config("paper_landscape") == dataclasses.replace(Config(), name="paper_landscape")


def test_dit_size_and_dimensions_the_later_layer_wins(tmp_path):
    # a preset's size, overridden: the dimensions follow the new size
    cfg = load_config("paper_landscape", ["dit.size=S"])
    assert (cfg.dit.size, cfg.dit.hidden_size, cfg.dit.depth, cfg.dit.num_heads) == (
        "S",
        *DIT_SIZES["S"],
    )
    # a dimension overridden: the rest stay, and the config no longer claims the size
    cfg = load_config("paper_landscape", ["dit.size=XL", "dit.depth=12"])
    assert (cfg.dit.size, cfg.dit.hidden_size, cfg.dit.depth) == (None, 1152, 12)
    # a size over a preset's explicit dimensions
    assert load_config("demo", ["dit.size=B"]).dit.hidden_size == DIT_SIZES["B"][0]
    # one layer that gives both: they must agree; a contradiction is an error, not overridden
    path = tmp_path / "both.yaml"
    path.write_text("dit:\n  size: S\n  depth: 12\n")
    assert load_config(path).dit.depth == 12
    path.write_text("dit:\n  size: S\n  hidden_size: 128\n")
    with pytest.raises(ConfigError, match=r"dit\.hidden_size.*128.*contradicts dit\.size=S"):
        load_config(path)
    # no size: the given dimensions, DiT-XL's for the others; the stored config rebuilds
    cfg = load_config(None, ["dit.depth=2"])
    assert (cfg.dit.hidden_size, cfg.dit.depth, cfg.dit.num_heads) == (1152, 2, 16)
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("key", sorted(RETIRED_KEYS))
def test_retired_keys_say_why(key, tmp_path):
    with pytest.raises(ConfigError, match=rf"'{key}' in --set .* was removed: "):
        load_config("tiny", [f"{key}=0"])
    section, name = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {name}: 0\n")
    with pytest.raises(ConfigError, match=rf"'{key}' in {path} was removed"):
        load_config(path)


def test_configs_stored_by_older_versions_are_migrated():
    values = config_to_dict(load_config("tiny"))
    values["dit"]["context_drop_prob"] = 0.1
    values["decoder"]["modality_embedding"] = False  # the old switch of the ablation
    cfg = config_from_dict(values)
    assert cfg.decoder.num_modality_tokens == 0
    values["decoder"]["modality_embedding"] = True
    assert config_from_dict(values).decoder.num_modality_tokens == 1


def test_mel_settings_are_defined_once():
    cfg = load_config("paper_landscape")
    assert cfg.data.mel == MelSettings()  # the paper's are HiFi-GAN's
    demo = load_config("demo").data
    assert demo.mel == MelSettings(sample_rate=16000, n_mels=64)
    assert {f.name for f in dataclasses.fields(MelSettings)} <= set(vars(demo))


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """`mmldm demo --out demo` makes a folder named demo; --config demo is still the preset."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "mine").mkdir()
    assert load_config("demo").name == "demo"
    with pytest.raises(ConfigError, match="a folder of that name exists"):
        load_config("mine")
