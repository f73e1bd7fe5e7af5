/**
 * The peer heuristic, as PullRouter uses it: complete copies before peers still fetching, then
 * the least loaded (this agent's transfers from the peer plus the uploads it advertised), then
 * random among equals (a seeded generator, so a run is reproducible); peers that failed are
 * skipped until their avoidance period is over, which is longer after corrupt bytes.
 */
import assert from 'node:assert/strict';
import {
  AVOID_AFTER_CORRUPTION_MS,
  AVOID_AFTER_FAILURE_MS,
  choosePeer,
  PeerHealth,
  type PeerHolding,
} from '../../cluster/peer-selection.js';
import { SeededRandom } from '../fs/helpers/prng.js';

const holding = (peerId: string, complete: boolean, uploads = 0): PeerHolding => ({
  peerId,
  complete,
  uploads,
});

/** Runs `check` with Date.now() moved `ms` ahead; it must be synchronous. */
function later(ms: number, check: () => void): void {
  const now = Date.now;
  const at = now() + ms;
  Date.now = () => at;
  try {
    check();
  } finally {
    Date.now = now;
  }
}

describe('cluster: choosePeer and PeerHealth', () => {
  it('chooses nobody from no holders', () => {
    assert.equal(choosePeer([], new PeerHealth()), undefined);
  });

  it('prefers a complete copy to a peer still fetching, however loaded', () => {
    const health = new PeerHealth();
    const holders = [holding('fetching', false, 0), holding('complete', true, 50)];
    assert.equal(choosePeer(holders, health)?.peerId, 'complete');
    assert.equal(choosePeer([holding('fetching', false, 3)], health)?.peerId, 'fetching');
  });

  it('prefers the least loaded: advertised uploads plus our own transfers from it', () => {
    const health = new PeerHealth();
    const holders = [holding('a', true, 2), holding('b', true, 1), holding('c', true, 3)];
    assert.equal(choosePeer(holders, health)?.peerId, 'b');

    const ends = [health.begin('b'), health.begin('b')];
    assert.equal(health.activeFrom('b'), 2);
    // b: 1 + 2 = 3, a: 2.
    assert.equal(choosePeer(holders, health)?.peerId, 'a');
    ends[0]();
    ends[0]();
    assert.equal(health.activeFrom('b'), 1, 'ending a transfer twice counts once');
    ends[1]();
    assert.equal(health.activeFrom('b'), 0);
    assert.equal(choosePeer(holders, health)?.peerId, 'b');
  });

  it('picks at random among equals, spreading a herd over all of them', () => {
    const health = new PeerHealth();
    const random = new SeededRandom('choose-peer');
    const holders = [
      holding('p0', true, 1),
      holding('p1', true, 1),
      holding('busy', true, 2),
      holding('p2', true, 1),
      holding('partial', false, 0),
    ];
    const counts = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const peerId = choosePeer(holders, health, () => random.next())!.peerId;
      counts.set(peerId, (counts.get(peerId) ?? 0) + 1);
    }
    assert.deepEqual([...counts.keys()].sort(), ['p0', 'p1', 'p2'], `seed ${random.seed}`);
    for (const [peerId, count] of counts) {
      assert.ok(count > 850 && count < 1150, `${peerId} chosen ${count} of 3000 times`);
    }
    // The generator decides: its extremes pick the first and the last of the equals.
    assert.equal(choosePeer(holders, health, () => 0)?.peerId, 'p0');
    assert.equal(choosePeer(holders, health, () => 0.9999)?.peerId, 'p2');
  });

  it('skips avoided peers, even the best, until the avoidance expires', () => {
    const health = new PeerHealth();
    const holders = [holding('broke', true, 0), holding('lied', true, 0), holding('slow', false)];
    health.failed('broke', false);
    health.failed('lied', true);
    assert.equal(choosePeer(holders, health)?.peerId, 'slow');
    assert.equal(choosePeer(holders.slice(0, 2), health), undefined);

    later(AVOID_AFTER_FAILURE_MS + 1, () => {
      assert.equal(health.avoided('broke'), false);
      assert.equal(health.avoided('lied'), true);
      assert.equal(choosePeer(holders, health)?.peerId, 'broke');
    });
    later(AVOID_AFTER_CORRUPTION_MS + 1, () => {
      assert.equal(health.avoided('lied'), false);
    });
    assert.ok(AVOID_AFTER_CORRUPTION_MS > AVOID_AFTER_FAILURE_MS);
  });
});
