-- Read state and mentions (docs/protocol.md, "Read state and mentions").
-- One row per user and room once the user marked something read or muted the room; no row
-- means nothing read (last_read_seq 0) and not muted. last_read_seq only moves forward.
CREATE TABLE read_states (
    user_id       bigint NOT NULL,
    room_id       bigint NOT NULL,
    last_read_seq bigint NOT NULL DEFAULT 0,
    muted         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, room_id)
);

-- One row per member mentioned (@username) by a message, written with the message. The key
-- serves the mention count of a room after a read position; message_id serves a page's
-- Message.mentions.
CREATE TABLE message_mentions (
    user_id    bigint NOT NULL,
    room_id    bigint NOT NULL,
    seq        bigint NOT NULL,
    message_id bigint NOT NULL,
    PRIMARY KEY (user_id, room_id, seq)
);
CREATE INDEX message_mentions_message ON message_mentions (message_id);

-- searchUsers: a prefix LIKE on lower(username) uses this index whatever the collation.
CREATE INDEX users_username_prefix ON users (lower(username) text_pattern_ops);
