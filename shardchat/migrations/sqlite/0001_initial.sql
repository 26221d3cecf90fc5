-- Initial schema. Times are epoch milliseconds (bigint): no time-zone conversions anywhere.
CREATE TABLE users (
    id            integer PRIMARY KEY,
    username      text   NOT NULL,
    password_hash text   NOT NULL,
    created_at_ms integer NOT NULL
);
-- Case-insensitive uniqueness: "Alice" and "alice" must not be two people.
CREATE UNIQUE INDEX users_username_nocase ON users (username COLLATE NOCASE);

CREATE TABLE refresh_families (
    id            text   PRIMARY KEY,
    user_id       integer NOT NULL REFERENCES users (id),
    created_at_ms integer NOT NULL,
    revoked_at_ms integer
);

-- Only SHA-256 hashes of refresh tokens are stored: a database leak yields no usable token.
CREATE TABLE refresh_tokens (
    token_hash    blob   PRIMARY KEY,
    family_id     text   NOT NULL REFERENCES refresh_families (id),
    user_id       integer NOT NULL,
    created_at_ms integer NOT NULL,
    expires_at_ms integer NOT NULL,
    used_at_ms    integer
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE rooms (
    id            integer PRIMARY KEY,
    name          text   NOT NULL,
    last_seq      integer NOT NULL DEFAULT 0,
    created_at_ms integer NOT NULL
);

CREATE TABLE room_members (
    room_id      integer NOT NULL REFERENCES rooms (id),
    user_id      integer NOT NULL REFERENCES users (id),
    joined_at_ms integer NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id, room_id);

-- No foreign keys on the hot path: the send transaction checks membership itself, and rooms and
-- users are never deleted, so FK lookups would only cost time per message.
CREATE TABLE messages (
    id            integer  PRIMARY KEY,
    room_id       integer  NOT NULL,
    seq           integer  NOT NULL,
    author_id     integer  NOT NULL,
    content       text    NOT NULL,
    nonce         text    NOT NULL,
    created_at_ms integer  NOT NULL,
    edited_at_ms  integer,
    deleted       integer NOT NULL DEFAULT 0
);
-- Idempotent send: a retried (author, nonce) conflicts here, even across processes.
CREATE UNIQUE INDEX messages_author_nonce ON messages (author_id, nonce);
CREATE INDEX messages_room_id ON messages (room_id, id);

CREATE TABLE reactions (
    message_id    integer NOT NULL,
    emoji         text   NOT NULL,
    user_id       integer NOT NULL,
    created_at_ms integer NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);

-- Event history (recovery) and outbox (publishing) in one table. data is the JSON text of the
-- DISPATCH d: stored as text since it is only ever written and read back whole.
CREATE TABLE room_events (
    room_id         integer NOT NULL,
    seq             integer NOT NULL,
    type            text   NOT NULL,
    data            text   NOT NULL,
    created_at_ms   integer NOT NULL,
    published_at_ms integer,
    PRIMARY KEY (room_id, seq)
);
-- Small: only the unpublished rows, which the relay sweeps.
CREATE INDEX room_events_unpublished ON room_events (room_id, seq) WHERE published_at_ms IS NULL;

CREATE TABLE leases (
    name          text   PRIMARY KEY,
    owner         text   NOT NULL,
    expires_at_ms integer NOT NULL
);
