-- Version 2: contacts, conversations, the outbox and the de-duplication of deliveries.
-- Version 1's messages table was never written by a released client; it is replaced.
DROP TABLE messages;

-- A contact: someone reached through an invite. ``sessions`` is the PeerSessions snapshot (secret).
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    account BLOB NOT NULL UNIQUE,
    identity BLOB NOT NULL,
    token BLOB NOT NULL,
    envelope_key BLOB,
    envelope_key_at INTEGER NOT NULL,
    sessions BLOB,
    timer INTEGER NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    identity_changed INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

-- Invites this profile handed out and that nobody has used yet (single use).
CREATE TABLE invites (
    invite_id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per message shown in a conversation: texts both ways, and timer announcements.
-- Times are Unix milliseconds. ``expires_at`` is set when the timer starts: at sending for our own
-- messages, at display for received ones.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    kind TEXT NOT NULL CHECK (kind IN ('text', 'timer')),
    message_id BLOB NOT NULL,
    body TEXT NOT NULL,
    timer INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    displayed_at INTEGER,
    expires_at INTEGER,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'failed', 'received')),
    UNIQUE (contact_id, direction, message_id)
);
CREATE INDEX messages_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX messages_undisplayed ON messages (id) WHERE displayed_at IS NULL;

-- Sealed envelopes waiting for the server's durable acknowledgement, in order. The envelope bytes
-- are kept (not re-encrypted) so a retry carries the same envelope id and the server stores it once.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    contact_id INTEGER NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    envelope_id BLOB NOT NULL UNIQUE,
    envelope BLOB NOT NULL,
    message_id BLOB
);

-- Envelope ids already stored, so a redelivery after a lost receipt is acknowledged, not shown again.
CREATE TABLE seen_envelopes (
    envelope_id BLOB PRIMARY KEY,
    forget_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_envelopes_forget ON seen_envelopes (forget_at);
