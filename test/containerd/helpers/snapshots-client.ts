/**
 * A client of the agent's snapshotter socket, as containerd's proxy plugin is one: the
 * `containerd.services.snapshots.v1.Snapshots` service over gRPC, with promise-returning calls
 * whose failures are grpc.ServiceError (check `.code` against grpc.status).
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import type {
  Info,
  Info__Output,
} from '../../../proto/generated/containerd/services/snapshots/v1/Info.js';
import type { SnapshotsClient as GeneratedClient } from '../../../proto/generated/containerd/services/snapshots/v1/Snapshots.js';
import type { UsageResponse__Output } from '../../../proto/generated/containerd/services/snapshots/v1/UsageResponse.js';
import type { Mount__Output } from '../../../proto/generated/containerd/types/Mount.js';
import type { ProtoGrpcType } from '../../../proto/generated/snapshots.js';

const PROTO_ROOT = fileURLToPath(new URL('../../../proto', import.meta.url));
const SNAPSHOTTER = 'lcfs';

export type { Info__Output as SnapshotInfo, Mount__Output as SnapshotMount };

const callOptions = (): grpc.CallOptions => ({ deadline: Date.now() + 60_000 });

/** One unary call: `invoke` starts it with the callback. */
function unary<Res>(invoke: (cb: grpc.requestCallback<Res>) => unknown): Promise<Res> {
  return new Promise((resolve, reject) =>
    invoke((err, res) => (err ? reject(err) : resolve(res as Res))),
  );
}

export class SnapshotsClient {
  private readonly client: GeneratedClient;

  constructor(socketPath: string) {
    const definition = loadSync('containerd/services/snapshots/v1/snapshots.proto', {
      includeDirs: [PROTO_ROOT],
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    this.client = new proto.containerd.services.snapshots.v1.Snapshots(
      `unix://${socketPath}`,
      grpc.credentials.createInsecure(),
    );
  }

  close(): void {
    this.client.close();
  }

  async prepare(
    key: string,
    parent = '',
    labels: Record<string, string> = {},
  ): Promise<Mount__Output[]> {
    const c = this.client;
    const res = await unary<{ mounts: Mount__Output[] }>((cb) =>
      c.Prepare({ snapshotter: SNAPSHOTTER, key, parent, labels }, callOptions(), cb),
    );
    return res.mounts;
  }

  async view(
    key: string,
    parent = '',
    labels: Record<string, string> = {},
  ): Promise<Mount__Output[]> {
    const c = this.client;
    const res = await unary<{ mounts: Mount__Output[] }>((cb) =>
      c.View({ snapshotter: SNAPSHOTTER, key, parent, labels }, callOptions(), cb),
    );
    return res.mounts;
  }

  async mounts(key: string): Promise<Mount__Output[]> {
    const c = this.client;
    return (
      await unary<{ mounts: Mount__Output[] }>((cb) =>
        c.Mounts({ snapshotter: SNAPSHOTTER, key }, callOptions(), cb),
      )
    ).mounts;
  }

  async commit(name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    const c = this.client;
    await unary<object>((cb) =>
      c.Commit({ snapshotter: SNAPSHOTTER, name, key, labels }, callOptions(), cb),
    );
  }

  async remove(key: string): Promise<void> {
    const c = this.client;
    await unary<object>((cb) => c.Remove({ snapshotter: SNAPSHOTTER, key }, callOptions(), cb));
  }

  async stat(key: string): Promise<Info__Output> {
    const c = this.client;
    const res = await unary<{ info: Info__Output | null }>((cb) =>
      c.Stat({ snapshotter: SNAPSHOTTER, key }, callOptions(), cb),
    );
    if (!res.info) throw new Error(`Stat ${key} answered no info`);
    return res.info;
  }

  async update(info: Info, paths?: string[]): Promise<Info__Output> {
    const c = this.client;
    const res = await unary<{ info: Info__Output | null }>((cb) =>
      c.Update(
        {
          snapshotter: SNAPSHOTTER,
          info,
          update_mask: paths === undefined ? null : { paths },
        },
        callOptions(),
        cb,
      ),
    );
    if (!res.info) throw new Error(`Update ${info.name} answered no info`);
    return res.info;
  }

  async usage(key: string): Promise<UsageResponse__Output> {
    const c = this.client;
    return unary<UsageResponse__Output>((cb) =>
      c.Usage({ snapshotter: SNAPSHOTTER, key }, callOptions(), cb),
    );
  }

  async cleanup(): Promise<void> {
    const c = this.client;
    await unary<object>((cb) => c.Cleanup({ snapshotter: SNAPSHOTTER }, callOptions(), cb));
  }

  /** Every Info the List stream sends, and how many messages it came in. */
  list(
    filters: string[] = [],
    timeoutMs = 60_000,
  ): Promise<{ infos: Info__Output[]; messages: number }> {
    return new Promise((resolve, reject) => {
      const infos: Info__Output[] = [];
      let messages = 0;
      const stream = this.client.List(
        { snapshotter: SNAPSHOTTER, filters },
        { deadline: Date.now() + timeoutMs },
      );
      stream.on('data', (res: { info: Info__Output[] }) => {
        messages++;
        infos.push(...res.info);
      });
      stream.on('error', reject);
      stream.on('end', () => resolve({ infos, messages }));
    });
  }

  /** Waits until the socket answers (after an agent start). */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    await new Promise<void>((resolve, reject) =>
      this.client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve())),
    );
  }
}

/** Resolves to the gRPC status code a promise fails with; fails if it succeeds. */
export async function grpcCodeOf(
  p: Promise<unknown>,
): Promise<{ code: grpc.status; details: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as Partial<grpc.ServiceError>;
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, details: e.details ?? '' };
  }
  throw new Error('the call succeeded; expected a gRPC error');
}

export { grpc };
