-- Herald's SQLite schema, version 1 (the same shape as herald-postgres's).
--
-- Times are milliseconds since the Unix epoch (INTEGER), like `herald_core::model::Millis`.
-- Text keys use SQLite's default BINARY collation: byte order, the order of Herald's ids.
-- Seqs are INTEGER (signed 64 bit); the store clamps larger `u64` arguments.

-- Channels. `last_seq` is the seq of the channel's newest message (0 when it has none). Only the store's single
-- writer changes it, in the same transaction as the messages it counts.
CREATE TABLE channels (
    id          TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('dm', 'group', 'topic', 'user')),
    created_by  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
) WITHOUT ROWID;

CREATE TABLE members (
    channel  TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (channel, user_id)
) WITHOUT ROWID;
-- A user's channels (for later features: listing conversations, membership checks by user).
CREATE INDEX members_by_user ON members (user_id, channel);

-- The per-channel logs, clustered by (channel, seq) so that a history page is one range scan.
-- No foreign key to channels: the writer checks that the channel exists before it assigns a seq, and a
-- foreign-key check per row would cost a lookup each.
-- `id` is the message's UUID as 16 bytes. `body` is the exact JSON text the sender sent, never re-encoded.
-- No CHECK calls a function here: a function in an INSERT makes SQLite keep a statement journal (a copy of every
-- page the statement changes), which costs the writer's multi-row INSERTs dearly.
CREATE TABLE messages (
    channel    TEXT    NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq > 0),
    id         BLOB    NOT NULL,
    sender     TEXT    NOT NULL,
    client_id  TEXT,
    kind       TEXT    NOT NULL CHECK (kind IN ('message', 'edit', 'recall', 'system')),
    refers     INTEGER,
    ts         INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
-- Idempotent sends: one message per (channel, sender, client id).
CREATE UNIQUE INDEX messages_dedup ON messages (channel, sender, client_id) WHERE client_id IS NOT NULL;

-- Read and delivery cursors; they only move forward.
CREATE TABLE cursors (
    channel  TEXT    NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id  TEXT    NOT NULL,
    kind     TEXT    NOT NULL CHECK (kind IN ('delivered', 'read')),
    seq      INTEGER NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (channel, user_id, kind)
) WITHOUT ROWID;

-- Reserved for push notifications (no `Store` methods use it yet): the devices users registered.
-- `token` is the provider's address for the device: the APNs device token, the FCM registration token, the Web
-- Push endpoint URL or the webhook URL. `app` is the APNs topic (bundle id) or the FCM project / app id. `data`
-- holds per-platform details as a JSON object (Web Push `p256dh` and `auth` keys, the APNs environment, ...);
-- `tags` is a JSON array of strings.
CREATE TABLE devices (
    user_id       TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    platform      TEXT    NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush', 'webhook')),
    token         TEXT    NOT NULL,
    app           TEXT,
    data          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(data) AND json_type(data) = 'object'),
    locale        TEXT,
    tags          TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(tags) AND json_type(tags) = 'array'),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_seen_at  INTEGER,
    PRIMARY KEY (user_id, id),
    UNIQUE (platform, token)
);

-- Reserved for push notifications (no `Store` methods use it yet): the durable outbox the push dispatcher works
-- from. A row targets one user (`device_id` NULL: all of the user's devices) or one device. Conversation pushes
-- name the message (`channel`, `seq`, `message_id`: 16 bytes); application pushes have none. `payload` is JSON.
CREATE TABLE push_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          TEXT    NOT NULL,
    device_id        TEXT,
    channel          TEXT,
    seq              INTEGER,
    message_id       BLOB CHECK (message_id IS NULL OR length(message_id) = 16),
    payload          TEXT    NOT NULL CHECK (json_valid(payload)),
    priority         TEXT    NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    collapse_key     TEXT,
    ttl_ms           INTEGER CHECK (ttl_ms >= 0),
    expires_at       INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  INTEGER NOT NULL,
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'expired')),
    last_error       TEXT,
    created_at       INTEGER NOT NULL
);
-- The dispatcher's scan: due rows in a state.
CREATE INDEX push_outbox_due ON push_outbox (state, next_attempt_at);
