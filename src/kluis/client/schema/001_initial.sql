-- The client profile database, version 1. Extended by the client issue (contacts, sessions, outbox).
CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    compat_version INTEGER NOT NULL
);

-- Identity, prekey and ring snapshots (versioned, opaque to the store).
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    body BLOB NOT NULL,
    sent_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX messages_conversation ON messages (conversation, id);
CREATE INDEX messages_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;
