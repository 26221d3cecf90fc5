-- Read state and mentions (docs/protocol.md, "Read state and mentions").
-- One row per user and room once the user marked something read or muted the room; no row
-- means nothing read (last_read_seq 0) and not muted. last_read_seq only moves forward.
CREATE TABLE read_states (
    user_id       integer NOT NULL,
    room_id       integer NOT NULL,
    last_read_seq integer NOT NULL DEFAULT 0,
    muted         integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, room_id)
);

-- One row per member mentioned (@username) by a message, written with the message. The key
-- serves the mention count of a room after a read position; message_id serves a page's
-- Message.mentions.
CREATE TABLE message_mentions (
    user_id    integer NOT NULL,
    room_id    integer NOT NULL,
    seq        integer NOT NULL,
    message_id integer NOT NULL,
    PRIMARY KEY (user_id, room_id, seq)
);
CREATE INDEX message_mentions_message ON message_mentions (message_id);
