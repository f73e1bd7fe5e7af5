/** Resolutions kept at most; past this the least recently used go. */
const MAX_ENTRIES = 500_000;

/**
 * What a chain walk found below a frozen layer. Frozen layers never change, so a walk that
 * starts at one has one answer forever, and every layer above it (the containers of one image,
 * say) shares that answer: a lookup costs one step, however deep the chain. The content kind
 * is the exception: sealing rewrites chunk references in place, so sealing calls `contentChanged`.
 */
export class FrozenCache {
  private readonly entries = new Map<string, unknown>();
  private contentGeneration = 0;

  get<T>(key: string): T | undefined {
    const v = this.entries.get(key);
    if (v === undefined) return undefined;
    this.entries.delete(key);
    this.entries.set(key, v);
    return v as T;
  }

  set(key: string, value: unknown): void {
    this.entries.set(key, value);
    if (this.entries.size > MAX_ENTRIES)
      this.entries.delete(this.entries.keys().next().value as string);
  }

  /** A key for content lookups that goes stale when any frozen content is resealed. */
  contentKey(layer: number, ino: number): string {
    return `c${this.contentGeneration}|${layer}|${ino}`;
  }

  contentChanged(): void {
    this.contentGeneration++;
  }
}
