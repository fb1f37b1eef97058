-- Herald's PostgreSQL schema, version 1. Every table lives in the store's schema (the connection's search_path).
--
-- Times are milliseconds since the Unix epoch (bigint), like `herald_core::model::Millis`.
-- Text keys that the store sorts or compares are `COLLATE "C"`: byte order, the order of Herald's ids.

-- Channels. `last_seq` is the channel's seq counter: appends lock the row, advance it and insert the messages in
-- one transaction, so a failed transaction never uses up seqs. The counter is updated on every batch: free space
-- in each page (fillfactor) lets those updates stay on the page (HOT) without touching the index.
CREATE TABLE channels (
    id          text COLLATE "C" PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('dm', 'group', 'topic', 'user')),
    created_by  text COLLATE "C" NOT NULL,
    created_at  bigint NOT NULL,
    last_seq    bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
) WITH (fillfactor = 50);

CREATE TABLE members (
    channel  text COLLATE "C" NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (channel, user_id)
);
-- A user's channels (for later features: listing conversations, membership checks by user).
CREATE INDEX members_by_user ON members (user_id, channel);

-- The per-channel logs. No foreign key to channels: the writer holds the channel's row lock while it inserts,
-- and a foreign-key check per row would cost a lookup and a row lock each.
-- `body` is the exact JSON text the sender sent (text, not jsonb, which would re-encode it).
CREATE TABLE messages (
    channel    text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL CHECK (seq > 0),
    id         uuid NOT NULL,
    sender     text COLLATE "C" NOT NULL,
    client_id  text COLLATE "C",
    kind       text NOT NULL CHECK (kind IN ('message', 'edit', 'recall', 'system')),
    refers     bigint,
    ts         bigint NOT NULL,
    body       text NOT NULL,
    PRIMARY KEY (channel, seq)
);
-- Idempotent sends: one message per (channel, sender, client id).
CREATE UNIQUE INDEX messages_dedup ON messages (channel, sender, client_id) WHERE client_id IS NOT NULL;

-- Read and delivery cursors; they only move forward.
CREATE TABLE cursors (
    channel  text COLLATE "C" NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id  text COLLATE "C" NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('delivered', 'read')),
    seq      bigint NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (channel, user_id, kind)
) WITH (fillfactor = 70);

-- Reserved for push notifications (no `Store` methods use it yet): the devices users registered.
-- `token` is the provider's address for the device: the APNs device token, the FCM registration token, the Web
-- Push endpoint URL or the webhook URL. `app` is the APNs topic (bundle id) or the FCM project / app id. `data`
-- holds per-platform details (Web Push `p256dh` and `auth` keys, the APNs environment, ...).
CREATE TABLE devices (
    user_id       text COLLATE "C" NOT NULL,
    id            text COLLATE "C" NOT NULL,
    platform      text NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush', 'webhook')),
    token         text NOT NULL,
    app           text,
    data          jsonb NOT NULL DEFAULT '{}'::jsonb,
    locale        text,
    tags          text[] NOT NULL DEFAULT '{}',
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    last_seen_at  bigint,
    PRIMARY KEY (user_id, id),
    UNIQUE (platform, token)
);

-- Reserved for push notifications (no `Store` methods use it yet): the durable outbox the push dispatcher works
-- from. A row targets one user (`device_id` NULL: all of the user's devices) or one device. Conversation pushes
-- name the message (`channel`, `seq`, `message_id`); application pushes have none.
CREATE TABLE push_outbox (
    id               bigserial PRIMARY KEY,
    user_id          text COLLATE "C" NOT NULL,
    device_id        text COLLATE "C",
    channel          text COLLATE "C",
    seq              bigint,
    message_id       uuid,
    payload          jsonb NOT NULL,
    priority         text NOT NULL DEFAULT 'normal' CHECK (priority IN ('high', 'normal', 'low')),
    collapse_key     text,
    ttl_ms           bigint CHECK (ttl_ms >= 0),
    expires_at       bigint,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  bigint NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'expired')),
    last_error       text,
    created_at       bigint NOT NULL
);
-- The dispatcher's scan: due rows in a state.
CREATE INDEX push_outbox_due ON push_outbox (state, next_attempt_at);
