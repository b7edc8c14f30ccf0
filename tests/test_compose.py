"""docker-compose.yml (README "Running at scale") stays valid: PostgreSQL, two replicas on one
database in webhook mode, nginx in front; every CAPBOT_ variable is a setting of bot/config.py
and the replicas' environment passes its validation."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")
SAMPLE = {"POSTGRES_PASSWORD": "pw", "TELEGRAM_TOKEN": "123456:ABC",
          "WEBHOOK_HOST": "bot.example.org", "WEBHOOK_SECRET": "s3cret_token",
          "SECRET_KEY": "signing-key"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def substituted(value: object) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with sample values for the required."""
    def one(match: re.Match) -> str:
        name, rest = match.group(1), match.group(0)
        if name in SAMPLE:
            return SAMPLE[name]
        return "" if ":?" in rest else (match.group(2) or "")
    return PLACEHOLDER.sub(one, str(value))


def replicas(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if "CAPBOT_DATABASE_URL" in
            (s.get("environment") or {})}


def test_the_deployment_has_postgres_two_replicas_and_a_proxy() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "nginx" in services["nginx"]["image"]
    assert len(replicas(services)) == 2
    urls = {substituted(s["environment"]["CAPBOT_DATABASE_URL"])
            for s in replicas(services).values()}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in next(iter(urls))  # the postgres service
    volumes = [tuple(s.get("volumes", ())) for s in replicas(services).values()]
    assert len(set(volumes)) == len(volumes)  # each replica its own spool volume


def test_every_variable_is_a_setting_and_validates() -> None:
    fields = set(Settings.model_fields)
    for name, service in replicas(compose()["services"]).items():
        env = {k: substituted(v) for k, v in service["environment"].items()}
        unknown = [k for k in env if not k.startswith("CAPBOT_")
                   or k.removeprefix("CAPBOT_").lower() not in fields]
        assert not unknown, f"{name}: not settings of bot/config.py: {unknown}"
        values = {k.removeprefix("CAPBOT_").lower(): v for k, v in env.items() if v != ""}
        settings = Settings(_env_file=None, **values)
        assert settings.telegram_webhook_url == "https://bot.example.org/telegram/webhook"
        assert settings.reminders is True
        assert not settings.database_url.startswith("sqlite")


def test_nginx_balances_over_every_replica_on_its_webhook_port() -> None:
    services = compose()["services"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    upstreams = set(re.findall(r"server\s+([\w-]+):(\d+)", conf))
    expected = {(name, s["environment"]["CAPBOT_TELEGRAM_WEBHOOK_PORT"])
                for name, s in replicas(services).items()}
    assert upstreams == expected
    path = substituted(next(iter(replicas(services).values()))["environment"][
        "CAPBOT_TELEGRAM_WEBHOOK_URL"]).split("bot.example.org", 1)[1]
    assert f"location {path} " in conf
