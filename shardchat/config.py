"""All configuration in one typed place.

Values come from, in order of precedence: environment variables ``SHARDCHAT_<FIELD>`` (upper
case), a TOML file (``SHARDCHAT_CONFIG`` or ``--config``), then the defaults below, which are the
embedded single-process mode (SQLite, in-memory log and registry). Every field is documented in
docs/operations.md.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

StoreKind = Literal["sqlite", "postgres"]
LogKind = Literal["memory", "kafka", "redis-streams", "nats"]
RegistryKind = Literal["memory", "redis", "redis-cluster"]
ObjectStoreKind = Literal["filesystem", "s3"]

#: What ``createUpload`` accepts by default: common images, documents, archives and media. The
#: server checks each file's real type by its first bytes (chat_core/files/sniff.py); no type
#: that a browser would run (HTML, SVG, JavaScript) is here.
DEFAULT_UPLOAD_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "application/zip",
    "application/gzip",
    "audio/mpeg",
    "video/mp4",
    "application/octet-stream",
)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # --- adapters -----------------------------------------------------------------------------
    store: StoreKind = "sqlite"
    sqlite_path: str = "data/shardchat.sqlite3"
    postgres_dsn: str = "postgresql://shardchat@127.0.0.1:55432/shardchat"
    postgres_pool_size: int = 10
    event_log: LogKind = "memory"
    kafka_bootstrap: str = "127.0.0.1:59092"
    kafka_topic: str = "room-events"
    kafka_partitions: int = 32  # the partition count of every event log kind
    kafka_replication_factor: int = 1  # 3 on the 3-broker cluster (min.insync.replicas 2)
    # How long an idle fetch waits at the broker: records are returned as soon as they come
    # (fetch.min.bytes 1) whatever this is; it only sets how often an idle gateway polls.
    kafka_fetch_max_wait_ms: int = 100
    nats_url: str = "nats://127.0.0.1:58222"
    redis_streams_url: str = ""  # the Redis of event_log=redis-streams; empty = redis_url
    event_log_max_len: int = 1_000_000  # records kept per partition (redis-streams, nats)
    registry: RegistryKind = "memory"
    redis_url: str = "redis://127.0.0.1:56379/0"  # registry=redis-cluster: any cluster node
    history_cache: bool = False  # newest page of active rooms in the registry's Redis
    history_cache_ttl_s: float = 300.0
    history_cache_events: int = 200  # newest room events kept per cached room
    object_store: ObjectStoreKind = "filesystem"
    files_dir: str = "data/files"  # object_store=filesystem: the objects live here
    files_signing_key: str = ""  # filesystem URLs' HMAC key; empty = derived from jwt_keys
    s3_endpoint: str = "http://127.0.0.1:58100"  # object_store=s3 (deploy/local s3proxy)
    s3_public_endpoint: str = ""  # the endpoint in presigned URLs (what browsers reach)
    s3_region: str = "us-east-1"
    s3_bucket: str = "shardchat"
    s3_access_key: str = "shardchat"
    s3_secret_key: str = "shardchat-local-secret"
    s3_create_bucket: bool = True  # create the bucket at start when it is missing

    # --- network ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    edge_port: int = 8080
    gateway_port: int = 8081
    router_port: int = 8082
    public_gateway_url: str = ""  # ws URL clients use to reach this gateway; derived if empty
    allowed_origins: tuple[str, ...] = ()  # empty = any origin (dev); else exact matches
    # Addresses/CIDRs of the proxies in front (HAProxy, Traefik, an Ingress): only from these is
    # X-Forwarded-For believed; per-IP limits key on the real client address it names.
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the edge; "*" = any

    # --- auth ---------------------------------------------------------------------------------
    jwt_keys: dict[str, str] = {}  # key id -> HS256 secret; the first is used to sign
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    dev_mode: bool = False  # allows missing or weak signing keys (``shardchat dev`` sets it)
    login_free_failures: int = 5  # failed logins per account before the backoff starts
    login_backoff_base_s: float = 1.0  # first lock; doubles per further failure
    login_backoff_max_s: float = 300.0
    auth_ip_burst: int = 30  # register/login/refresh/2FA per client IP: burst ...
    auth_ip_per_s: float = 1.0  # ... and sustained rate

    # --- protocol limits (docs/protocol.md section 6) -------------------------------------------
    max_frame_bytes: int = 16 * 1024
    max_content_chars: int = 4000
    max_nonce_bytes: int = 32
    e2e_max_ciphertext_bytes: int = 8192  # encrypted message payload (decoded), docs/e2e.md
    e2e_max_sealed_keys: int = 200  # sealed room keys per rotateRoomKey/shareRoomKeys
    ops_per_window: int = 120
    ops_window_s: float = 60.0
    ops_burst: int = 20
    identify_per_window: int = 5
    identify_window_s: float = 5.0
    heartbeat_interval_ms: int = 41_250
    resume_window_s: float = 300.0
    outbound_buffer_bytes: int = 1024 * 1024
    ring_buffer_events: int = 256
    # A busy gateway (a flush within this of the previous one) coalesces its socket writes
    # over this window: fewer writes, at most this much added latency (gateway/outbound.py).
    flush_window_us: int = 1000

    # --- cluster ------------------------------------------------------------------------------
    gateway_id: str = ""  # random if empty
    worker_id: int = -1  # snowflake worker id, unique per writing process; random if < 0
    gateway_ttl_s: float = 10.0
    outbox_relay_after_ms: int = 2000

    # --- GraphQL edge ---------------------------------------------------------------------------
    graphql_max_depth: int = 8
    graphql_max_cost: int = 1000
    graphql_default_list_size: int = 10
    graphql_max_body_bytes: int = 64 * 1024
    graphql_max_batch: int = 10
    graphql_max_tokens: int = 5000
    graphql_enable_introspection: bool = False
    graphql_persisted_queries: list[str] | None = None  # sha256 hex allow-list; None = any query
    graphql_mutation_burst: int = 20
    graphql_mutation_per_s: float = 2.0
    graphql_search_burst: int = 10
    graphql_search_per_s: float = 1.0
    graphql_ws_init_timeout_s: float = 3.0
    graphql_query_burst: int = 120  # per-user root fields (queries and mutations): burst ...
    graphql_query_per_s: float = 20.0  # ... and sustained rate
    graphql_max_root_fields: int = 10  # root fields (aliases included) per operation
    graphql_ws_max_operations: int = 50  # running operations per graphql-ws connection
    http_body_timeout_s: float = 10.0  # a request body must arrive within this

    # --- files and images ----------------------------------------------------------------------
    max_upload_bytes: int = 25 * 1024 * 1024
    upload_types: tuple[str, ...] = DEFAULT_UPLOAD_TYPES
    upload_url_ttl_s: int = 600  # how long a presigned PUT stays valid
    upload_ttl_s: int = 24 * 3600  # an upload never attached is deleted this long after
    download_url_ttl_s: int = 300  # how long a presigned GET stays valid
    user_quota_bytes: int = 1024 * 1024 * 1024  # per user: pending + attached uploads
    max_attachments: int = 10  # per message
    max_image_pixels: int = 40_000_000  # width x height above this is refused (bombs)
    thumbnail_px: int = 320  # thumbnails fit in this square
    files_sweep_interval_s: float = 30.0  # thumbnails left behind, expired and deleted files
    verify_concurrency: int = 4  # uploads verified at once per process (each held in memory)

    # --- observability ------------------------------------------------------------------------
    otlp_endpoint: str = ""  # empty = tracing off
    log_level: str = "INFO"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build Settings from a TOML file, the environment and explicit overrides (highest)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = path or env.get("SHARDCHAT_CONFIG")
    if path:
        raw.update(tomllib.loads(Path(path).read_text()))
    fields = {f.name: f for f in msgspec.structs.fields(Settings)}
    for name in fields:
        value = env.get(f"SHARDCHAT_{name.upper()}")
        if value is not None:
            raw[name] = _from_env(value)
    raw.update(overrides)
    return msgspec.convert(raw, Settings, strict=False)


def _from_env(value: str) -> Any:
    """Env values are strings; JSON-looking ones (lists, tables) are parsed, the rest converted
    by msgspec's lax mode ("8080" -> 8080, "true" -> True)."""
    if value.startswith(("[", "{")):
        return msgspec.json.decode(value)
    return value
