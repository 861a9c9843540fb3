"""Configuration: the reference file, environment overrides, *_file secrets, error paths."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from wahookd.errors import ConfigError
from wahookd.settings import Settings, load_settings

REFERENCE = Path(__file__).parents[1] / "etc" / "wahookd.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("WAHOOKD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wahookd.toml"
    path.write_text(text)
    return path


def test_reference_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "wasender-secret").write_text("s3cret\n")
    settings, used = load_settings(REFERENCE)
    assert used == REFERENCE
    assert settings.sources["shop"].secret_values() == [b"s3cret"]
    assert settings.sinks["archive"].plugin == "file"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def test_every_setting_is_documented_in_the_reference_config() -> None:
    text = REFERENCE.read_text()
    from wahookd.settings import SinkSettings, SourceSettings

    names = [key.rsplit(".", 1)[-1] for key in _keys(Settings) if key not in ("sources", "sinks")]
    names += list(SourceSettings.model_fields) + list(SinkSettings.model_fields)
    missing = [name for name in names if f"{name} =" not in text and f"{name}_file =" not in text]
    assert missing == []
    assert all(info.description for info in SourceSettings.model_fields.values() if info)


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("wahookd.settings.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    settings, used = load_settings(None)
    assert used is None
    assert settings.state.dir == tmp_path / "wahookd-data"
    sinks = settings.effective_sinks()
    assert sinks["events"].plugin == "file"
    assert sinks["events"].plugin_options()["path"] == str(tmp_path / "wahookd-data" / "events.jsonl")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, '[server]\nlisten = "127.0.0.1:1111"\n[sources.shop]\nprovider = "wasender"\nsecret = "a"\n'
    )
    monkeypatch.setenv("WAHOOKD_SERVER__LISTEN", "127.0.0.1:2222")
    monkeypatch.setenv("WAHOOKD_SOURCES__SHOP__SECRET", "from-env")
    settings, _ = load_settings(path)
    assert settings.server.listen == "127.0.0.1:2222"
    assert settings.sources["shop"].secret_values() == [b"from-env"]


def test_config_path_comes_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[ratelimit]\nrate = 7\n")
    monkeypatch.setenv("WAHOOKD_CONFIG", str(path))
    settings, used = load_settings(None)
    assert used == path
    assert settings.ratelimit.rate == 7


def test_secret_files_resolve_against_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "meta-secret").write_text("app-secret\n")
    (creds / "old").write_text("x")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = write(
        tmp_path,
        '[sources.m]\nprovider = "meta"\nsecret_file = "meta-secret"\nsecrets = ["older"]\n',
    )
    settings, _ = load_settings(path)
    assert settings.sources["m"].secret_values() == [b"app-secret", b"older"]


def test_secret_file_is_relative_to_the_config_without_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok")
    path = write(tmp_path, '[sources.m]\nprovider = "meta"\nsecret = "s"\nverify_token_file = "token"\n')
    settings, _ = load_settings(path)
    token = settings.sources["m"].verify_token
    assert token is not None
    assert token.get_secret_value() == "tok"


def test_errors_name_the_full_path_of_each_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = "127.0.0.1:1"\nmax_body_bytes = "big"\ncolour = "red"\n'
        '[sources.shop]\nprovider = "wasender"\nsecret_file = "/nonexistent/secret"\n'
        '[sinks.archive]\nkinds = ["message"]\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    problems = caught.value.problems
    assert any(p.startswith("server.max_body_bytes:") for p in problems)
    assert "server.colour: unknown key" in problems
    assert any(p.startswith("sources.shop.secret_file:") and "/nonexistent/secret" in p for p in problems)
    assert "sinks.archive.plugin: field required" in problems


def test_invalid_toml_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "[server\n"))
    assert "invalid TOML" in caught.value.problems[0]


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml")


def test_reference_config_is_valid_toml() -> None:
    assert "server" in tomllib.loads(REFERENCE.read_text())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wahookd.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_prints_one_line_per_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[sources.shop]\nprovider = "nosuch"\n'
        '[sources.plain]\nprovider = "meta"\n'
        '[sinks.archive]\nplugin = "file"\npathh = "x"\n',
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("wahookd: error: ") for line in lines)
    assert any("sources.shop.provider: unknown provider 'nosuch'" in line for line in lines)
    assert any(line.startswith("wahookd: error: sources.plain.secret: required") for line in lines)
    assert any("sinks.archive.pathh: unknown key" in line for line in lines)
    assert any("sinks.archive.path: field required" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[state]\ndir = "{tmp_path}/state"\n[sources.shop]\nprovider = "wasender"\nsecret = "x"\n',
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr


def test_check_config_reports_table_problems_even_when_the_file_fails_as_a_whole(tmp_path: Path) -> None:
    # The README's example: one whole-file problem and two per-table ones, all at once.
    path = write(
        tmp_path,
        '[server]\ncolour = "red"\n[sources.shop]\nprovider = "wasender"\n[sinks.archive]\nplugin = "file"\n',
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "wahookd: error: server.colour: unknown key",
        "wahookd: error: sources.shop.secret: required (or secret_file / secrets); to accept unsigned "
        'webhooks say verify = "none"',
        "wahookd: error: sinks.archive.path: field required",
    ]


def test_ports_and_networks_get_clear_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = "127.0.0.1:99999"\ntrusted_proxies = ["notanip", "10.0.0.1/8"]\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        "server.listen: expected host:port with a port from 1 to 65535, got '127.0.0.1:99999'",
        "server.trusted_proxies.0: 'notanip' is not an IP address or CIDR network",
    ]


# -- fail closed on secrets ------------------------------------------------------------

PROVIDERS = ["wasender", "meta", "twilio", "waha", "evolution", "standard"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("secret", ['secret = ""', 'secret = "   "', 'secrets = [" \\t "]'])
def test_an_empty_secret_is_a_config_error_for_every_provider(
    tmp_path: Path, provider: str, secret: str
) -> None:
    path = write(tmp_path, f'[sources.fb]\nprovider = "{provider}"\n{secret}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert any("must not be empty" in problem for problem in caught.value.problems)
    assert all(problem.startswith("sources.fb.secret") for problem in caught.value.problems)


def test_an_empty_secret_file_is_a_config_error_naming_the_file_key(tmp_path: Path) -> None:
    (tmp_path / "app-secret").write_text(" \n")
    path = write(tmp_path, '[sources.fb]\nprovider = "meta"\nsecret_file = "app-secret"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: sources.fb.secret_file: ")
    assert "is empty" in result.stderr


def test_an_empty_secret_from_the_environment_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[sources.fb]\nprovider = "meta"\nsecret = "good"\n')
    env = {"WAHOOKD_SOURCES__FB__SECRET": "", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "sources.fb.secret: must not be empty" in result.stderr


def test_an_empty_forward_secret_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[sinks.crm]\nplugin = "forward"\nurl = "http://127.0.0.1:9/"\nsecret = " "\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert "sinks.crm.secret: must not be empty" in result.stderr


def test_secrets_file_holds_one_secret_per_line(tmp_path: Path) -> None:
    (tmp_path / "rotation").write_text("# current first\nnew-secret\n\nold-secret\n")
    path = write(tmp_path, '[sources.fb]\nprovider = "meta"\nsecrets_file = "rotation"\n')
    settings, _ = load_settings(path)
    assert settings.sources["fb"].secret_values() == [b"new-secret", b"old-secret"]


# -- configuration that explains itself ------------------------------------------------


@pytest.mark.parametrize(
    "value", ["10.0.0.0/8", "10.0.0.0/8,192.168.0.0/16", '["10.0.0.0/8", "192.168.0.0/16"]']
)
def test_list_settings_from_the_environment_are_json_or_comma_separated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("WAHOOKD_SERVER__TRUSTED_PROXIES", value)
    settings, _ = load_settings(write(tmp_path, ""))
    assert str(settings.server.trusted_proxies[0]) == "10.0.0.0/8"
    assert len(settings.server.trusted_proxies) == (1 if value == "10.0.0.0/8" else 2)


def test_a_list_setting_from_the_environment_does_not_crash_check_config(tmp_path: Path) -> None:
    env = {"WAHOOKD_SERVER__TRUSTED_PROXIES": "10.0.0.0/8", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "wahookd.cli", "check-config", "--config", str(write(tmp_path, ""))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr


def test_a_sink_secret_file_resolves_against_the_config_directory_from_any_cwd(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "crm-secret").write_text("s3cret")
    (config_dir / "crm-headers").write_text("Authorization: Bearer t0ken\n")
    path = config_dir / "wahookd.toml"
    path.write_text(
        f'[state]\ndir = "{tmp_path}/state"\n'
        '[sinks.crm]\nplugin = "forward"\nurl = "http://127.0.0.1:9/"\n'
        'secret_file = "crm-secret"\nheaders_file = "crm-headers"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (config_dir, elsewhere):
        result = subprocess.run(
            [sys.executable, "-m", "wahookd.cli", "check-config", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
        )
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("listen", ["not a host:8080", "[nope]:8080", "exa_mple.com:80"])
def test_an_invalid_listen_host_fails_check_config(tmp_path: Path, listen: str) -> None:
    result = run_cli("check-config", "--config", str(write(tmp_path, f'[server]\nlisten = "{listen}"\n')))
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: server.listen: ")


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::1]:8080", ":8080", "localhost:8080", "hooks.lan:80"])
def test_valid_listen_addresses_pass(listen: str) -> None:
    from wahookd.settings import ServerSettings

    assert ServerSettings(listen=listen).listen == listen


def test_a_file_sink_under_an_unwritable_path_fails_check_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[state]\ndir = "{tmp_path}/state"\n'
        '[sinks.archive]\nplugin = "file"\npath = "/proc/nope/events.jsonl"\n',
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith("wahookd: error: sinks.archive.path: cannot write under /proc")


def test_check_config_reports_core_and_plugin_problems_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = "not a host:1"\n'
        '[sources.fb]\nprovider = "meta"\nsecret_file = "missing"\n'
        '[sinks.crm]\nplugin = "forward"\nurl = "ftp://x"\nsecret = "s"\n',
    )
    result = run_cli("check-config", "--config", str(path))
    lines = result.stderr.splitlines()
    assert any(line.startswith("wahookd: error: server.listen:") for line in lines)
    assert any(line.startswith("wahookd: error: sources.fb.secret_file: cannot read") for line in lines)
    assert any(line.startswith("wahookd: error: sinks.crm.url:") for line in lines)


def test_plugin_keys_of_a_sink_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAHOOKD_SINKS__ARCHIVE__PLUGIN", "file")
    monkeypatch.setenv("WAHOOKD_SINKS__ARCHIVE__PATH", str(tmp_path / "x.jsonl"))
    monkeypatch.setenv("WAHOOKD_SINKS__ARCHIVE__MAX_BYTES", "1000")
    settings, _ = load_settings(write(tmp_path, ""))
    assert settings.sinks["archive"].plugin_options() == {
        "path": str(tmp_path / "x.jsonl"),
        "max_bytes": 1000,
    }


def test_status_works_without_the_services_secret_files(tmp_path: Path) -> None:
    # Under systemd the secrets exist only in the service's $CREDENTIALS_DIRECTORY.
    path = write(
        tmp_path,
        f'[state]\ndir = "{tmp_path}/state"\n'
        '[sources.fb]\nprovider = "meta"\nsecret_file = "only-for-the-service"\n',
    )
    status = run_cli("status", "--config", str(path))
    assert "secret" not in status.stderr  # only: no journal yet in this fresh state dir
    assert "has not run with this state directory yet" in status.stderr
    assert run_cli("check-config", "--config", str(path)).returncode == 1
