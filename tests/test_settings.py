"""Settings from the environment, and how the processes react to bad ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.settings import Settings, SettingsError


def test_defaults_without_environment():
    settings = Settings.from_env({})

    assert settings.grpc_address == "127.0.0.1:50051"
    assert settings.snapshot_limit == 64
    assert settings.database_url.startswith("postgresql://")
    assert settings.amqp_url.startswith("amqp://")
    assert settings.migrate_on_start is True


def test_values_from_environment(tmp_path):
    settings = Settings.from_env(
        {
            "NAS_SNAPSHOT_LIMIT": "128",
            "NAS_GRPC_ADDRESS": "[::]:6000",
            "NAS_DATA_ROOT": str(tmp_path),
            "NAS_MIGRATE_ON_START": "false",
            "NAS_LOG_LEVEL": "debug",
        }
    )

    assert settings.snapshot_limit == 128
    assert settings.grpc_address == "[::]:6000"
    assert settings.data_root == tmp_path
    assert settings.migrate_on_start is False
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NAS_SNAPSHOT_LIMIT", "0"),
        ("NAS_SNAPSHOT_LIMIT", "sixty-four"),
        ("NAS_GRPC_ADDRESS", "localhost"),
        ("NAS_GRPC_ADDRESS", "localhost:99999"),
        ("NAS_DATABASE_URL", "mysql://db/nas"),
        ("NAS_AMQP_URL", "http://broker"),
        ("NAS_DRIVER", "zfs"),
        ("NAS_MIGRATE_ON_START", "maybe"),
        ("NAS_DATABASE_TIMEOUT", "-1"),
        ("NAS_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_value_rejected(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("module", ["service", "worker"])
def test_process_exits_on_bad_setting(module):
    result = subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, "NAS_SNAPSHOT_LIMIT": "-3"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "NAS_SNAPSHOT_LIMIT=-3" in result.stderr
