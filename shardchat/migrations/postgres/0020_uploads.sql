-- Attachments: one row per file a user asked to upload (createUpload), pending until a send
-- verifies it (ready) or refuses it (rejected); attached once message_id is set. The objects'
-- keys derive from (room_id, id), so none is stored. No foreign keys, as for messages: rows are
-- checked by the statements that use them and removed by the files sweeper.
CREATE TABLE uploads (
    id                     bigint  PRIMARY KEY,
    owner_id               bigint  NOT NULL,
    room_id                bigint  NOT NULL,
    filename               text    NOT NULL,
    content_type           text    NOT NULL,
    size                   bigint  NOT NULL,
    sha256                 text    NOT NULL,
    created_at_ms          bigint  NOT NULL,
    put_expires_at_ms      bigint  NOT NULL,
    expires_at_ms          bigint  NOT NULL,
    state                  text    NOT NULL DEFAULT 'pending',
    reason                 text    NOT NULL DEFAULT '',
    message_id             bigint,
    position               integer NOT NULL DEFAULT 0, -- order among its message's files
    width                  integer,
    height                 integer,
    thumb                  text    NOT NULL DEFAULT 'none',
    thumb_claimed_until_ms bigint  NOT NULL DEFAULT 0,
    staging_swept          boolean NOT NULL DEFAULT false,
    deleted_at_ms          bigint
);
-- A page of history reads its messages' attachments by message id.
CREATE INDEX uploads_message ON uploads (message_id) WHERE message_id IS NOT NULL;
-- The quota sums a user's live uploads.
CREATE INDEX uploads_owner ON uploads (owner_id) WHERE deleted_at_ms IS NULL;
-- The sweeper's three questions and the thumbnail queue, each on a small partial index.
CREATE INDEX uploads_unattached ON uploads (expires_at_ms) WHERE message_id IS NULL;
CREATE INDEX uploads_deleted ON uploads (deleted_at_ms) WHERE deleted_at_ms IS NOT NULL;
CREATE INDEX uploads_staging ON uploads (put_expires_at_ms)
    WHERE message_id IS NOT NULL AND NOT staging_swept;
CREATE INDEX uploads_thumb_pending ON uploads (id) WHERE thumb = 'pending';
