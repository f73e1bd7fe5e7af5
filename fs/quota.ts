import { StoreError } from './errors.js';
import { contentKey, inodeKey, isReg, type InodeRecord } from './records.js';
import type { LayerTree } from './tree.js';

/**
 * Space quotas for layers created with one (Docker's `--storage-opt size=`). A layer's usage is
 * the size of every regular file whose content it holds its own copy of: what it wrote, as an
 * overlay upper directory would hold it. Layers without a quota cost nothing here.
 *
 * Usage is kept in memory, counted from the layer's own records the first time it is needed
 * (after a restart, say), then moved by every write, truncate and removal.
 */
export class QuotaLedger {
  private readonly usage = new Map<number, number>();

  /** Reserves `delta` more bytes for `tree`'s layer, or refuses with ENOSPC. */
  charge(tree: LayerTree, delta: number): void {
    const quota = tree.layer.quota;
    if (quota === undefined || delta === 0) return;
    const used = this.used(tree);
    if (delta > 0 && used + delta > quota) {
      throw new StoreError(
        'LCFS_EQUOTA',
        'ENOSPC',
        `ENOSPC: layer ${tree.layer.id} would use ${used + delta} bytes, over its quota of ${quota}`,
      );
    }
    this.usage.set(tree.index, used + delta);
  }

  /** Gives back what a removed file held; never refused. */
  release(tree: LayerTree, bytes: number): void {
    if (tree.layer.quota === undefined) return;
    this.usage.set(tree.index, Math.max(0, this.used(tree) - bytes));
  }

  /** Forgets a layer's count: it is gone, or its records changed wholesale (an apply). */
  forget(index: number): void {
    this.usage.delete(index);
  }

  private used(tree: LayerTree): number {
    let used = this.usage.get(tree.index);
    if (used === undefined) {
      used = 0;
      for (const [ino] of tree.view.scan(`c/${tree.index}`)) {
        const rec = tree.view.get<InodeRecord>(inodeKey(tree.index, Number(ino)));
        if (rec && rec.nlink > 0 && isReg(rec.mode)) used += rec.size;
      }
      this.usage.set(tree.index, used);
    }
    return used;
  }
}

/** Whether the layer holds its own copy of the file's content. */
export function ownsContent(tree: LayerTree, ino: number): boolean {
  return tree.view.get(contentKey(tree.index, ino)) !== undefined;
}
