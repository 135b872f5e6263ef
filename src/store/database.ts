import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from '../service/logger.js';
import { MIGRATIONS, SCHEMA_VERSION } from './migrations.js';

export type SynchronousMode = 'full' | 'normal';

export interface DatabaseOptions {
  dataDir: string;
  synchronous: SynchronousMode;
}

export const DATABASE_FILE = 'outpost.db';

/**
 * WAL pages after which SQLite copies the WAL back into the database (its default is 1000 pages).
 * With 4 KiB pages that bounds the WAL at about 4 MiB between checkpoints.
 */
const WAL_AUTOCHECKPOINT_PAGES = 1000;

/** Size the WAL file is truncated to after a checkpoint, so it does not stay at its peak size. */
const JOURNAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024;

/**
 * Opens the state database, creating or migrating it. A file that cannot be opened, fails
 * SQLite's quick check or has a schema newer than this version is moved aside with a timestamp
 * and replaced by a fresh database, so a damaged SD card never keeps the gateway down.
 */
export function openDatabase(options: DatabaseOptions, logger: Logger): Database.Database {
  mkdirSync(options.dataDir, { recursive: true });
  const path = join(options.dataDir, DATABASE_FILE);
  try {
    return openAndMigrate(path, options);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    const movedTo = moveAside(path);
    logger.error('state database unusable; moved aside and starting with an empty one', {
      path,
      moved_to: movedTo,
      reason,
    });
    return openAndMigrate(path, options);
  }
}

function openAndMigrate(path: string, options: DatabaseOptions): Database.Database {
  const db = new Database(path);
  try {
    // Checks first, so that a file from a newer Outpost is moved aside unchanged.
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new Error(`schema version ${version} is newer than this Outpost supports (${SCHEMA_VERSION})`);
    }
    const check = db.pragma('quick_check', { simple: true });
    if (check !== 'ok') throw new Error(`quick_check failed: ${String(check)}`);
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
    db.pragma(`wal_autocheckpoint = ${WAL_AUTOCHECKPOINT_PAGES}`);
    db.pragma(`journal_size_limit = ${JOURNAL_SIZE_LIMIT_BYTES}`);
    migrate(db, version);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

/** Applies every migration after `fromVersion`, each in its own transaction. */
export function migrate(db: Database.Database, fromVersion: number): void {
  for (let version = fromVersion + 1; version <= SCHEMA_VERSION; version++) {
    const apply = db.transaction(() => {
      db.exec(MIGRATIONS[version - 1]);
      db.pragma(`user_version = ${version}`);
    });
    apply();
  }
}

/** Renames the database and its WAL and shared-memory files; returns the new database path. */
function moveAside(path: string): string {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const target = `${path}.unusable-${stamp}`;
  for (const suffix of ['', '-wal', '-shm']) {
    if (existsSync(path + suffix)) renameSync(path + suffix, target + suffix);
  }
  return target;
}
