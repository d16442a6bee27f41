"""Configuration: one settings tree for every service (DESIGN.md §8).

Environment variables use the prefix ``AMPGATE_`` and ``__`` between levels
(``AMPGATE_PASSPORT__BASE_URL``); ``AMPGATE_CONFIG`` may name a TOML file with the
same tree. Environment wins over the file. Upstream groups are optional here
because only the gateway and the sandbox need them; ``Settings.require`` lets a
service demand what it uses, with one clear line naming the missing variable.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from services.common.errors import ConfigError

ENV_PREFIX = "AMPGATE_"
SCOPES = (
    "passports:read",
    "passports:write",
    "users:read",
    "users:write",
    "stations:read",
    "prices:read",
    "history:read",
    "admin",
)


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: AnyHttpUrl | None = None
    max_body_bytes: int = Field(1024 * 1024, gt=0)


class ClientSpec(_Group):
    """An inbound caller: we keep only the SHA-256 of its key."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    scopes: list[Literal[SCOPES]]  # type: ignore[valid-type]

    @field_validator("key_sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class UpstreamSettings(_Group):
    """What every upstream has: where it is and how patient we are with it."""

    base_url: AnyHttpUrl
    timeout_s: float = Field(10.0, gt=0)
    connect_timeout_s: float = Field(3.0, gt=0)
    max_concurrency: int = Field(100, gt=0)
    retries: int = Field(2, ge=0, le=10)
    breaker_failures: int = Field(5, gt=0)
    breaker_reset_s: float = Field(10.0, gt=0)


class UpstreamLimits(_Group):
    """What holds for every upstream alike (``AMPGATE_UPSTREAM__*``)."""

    # A larger answer is an upstream failure (502), never read whole.
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    # How long an idle upstream connection is kept for reuse (never past the upstream's own
    # ``Keep-Alive: timeout``): under the 60 s idle timeout of common load balancers, so the
    # first call after a quiet minute does not pay a new TCP and TLS handshake.
    keepalive_s: float = Field(50.0, gt=0)


class PassportPaths(_Group):
    public: str = "/v1/passports/public/{id}"
    owned_list: str = "/v1/passports"
    owned_item: str = "/v1/passports/{id}"
    users_me: str = "/v1/users/me"
    users: str = "/v1/users"


class PassportSettings(UpstreamSettings):
    token_url: AnyHttpUrl
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    audience: str = "https://api.battery-passport.siemens.com"
    required_scope: str = "application.bp_portal.data_viewer"
    paths: PassportPaths = PassportPaths()


class CpoSettings(UpstreamSettings):
    token_url: AnyHttpUrl
    client_id: str = Field(min_length=1)
    client_secret: SecretStr


class PricingSettings(UpstreamSettings):
    api_token: SecretStr


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    enable_idempotence: bool = True
    partitions: int = Field(6, gt=0)
    replication_factor: int = Field(1, gt=0)
    client_id: str = "ampgate"
    # false: never CreateTopics (a managed cluster without that right); the topics must
    # exist, and a missing one is named in the error and in /readyz.
    create_topics: bool = True
    # Managed Kafka (MSK, Confluent Cloud, Aiven, ...): TLS and SASL. Mapped to the client's
    # arguments in one place, services/common/kafka_security.py.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = None  # empty: the system's trust store
    ssl_cert_file: Path | None = None  # client certificate (mutual TLS), PEM
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _security_complete(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                             "sasl_username and sasl_password")
        if not sasl and self.sasl_mechanism:
            raise ValueError("sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class RedisTlsSettings(_Group):
    """How cluster mode reaches a managed Redis (``rediss://`` URL, ACL user, private CA);
    mapped to ``redis.asyncio`` arguments in services/common/redis_security.py."""

    redis_username: str | None = None  # ACL user (Redis >= 6); also taken from the URL
    redis_password: SecretStr | None = None
    ca_file: Path | None = None  # rediss://: the CA that signed the server (empty: system)
    cert_file: Path | None = None  # client certificate, if the server asks for one
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _tls_complete(self) -> Self:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        return self


class TariffContext(_Group):
    """A named authentication medium whose tariffs we poll. The medium itself is
    personal data: events carry only ``name``."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    tag_id: SecretStr | None = None
    emaid: SecretStr | None = None
    authentication_uuid: SecretStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [n for n in ("tag_id", "emaid", "authentication_uuid") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of tag_id, emaid, authentication_uuid")
        return self

    def upstream_params(self) -> dict[str, str]:
        """The pricing API's query parameter for this medium (upstream spelling)."""
        if self.tag_id:
            return {"tag_id": self.tag_id.get_secret_value()}
        if self.emaid:
            return {"emaid": self.emaid.get_secret_value()}
        assert self.authentication_uuid is not None
        return {"authendicationUuid": self.authentication_uuid.get_secret_value()}


class PollSettings(_Group):
    passports_interval_s: float = Field(0.0, ge=0)
    prices_interval_s: float = Field(0.0, ge=0)
    page_size: int = Field(500, gt=0, le=500)


class LogSettings(_Group):
    # "auto": console renderer on a terminal, JSON otherwise.
    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error", "DEBUG", "INFO", "WARNING", "ERROR"] = "info"


class CacheRouteSettings(_Group):
    ttl_s: float | None = Field(None, ge=0)
    stale_while_revalidate_s: float | None = Field(None, ge=0)
    stale_if_error_s: float | None = Field(None, ge=0)


class CachePolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    ttl_s: float
    stale_while_revalidate_s: float
    stale_if_error_s: float


class CacheSettings(_Group):
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    default_ttl_s: float = Field(30.0, ge=0)
    stale_while_revalidate_s: float = Field(30.0, ge=0)
    stale_if_error_s: float = Field(300.0, ge=0)
    routes: dict[str, CacheRouteSettings] = {}

    def policy(self, route: str) -> CachePolicy:
        o = self.routes.get(route, CacheRouteSettings())
        return CachePolicy(
            ttl_s=self.default_ttl_s if o.ttl_s is None else o.ttl_s,
            stale_while_revalidate_s=(
                self.stale_while_revalidate_s
                if o.stale_while_revalidate_s is None
                else o.stale_while_revalidate_s
            ),
            stale_if_error_s=(
                self.stale_if_error_s if o.stale_if_error_s is None else o.stale_if_error_s
            ),
        )


class HistorySettings(_Group):
    url: AnyHttpUrl | None = None
    # A plain path or sqlite:///absolute/path for SQLite, postgresql://... for PostgreSQL.
    # Empty: <state_dir>/history.sqlite3.
    database_url: str = ""
    timeout_s: float = Field(5.0, gt=0)


class WebhookSubscription(_Group):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    url: AnyHttpUrl
    events: list[str] = Field(min_length=1)
    secret: SecretStr
    entity_ids: list[str] | None = None

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith("whsec_"):
            raise ValueError("must start with whsec_ (Standard Webhooks)")
        return v


class WebhookSettings(_Group):
    subscriptions: list[WebhookSubscription] = []
    timeout_s: float = Field(10.0, gt=0)
    # Delays before attempts 2..n; the last failure goes to the dead-letter topic.
    retry_schedule_s: list[float] = [1.0, 5.0, 30.0, 120.0, 600.0]


class ConsumerSettings(_Group):
    # A batch whose effect fails for a transient reason is retried until it is applied:
    # first after retry_backoff_s, doubling up to retry_max_backoff_s (DESIGN.md §7).
    retry_backoff_s: float = Field(0.5, gt=0)
    retry_max_backoff_s: float = Field(30.0, gt=0)
    batch_size: int = Field(500, gt=0)
    # How fast a dead worker's partitions move on. Kafka's broker minimum is 6 s by
    # default; with tansu (dev, tests) ~2 s also makes joining the group quick.
    session_timeout_s: float = Field(10.0, ge=1.0, le=300.0)


class ShutdownSettings(_Group):
    # On SIGTERM the gateway drains its outbox to Kafka for up to this long before it
    # exits; what is left stays in the outbox for the next start (DESIGN.md §7).
    grace_s: float = Field(20.0, ge=0)


class ClusterSettings(RedisTlsSettings):
    """Several gateway replicas acting as one (DESIGN.md §12). The Redis TLS/ACL fields come
    from RedisTlsSettings."""

    redis_url: str | None = None  # redis://, rediss://, unix://; unset: single-replica mode
    lease_s: float = Field(15.0, gt=0)
    # The bound of one Redis call, waiting for a pooled connection included. 250 ms: a loaded
    # event loop makes 50-100 ms budgets trip (Kong#13473); only misses ever wait on Redis.
    # Past it the call counts as failed (three in a row: the store is down, and the gateway
    # serves from its memory tier and local tokens until Redis answers again).
    timeout_s: float = Field(0.25, gt=0, le=10)
    # Every Redis key and channel of this deployment starts with "<key_prefix>:", so two
    # deployments can share one Redis. No ":" (a prefix would then overlap another's keys)
    # and no glob characters (the purge scans "<key_prefix>:cache:*").
    key_prefix: Annotated[str, Field(min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9_.-]+$")] = "ampgate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    http: HttpSettings = HttpSettings()
    clients: list[ClientSpec] = []
    passport: PassportSettings | None = None
    cpo: CpoSettings | None = None
    pricing: PricingSettings | None = None
    upstream: UpstreamLimits = UpstreamLimits()
    kafka: KafkaSettings = KafkaSettings()
    state_dir: Path = Path("./state")
    tariff_contexts: list[TariffContext] = []
    poll: PollSettings = PollSettings()
    log: LogSettings = LogSettings()
    cache: CacheSettings = CacheSettings()
    history: HistorySettings = HistorySettings()
    webhooks: WebhookSettings = WebhookSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    cluster: ClusterSettings = ClusterSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path := os.environ.get(f"{ENV_PREFIX}CONFIG"):
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def require(self, *groups: str) -> None:
        """Fail with a ConfigError naming the first variable of a missing group."""
        for group in groups:
            if getattr(self, group) is None:
                raise ConfigError(f"{ENV_PREFIX}{group.upper()}__BASE_URL is required")

    @property
    def history_database_url(self) -> str:
        return self.history.database_url or str(self.state_dir / "history.sqlite3")


def env_name(loc: tuple[int | str, ...]) -> str:
    """('passport', 'base_url') -> AMPGATE_PASSPORT__BASE_URL (list indexes kept)."""
    parts = [str(p) for p in loc if not re.fullmatch(r"function-after\[.*\]", str(p))]
    return ENV_PREFIX + "__".join(parts).upper()


# AMPGATE_* names that are not settings: the TOML file, test-only variables, and docker
# compose's image override (deploy/docker-compose.yaml), which a shell may well export.
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
TEST_ENV_PREFIX = f"{ENV_PREFIX}TEST_"
_NOT_SETTINGS = frozenset({CONFIG_ENV, f"{ENV_PREFIX}IMAGE"})


def unknown_env_name(environ: Mapping[str, str]) -> str | None:
    """The first ``AMPGATE_*`` variable naming no setting, if any.

    Known names come from the model itself: a top-level field ``x`` accepts ``AMPGATE_X`` and
    ``AMPGATE_X__...``; below the top level the groups' ``extra="forbid"`` names the culprit.
    Matching is case-insensitive, as pydantic-settings reads the environment."""
    fields = {name.upper() for name in Settings.model_fields}
    for key in sorted(environ):
        upper = key.upper()
        if (not upper.startswith(ENV_PREFIX) or upper.startswith(TEST_ENV_PREFIX)
                or upper in _NOT_SETTINGS):
            continue
        if upper.removeprefix(ENV_PREFIX).split("__", 1)[0] not in fields:
            return key
    return None


def _did_you_mean(name: str) -> str:
    fields = [f"{ENV_PREFIX}{f.upper()}" for f in Settings.model_fields]
    head = name.upper().split("__", 1)[0]
    close = difflib.get_close_matches(head, fields, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (+ TOML); raise ConfigError on the first problem."""
    if (unknown := unknown_env_name(os.environ)) is not None:
        raise ConfigError(f"{unknown}: unknown setting{_did_you_mean(unknown)}")
    path = os.environ.get(CONFIG_ENV)
    if path and not Path(path).is_file():
        raise ConfigError(f"{ENV_PREFIX}CONFIG: no such file: {path}")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not isinstance(p, str) or "[" not in p)
        raise ConfigError(f"{env_name(loc)}: {err['msg']}") from None
    except SettingsError as exc:  # malformed JSON in a complex env value
        m = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{m.group(1).upper()}" if m else "settings"
        raise ConfigError(f"{name}: not valid JSON") from None
