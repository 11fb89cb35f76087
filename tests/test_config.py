import dataclasses
import json

import pytest

from qground.builder import REGISTRY, config_7b, config_tiny
from qground.config import CONFIG_NAME, FORMAT_VERSION, ConfigError, QGroundConfig, TokenIds
from qground.policy import InferencePolicy


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_configs_round_trip(tmp_path, name):
    config = REGISTRY[name].config()
    config.save(tmp_path)
    assert QGroundConfig.load(tmp_path) == config


def test_7b_numbers_from_the_paper():
    c = config_7b()
    assert (c.image_size, c.vision.patch_size, c.grid, c.num_image_tokens) == (448, 14, 32, 256)
    assert c.feature_layers == (6, 14, 23) and c.decoder.layers == (23, 14)
    assert (c.seg_levels, c.seg_tokens_per_level, c.seg_count) == (2, 3, 6)
    assert (c.loss.ce, c.loss.mask, c.loss.bce, c.loss.dice) == (1.0, 1.0, 2.0, 0.5)
    assert (c.lora.r, c.lora.alpha) == (64, 16)


def test_validation_errors():
    with pytest.raises(ConfigError, match="multiple of vision.patch_size"):
        dataclasses.replace(config_tiny(), image_size=70)
    with pytest.raises(ConfigError, match="out of range"):
        dataclasses.replace(config_tiny(), feature_layers=(1, 9))
    with pytest.raises(ConfigError, match="distinct"):
        TokenIds(image=1, seg=(2, 2, 3, 4, 5, 6)).validate(6, choice=False)
    policy = InferencePolicy(default_strictness=2.0)  # the default strictness is the inference policy's now
    with pytest.raises(ConfigError, match="default_strictness need a model with a readout"):
        policy.check_model(config_tiny())
    policy.check_model(REGISTRY["qground-nano"].config())
    for bad in (-1.0, 8.5, float("nan")):
        with pytest.raises(ConfigError, match="default_strictness must be between 0 and 8"):
            policy.replace(default_strictness=bad)


def test_default_strictness_round_trips(tmp_path):
    InferencePolicy(default_strictness=3.0).save(tmp_path)
    assert InferencePolicy.load(tmp_path).default_strictness == 3.0


def test_unknown_field_and_newer_version(tmp_path):
    data = config_tiny().to_dict()
    data["llm"]["sliding_window"] = 8
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"sliding_window.*config\.llm"):
        QGroundConfig.load(tmp_path)
    data = config_tiny().to_dict() | {"format_version": FORMAT_VERSION + 1}
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="newer qground"):
        QGroundConfig.load(tmp_path)


def test_damaged_or_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        QGroundConfig.load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        QGroundConfig.load(tmp_path)


def test_prompt_tokenization_field(tmp_path):
    assert config_7b().prompt_tokenization == "llava"
    assert config_tiny().prompt_tokenization == REGISTRY["qground-nano"].config().prompt_tokenization == "pieces"
    config_7b().save(tmp_path)
    assert QGroundConfig.load(tmp_path).prompt_tokenization == "llava"
    data = config_7b().to_dict()
    del data["prompt_tokenization"]  # written before the field existed: the shipped models' rule
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    assert QGroundConfig.load(tmp_path).prompt_tokenization == "pieces"
    with pytest.raises(ConfigError, match=r"prompt_tokenization must be one of \('pieces', 'llava'\), got 'llama'"):
        dataclasses.replace(config_tiny(), prompt_tokenization="llama")
