"""Tests for moldiff/config.py: round trips, YAML, unknown keys and invalid values rejected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from moldiff.config import DataConfig, DiffusionConfig, ExperimentConfig, ModelConfig, TrainConfig
from moldiff.diffusion.schedules import SCHEDULES, NoiseSchedule
from moldiff.models import build_model

BENCHMARK_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs").glob("*.yaml"))

SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig}

NON_DEFAULT = {
    "data": {"split": "second_half", "max_molecules": 500, "remove_h": True, "conditioning": ["alpha"]},
    "model": {"hidden_nf": 32, "n_layers": 2, "attention": False},
    "diffusion": {
        "timesteps": 500,
        "noise_schedule": "cosine",
        "norm_values": [1, 8, 1],
        "include_charges": False,
    },
    "train": {"lr": 3e-4, "batch_size": 8, "max_steps": 10, "device": "cpu", "context_dropout": 0.1},
}


# ---------------------------------------------------------------------------- round trips
def test_sections_match_experiment_fields():
    assert {f.name for f in dataclasses.fields(ExperimentConfig)} == set(SECTIONS)


@pytest.mark.parametrize("overrides", [{}, NON_DEFAULT], ids=["defaults", "non_default"])
def test_dict_round_trip(overrides):
    cfg = ExperimentConfig.from_dict(overrides)
    d = cfg.to_dict()
    assert ExperimentConfig.from_dict(d) == cfg
    assert set(d) == set(SECTIONS)
    # plain types only (YAML/JSON safe): tuples become lists
    assert yaml.safe_load(yaml.safe_dump(d)) == d


@pytest.mark.parametrize("overrides", [{}, NON_DEFAULT], ids=["defaults", "non_default"])
def test_yaml_round_trip(overrides, tmp_path):
    cfg = ExperimentConfig.from_dict(overrides)
    path = tmp_path / "cfg.yaml"
    cfg.save_yaml(path)
    assert ExperimentConfig.load_yaml(path) == cfg


def test_partial_overlay_keeps_defaults(tmp_path):
    path = tmp_path / "overlay.yaml"
    path.write_text("model:\n  hidden_nf: 64\n")
    cfg = ExperimentConfig.load_yaml(path)
    assert cfg.model.hidden_nf == 64
    assert cfg.model.n_layers == ModelConfig().n_layers
    assert cfg.diffusion == DiffusionConfig() and cfg.train == TrainConfig() and cfg.data == DataConfig()


def test_empty_yaml_and_none_give_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert ExperimentConfig.load_yaml(path) == ExperimentConfig() == ExperimentConfig.from_dict(None)


def test_sequences_normalised_to_tuples():
    cfg = ExperimentConfig.from_dict(NON_DEFAULT)
    assert cfg.data.conditioning == ("alpha",)
    assert cfg.diffusion.norm_values == (1.0, 8.0, 1.0)
    assert all(isinstance(v, float) for v in cfg.diffusion.norm_values)


def test_edm_defaults():
    d = DiffusionConfig()
    assert (d.timesteps, d.noise_schedule, d.noise_precision, d.loss_type) == (
        1000,
        "polynomial_2",
        1e-5,
        "l2",
    )
    assert d.norm_values == (1.0, 4.0, 10.0)
    m = ModelConfig()
    assert (m.hidden_nf, m.n_layers, m.attention, m.tanh, m.coords_range) == (256, 9, True, True, 15.0)


def test_frozen():
    cfg = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.hidden_nf = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig()  # type: ignore[misc]


# ---------------------------------------------------------------------------- unknown keys
def test_unknown_section_rejected_and_named():
    with pytest.raises(ValueError, match="modle") as exc:
        ExperimentConfig.from_dict({"modle": {"hidden_nf": 3}})
    assert "model" in str(exc.value)  # lists the allowed sections


@pytest.mark.parametrize("section", list(SECTIONS))
def test_unknown_key_rejected_and_named(section):
    with pytest.raises(ValueError, match="not_a_key") as exc:
        ExperimentConfig.from_dict({section: {"not_a_key": 1}})
    assert section in str(exc.value)


def test_unknown_key_in_yaml_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        ExperimentConfig.load_yaml(path)


def test_override():
    cfg = ExperimentConfig().override(model={"hidden_nf": 8}, train={"seed": 3})
    assert cfg.model.hidden_nf == 8 and cfg.train.seed == 3
    with pytest.raises(ValueError, match="nope"):
        ExperimentConfig().override(nope={"a": 1})
    with pytest.raises(ValueError, match="hiden_nf"):
        ExperimentConfig().override(model={"hiden_nf": 8})
    with pytest.raises(ValueError, match="hidden_nf"):
        ExperimentConfig().override(model={"hidden_nf": 0})


def test_section_must_be_mapping():
    with pytest.raises(ValueError, match="mapping"):
        ExperimentConfig.from_dict({"data": [1, 2]})


@pytest.mark.parametrize(
    ("text", "match"),
    [("model: [unclosed\n", "not valid YAML"), ("- 1\n- 2\n", "mapping")],
)
def test_bad_yaml_rejected(text, match, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        ExperimentConfig.load_yaml(path)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ExperimentConfig.load_yaml(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------- invalid values
INVALID = [
    ("data", "split", "valid"),
    ("data", "max_molecules", 0),
    ("model", "hidden_nf", 0),
    ("model", "n_layers", -1),
    ("model", "coords_range", 0.0),
    ("model", "normalization_factor", -1.0),
    ("model", "precision", "fp16x"),
    ("model", "precision", "bfloat16"),
    ("model", "node_projection", "yes"),
    ("diffusion", "timesteps", 0),
    ("diffusion", "loss_type", "l1"),
    ("diffusion", "noise_schedule", "linear"),
    ("diffusion", "norm_values", [1, 4]),
    ("train", "lr", 0.0),
    ("train", "batch_size", 0),
    ("train", "epochs", -1),
    ("train", "max_steps", 0),
    ("train", "max_minutes", -5.0),
    ("train", "ema_decay", 1.0),
    ("train", "ema_decay", -0.1),
    ("train", "context_dropout", 1.0),
    ("train", "device", "tpu"),
]


@pytest.mark.parametrize(("section", "key", "value"), INVALID, ids=[f"{s}.{k}={v}" for s, k, v in INVALID])
def test_invalid_value_rejected_and_named(section, key, value):
    with pytest.raises(ValueError, match=key):
        ExperimentConfig.from_dict({section: {key: value}})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_valid_devices(device):
    assert TrainConfig(device=device).device == device


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_registered_schedule_is_accepted(name):
    cfg = DiffusionConfig(noise_schedule=name)
    assert NoiseSchedule(cfg.noise_schedule, 10).name == name


def test_config_rejects_every_schedule_the_factory_rejects():
    try:
        DiffusionConfig(noise_schedule="polynomial_x")
    except ValueError:
        return
    raise AssertionError("DiffusionConfig accepted noise_schedule='polynomial_x'")


@pytest.mark.parametrize("value", ["256", 2.5])
def test_wrong_type_rejected_with_value_error(value):
    with pytest.raises(ValueError, match="hidden_nf"):
        ModelConfig(hidden_nf=value)
        raise AssertionError(f"ModelConfig accepted hidden_nf={value!r}")


# ---------------------------------------------------------------------------- shipped configs, old configs
@pytest.mark.parametrize("path", BENCHMARK_CONFIGS, ids=[p.stem for p in BENCHMARK_CONFIGS])
def test_every_benchmark_config_loads_and_builds(path):
    cfg = ExperimentConfig.load_yaml(path)
    proc = build_model(cfg, num_classes=5, context_nf=len(cfg.data.conditioning))
    assert proc.denoiser.precision == cfg.model.precision


def test_config_without_newer_model_fields_gets_defaults():
    """Checkpoints store the config they were trained with; older ones lack later fields."""
    old = ExperimentConfig().to_dict()
    for key in ("node_projection", "precision"):
        del old["model"][key]
    model = ExperimentConfig.from_dict(old).model
    assert (model.node_projection, model.precision) == (True, "fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_valid_precisions(precision):
    assert ModelConfig(precision=precision).precision == precision


def test_exponent_floats_without_a_dot_load_as_numbers(tmp_path):
    # PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; every float field reads it as a number
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 1e-12\ndiffusion:\n  noise_precision: 1e-5\n")
    cfg = ExperimentConfig.load_yaml(path)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.diffusion.noise_precision) == (1e-4, 1e-12, 1e-5)


def test_non_numeric_string_for_a_float_field_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  weight_decay: lots\n")
    with pytest.raises(ValueError, match=r"train.weight_decay must be a number, got 'lots'"):
        ExperimentConfig.load_yaml(path)
