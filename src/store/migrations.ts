/**
 * Schema migrations, one SQL script per version; MIGRATIONS[n - 1] takes a database from
 * version n - 1 to n, and PRAGMA user_version records the version reached. Never edit a
 * released migration: add a new one.
 */
export const MIGRATIONS: readonly string[] = [
  // Version 1: retained messages, sessions, subscriptions, queued and in-flight messages,
  // incoming QoS 2 packet ids. Times are milliseconds since the epoch, 0 for none.
  `
  CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    properties TEXT,
    expires_at INTEGER NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    expiry_interval INTEGER NOT NULL,
    -- Deadline after which the session ends; 0 while a client was connected.
    expires_at INTEGER NOT NULL,
    -- The will of the connection (JSON), kept while its client is connected or its delay runs.
    will TEXT,
    -- When a pending will is published; 0 while the client was connected.
    will_at INTEGER NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    raw_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL,
    retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL,
    subscription_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, raw_filter)
  ) WITHOUT ROWID;

  CREATE TABLE queued (
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT,
    properties TEXT,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, seq)
  );

  CREATE TABLE inflight (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    subscription_ids TEXT,
    properties TEXT,
    expires_at INTEGER NOT NULL,
    released INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
  );

  CREATE TABLE incoming_qos2 (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
  ) WITHOUT ROWID;
  `,
  // Version 2: the bridge outbox. Each bridge numbers its messages with seq (1, 2, ...) in the
  // order they were accepted; topic and qos are already mapped for the remote broker.
  // bridge_state keeps the highest seq a bridge has reserved, so that seq (and the message id
  // built from it) never repeats after the outbox was emptied and the process restarted.
  `
  CREATE TABLE outbox (
    bridge TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    properties TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (bridge, seq)
  );

  CREATE TABLE bridge_state (
    bridge TEXT PRIMARY KEY,
    reserved_seq INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // Version 3: the user name and listener of the client that last held a session, for
  // authorization while it is offline and for refusing a takeover by another user.
  `
  ALTER TABLE sessions ADD COLUMN username TEXT;
  ALTER TABLE sessions ADD COLUMN listener TEXT;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;
