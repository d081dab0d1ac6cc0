"""Config: presets, JSON round trip, command-line overrides, validation messages."""

from __future__ import annotations

import json

import pytest

from shared.config import PRESETS, Config, ConfigError, apply_overrides, preset


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate_and_round_trip(name, tmp_path):
    config = preset(name).validate()
    path = tmp_path / "config.json"
    config.save(path)
    loaded = Config.load(path)
    assert loaded == config
    assert isinstance(loaded.model.channel_mult, tuple)


def test_small_preset_is_the_macbook_reference_size():
    small = preset("small")
    assert (small.data.num_frames, small.data.image_size) == (28, 128)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match=", ".join(PRESETS)):
        preset("huge")


def test_overrides_parse_and_coerce():
    config = apply_overrides(preset("tiny"), [
        "train.lr=3e-4", "model.channel_mult=1,2,2", "train.batch_size=auto",
        "diffusion.min_snr_gamma=5", "model.gradient_checkpointing=true",
        "data.labels_file=labels.csv", "train.steps=7.0", "diffusion.min_snr_gamma=null",
    ])
    assert config.train.lr == 3e-4
    assert config.model.channel_mult == (1, 2, 2)
    assert config.train.batch_size == "auto"
    assert config.model.gradient_checkpointing is True
    assert config.data.labels_file == "labels.csv"
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.diffusion.min_snr_gamma is None


@pytest.mark.parametrize("override, message", [
    ("train.lr", "section.field=value"),
    ("nosuch.lr=1", "unknown section 'nosuch'"),
    ("train.rate=1", "train has no field 'rate'"),
    ("train.steps=many", "expected an integer"),
    ("model.gradient_checkpointing=1", "expected true or false"),
    ("train.lr=fast", "expected a number"),
])
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(preset("tiny"), [override])


@pytest.mark.parametrize("override, message", [
    ("data.image_size=15", r"image_size=15 is not divisible by 2\*\*1=2"),
    ("model.num_heads=3", "num_heads=3 does not divide"),
    ("model.norm_groups=5", "norm_groups=5 does not divide"),
    ("model.attention_levels=2,", "attention_levels has 2"),
    ("model.conv_mode=spiral", "conv_mode='spiral'"),
    ("diffusion.prediction_type=x0", "prediction_type='x0'"),
    ("sample.sampler=euler", "sampler='euler'"),
    ("sample.steps=0", "sample.steps=0"),
    ("train.mixed_precision=fp8", "mixed_precision='fp8'"),
    ("diffusion.beta_schedule=sigmoid", "beta_schedule='sigmoid'"),
])
def test_validation_names_the_field(override, message):
    config = apply_overrides(preset("tiny"), [override])
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_image_size_must_survive_every_halving():
    config = apply_overrides(preset("small"), ["data.image_size=100"])  # 4 levels: 3 halvings
    with pytest.raises(ConfigError, match="not divisible by 2\\*\\*3=8"):
        config.validate()


def test_load_reports_file_and_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        Config.load(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"model": {"widht": 3}}))
    with pytest.raises(ConfigError, match="unknown.json: model: unknown field"):
        Config.load(unknown)
    with pytest.raises(ConfigError, match="no such config file"):
        Config.load(tmp_path / "missing.json")


def test_a_config_saved_before_text_alignment_loads_without_it(tmp_path):
    """Checkpoints from before the alignment bias have no `text_alignment` field: they must
    build the model they were trained as (no `text_align` weights), while new configs get it."""
    data = preset("toy").to_dict()
    del data["model"]["text_alignment"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    assert Config.load(old).model.text_alignment is False
    new = tmp_path / "new.json"
    preset("toy").save(new)
    assert Config.load(new).model.text_alignment is True
    assert Config.from_dict({}).model.text_alignment is True
