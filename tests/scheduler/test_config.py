"""cluster.yaml: a real Ray cluster-launcher file whose metadata.labq loads strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scheduler.config import load_settings
from scheduler.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_own_validator():
    # As `ray up` does: fill Ray's defaults, then validate against Ray's schema.
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema violation


def test_rays_validator_does_reject_a_broken_config():
    # The check above can fail: a config Ray considers invalid is rejected.
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["upscaling_speed"] = "fast"
    with pytest.raises(Exception, match="not of type 'number'"):
        validate_config(prepare_config(config))


def test_repo_cluster_yaml_settings_load():
    settings = load_settings(REPO / "cluster.yaml")
    assert settings.queue_names() == ["default"]
    assert settings.scheduler.cancel_grace == 3
    assert settings.address is None


def test_defaults_without_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("LABQ_HOME", str(tmp_path / "h"))
    settings = load_settings(None)
    assert settings.home_path == tmp_path / "h"
    assert settings.queue_names() == ["default"]


def test_unknown_labq_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cluster_name: x\nmetadata:\n  labq:\n    scheduler: {poll_intervall: 1}\n")
    with pytest.raises(ConfigError, match=r"metadata\.labq\.scheduler\.poll_intervall: unknown key"):
        load_settings(path)


def test_env_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("metadata:\n  labq:\n    home: /somewhere\n    local: {num_gpus: 4}\n")
    monkeypatch.setenv("LABQ_HOME", str(tmp_path / "env-home"))
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    settings = load_settings(path)
    assert settings.home_path == tmp_path / "env-home"
    assert settings.address == "ray://head:10001"
    assert settings.local.num_gpus == 4


# ---------------------------------------------------------------- queues

def test_queues_with_shares_load_into_policy_configs(tmp_path):
    from scheduler.policy import QueueConfig

    path = tmp_path / "c.yaml"
    path.write_text("metadata:\n  labq:\n    scheduler: {usage_half_life: 12h}\n    queues:\n"
                    "      - {name: research, weight: 2, guarantee: {gpu: 4, memory: 64GiB}, limit: {gpu: 8},"
                    " preempt: true}\n"
                    "      - {name: batch, borrow: false, guarantee: {cpu: 16}}\n")
    settings = load_settings(path)
    assert settings.scheduler.usage_half_life == 12 * 3600
    assert settings.queue_configs() == [
        QueueConfig("research", weight=2.0, guarantee={"gpu": 4.0, "memory": float(64 * 2**30)},
                    limit={"gpu": 8.0}, borrow=True, preempt=True),
        QueueConfig("batch", guarantee={"cpu": 16.0}, borrow=False)]


def test_queue_defaults_and_half_life_default():
    from scheduler.config import Settings
    from scheduler.policy import QueueConfig

    settings = Settings()
    assert settings.queue_configs() == [QueueConfig("default")]
    assert settings.scheduler.usage_half_life == 7 * 86400


@pytest.mark.parametrize("queues, message", [
    ("[{name: a}, {name: a}]", r"metadata\.labq\.queues: Value error, queue 'a' is declared twice"),
    ("[{name: a, guarantee: {gpu: 4}, limit: {gpu: 2}}]", r"queues\.0: .*limit\.gpu \(2\) is below guarantee\.gpu \(4\)"),
    ("[{name: a, guarantee: {gpus: 4}}]", r"queues\.0\.guarantee\.gpus: unknown key"),
    ("[{name: a, guarantee: {memory: lots}}]", r"queues\.0\.guarantee\.memory: .*expected a size"),
    ("[{name: a, weight: 0}]", r"queues\.0\.weight: Input should be greater than 0"),
])
def test_bad_queue_settings_name_the_key(tmp_path, queues, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"metadata:\n  labq:\n    queues: {queues}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


def test_the_clis_pydantic_free_defaults_are_the_settings_defaults():
    """Without a cluster file the CLI's start estimates use these constants
    instead of loading the settings: they must be what the settings would say."""
    from scheduler import DEFAULT_QUEUE, DEFAULT_USAGE_HALF_LIFE
    from scheduler.config import Settings
    from scheduler.policy import QueueConfig

    settings = Settings()
    assert settings.queue_configs() == [QueueConfig(name=DEFAULT_QUEUE)]
    assert settings.scheduler.usage_half_life == DEFAULT_USAGE_HALF_LIFE


def test_queue_tiers_are_durations_in_gpu_time_ascending(tmp_path):
    from scheduler.policy import QueueConfig

    path = tmp_path / "c.yaml"
    path.write_text("metadata:\n  labq:\n    scheduler: {stretch: 2}\n    queues:\n"
                    "      - {name: research, tiers: [1h, 8h], max_preemptions: 1}\n")
    settings = load_settings(path)
    assert settings.scheduler.stretch == 2
    assert settings.queue_configs() == [QueueConfig("research", tiers=(3600.0, 28800.0), max_preemptions=1)]
    for bad in ("[8h, 1h]", "[0s]", "[1h, 1h]"):
        path.write_text(f"metadata:\n  labq:\n    queues:\n      - {{name: research, tiers: {bad}}}\n")
        with pytest.raises(ConfigError, match=r"queues\.0\.tiers.*(ascending|positive duration)"):
            load_settings(path)
    path.write_text("metadata:\n  labq:\n    scheduler: {stretch: -1}\n")
    with pytest.raises(ConfigError, match=r"scheduler\.stretch"):
        load_settings(path)


def test_queue_preempt_longer_is_a_factor_of_at_least_one(tmp_path):
    from scheduler.policy import QueueConfig

    path = tmp_path / "c.yaml"
    path.write_text("metadata:\n  labq:\n    queues:\n      - {name: research, preempt_longer: 8, max_preemptions: 3}\n")
    assert load_settings(path).queue_configs() == [QueueConfig("research", preempt_longer=8.0, max_preemptions=3)]
    for bad in ("0.5", "-1", "soon", ".inf"):
        path.write_text(f"metadata:\n  labq:\n    queues:\n      - {{name: research, preempt_longer: {bad}}}\n")
        with pytest.raises(ConfigError, match=r"queues\.0\.preempt_longer"):
            load_settings(path)
