-- Attachments: one row per file a user asked to upload (createUpload), pending until a send
-- verifies it (ready) or refuses it (rejected); attached once message_id is set. The objects'
-- keys derive from (room_id, id), so none is stored. Same table as in PostgreSQL (booleans are
-- 0/1 integers here).
CREATE TABLE uploads (
    id                     integer PRIMARY KEY,
    owner_id               integer NOT NULL,
    room_id                integer NOT NULL,
    filename               text    NOT NULL,
    content_type           text    NOT NULL,
    size                   integer NOT NULL,
    sha256                 text    NOT NULL,
    created_at_ms          integer NOT NULL,
    put_expires_at_ms      integer NOT NULL,
    expires_at_ms          integer NOT NULL,
    state                  text    NOT NULL DEFAULT 'pending',
    reason                 text    NOT NULL DEFAULT '',
    message_id             integer,
    position               integer NOT NULL DEFAULT 0,
    width                  integer,
    height                 integer,
    thumb                  text    NOT NULL DEFAULT 'none',
    thumb_claimed_until_ms integer NOT NULL DEFAULT 0,
    staging_swept          integer NOT NULL DEFAULT 0,
    deleted_at_ms          integer
);
CREATE INDEX uploads_message ON uploads (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX uploads_owner ON uploads (owner_id) WHERE deleted_at_ms IS NULL;
CREATE INDEX uploads_unattached ON uploads (expires_at_ms) WHERE message_id IS NULL;
CREATE INDEX uploads_deleted ON uploads (deleted_at_ms) WHERE deleted_at_ms IS NOT NULL;
CREATE INDEX uploads_staging ON uploads (put_expires_at_ms)
    WHERE message_id IS NOT NULL AND staging_swept = 0;
CREATE INDEX uploads_thumb_pending ON uploads (id) WHERE thumb = 'pending';
