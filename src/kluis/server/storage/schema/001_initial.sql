-- Kluis relay schema, version 1: the one source of truth for every engine.
--
-- Written in SQLite's dialect and applied to SQLite as it is; kluis._schema.render turns it into
-- PostgreSQL's (BLOB -> BYTEA, INTEGER -> BIGINT, no WITHOUT ROWID). A change goes in a new numbered
-- delta here, never in this file: databases at version 1 do not run it again.
--
-- The seizure profile, and nothing else: no sender, no IP address, no timestamp finer than a day, no
-- contact list. In SQLite every table is WITHOUT ROWID, so no hidden integer column records the
-- order in which rows arrived across accounts (a global rowid on the mailbox would tell a seizer that
-- an envelope for A arrived just before one for B). tests/test_storage_sqlite.py and
-- tests/test_storage_postgres.py compare every column with an allow-list.

-- Activation codes: SHA-256 of the bearer code, and what it is worth. Never linked to an account.
CREATE TABLE activation_codes (
    code_hash BLOB PRIMARY KEY NOT NULL,
    days INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE accounts (
    account_id BLOB PRIMARY KEY NOT NULL,       -- 16 random bytes
    identity BLOB NOT NULL,                     -- IdentityPublicKey encoding
    token_hash BLOB NOT NULL,                   -- SHA-256 of the delivery token
    expires_day INTEGER NOT NULL,               -- days since 1970-01-01 UTC
    revoked INTEGER NOT NULL DEFAULT 0,
    revocation BLOB                             -- signed revocation statement
) WITHOUT ROWID;

-- The medium-term signed keys: slot 1 = signed X25519 prekey, slot 2 = last-resort ML-KEM prekey.
CREATE TABLE signed_prekeys (
    account_id BLOB NOT NULL REFERENCES accounts (account_id),
    slot INTEGER NOT NULL CHECK (slot IN (1, 2)),
    encoding BLOB NOT NULL,
    PRIMARY KEY (account_id, slot)
) WITHOUT ROWID;

-- One-time prekeys, handed out once each, lowest key id first: kind 1 = X25519, kind 2 = ML-KEM.
CREATE TABLE one_time_prekeys (
    account_id BLOB NOT NULL REFERENCES accounts (account_id),
    kind INTEGER NOT NULL CHECK (kind IN (1, 2)),
    key_id INTEGER NOT NULL,
    encoding BLOB NOT NULL,
    PRIMARY KEY (account_id, kind, key_id)
) WITHOUT ROWID;

-- Published envelope keys: position 0 is the current key, then the ones in grace, newest first.
CREATE TABLE envelope_keys (
    account_id BLOB NOT NULL REFERENCES accounts (account_id),
    position INTEGER NOT NULL,
    encoding BLOB NOT NULL,
    PRIMARY KEY (account_id, position)
) WITHOUT ROWID;

-- Undelivered sealed envelopes. seq increases per recipient; (recipient, envelope_id) de-duplicates
-- a resend after a lost acknowledgement.
CREATE TABLE mailbox (
    recipient BLOB NOT NULL REFERENCES accounts (account_id),
    seq INTEGER NOT NULL,
    envelope_id BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    expiry_day INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq),
    UNIQUE (recipient, envelope_id)
) WITHOUT ROWID;

-- expire(today) scans by day without reading every mailbox.
CREATE INDEX mailbox_expiry ON mailbox (expiry_day);

-- SCHEMA_VERSION and SCHEMA_COMPAT_VERSION (storage/_schema_version.py); one row, written with each
-- delta.
CREATE TABLE schema_version (
    version INTEGER PRIMARY KEY NOT NULL,
    compat_version INTEGER NOT NULL
) WITHOUT ROWID;
