-- Issue 13: end-to-end encrypted rooms (docs/e2e.md). Every new column has a constant default or
-- is nullable: SQLite adds them without a rewrite too.

-- An encrypted room's key epoch (0 until the first rotation) and whether a rotation is due (set
-- by every MEMBER_JOIN and MEMBER_LEAVE in their transaction, and by every change of a member's
-- device list; messages are refused until then). key_changes counts those changes: a rotation
-- names the count it saw (a compare-and-set), so it cannot clear a due flag set after it looked.
ALTER TABLE rooms ADD COLUMN encrypted integer NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN key_epoch integer NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN key_changes integer NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN key_rotation_due integer NOT NULL DEFAULT 0;

-- The encrypted payload of a message in an encrypted room (JSON text of the wire object
-- {ciphertext, nonce, epoch, sender_device, signature}); content is '' for those.
ALTER TABLE messages ADD COLUMN e2e text;

-- Sealed room keys: one per (room, epoch, recipient device), opened only by that device.
CREATE TABLE room_keys (
    room_id        integer NOT NULL,
    epoch          integer NOT NULL,
    user_id        integer NOT NULL,
    device_id      blob   NOT NULL,
    key_version    integer NOT NULL,
    sender_id      integer NOT NULL,
    sender_device  blob   NOT NULL,
    sealed         blob   NOT NULL,
    signature      blob   NOT NULL,
    created_at_ms  integer NOT NULL,
    PRIMARY KEY (room_id, epoch, user_id, device_id)
);
CREATE INDEX room_keys_device ON room_keys (room_id, user_id, device_id, epoch);

-- The KeyDirectory: each user's signed, hash-chained device list (docs/e2e.md section 4.1).
CREATE TABLE device_lists (
    user_id       integer NOT NULL,
    version       integer NOT NULL,
    body          blob   NOT NULL,
    signature     blob   NOT NULL,
    created_at_ms integer NOT NULL,
    PRIMARY KEY (user_id, version)
);

-- Devices asking to be added to their user's list (section 4.2); the newest few are kept.
CREATE TABLE device_proposals (
    user_id       integer NOT NULL,
    device_id     blob   NOT NULL,
    body          blob   NOT NULL,
    signature     blob   NOT NULL,
    created_at_ms integer NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
