import type { Logger } from 'pino';
import { ClusterError } from './errors.js';
import type { EtcdMembership } from './membership.js';
import type { FetchFlights, FlightClaim } from './pull-router.js';

/**
 * The cluster-wide single flight of upstream fetches, in etcd. To fetch a blob from upstream an
 * agent must create `<prefix>/flights/<digest>` holding its peer id, in a transaction that
 * succeeds only if the key does not exist. The key is bound to the agent's lease, so it goes
 * when the agent dies and another agent takes the flight over; the holder deletes it once the
 * blob is cached and announced. Agents that lose stream the blob from the holder.
 */
export class EtcdFetchFlights implements FetchFlights {
  constructor(
    private readonly membership: EtcdMembership,
    private readonly prefix: string,
    private readonly selfPeerId: string,
    private readonly logger: Logger,
  ) {}

  async claim(digest: string): Promise<FlightClaim> {
    const lease = this.membership.currentLease();
    if (lease === undefined || !this.membership.connected) {
      // Fail fast: a claim that waits on an unreachable etcd would stall every pull.
      throw new ClusterError('LCFS_EPEER', 'etcd is unreachable: no lease to hold a flight');
    }
    const { client } = this.membership;
    const key = `${this.prefix}/flights/${digest}`;
    const result = await client
      .if(key, 'Create', '==', 0)
      .then(lease.put(key).value(this.selfPeerId))
      .else(client.get(key))
      .commit();
    if (result.succeeded) {
      return {
        won: true,
        release: async () => {
          try {
            await client
              .if(key, 'Value', '==', this.selfPeerId)
              .then(client.delete().key(key))
              .commit();
          } catch (err) {
            this.logger.debug({ digest, err }, 'flight release failed; it ends with the lease');
          }
        },
      };
    }
    const holder = result.responses[0]?.response_range?.kvs?.[0]?.value?.toString() ?? '';
    if (holder === '') return this.claim(digest); // released between our two reads
    if (holder === this.selfPeerId) {
      // Left by an earlier run of this agent (same peer id): its lease has not expired yet.
      await client.if(key, 'Value', '==', this.selfPeerId).then(client.delete().key(key)).commit();
      return this.claim(digest);
    }
    return { won: false, holder };
  }
}
