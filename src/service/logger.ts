/**
 * Operator-facing log: one line per event on stderr, with the ids involved as key=value fields.
 * Under systemd (JOURNAL_STREAM set) each line starts with the syslog priority prefix `<N>`, so
 * journald records the level; elsewhere the level is written as a word.
 */

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export type LogFieldValue = string | number | boolean | bigint | null | undefined;
export type LogFields = Record<string, LogFieldValue>;

const LEVEL_RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const SYSLOG_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

export interface LogSink {
  write(line: string): void;
}

const stderrSink: LogSink = {
  write(line: string): void {
    process.stderr.write(line);
  },
};

/** Repeats of one rate-limited event: when it was last written and how many were dropped since. */
interface RepeatState {
  lastWrittenAt: number;
  suppressed: number;
}

const MAX_REPEAT_KEYS = 1000;

export class Logger {
  level: LogLevel;
  private readonly rank: { value: number };
  private readonly journald: boolean;
  private readonly sink: LogSink;
  private readonly context: string;
  private readonly repeats: Map<string, RepeatState>;

  constructor(
    level: LogLevel = 'info',
    options: { sink?: LogSink; journald?: boolean } = {},
    context = '',
    shared?: { rank: { value: number }; repeats: Map<string, RepeatState> },
  ) {
    this.level = level;
    this.rank = shared?.rank ?? { value: LEVEL_RANK[level] };
    this.journald = options.journald ?? process.env.JOURNAL_STREAM !== undefined;
    this.sink = options.sink ?? stderrSink;
    this.context = context;
    this.repeats = shared?.repeats ?? new Map();
  }

  /** Changes the level of this logger and of every child made from it. */
  setLevel(level: LogLevel): void {
    this.level = level;
    this.rank.value = LEVEL_RANK[level];
  }

  isEnabled(level: LogLevel): boolean {
    return LEVEL_RANK[level] <= this.rank.value;
  }

  /** Returns a logger that adds `fields` to every line it writes. */
  child(fields: LogFields): Logger {
    const context = this.context + formatFields(fields);
    return new Logger(this.level, { sink: this.sink, journald: this.journald }, context, {
      rank: this.rank,
      repeats: this.repeats,
    });
  }

  error(message: string, fields?: LogFields): void {
    this.write('error', message, fields);
  }

  warn(message: string, fields?: LogFields): void {
    this.write('warn', message, fields);
  }

  info(message: string, fields?: LogFields): void {
    this.write('info', message, fields);
  }

  debug(message: string, fields?: LogFields): void {
    this.write('debug', message, fields);
  }

  /**
   * Writes an event at most once per `intervalMs` for each `key`. The next line written for the
   * key says how many repeats were suppressed in between.
   */
  limited(level: LogLevel, key: string, intervalMs: number, message: string, fields?: LogFields): void {
    if (!this.isEnabled(level)) return;
    const now = Date.now();
    let state = this.repeats.get(key);
    if (state !== undefined && now - state.lastWrittenAt < intervalMs) {
      state.suppressed++;
      return;
    }
    if (state === undefined) {
      if (this.repeats.size >= MAX_REPEAT_KEYS) this.repeats.clear();
      state = { lastWrittenAt: now, suppressed: 0 };
      this.repeats.set(key, state);
    }
    const suppressed = state.suppressed;
    state.lastWrittenAt = now;
    state.suppressed = 0;
    const extra = suppressed > 0 ? { ...fields, suppressed_repeats: suppressed } : fields;
    this.write(level, message, extra);
  }

  private write(level: LogLevel, message: string, fields: LogFields | undefined): void {
    if (LEVEL_RANK[level] > this.rank.value) return;
    const prefix = this.journald ? `<${SYSLOG_PRIORITY[level]}>` : `${new Date().toISOString()} ${level.toUpperCase()} `;
    const tail = fields === undefined ? '' : formatFields(fields);
    this.sink.write(`${prefix}${message}${this.context}${tail}\n`);
  }
}

function formatFields(fields: LogFields): string {
  let out = '';
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    if (value === undefined) continue;
    out += ` ${key}=${formatValue(value)}`;
  }
  return out;
}

function formatValue(value: LogFieldValue): string {
  const text = String(value);
  if (text === '' || /[\s"=\\]/.test(text) || /[\u0000-\u001f\u007f]/.test(text)) return JSON.stringify(text);
  return text;
}

/** Returns a logger that writes nothing, for tests and embedded use that want no output. */
export function silentLogger(): Logger {
  return new Logger('error', { sink: { write: () => undefined }, journald: false });
}
