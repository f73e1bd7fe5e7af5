import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isDigest } from './digest.js';

/**
 * The last digest each tag resolved to, per upstream and repository. The mirror records every
 * tag it resolves; it reads them back only when the upstream is down and the operator allowed
 * stale tags (`serveStaleTags`), since a tag may have moved since.
 */
export class TagMemory {
  private constructor(private readonly dir: string) {}

  static async open(dir: string): Promise<TagMemory> {
    await mkdir(dir, { recursive: true });
    return new TagMemory(dir);
  }

  async remember(upstream: string, repo: string, tag: string, digest: string): Promise<void> {
    const path = this.pathOf(upstream, repo, tag);
    if ((await this.recall(upstream, repo, tag)) === digest) return;
    await writeFile(`${path}.tmp`, `${digest}\n`);
    await rename(`${path}.tmp`, path);
  }

  async recall(upstream: string, repo: string, tag: string): Promise<string | undefined> {
    try {
      const digest = (await readFile(this.pathOf(upstream, repo, tag), 'utf8')).trim();
      return isDigest(digest) ? digest : undefined;
    } catch {
      return undefined;
    }
  }

  private pathOf(upstream: string, repo: string, tag: string): string {
    const key = createHash('sha256').update(`${upstream}/${repo}:${tag}`).digest('hex');
    return join(this.dir, key);
  }
}
