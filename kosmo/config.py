"""Configuration: one frozen ``Settings`` built from the environment, then CLI flags.

Rules:
- Every setting has an environment variable ``KOSMO_*`` and a matching ``--flag``; a flag wins.
- A missing or invalid setting raises ``ConfigError`` with one line naming the variable; the CLI
  prints that line and exits 2. Nothing here prints or logs.
- Secrets (the JWT secret, the broker password) never appear in ``describe()``.
- Durations accept plain seconds or a suffix: ``90s``, ``10m``, ``10h``, ``7d``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

MIN_JWT_SECRET = 32  # bytes: RFC 7518 section 3.2, at least the size of the hash output


class ConfigError(Exception):
    """A setting is missing or invalid; ``str()`` is the one line to show."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (use seconds or 90s, 10m, 10h, 7d)")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def parse_durations(text: str) -> tuple[float, ...]:
    """A comma-separated list of durations: ``5s,5m,30m``."""
    parts = [part for part in text.split(",")]
    if not text.strip() or any(not part.strip() for part in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of durations")
    return tuple(parse_duration(part) for part in parts)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if (not sep or not host or not (port.isascii() and port.isdigit())
            or not 0 <= int(port) <= 65535):
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def parse_database_url(text: str) -> str:
    """A postgresql:// URL (or a libpq ``key=value`` string), checked by libpq's own parser."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if "://" in text and urlsplit(text).scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{redact_url(text)!r} is not a postgresql:// URL")
    try:
        conninfo_to_dict(text)
    except psycopg.Error:
        raise ValueError(f"{redact_url(text)!r} is not a PostgreSQL connection URL") from None
    return text


def parse_optional_bind(text: str) -> tuple[str, int] | None:
    """HOST:PORT, or ``off``."""
    return None if text.strip().lower() == "off" else parse_bind(text)


def parse_auth_mode(text: str) -> str:
    if text not in ("header", "jwt"):
        raise ValueError(f"{text!r} is not one of: header, jwt")
    return text


def parse_positive_int(text: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()) or int(text) <= 0:
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(text)


def parse_workers(text: str) -> int:
    """A positive whole number, or ``auto``: the number of cores."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return parse_positive_int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a positive whole number or auto") from None


def parse_ca_file(text: str) -> str:
    """A PEM file of CA certificates, checked by loading it into a TLS context."""
    try:
        ssl.create_default_context(cafile=text)
    except OSError as exc:  # ssl.SSLError is one
        raise ValueError(f"{text!r} is not a readable PEM file of CA certificates ({exc})"
                         ) from None
    return text


def parse_group(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(f"{text!r} must be 1..64 letters, digits, '_', '.' or '-'")
    return text


def parse_topic_root(text: str) -> str:
    if not text or any(c in text for c in "+#\0") or text.startswith("/") or text.endswith("/"):
        raise ValueError(f"{text!r} is not a plain MQTT topic prefix")
    return text


_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL or ``key=value`` string with any password replaced by ``***``, for logs."""
    url = _PASSWORD.sub(r"\1***", url)
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class MqttEndpoint:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> MqttEndpoint:
        shown = re.sub(r"(//[^:@/]*):[^/]*@", r"\1:***@", url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad MQTT URL {shown!r}: {exc}") from None
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"bad MQTT URL {shown!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"bad MQTT URL {shown!r}: expected mqtt[s]://[user[:pass]@]host[:port]")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port if port is not None else (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=tls,
        )

    def redacted(self) -> str:
        user = ""
        if self.username is not None:
            user = self.username + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


@dataclass(frozen=True)
class Option:
    """One setting: its environment variable, flag, parser, default and help line."""

    env: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    secret: bool = False


OPTIONS: dict[str, Option] = {
    "database_url": Option(
        "KOSMO_DATABASE_URL", parse_database_url, None,
        "PostgreSQL URL, e.g. postgresql://kosmo@127.0.0.1:5432/kosmo (required)", secret=True),
    "mqtt_url": Option(
        "KOSMO_MQTT_URL", MqttEndpoint.from_url, "mqtt://127.0.0.1:1883",
        "broker URL: mqtt://user:pass@host:port, or mqtts:// for TLS", secret=True),
    "mqtt_topic_root": Option(
        "KOSMO_MQTT_TOPIC_ROOT", parse_topic_root, "kosmo",
        "first level of every MQTT topic (kosmo/mesh/status, kosmo/bridge/{id}/outbound/...)"),
    "mqtt_shared_group": Option(
        "KOSMO_MQTT_SHARED_GROUP", parse_group, None,
        "share the status and inbound subscriptions ($share/<group>/...) among gateway "
        "processes; unset: every process gets every message"),
    "mqtt_client_id": Option(
        "KOSMO_MQTT_CLIENT_ID", str, "kosmo-gateway",
        "MQTT client id; it names the persistent session, so keep it stable per process"),
    "http_bind": Option(
        "KOSMO_HTTP_BIND", parse_bind, "127.0.0.1:8003", "HOST:PORT the HTTP API listens on"),
    "auth_mode": Option(
        "KOSMO_AUTH_MODE", parse_auth_mode, "jwt",
        "jwt (Authorization: Bearer HS256) or header (X-User-ID, development only)"),
    "jwt_secret": Option(
        "KOSMO_JWT_SECRET", str, None, "HS256 secret for jwt auth mode (required there)",
        secret=True),
    "max_text_bytes": Option(
        "KOSMO_MAX_TEXT_BYTES", parse_positive_int, "200",
        "longest message text in UTF-8 bytes"),
    "message_ttl": Option(
        "KOSMO_MESSAGE_TTL", parse_duration, "10h",
        "a message not transmitted within this time expires and is refunded"),
    "thread_window": Option(
        "KOSMO_THREAD_WINDOW", parse_duration, "7d",
        "how long after a user's last message a node's reply is threaded to that user"),
    "start_timeout": Option(
        "KOSMO_START_TIMEOUT", parse_duration, "30s",
        "how long the gateway waits for the database at start before giving up"),
    "db_pool_size": Option(
        "KOSMO_DB_POOL_SIZE", parse_positive_int, "8", "most database connections held"),
    "conversation_idle": Option(
        "KOSMO_CONVERSATION_IDLE", parse_duration, "5m",
        "a node's conversation actor stops after this long without work"),
    "outbox_interval": Option(
        "KOSMO_OUTBOX_INTERVAL", parse_duration, "30s",
        "how often messages still pending are handed out again"),
    "max_conversations": Option(
        "KOSMO_MAX_CONVERSATIONS", parse_positive_int, "10000",
        "most node conversation actors held at once; messages for further nodes wait in "
        "the database"),
    "http_idle_timeout": Option(
        "KOSMO_HTTP_IDLE_TIMEOUT", parse_duration, "30s",
        "an HTTP connection is closed when it has not sent a complete request head this long "
        "after it opened or after the previous response"),
    "http_read_timeout": Option(
        "KOSMO_HTTP_READ_TIMEOUT", parse_duration, "30s",
        "an HTTP connection that sends nothing, or (on Linux) takes in nothing, for this long "
        "is closed"),
    "metrics_bind": Option(
        "KOSMO_METRICS_BIND", parse_optional_bind, None,
        "HOST:PORT serving Prometheus metrics at /metrics, e.g. 127.0.0.1:9464; unset or "
        "'off': no metrics endpoint"),
    "http_body_timeout": Option(
        "KOSMO_HTTP_BODY_TIMEOUT", parse_duration, "10s",
        "a request body not complete this long after its head is answered 408"),
    "webhook_retry_schedule": Option(
        "KOSMO_WEBHOOK_RETRY_SCHEDULE", parse_durations, "5s,5m,30m,2h,5h,10h,10h",
        "delays before each retry of a webhook delivery (comma-separated durations, each "
        "±10 %% jitter); after the last, the delivery is given up"),
    "webhook_allow_private": Option(
        "KOSMO_WEBHOOK_ALLOW_PRIVATE", parse_bool, "false",
        "true: webhooks may use http:// and loopback or private addresses (development "
        "only; `kosmo up` sets it)"),
    "webhook_ca_file": Option(
        "KOSMO_WEBHOOK_CA_FILE", parse_ca_file, None,
        "PEM file of CA certificates webhook deliveries trust besides the system's and "
        "certifi's (a private CA); certificates are always verified"),
    "workers": Option(
        "KOSMO_WORKERS", parse_workers, "1",
        "gateway processes sharing the HTTP address (SO_REUSEPORT), each with the MQTT client "
        "id <client id>-w<k> and the shared subscription group (kosmo unless set); 'auto': one "
        "per core; a dead one is restarted (gateway only)"),
}


@dataclass(frozen=True)
class Settings:
    database_url: str
    mqtt_url: MqttEndpoint = field(default_factory=lambda: MqttEndpoint("127.0.0.1", 1883))
    mqtt_topic_root: str = "kosmo"
    mqtt_client_id: str = "kosmo-gateway"
    mqtt_shared_group: str | None = None
    http_bind: tuple[str, int] = ("127.0.0.1", 8003)
    auth_mode: str = "jwt"
    jwt_secret: str | None = None
    max_text_bytes: int = 200
    message_ttl: float = 36000.0
    thread_window: float = 7 * 86400.0
    start_timeout: float = 30.0
    db_pool_size: int = 8
    conversation_idle: float = 300.0
    outbox_interval: float = 30.0
    max_conversations: int = 10000
    http_idle_timeout: float = 30.0
    http_read_timeout: float = 30.0
    http_body_timeout: float = 10.0
    webhook_retry_schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0,
                                                 36000.0, 36000.0)
    webhook_allow_private: bool = False
    metrics_bind: tuple[str, int] | None = None
    webhook_ca_file: str | None = None
    workers: int = 1
    reuse_port: bool = False  # set for each of several workers; no variable of its own

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """Settings for a start-up log line, secrets redacted."""
        out: dict[str, str] = {}
        for name, option in OPTIONS.items():
            value = getattr(self, name)
            if name == "jwt_secret":
                out[name] = "set" if value else "unset"
            elif isinstance(value, MqttEndpoint):
                out[name] = value.redacted()
            elif name == "database_url":
                out[name] = redact_url(value)
            elif not option.secret:
                out[name] = str(value)
        return out


def add_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None,
                  options: Mapping[str, Option] = OPTIONS) -> None:
    """Add a ``--flag`` for each named setting (all of ``options`` by default)."""
    for name in names or list(options):
        option = options[name]
        default = f" (default {option.default})" if option.default is not None else ""
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, metavar=name.upper(),
            help=f"{option.help}{default} [env {option.env}]")


def read_values(environ: Mapping[str, str], args: argparse.Namespace | None,
                options: Mapping[str, Option], require: tuple[str, ...] = ()
                ) -> dict[str, Any]:
    """Parse each setting from its flag, else its variable, else its default."""
    values: dict[str, Any] = {}
    for name, option in options.items():
        raw = getattr(args, name, None) if args is not None else None
        source = "--" + name.replace("_", "-")
        if raw is None:
            raw, source = environ.get(option.env), option.env
        if raw is None or raw == "":
            if name in require:
                raise ConfigError(f"{option.env} is not set: {option.help}")
            if option.default is None:
                continue
            raw, source = option.default, option.env
        try:
            values[name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source} is invalid: {exc}") from None
    return values


def load(environ: Mapping[str, str], args: argparse.Namespace | None = None,
         *, require: tuple[str, ...] = ("database_url",), serving: bool = False) -> Settings:
    """Build Settings from the environment, overridden by parsed CLI flags.

    ``serving`` adds the checks that only matter to a process serving the HTTP API.
    """
    values = read_values(environ, args, OPTIONS, require)
    values.setdefault("database_url", "")
    settings = Settings(**values)
    if serving and settings.auth_mode == "jwt" and not settings.jwt_secret:
        raise ConfigError("KOSMO_JWT_SECRET is not set: jwt auth mode needs a secret "
                          "(or set KOSMO_AUTH_MODE=header for development)")
    if (serving and settings.auth_mode == "jwt" and settings.jwt_secret
            and len(settings.jwt_secret.encode()) < MIN_JWT_SECRET):
        raise ConfigError(f"KOSMO_JWT_SECRET is too short: HS256 needs at least "
                          f"{MIN_JWT_SECRET} bytes (RFC 7518 section 3.2)")
    return settings
