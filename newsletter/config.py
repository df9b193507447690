"""Read the configuration once into a frozen Settings object.

Sources, later ones winning: built-in defaults, one TOML file, then ``NEWSLETTER_*``
environment variables. The TOML file is ``--config FILE``, else ``$NEWSLETTER_CONFIG``,
else ``./newsletter.toml`` if present. Relative paths in the file resolve against the
file's folder. Secrets (the SMTP password, the signing secret) come only from the
environment: ``NEWSLETTER_SMTP_PASSWORD`` and ``NEWSLETTER_SECRET``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
SPECIAL_VARIABLES = ("NEWSLETTER_SMTP_PASSWORD", "NEWSLETTER_SECRET", "NEWSLETTER_CONFIG")


def bundled(name: str) -> Path:
    """Return a shipped resource: from the checkout if we run from one, else from the wheel."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / name).exists():
        return root / name
    return PACKAGE_DIR / "_bundled" / name.removeprefix("data/")


@dataclass(frozen=True)
class NewsletterSettings:
    title: str = "What happened today in history?"
    base_url: str = "https://example.org/history/"  # where the public folder is served
    timezone: str = "UTC"  # IANA name; "today" is computed here
    send_time: str = "07:00"  # HH:MM in each reader's zone
    language: str = "en"
    feed_days: int = 30  # editions kept in the feeds and the archive index
    catchup_hours: float = 6.0  # a missed send is still made this long after send_time
    postal_address: str = ""  # shown in the footer (CAN-SPAM); empty hides it, and `send` warns
    greeting: str = "auto"  # "auto": Good morning/afternoon/evening by send_time; "" for none; else this text
    subject: str = "{{ date_label }}: {{ event.title }}"  # Jinja2, see README
    log_level: str = "INFO"


@dataclass(frozen=True)
class SenderSettings:
    name: str = "What happened today in history?"
    address: str = "history@example.org"
    reply_to: str = ""
    bounce_address: str = ""  # envelope sender (MAIL FROM, Return-Path): where DSNs go; empty = address
    unsubscribe_address: str = ""  # the mailto: of List-Unsubscribe; empty = address


@dataclass(frozen=True)
class PathSettings:
    events: Path = field(default_factory=lambda: bundled("data/events"))
    templates: Path = field(default_factory=lambda: bundled("templates"))
    subscribers: Path = field(default_factory=lambda: bundled("subscribers.example.csv"))
    state: Path = Path("var")  # SQLite state (ledger)
    public: Path = Path("public")  # feeds and web archive


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 587
    security: str = "starttls"  # "starttls" | "tls" | "none"
    username: str = ""
    timeout: float = 30.0
    connections: int = 4  # parallel SMTP connections
    rate_limit: float = 0.0  # messages per second, 0 = unlimited
    max_per_hour: int = 0  # messages per hour, 0 = unlimited
    max_attempts: int = 5  # tries for a temporary failure before it stays "failed"
    retry_delay: float = 1.0  # first backoff in seconds, doubled on every retry, with +-50% jitter
    retry_window: float = (
        60.0  # seconds a run keeps retrying a refused recipient; then it stays failed for the daily job
    )
    ca_file: Path | None = None  # PEM bundle to trust for TLS instead of the system's (private relays)


@dataclass(frozen=True)
class DkimSettings:
    domain: str = ""
    selector: str = ""
    private_key: Path | None = None  # PEM file; signing is on when all three are set
    ed25519_key: Path | None = None  # PEM file of an Ed25519 key: a second signature beside RSA (RFC 8463)
    ed25519_selector: str = ""  # selector of the Ed25519 key; "" means "<selector>-ed25519"


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    confirm_hours: float = 48.0  # lifetime of a double opt-in link
    signup_limit: int = 3  # sign-up emails per address per hour
    legacy_link_days: float = 180.0  # old-form links (the address inside) still work this long after the upgrade


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  # "" = the SQLite file in paths.state; postgresql://user@host/db puts all state in PostgreSQL
    lease_seconds: float = 300.0  # a sender's claim on its rows; a dead sender's rows return to the pool after it
    keep_days: int = 90  # the daily job folds recipient rows of editions older than this into totals; 0 keeps all


SECTIONS: dict[str, type] = {
    "newsletter": NewsletterSettings,
    "sender": SenderSettings,
    "paths": PathSettings,
    "smtp": SmtpSettings,
    "dkim": DkimSettings,
    "web": WebSettings,
    "database": DatabaseSettings,
}


@dataclass(frozen=True)
class Settings:
    newsletter: NewsletterSettings = field(default_factory=NewsletterSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    web: WebSettings = field(default_factory=WebSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp_password: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    source: Path | None = None  # the TOML file read, if any

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.newsletter.timezone)

    @property
    def sender_domain(self) -> str:
        return self.sender.address.rpartition("@")[2]

    @property
    def envelope_sender(self) -> str:
        """MAIL FROM of every message (the Return-Path): sender.bounce_address, else From."""
        return self.sender.bounce_address or self.sender.address

    @property
    def unsubscribe_address(self) -> str:
        """The mailto: address of List-Unsubscribe: sender.unsubscribe_address, else From."""
        return self.sender.unsubscribe_address or self.sender.address

    @property
    def dkim_enabled(self) -> bool:
        return bool(self.dkim.domain and self.dkim.selector and self.dkim.private_key)

    def signing_secret(self, *, allow_insecure: bool = False) -> str:
        """Return NEWSLETTER_SECRET; a fixed placeholder only where nothing real is sent."""
        if self.secret:
            return self.secret
        if allow_insecure:
            return "insecure-placeholder-secret-set-NEWSLETTER_SECRET"
        raise ConfigError(
            "NEWSLETTER_SECRET is not set: it signs the unsubscribe links; "
            "set it to a long random string (python -c 'import secrets; print(secrets.token_hex(32))')"
        )


def find_config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """Return the TOML file to read: --config, then $NEWSLETTER_CONFIG, then ./newsletter.toml."""
    for candidate, origin in ((explicit, "--config"), (env.get("NEWSLETTER_CONFIG"), "NEWSLETTER_CONFIG")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"{path}: configuration file not found (from {origin})")
            return path
    local = Path("newsletter.toml")
    return local if local.is_file() else None


def load_settings(config_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read defaults, the TOML file and the environment into one validated Settings."""
    env = os.environ if env is None else env
    path = find_config_file(config_file, env)
    raw: dict[str, dict[str, Any]] = {}
    base = Path.cwd()
    if path is not None:
        raw = _read_toml(path)
        base = path.resolve().parent
    sections = {name: _build_section(name, cls, raw.pop(name, {}), base, str(path)) for name, cls in SECTIONS.items()}
    if raw:
        unknown = sorted(raw)[0]
        raise ConfigError(f"{path}: unknown section [{unknown}] (known: {', '.join(SECTIONS)})")
    _refuse_password_in_file(sections["database"].url, str(path))
    sections = _apply_env(sections, env)
    settings = Settings(
        **sections,
        smtp_password=env.get("NEWSLETTER_SMTP_PASSWORD") or None,
        secret=env.get("NEWSLETTER_SECRET") or None,
        source=path.resolve() if path else None,
    )
    _validate(settings)
    return settings


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: key '{key}' must be inside a section such as [newsletter]")
    return data


def _build_section(name: str, cls: type, values: dict[str, Any], base: Path, origin: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    converted = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown key '{name}.{key}' (known: {', '.join(known)})")
        converted[key] = _convert(f"{name}.{key}", known[key].type, value, base, origin)
    return cls(**converted)


_TYPE_WORDS = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


def _convert(key: str, annotation: Any, value: Any, base: Path, origin: str) -> Any:
    """Coerce one value to its declared type, or raise a ConfigError naming the key."""
    kind = str(annotation)
    try:
        if "Path" in kind:
            text = str(value).strip()
            if not text:
                return None if "None" in kind else base
            path = Path(text).expanduser()
            return path if path.is_absolute() else base / path
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in {"1", "true", "yes", "on"}:
                return True
            if str(value).lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        expected = _TYPE_WORDS.get(kind.replace("pathlib.", ""), kind)
        raise ConfigError(f"{origin}: '{key}' must be {expected}, not {value!r}") from None


def _refuse_password_in_file(url: str, origin: str) -> None:
    """A database password never lives in the TOML file: the environment's URL, PG* variables or .pgpass."""
    if url and urlsplit(url).password:
        raise ConfigError(
            f"{origin}: 'database.url' must not hold a password: set NEWSLETTER_DATABASE_URL in the environment, "
            "or PGPASSWORD, or use ~/.pgpass"
        )


def masked_url(url: str) -> str:
    """The database URL with its password (if any) replaced by ********, for messages and `config`."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return parts._replace(netloc=netloc).geturl()


def _apply_env(sections: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Override settings from NEWSLETTER_<KEY> ([newsletter]) and NEWSLETTER_<SECTION>_<KEY>."""
    for variable, value in env.items():
        if not variable.startswith("NEWSLETTER_") or variable in SPECIAL_VARIABLES:
            continue
        section, key = _env_target(variable)
        cls_fields = {f.name: f for f in fields(SECTIONS[section])}
        converted = _convert(f"{section}.{key}", cls_fields[key].type, value, Path.cwd(), variable)
        sections[section] = dataclasses.replace(sections[section], **{key: converted})
    return sections


def _env_target(variable: str) -> tuple[str, str]:
    rest = variable.removeprefix("NEWSLETTER_").lower()
    for section, cls in SECTIONS.items():
        names = {f.name for f in fields(cls)}
        if section != "newsletter" and rest.startswith(section + "_") and rest[len(section) + 1 :] in names:
            return section, rest[len(section) + 1 :]
    if rest in {f.name for f in fields(NewsletterSettings)}:
        return "newsletter", rest
    raise ConfigError(
        f"{variable}: unknown environment variable (use NEWSLETTER_<KEY> for [newsletter] keys, "
        "NEWSLETTER_<SECTION>_<KEY> for the others, e.g. NEWSLETTER_SMTP_HOST)"
    )


def _validate(settings: Settings) -> None:
    where = str(settings.source) if settings.source else "configuration"
    n, smtp = settings.newsletter, settings.smtp
    try:
        ZoneInfo(n.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: 'newsletter.timezone' is not an IANA time zone: {n.timezone!r}") from None
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", n.send_time):
        raise ConfigError(f"{where}: 'newsletter.send_time' must be HH:MM (24-hour), not {n.send_time!r}")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", n.base_url):
        raise ConfigError(f"{where}: 'newsletter.base_url' must be an http(s) URL, not {n.base_url!r}")
    if not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", n.language):
        raise ConfigError(f"{where}: 'newsletter.language' must be a language tag such as 'en', not {n.language!r}")
    if n.feed_days < 1:
        raise ConfigError(f"{where}: 'newsletter.feed_days' must be at least 1")
    if n.catchup_hours < 0:
        raise ConfigError(f"{where}: 'newsletter.catchup_hours' must not be negative")
    if len(n.greeting) > 60 or not n.greeting.isprintable():
        raise ConfigError(f"{where}: 'newsletter.greeting' must be one line of at most 60 characters")
    if n.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{where}: 'newsletter.log_level' must be DEBUG, INFO, WARNING or ERROR")
    sender = settings.sender
    for key in ("address", "reply_to", "bounce_address", "unsubscribe_address"):
        address = getattr(sender, key)
        if address or key == "address":
            _check_address(where, f"sender.{key}", address)
    if smtp.security not in {"starttls", "tls", "none"}:
        raise ConfigError(f"{where}: 'smtp.security' must be starttls, tls or none, not {smtp.security!r}")
    if not 0 < smtp.port < 65536:
        raise ConfigError(f"{where}: 'smtp.port' must be between 1 and 65535")
    if smtp.connections < 1 or smtp.max_attempts < 1:
        raise ConfigError(f"{where}: 'smtp.connections' and 'smtp.max_attempts' must be at least 1")
    if (
        smtp.rate_limit < 0
        or smtp.max_per_hour < 0
        or smtp.timeout <= 0
        or smtp.retry_delay < 0
        or smtp.retry_window < 0
    ):
        raise ConfigError(
            f"{where}: 'smtp.rate_limit', 'smtp.max_per_hour', 'smtp.timeout', 'smtp.retry_delay' and 'smtp.retry_window' must be positive or 0"
        )
    db = settings.database
    if db.url and urlsplit(db.url).scheme not in {"postgresql", "postgres"}:
        raise ConfigError(
            f"{where}: 'database.url' must be empty (SQLite in paths.state) or postgresql://..., not {masked_url(db.url)!r}"
        )
    if db.lease_seconds < 5:
        raise ConfigError(f"{where}: 'database.lease_seconds' must be at least 5")
    if db.keep_days < 0 or 0 < db.keep_days < 14:
        raise ConfigError(
            f"{where}: 'database.keep_days' must be 0 (keep everything) or at least 14 (bounces and digests need two weeks)"
        )
    if settings.web.legacy_link_days < 0:
        raise ConfigError(f"{where}: 'web.legacy_link_days' must not be negative")
    if not 0 < settings.web.port < 65536:
        raise ConfigError(f"{where}: 'web.port' must be between 1 and 65535")


def _check_address(where: str, key: str, address: str) -> None:
    try:
        validate_email(address, check_deliverability=False, allow_smtputf8=False)  # SMTP commands are ASCII
    except EmailNotValidError as exc:
        raise ConfigError(f"{where}: '{key}' is not a valid email address ({address!r}): {exc}") from None


def as_toml(settings: Settings) -> str:
    """Render the effective settings as TOML, with secrets masked."""
    lines = [f"# effective configuration (file: {settings.source or 'none, built-in defaults'})"]
    for name in SECTIONS:
        lines.append(f"\n[{name}]")
        for f in fields(getattr(settings, name)):
            value = getattr(getattr(settings, name), f.name)
            if (name, f.name) == ("database", "url"):
                value = masked_url(value)
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines.append("\n# secrets, from the environment only")
    for label, value in (("NEWSLETTER_SMTP_PASSWORD", settings.smtp_password), ("NEWSLETTER_SECRET", settings.secret)):
        lines.append(f"# {label} = {'********' if value else '(not set)'}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return '""'
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
