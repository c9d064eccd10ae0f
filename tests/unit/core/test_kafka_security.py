"""Kafka client security settings: every client config carries them, bad combinations stop
the process at start, and Spark's Kafka source gets the same settings in the Java client's
spelling."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventpipe.core.config import CommonSettings, ConfigError, load_settings
from eventpipe.core.kafka import (
    client_security_config,
    consumer_config,
    producer_config,
    spark_kafka_options,
)

SASL_SSL = {
    "EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS": "broker-1.example:9093,broker-2.example:9093",
    "EVENTPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "EVENTPIPE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "EVENTPIPE_KAFKA_SASL_USERNAME": "eventpipe",
    "EVENTPIPE_KAFKA_SASL_PASSWORD": 'pa"ss\\word',
}


def settings_from(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> CommonSettings:
    for key in [*SASL_SSL, "EVENTPIPE_KAFKA_SSL_CA_LOCATION"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(CommonSettings)


def config_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from(monkeypatch, env)
    return caught.value.message


def test_the_default_is_plaintext_with_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, {})
    assert client_security_config(settings) == {"security.protocol": "PLAINTEXT"}


def test_producer_consumer_and_spark_configs_all_carry_sasl_ssl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = settings_from(monkeypatch, {**SASL_SSL, "EVENTPIPE_KAFKA_SSL_CA_LOCATION": str(ca)})
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "eventpipe",
        "sasl.password": 'pa"ss\\word',
        "ssl.ca.location": str(ca),
    }
    for config in (producer_config(settings), consumer_config(settings, "group")):
        assert {key: config[key] for key in expected} == expected
        assert config["bootstrap.servers"] == SASL_SSL["EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"]
    assert spark_kafka_options(settings) == {
        "kafka.bootstrap.servers": SASL_SSL["EVENTPIPE_KAFKA_BOOTSTRAP_SERVERS"],
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
        'required username="eventpipe" password="pa\\"ss\\\\word";',
        "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": str(ca),
    }


def test_a_plain_mechanism_uses_the_plain_login_module(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(
        monkeypatch,
        {
            **SASL_SSL,
            "EVENTPIPE_KAFKA_SASL_MECHANISM": "PLAIN",
            "EVENTPIPE_KAFKA_SASL_PASSWORD": "p",
        },
    )
    assert spark_kafka_options(settings)["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="eventpipe" password="p";'
    )


def test_overrides_never_drop_the_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, SASL_SSL)
    config = producer_config(settings, **{"linger.ms": 0})
    assert config["linger.ms"] == 0
    assert config["security.protocol"] == "SASL_SSL"


def test_the_password_is_a_secret_that_never_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(monkeypatch, SASL_SSL)
    secret = SASL_SSL["EVENTPIPE_KAFKA_SASL_PASSWORD"]
    assert secret not in repr(settings)
    assert secret not in str(settings.model_dump())


@pytest.mark.parametrize(
    "missing",
    [
        "EVENTPIPE_KAFKA_SASL_MECHANISM",
        "EVENTPIPE_KAFKA_SASL_USERNAME",
        "EVENTPIPE_KAFKA_SASL_PASSWORD",
    ],
)
def test_a_sasl_protocol_without_each_credential_stops_at_start(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    env = {key: value for key, value in SASL_SSL.items() if key != missing}
    assert f"SASL_SSL needs {missing}" in config_error(monkeypatch, env)


def test_an_empty_password_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, {**SASL_SSL, "EVENTPIPE_KAFKA_SASL_PASSWORD": ""})
    assert "needs EVENTPIPE_KAFKA_SASL_PASSWORD" in message


def test_credentials_without_a_sasl_protocol_stop_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = config_error(monkeypatch, {**SASL_SSL, "EVENTPIPE_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert "EVENTPIPE_KAFKA_SECURITY_PROTOCOL=SSL does not use SASL" in message
    assert "EVENTPIPE_KAFKA_SASL_USERNAME" in message


def test_a_ca_file_without_tls_stops_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    message = config_error(
        monkeypatch,
        {"EVENTPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
        | {k: v for k, v in SASL_SSL.items() if "SASL_" in k and "PROTOCOL" not in k}
        | {"EVENTPIPE_KAFKA_SSL_CA_LOCATION": str(ca)},
    )
    assert "EVENTPIPE_KAFKA_SSL_CA_LOCATION set" in message
    assert "does not use TLS" in message


def test_a_ca_file_that_does_not_exist_stops_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = config_error(
        monkeypatch,
        {
            "EVENTPIPE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "EVENTPIPE_KAFKA_SSL_CA_LOCATION": str(tmp_path / "absent.pem"),
        },
    )
    assert "absent.pem is not a file" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTPIPE_KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("EVENTPIPE_KAFKA_SASL_MECHANISM", "GSSAPI"),
    ],
)
def test_unknown_protocols_and_mechanisms_stop_at_start(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    message = config_error(monkeypatch, {**SASL_SSL, variable: value})
    assert variable in message
