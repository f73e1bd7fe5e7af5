import { createHash } from 'node:crypto';
import { open, type RootDatabase } from 'lmdb';

/**
 * containerd's names for the store's layers. containerd calls an active or view snapshot by a
 * `key` and a committed one by a `name`, both arbitrary strings; the store's layer ids must be
 * file names. The catalog maps one to the other and keeps what containerd says about each
 * snapshot (kind, parent, labels, times), across restarts, in its own LMDB environment.
 */

export type SnapshotKind = 'VIEW' | 'ACTIVE' | 'COMMITTED';

export interface SnapshotRecord {
  /** The key (active, view) or name (committed) containerd uses. */
  readonly name: string;
  /** The store layer holding the snapshot. */
  readonly layer: string;
  readonly kind: SnapshotKind;
  /** The committed snapshot this one stands on, or ''. */
  readonly parent: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** The store layer id for a new snapshot: a file name, stable for the snapshot's lifetime. */
export function layerIdFor(key: string): string {
  return `ctd-${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
}

export class SnapshotCatalog {
  private readonly db: RootDatabase<SnapshotRecord, string>;

  constructor(path: string) {
    this.db = open<SnapshotRecord, string>({ path, compression: false });
  }

  get(name: string): SnapshotRecord | undefined {
    return this.db.get(name);
  }

  all(): SnapshotRecord[] {
    return [...this.db.getRange()].map(({ value }) => value);
  }

  /** Whether any snapshot stands on committed snapshot `name`. */
  hasChildren(name: string): boolean {
    return this.all().some((r) => r.parent === name);
  }

  /** Writes and removes records in one durable transaction. */
  async write(puts: SnapshotRecord[], removes: string[] = []): Promise<void> {
    await this.db.transaction(() => {
      for (const name of removes) this.db.removeSync(name);
      for (const rec of puts) this.db.putSync(rec.name, rec);
    });
    await this.db.flushed;
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
