"""The environment keys: every variable multipool reads, and their documentation.

:data:`ENV_KEYS` lists them in documentation order; ``docs/configuration.md``
is generated from it by :func:`env_keys_markdown`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from multipool.config.urls import scheme_names

#: the ``default`` alias when nothing is configured: an embedded SQLite file
DEFAULT_URL = "sqlite:///db.sqlite3"


@dataclass(frozen=True)
class EnvKey:
    """One environment key: ``<prefix><suffix>`` (see :func:`env_prefix`)."""

    suffix: str
    field: str  # the DatabaseSpec.settings field it sets
    type: str  # for the docs
    default: str  # for the docs
    description: str
    scope: str = "alias"  # "alias": every alias; "primary": not replicas; "global": once
    example: str = ""

    def name(self, alias: str = "default") -> str:
        if self.scope == "global":
            return f"DATABASE_{self.suffix}"
        return f"{env_prefix(alias)}{self.suffix}"


def env_prefix(alias: str) -> str:
    """``DATABASE_`` for ``default``, ``<ALIAS>_DATABASE_`` for the others."""
    return "DATABASE_" if alias == "default" else f"{alias.upper()}_DATABASE_"


_SECONDS = "seconds (number ≥ 0)"

#: Every environment key, in documentation order.
ENV_KEYS: tuple[EnvKey, ...] = (
    EnvKey(
        "URL",
        "url",
        "database URL",
        f"`{DEFAULT_URL}` for `default`; required for other aliases",
        "Where the database is: `scheme://user:password@host:port/name?option=value`. "
        f"Schemes: {', '.join(scheme_names())} (`sqlite:///relative.db`, "
        "`sqlite:////absolute/path.db`). Percent-encode special characters of the "
        "password. Query options go to the driver (`connect_timeout`, `application_name`, "
        "`charset`, ...); TLS options in either libpq or MySQL spelling and the pool keys "
        "(`pool_size`, ...) are accepted too; `host=/socket/dir` selects a Unix socket.",
        example="postgresql://app:s%40cret@db.internal:5432/app?sslmode=verify-full",
    ),
    EnvKey(
        "URL_FILE",
        "url_file",
        "path",
        "none",
        "A file holding the database URL (a container secret). The URL is read with the "
        "settings, and its user and password again whenever a connection is opened: a "
        "rotated password reaches new connections without a restart. Not together with "
        "`DATABASE_URL`.",
        example="/run/secrets/database-url",
    ),
    EnvKey(
        "PASSWORD_FILE",
        "password_file",
        "path",
        "none",
        "A file holding the password, the container convention (as the postgres image's "
        "`POSTGRES_PASSWORD_FILE`). Read whenever a connection is opened, never per "
        "request: a rotated password reaches new connections, and connections already "
        "open keep working. One trailing newline is ignored. The URL then has no password.",
        example="/run/secrets/db-password",
    ),
    EnvKey(
        "CREDENTIALS",
        "credentials",
        "`package.module:callable`",
        "none",
        "A credential provider: called when a connection is opened, it returns the "
        "password or token and how long it stays valid (`multipool.secrets.Credential`); "
        "its answer is kept until shortly before it expires, so it is called once per "
        "validity, never per request. AWS RDS IAM tokens: "
        "`multipool.secrets.aws:rds_iam_token` (needs boto3). The URL then has no password.",
        example="myproject.db_auth:token",
    ),
    EnvKey(
        "ALIASES",
        "aliases",
        "comma-separated aliases",
        "none",
        "Extra primary aliases besides `default`. Each reads `<ALIAS>_DATABASE_URL` and "
        "the other `<ALIAS>_DATABASE_*` keys. Aliases are lower-case identifiers "
        "(`[a-z][a-z0-9_]*`).",
        scope="global",
        example="legacy,analytics",
    ),
    EnvKey(
        "STRICT",
        "strict",
        "boolean",
        "`false`",
        "Report a variable with a multipool prefix that multipool does not know (a "
        "misspelled name), and one of an alias nobody declared (an `<ALIAS>_DATABASE_URL` "
        "whose alias is not in `DATABASE_ALIASES` or a `*_DATABASE_REPLICAS`), as errors "
        "(`multipool.E007`, `E008`) instead of warnings (`W006`, `W007`).",
        scope="global",
        example="true",
    ),
    EnvKey(
        "REPLICAS",
        "replicas",
        "comma-separated aliases",
        "none",
        "Read replicas of this primary. Each replica reads `<REPLICA>_DATABASE_URL` and "
        "inherits the primary's pool and TLS settings unless it sets its own "
        "`<REPLICA>_DATABASE_*` keys.",
        scope="primary",
        example="replica1,replica2",
    ),
    EnvKey("POOL", "pool_enabled", "boolean", "`true`", "Pool connections of this alias."),
    EnvKey(
        "POOL_SIZE",
        "pool_size",
        "integer ≥ 1",
        "`5`",
        "Connections kept open in the pool.",
    ),
    EnvKey(
        "MAX_OVERFLOW",
        "max_overflow",
        "integer ≥ 0",
        "`5`",
        "Extra connections opened above `POOL_SIZE` under load; closed again, one per "
        "`POOL_OVERFLOW_IDLE` seconds, once the load no longer needs them.",
    ),
    EnvKey(
        "POOL_TIMEOUT",
        "pool_timeout",
        _SECONDS,
        "`10`",
        "How long a request waits for a free connection before failing with `PoolTimeout`.",
    ),
    EnvKey(
        "POOL_RECYCLE",
        "pool_recycle",
        "seconds (number > 0), or `none`",
        "`none`",
        "Replace connections older than this (e.g. below a server or proxy idle timeout). "
        "`none` or `-1`: never.",
    ),
    EnvKey(
        "POOL_PRE_PING",
        "pool_pre_ping",
        "boolean",
        "`false`",
        "Ping every connection when it is checked out.",
    ),
    EnvKey(
        "POOL_PING_IDLE",
        "pool_ping_idle",
        _SECONDS,
        "`30`",
        "Ping connections that were idle longer than this when they are checked out.",
    ),
    EnvKey(
        "POOL_POLL_IDLE",
        "pool_poll_idle",
        _SECONDS,
        "`0.001`",
        "Before lending a connection again, check its socket (a zero-timeout `poll()`, no "
        "round trip) for a close by the server, so that no request fails on a connection "
        "the server closed. A connection used less than this many seconds ago is lent "
        "without the check: a close that recent has barely had the time to reach the "
        "client. `0`: check every time. HikariCP skips its check for 0.5 s, pgx for 1 s; "
        "above a millisecond, a session the server ends while idle fails the next request "
        "made on it within the window.",
    ),
    EnvKey(
        "POOL_OVERFLOW_IDLE",
        "pool_overflow_idle",
        _SECONDS,
        "`30`",
        "Keep connections opened above `POOL_SIZE` while the load needs them: once some "
        "connection has sat idle at every moment for this long, close one if more than "
        "`POOL_SIZE` are idle (the next after another such period). `0`: close them as soon "
        "as they are returned (SQLAlchemy's behaviour), which under sustained load reopens "
        "them, a TLS handshake each time.",
    ),
    EnvKey(
        "POOL_LIFO",
        "pool_lifo",
        "boolean",
        "`true`",
        "Hand out the most recently returned of the connections in SQLAlchemy's queue "
        "first. Connections kept between requests are lent oldest first either way.",
    ),
    EnvKey(
        "POOL_RESET",
        "pool_reset",
        "`transaction` or `session`",
        "`transaction`",
        "What is undone when a connection goes back to the pool. `transaction`: an open "
        "transaction is rolled back; session settings persist, as with Django's persistent "
        "connections. `session`: also reset the session (PostgreSQL `DISCARD ALL`, MySQL "
        "`COM_CHANGE_USER`), at the cost of a round trip per request.",
    ),
    EnvKey(
        "POOL_METRICS",
        "pool_metrics",
        "boolean",
        "`true`",
        "Report this pool's metrics: OpenTelemetry's `db.client.connection.*` when "
        "`opentelemetry-api` is installed (received by the application's MeterProvider), "
        "Prometheus when `prometheus-client` is installed (see the metrics guide). `false`: "
        "none are recorded, at no cost per request.",
    ),
    EnvKey(
        "POOLER",
        "pooler",
        "`none`, `pgbouncer` or `proxysql`",
        "`none`",
        "An external pooler sits between the application and the server "
        "(`pgbouncer`: PostgreSQL only; `proxysql`: MySQL only).",
    ),
    EnvKey(
        "CONNECT_TIMEOUT",
        "connect_timeout",
        "seconds (1 to 86400)",
        "`10`",
        "How long opening one connection may take (TCP, TLS handshake, login) before it "
        "fails with an error naming the alias and the host. A checkout therefore fails "
        "within `POOL_TIMEOUT` plus this. Also accepted as `?connect_timeout=` in the URL.",
    ),
    EnvKey(
        "NETWORK_TIMEOUT",
        "network_timeout",
        "seconds (0 to 86400)",
        "`30`",
        "How long the network to the server may stay silent before a connection counts as "
        "dead: TCP keepalives probe idle connections, and data the server has not "
        "acknowledged after this long fails the query (PostgreSQL `tcp_user_timeout`, the "
        "same socket option on MySQL). A host that is down or unreachable then fails "
        "requests instead of hanging them. `0`: the operating system's defaults (hours).",
    ),
    EnvKey(
        "CONN_MAX_AGE",
        "conn_max_age",
        "integer ≥ 0, or `none`",
        "`0`",
        "Django's `CONN_MAX_AGE`. Keep `0` with pooling: Django returns the connection to "
        "the pool at the end of each request.",
    ),
    EnvKey(
        "SSLMODE",
        "tls_mode",
        "TLS mode",
        "driver default",
        "`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`; MySQL "
        "spellings (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`, "
        "any case) and `true`/`false` are accepted too. `require` and stricter mean "
        "encrypted or refused (`EncryptionRequired`), whatever the client library does; on "
        "MySQL, TLS files without a mode mean `require`.",
        example="verify-full",
    ),
    EnvKey(
        "SSLROOTCERT",
        "tls_ca",
        "path, PEM text, or `system`",
        "none",
        "CA bundle used to verify the server certificate. `system`: the operating "
        "system's CA store (PostgreSQL: needs libpq 16+ and implies `verify-full`). "
        "Required by `verify-ca` / `verify-full`.",
    ),
    EnvKey("SSLCERT", "tls_cert", "path or PEM text", "none", "Client certificate."),
    EnvKey(
        "SSLKEY",
        "tls_key",
        "path or PEM text",
        "none",
        "Client private key. A key file must not be readable by group or others (`chmod 600`).",
    ),
    EnvKey(
        "SSLPASSWORD",
        "tls_key_password",
        "text",
        "none",
        "Passphrase of an encrypted client key (PostgreSQL only).",
    ),
    EnvKey(
        "SSLCRL",
        "tls_crl",
        "path or PEM text",
        "none",
        "Certificate revocation list (PostgreSQL only).",
    ),
    EnvKey(
        "SSLROOTCERT_FILE",
        "tls_ca_file",
        "path",
        "none",
        "`SSLROOTCERT` in the `_FILE` form of container secrets: the CA bundle file "
        "(never PEM text). Not together with `SSLROOTCERT`.",
    ),
    EnvKey(
        "SSLCERT_FILE",
        "tls_cert_file",
        "path",
        "none",
        "`SSLCERT` in the `_FILE` form: the client certificate file. Not together with "
        "`SSLCERT`.",
    ),
    EnvKey(
        "SSLKEY_FILE",
        "tls_key_file",
        "path",
        "none",
        "`SSLKEY` in the `_FILE` form: the client key file (`chmod 600`). Not together "
        "with `SSLKEY`.",
    ),
    EnvKey(
        "SSLPASSWORD_FILE",
        "tls_key_password_file",
        "path",
        "none",
        "`SSLPASSWORD` in the `_FILE` form: a file holding the passphrase of an encrypted "
        "client key (PostgreSQL only; one line ending at the end is not part of it). Read "
        "with the settings, at start: a new passphrase takes a restart. Not together with "
        "`SSLPASSWORD`.",
    ),
    EnvKey(
        "SSLCRL_FILE",
        "tls_crl_file",
        "path",
        "none",
        "`SSLCRL` in the `_FILE` form: the CRL file. Not together with `SSLCRL`.",
    ),
    EnvKey(
        "ROTATION_CHECK",
        "rotation_check",
        _SECONDS,
        "`5`",
        "How often a pool looks at its certificate, key, CA and CRL files for a rotation: "
        "one `stat()` per file, at most once per this many seconds, when a connection is "
        "given back (and whenever one is opened). Changed files are validated (key matches "
        "certificate, chain, dates) before they are used; connections opened before are "
        "then replaced one at a time. `0`: look at every checkin.",
    ),
    EnvKey(
        "SSL_MIN_VERSION",
        "tls_min_version",
        "`TLSv1.2` or `TLSv1.3`",
        "driver default",
        "Lowest TLS protocol version (PostgreSQL only; set `tls_version` on a MySQL server).",
    ),
    EnvKey(
        "SSL_CIPHERS",
        "tls_ciphers",
        "OpenSSL cipher list",
        "driver default",
        "Allowed ciphers (MySQL only; set `ssl_ciphers` on a PostgreSQL server).",
    ),
)

#: the keys each alias reads (the others are read once)
ALIAS_KEYS = tuple(k for k in ENV_KEYS if k.scope != "global")
#: what a keyword default of read_environment() may be called
DEFAULT_KEY_RE = re.compile(
    r"(?:(?P<alias>[A-Z][A-Z0-9_]*)_)?DATABASE_(?P<suffix>"
    + "|".join(sorted((re.escape(k.suffix) for k in ENV_KEYS), key=len, reverse=True))
    + ")"
)


def env_keys_markdown(alias: str = "default") -> str:
    """The table of :data:`ENV_KEYS` as Markdown (for ``docs/configuration.md``)."""
    lines = [
        "| Variable | Type | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for key in ENV_KEYS:
        variable = f"`{key.name(alias)}`"
        if key.scope == "primary":
            variable += " (primaries only)"
        if key.scope == "global":
            variable += " (once)"
        description = key.description
        if key.example:
            description += f" Example: `{key.example}`."
        lines.append(f"| {variable} | {key.type} | {key.default} | {description} |")
    return "\n".join(lines) + "\n"
