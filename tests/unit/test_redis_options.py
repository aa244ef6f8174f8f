"""TLS settings: checked at start (file readable, cert and key together, rediss:// URL), and
``redis_options()``, the one dict every component passes to ``create_redis``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streamcore.connection import create_redis
from streamcore.settings import CommonSettings, describe_errors

TLS_URL = "rediss://app:pw@127.0.0.1:6380/0"


@pytest.fixture
def pem(tmp_path):
    files = {}
    for name in ("ca.crt", "tls.crt", "tls.key"):
        path = tmp_path / name
        path.write_text("-----BEGIN CERTIFICATE-----\n")
        files[name] = str(path)
    return files


def error_line(**values) -> str:
    with pytest.raises(ValidationError) as info:
        CommonSettings(**values)
    return describe_errors(info.value, CommonSettings)


def test_defaults_have_no_tls_options(monkeypatch):
    for var in ("REDIS_TLS_CA_FILE", "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert CommonSettings().redis_options() == {}


def test_tls_files_become_redis_py_keywords(pem):
    s = CommonSettings(redis_url=TLS_URL, redis_tls_ca_file=pem["ca.crt"], redis_tls_cert_file=pem["tls.crt"],
                       redis_tls_key_file=pem["tls.key"])
    assert s.redis_options() == {"ssl_ca_certs": pem["ca.crt"], "ssl_certfile": pem["tls.crt"],
                                 "ssl_keyfile": pem["tls.key"]}
    assert CommonSettings(redis_url=TLS_URL, redis_tls_ca_file=pem["ca.crt"]).redis_options() == {
        "ssl_ca_certs": pem["ca.crt"]}


def test_tls_files_are_read_from_the_environment(pem, monkeypatch):
    monkeypatch.setenv("REDIS_URL", TLS_URL)
    monkeypatch.setenv("REDIS_TLS_CA_FILE", pem["ca.crt"])
    assert CommonSettings().redis_options() == {"ssl_ca_certs": pem["ca.crt"]}


def test_missing_file_names_the_setting(tmp_path):
    line = error_line(redis_url=TLS_URL, redis_tls_ca_file=str(tmp_path / "nope.crt"))
    assert line == f"invalid setting REDIS_TLS_CA_FILE={str(tmp_path / 'nope.crt')[:60]!r}: no such file"


def test_unreadable_file_names_the_setting(pem, tmp_path):
    import os
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    os.chmod(pem["tls.key"], 0)
    line = error_line(redis_url=TLS_URL, redis_tls_cert_file=pem["tls.crt"], redis_tls_key_file=pem["tls.key"])
    assert line.startswith("invalid setting REDIS_TLS_KEY_FILE=") and "cannot read the file" in line


def test_cert_without_key_is_refused(pem):
    line = error_line(redis_url=TLS_URL, redis_tls_cert_file=pem["tls.crt"])
    assert line == "invalid settings: REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together; REDIS_TLS_KEY_FILE is unset"
    line = error_line(redis_url=TLS_URL, redis_tls_key_file=pem["tls.key"])
    assert line.endswith("REDIS_TLS_CERT_FILE is unset")


def test_tls_files_need_a_rediss_url(pem):
    line = error_line(redis_url="redis://127.0.0.1:6379/0", redis_tls_ca_file=pem["ca.crt"])
    assert line == "invalid settings: REDIS_TLS_* files are set but REDIS_URL does not start with rediss://"


def test_create_redis_refuses_tls_files_on_a_plain_url(pem):
    with pytest.raises(ValueError, match="rediss://"):
        create_redis("redis://127.0.0.1:6379/0", ssl_ca_certs=pem["ca.crt"])


def test_sentinels_become_addresses_and_a_master_name():
    s = CommonSettings(redis_sentinels="10.0.0.1:26379, sentinel-b:26380,[::1]:5000", redis_sentinel_master="mymaster")
    assert s.redis_options() == {"sentinels": [("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 5000)],
                                 "sentinel_master": "mymaster"}


@pytest.mark.parametrize("value", ["host", "host:", ":26379", "host:0", "host:70000", "a:1,,b:2", "host:port"])
def test_a_bad_sentinel_address_names_the_setting(value):
    line = error_line(redis_sentinels=value, redis_sentinel_master="m")
    assert line.startswith(f"invalid setting REDIS_SENTINELS={value!r}: ") and "is not host:port" in line


def test_sentinels_and_master_go_together():
    assert error_line(redis_sentinels="h:1") == (
        "invalid settings: REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together; REDIS_SENTINEL_MASTER is unset")
    assert error_line(redis_sentinel_master="m").endswith("REDIS_SENTINELS is unset")


def test_create_redis_with_sentinels_binds_a_blocking_pool_to_the_master():
    from streamcore.connection import BlockingSentinelPool

    r = create_redis("redis://app:pw@ignored:1/2", max_connections=7, sentinels=[("127.0.0.1", 1)],
                     sentinel_master="orders-primary")
    pool = r.connection_pool
    assert isinstance(pool, BlockingSentinelPool) and pool.is_master and pool.service_name == "orders-primary"
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"], pool.max_connections) == ("app", "pw", 2, 7)
    assert kwargs["decode_responses"] is True and kwargs["encoding_errors"] == "surrogateescape"


def test_the_operator_follows_sentinel_for_its_own_url_only():
    from autoscaler.handlers import Runtime
    from autoscaler.settings import AutoscalerSettings
    from streamcore.connection import BlockingSentinelPool

    own = "redis://app:pw@redis-primary:6379/0"
    settings = AutoscalerSettings(redis_url=own, redis_sentinels="127.0.0.1:1", redis_sentinel_master="orders-primary")
    runtime = Runtime(settings=settings, api=None, metrics=None)  # type: ignore[arg-type]
    assert isinstance(runtime.redis_for(own).connection_pool, BlockingSentinelPool)
    other = runtime.redis_for("redis://elsewhere:6379/0").connection_pool
    assert not isinstance(other, BlockingSentinelPool) and other.connection_kwargs["host"] == "elsewhere"


@pytest.mark.parametrize(("cls", "field", "value", "message"), [
    ("consumer.settings:ConsumerSettings", "pod_name", "bk-c\udcff", "POD_NAME is not valid UTF-8 (a byte 0xff at position 4)"),
    ("producer.settings:ProducerSettings", "host", "0.0.0.\ud800", "HOST is not valid UTF-8 (a lone surrogate at position 6)"),
])
def test_a_setting_that_is_not_utf8_is_refused_naming_it(cls, field, value, message):
    import importlib

    module, name = cls.split(":")
    settings_class = getattr(importlib.import_module(module), name)
    with pytest.raises(ValidationError) as info:
        settings_class(**{field: value})
    assert describe_errors(info.value, settings_class) == f"invalid settings: {message}"


def test_a_handler_that_is_not_utf8_is_refused_naming_it():
    from reclaimer.settings import ReclaimerSettings

    with pytest.raises(ValidationError) as info:
        ReclaimerSettings(handler="consumer.handler:x\udcff")
    assert describe_errors(info.value, ReclaimerSettings) == (
        "invalid setting HANDLER='consumer.handler:x\\udcff': is not valid UTF-8 (a byte 0xff at position 18)")
