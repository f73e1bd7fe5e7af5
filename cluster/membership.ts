import { Etcd3, type Lease } from 'etcd3';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Cluster membership in etcd. Each agent keeps one record under `<prefix>/members/<peerId>`,
 * bound to a lease it keeps alive, and watches the prefix: a record that appears is a join, one
 * that goes (the agent stopped, or its lease expired) is a leave.
 *
 * etcd being down does not stop the agent: the members it knows stay known, the watch and the
 * lease reconnect by themselves, and a lease lost meanwhile is replaced and the record written
 * again once etcd answers.
 */

export interface MemberRecord {
  /** The libp2p peer id; also the member's name in etcd. */
  readonly peerId: string;
  readonly multiaddrs: readonly string[];
  /** The registry mirror's and the API's host:port. */
  readonly mirror: string;
  readonly api: string;
  readonly version: string;
  readonly hostname: string;
}

interface MembershipEvents {
  join: [MemberRecord];
  leave: [string];
}

/** Seconds a member's record outlives the agent; also how long a dead fetcher holds a flight. */
export const LEASE_TTL_SECONDS = 5;
const RETRY_MS = 1_000;

export class EtcdMembership extends EventEmitter<MembershipEvents> {
  private readonly known = new Map<string, MemberRecord>();
  private lease: Lease | undefined;
  private stopped = false;
  /** The last word from etcd was an answer (a keepalive or a write), not a failure. */
  private reachable = false;
  private renewing: Promise<void> | undefined;

  private constructor(
    readonly client: Etcd3,
    private readonly prefix: string,
    private readonly self: MemberRecord,
    private readonly logger: Logger,
  ) {
    super();
  }

  /** Registers `self` and starts watching; resolves even when etcd is down (it keeps trying). */
  static async join(options: {
    endpoints: readonly string[];
    prefix: string;
    self: MemberRecord;
    logger: Logger;
  }): Promise<EtcdMembership> {
    const client = new Etcd3({ hosts: [...options.endpoints], dialTimeout: 2_000 });
    const membership = new EtcdMembership(client, options.prefix, options.self, options.logger);
    membership.watch();
    membership.renewing = membership.register();
    await Promise.race([membership.renewing, sleep(3_000)]);
    return membership;
  }

  private get membersPrefix(): string {
    return `${this.prefix}/members/`;
  }

  members(): MemberRecord[] {
    return [...this.known.values()];
  }

  /** Whether etcd answered this agent's last keepalive or write. */
  get connected(): boolean {
    return this.reachable && this.currentLease() !== undefined;
  }

  /** The current lease: keys written with it vanish when this agent stops or dies. */
  currentLease(): Lease | undefined {
    return this.lease !== undefined && !this.lease.revoked() ? this.lease : undefined;
  }

  async leave(): Promise<void> {
    this.stopped = true;
    try {
      await this.lease?.revoke({ deadline: Date.now() + 2_000 });
    } catch (err) {
      this.logger.debug({ err }, 'lease revoke failed; it will expire');
    }
    this.client.close();
  }

  /** Writes our record under a new lease, retrying until etcd answers or we stop. */
  private async register(): Promise<void> {
    while (!this.stopped) {
      const lease = this.client.lease(LEASE_TTL_SECONDS);
      try {
        await lease
          .put(`${this.membersPrefix}${this.self.peerId}`)
          .value(JSON.stringify(this.self));
        this.lease = lease;
        this.reachable = true;
        lease.on('keepaliveSucceeded', () => (this.reachable = true));
        lease.on('keepaliveFailed', () => (this.reachable = false));
        lease.on('lost', (err) => {
          this.reachable = false;
          if (this.stopped) return;
          this.logger.warn({ err: err.message }, 'etcd lease lost; registering again');
          this.lease = undefined;
          this.renewing = this.register();
        });
        this.logger.info({ prefix: this.prefix }, 'registered in etcd');
        await this.refresh();
        return;
      } catch (err) {
        lease.release();
        this.reachable = false;
        this.logger.warn({ err: (err as Error).message }, 'etcd unreachable; retrying');
        await sleep(RETRY_MS);
      }
    }
  }

  private watch(): void {
    const watcher = this.client.watch().prefix(this.membersPrefix).watcher();
    watcher.on('put', (kv) => this.put(kv.value.toString('utf8')));
    watcher.on('delete', (kv) =>
      this.remove(kv.key.toString('utf8').slice(this.membersPrefix.length)),
    );
    watcher.on('connected', () => void this.refresh());
    watcher.on('error', (err) => this.logger.debug({ err: err.message }, 'etcd watch error'));
  }

  /** Lists every record: the watch only tells of changes after it connected. */
  private async refresh(): Promise<void> {
    try {
      const records = await this.client.getAll().prefix(this.membersPrefix).strings();
      for (const value of Object.values(records)) this.put(value);
    } catch (err) {
      this.logger.debug({ err: (err as Error).message }, 'listing members failed');
    }
  }

  private put(value: string): void {
    let record: MemberRecord;
    try {
      record = JSON.parse(value) as MemberRecord;
    } catch {
      this.logger.warn('malformed member record in etcd');
      return;
    }
    if (typeof record.peerId !== 'string' || !Array.isArray(record.multiaddrs)) return;
    if (record.peerId === this.self.peerId) return;
    const isNew = !this.known.has(record.peerId);
    this.known.set(record.peerId, record);
    if (isNew) this.emit('join', record);
  }

  private remove(peerId: string): void {
    if (this.known.delete(peerId)) this.emit('leave', peerId);
  }
}
