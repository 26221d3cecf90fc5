-- Issue 11: private rooms with roles and invitations, direct rooms, 2FA, session listing.
-- Existing rooms stay private (the default) and keep their members; each room's earliest member
-- becomes its owner. Every new column has a constant default or is nullable: catalog-only
-- changes in PostgreSQL, no table rewrite.
ALTER TABLE rooms ADD COLUMN is_public boolean NOT NULL DEFAULT false;
ALTER TABLE rooms ADD COLUMN is_direct boolean NOT NULL DEFAULT false;
CREATE INDEX rooms_public ON rooms (id) WHERE is_public;

-- owner | admin | member
ALTER TABLE room_members ADD COLUMN role text NOT NULL DEFAULT 'member';
UPDATE room_members m SET role = 'owner' FROM (
    SELECT DISTINCT ON (room_id) room_id, user_id FROM room_members
    ORDER BY room_id, joined_at_ms, user_id
) first WHERE m.room_id = first.room_id AND m.user_id = first.user_id;

CREATE TABLE room_invitations (
    room_id       bigint NOT NULL REFERENCES rooms (id),
    user_id       bigint NOT NULL REFERENCES users (id),
    inviter_id    bigint NOT NULL,
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_invitations_user ON room_invitations (user_id, created_at_ms);

-- The one direct room of a pair (user_lo < user_hi): the primary key makes opening it race-safe.
CREATE TABLE direct_rooms (
    user_lo bigint NOT NULL,
    user_hi bigint NOT NULL,
    room_id bigint NOT NULL REFERENCES rooms (id),
    PRIMARY KEY (user_lo, user_hi)
);

-- TOTP (RFC 6238): the secret is set at enrolment, enabled once a first code confirmed it.
-- totp_last_step is the time step of the last code accepted: a code of that step or older is a
-- replay and is refused.
ALTER TABLE users ADD COLUMN totp_secret text;
ALTER TABLE users ADD COLUMN totp_enabled boolean NOT NULL DEFAULT false;
ALTER TABLE users ADD COLUMN totp_last_step bigint;

-- Single-use recovery codes, stored as SHA-256 (they are random, 50 bits: no slow hash needed).
CREATE TABLE recovery_codes (
    user_id    bigint NOT NULL REFERENCES users (id),
    code_hash  bytea  NOT NULL,
    used_at_ms bigint,
    PRIMARY KEY (user_id, code_hash)
);

-- What the session list shows of a login: when it was last refreshed, from what client.
ALTER TABLE refresh_families ADD COLUMN last_used_at_ms bigint;
ALTER TABLE refresh_families ADD COLUMN client text;
CREATE INDEX refresh_families_user ON refresh_families (user_id) WHERE revoked_at_ms IS NULL;
