-- Issue 11: private rooms with roles and invitations, direct rooms, 2FA, session listing.
-- Existing rooms stay private (the default) and keep their members; each room's earliest member
-- becomes its owner.
ALTER TABLE rooms ADD COLUMN is_public integer NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN is_direct integer NOT NULL DEFAULT 0;
CREATE INDEX rooms_public ON rooms (id) WHERE is_public = 1;

-- owner | admin | member
ALTER TABLE room_members ADD COLUMN role text NOT NULL DEFAULT 'member';
UPDATE room_members SET role = 'owner' WHERE user_id = (
    SELECT f.user_id FROM room_members f WHERE f.room_id = room_members.room_id
    ORDER BY f.joined_at_ms, f.user_id LIMIT 1
);

CREATE TABLE room_invitations (
    room_id       integer NOT NULL REFERENCES rooms (id),
    user_id       integer NOT NULL REFERENCES users (id),
    inviter_id    integer NOT NULL,
    created_at_ms integer NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_invitations_user ON room_invitations (user_id, created_at_ms);

-- The one direct room of a pair (user_lo < user_hi): the primary key makes opening it race-safe.
CREATE TABLE direct_rooms (
    user_lo integer NOT NULL,
    user_hi integer NOT NULL,
    room_id integer NOT NULL REFERENCES rooms (id),
    PRIMARY KEY (user_lo, user_hi)
);

-- TOTP (RFC 6238): the secret is set at enrolment, enabled once a first code confirmed it.
-- totp_last_step is the time step of the last code accepted: older or equal steps are replays.
ALTER TABLE users ADD COLUMN totp_secret text;
ALTER TABLE users ADD COLUMN totp_enabled integer NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN totp_last_step integer;

-- Single-use recovery codes, stored as SHA-256 (they are random, 50 bits: no slow hash needed).
CREATE TABLE recovery_codes (
    user_id    integer NOT NULL REFERENCES users (id),
    code_hash  blob    NOT NULL,
    used_at_ms integer,
    PRIMARY KEY (user_id, code_hash)
);

-- What the session list shows of a login: when it was last refreshed, from what client.
ALTER TABLE refresh_families ADD COLUMN last_used_at_ms integer;
ALTER TABLE refresh_families ADD COLUMN client text;
CREATE INDEX refresh_families_user ON refresh_families (user_id) WHERE revoked_at_ms IS NULL;
