"""Configuration: defaults, one TOML file, NEWSLETTER_* environment, one clear error per mistake."""

from pathlib import Path

import pytest

from newsletter.config import as_toml, load_settings
from newsletter.errors import ConfigError


def test_defaults_work_with_the_bundled_data(make_settings):
    settings = make_settings()
    assert settings.newsletter.title == "What happened today in history?"
    assert settings.newsletter.timezone == "UTC"
    assert settings.smtp.port == 587 and settings.smtp.security == "starttls"
    assert settings.paths.events.is_dir()
    assert settings.paths.templates.is_dir()
    assert settings.paths.subscribers.name == "subscribers.example.csv"


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "conf.toml").write_text('[paths]\nstate = "state"\npublic = "www"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(folder / "conf.toml", env={})
    assert settings.paths.state == folder / "state"
    assert settings.paths.public == folder / "www"


def test_config_file_from_environment_variable(tmp_path):
    conf = tmp_path / "x.toml"
    conf.write_text('[newsletter]\ntimezone = "Europe/Berlin"\n')
    assert load_settings(None, env={"NEWSLETTER_CONFIG": str(conf)}).newsletter.timezone == "Europe/Berlin"


def test_local_newsletter_toml_is_read_when_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "newsletter.toml").write_text("[smtp]\nport = 2525\n")
    assert load_settings(None, env={}).smtp.port == 2525


def test_environment_overrides_the_file(make_settings):
    settings = make_settings(
        '[smtp]\nhost = "mail.example.org"\n',
        env={
            "NEWSLETTER_SMTP_HOST": "relay.example.net",
            "NEWSLETTER_TIMEZONE": "Asia/Tokyo",
            "NEWSLETTER_SMTP_CONNECTIONS": "8",
        },
    )
    assert settings.smtp.host == "relay.example.net"
    assert settings.smtp.connections == 8
    assert settings.newsletter.timezone == "Asia/Tokyo"


def test_secrets_come_only_from_the_environment(make_settings):
    settings = make_settings(env={"NEWSLETTER_SMTP_PASSWORD": "hunter2", "NEWSLETTER_SECRET": "s3"})
    assert settings.smtp_password == "hunter2" and settings.secret == "s3"
    with pytest.raises(ConfigError, match="unknown key 'smtp.password'"):
        make_settings('[smtp]\npassword = "in-the-file"\n')


def test_printed_configuration_masks_secrets(make_settings):
    text = as_toml(make_settings(env={"NEWSLETTER_SMTP_PASSWORD": "hunter2", "NEWSLETTER_SECRET": "s3cr3t"}))
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "NEWSLETTER_SMTP_PASSWORD = ********" in text
    assert 'timezone = "UTC"' in text


def test_database_password_comes_from_the_environment_and_is_masked(make_settings):
    settings = make_settings(env={"NEWSLETTER_DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:5432/news"})
    assert settings.database.url == "postgresql://app:hunter2@127.0.0.1:5432/news"
    text = as_toml(settings)
    assert "hunter2" not in text
    assert 'url = "postgresql://app:********@127.0.0.1:5432/news"' in text


def test_database_defaults_to_sqlite_in_the_state_folder(make_settings):
    settings = make_settings()
    assert settings.database.url == "" and settings.database.keep_days == 90


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[newsletter]\ntitel = "x"\n', "unknown key 'newsletter.titel'"),
        ('[smpt]\nhost = "x"\n', "unknown section [smpt]"),
        ('[newsletter]\ntimezone = "Mars/Olympus"\n', "'newsletter.timezone' is not an IANA time zone"),
        ('[newsletter]\nsend_time = "7am"\n', "'newsletter.send_time' must be HH:MM"),
        ('[newsletter]\nsend_time = "24:00"\n', "'newsletter.send_time' must be HH:MM"),
        ('[newsletter]\nbase_url = "example.org"\n', "'newsletter.base_url' must be an http(s) URL"),
        ('[smtp]\nport = "many"\n', "'smtp.port' must be a whole number"),
        ("[smtp]\nport = 70000\n", "'smtp.port' must be between 1 and 65535"),
        ('[smtp]\nsecurity = "ssl"\n', "'smtp.security' must be starttls, tls or none"),
        ("[smtp]\nconnections = 0\n", "'smtp.connections'"),
        ('[sender]\naddress = "not an address"\n', "'sender.address' is not a valid email address"),
        ('[sender]\naddress = "zoë@example.org"\n', "'sender.address' is not a valid email address"),
        ('title = "outside"\n', "key 'title' must be inside a section"),
        ("[newsletter\n", "not valid TOML"),
        ('[database]\nurl = "mysql://db/x"\n', "'database.url' must be empty (SQLite in paths.state) or postgresql://"),
        ('[database]\nurl = "postgresql://me:hunter2@db/x"\n', "'database.url' must not hold a password"),
        ("[database]\nkeep_days = 3\n", "'database.keep_days' must be 0 (keep everything) or at least 14"),
        ("[database]\nlease_seconds = 1\n", "'database.lease_seconds' must be at least 5"),
    ],
)
def test_bad_values_are_one_clear_error_naming_the_key(make_settings, toml, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as error:
        make_settings(toml)
    assert "\n" not in str(error.value)
    assert "newsletter.toml" in str(error.value)


def test_unknown_environment_variable_is_named(make_settings):
    with pytest.raises(ConfigError, match="NEWSLETTER_SMTP_HOTS: unknown environment variable"):
        make_settings(env={"NEWSLETTER_SMTP_HOTS": "x"})


def test_bad_environment_value_names_the_variable(make_settings):
    with pytest.raises(ConfigError, match="NEWSLETTER_SMTP_PORT: 'smtp.port' must be a whole number"):
        make_settings(env={"NEWSLETTER_SMTP_PORT": "abc"})


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_signing_secret_is_required_for_real_use(make_settings):
    settings = make_settings(env={"NEWSLETTER_SMTP_HOST": "x"})
    with pytest.raises(ConfigError, match="NEWSLETTER_SECRET is not set"):
        settings.signing_secret()
    assert settings.signing_secret(allow_insecure=True).startswith("insecure")


def test_settings_are_frozen(make_settings):
    settings = make_settings()
    with pytest.raises(AttributeError):
        settings.smtp.port = 25  # type: ignore[misc]
    assert isinstance(settings.paths.state, Path)
