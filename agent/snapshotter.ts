import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { chmod, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { ChangeKind, isStoreError, type LayerStore, type StoreErrorCode } from '../fs/index.js';
import type { Info } from '../proto/generated/containerd/services/snapshots/v1/Info.js';
import type { SnapshotsHandlers } from '../proto/generated/containerd/services/snapshots/v1/Snapshots.js';
import type { Mount } from '../proto/generated/containerd/types/Mount.js';
import type { ProtoGrpcType } from '../proto/generated/snapshots.js';
import {
  layerIdFor,
  SnapshotCatalog,
  type SnapshotKind,
  type SnapshotRecord,
} from './snapshot-catalog.js';
import { FilterSyntaxError, parseFilters } from './snapshot-filters.js';

/**
 * containerd's snapshotter proxy plugin (`containerd.services.snapshots.v1.Snapshots`), served
 * over gRPC on a unix socket. Each snapshot is a store layer: Prepare and View create one on its
 * parent's layer, Commit freezes it in place (constant time), Remove removes it. The catalog
 * keeps containerd's names, kinds and labels. Mounts are binds of `<mountpoint>/<layer>`.
 */

export interface SnapshotterOptions {
  socketPath: string;
  store: LayerStore;
  mountpoint: string;
  /** Where the catalog keeps its database. */
  catalogDir: string;
  logger?: Logger;
}

export interface Snapshotter {
  readonly socketPath: string;
  close(): Promise<void>;
}

/** The label containerd sets on Prepare with the chain a remote snapshotter may already hold. */
const TARGET_REF = 'containerd.io/snapshot.ref';
/** containerd's limit on one label: key and value together. */
const MAX_LABEL = 4096;

/** A failure with the gRPC status containerd maps onto its errdefs. */
class SnapshotError extends Error {
  constructor(
    readonly grpcCode: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

const notFound = (what: string): SnapshotError =>
  new SnapshotError(grpc.status.NOT_FOUND, `snapshot ${what} not found`);

const STORE_CODES: Partial<Record<StoreErrorCode, grpc.status>> = {
  LCFS_ELAYER_NOT_FOUND: grpc.status.NOT_FOUND,
  LCFS_ELAYER_EXISTS: grpc.status.ALREADY_EXISTS,
  LCFS_ELAYER_HAS_CHILDREN: grpc.status.FAILED_PRECONDITION,
  LCFS_ELAYER_IN_USE: grpc.status.FAILED_PRECONDITION,
  LCFS_ELAYER_FROZEN: grpc.status.FAILED_PRECONDITION,
  LCFS_ELAYER_BAD_ID: grpc.status.INVALID_ARGUMENT,
};

function grpcError(err: unknown): grpc.ServiceError {
  let code = grpc.status.INTERNAL;
  if (err instanceof SnapshotError) code = err.grpcCode;
  else if (err instanceof FilterSyntaxError) code = grpc.status.INVALID_ARGUMENT;
  else if (isStoreError(err)) code = STORE_CODES[err.code] ?? grpc.status.INTERNAL;
  const details = err instanceof Error ? err.message : String(err);
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

function validLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(labels ?? {})) {
    if (key === '')
      throw new SnapshotError(grpc.status.INVALID_ARGUMENT, 'label keys must not be empty');
    if (Buffer.byteLength(key) + Buffer.byteLength(value) > MAX_LABEL) {
      throw new SnapshotError(
        grpc.status.INVALID_ARGUMENT,
        `label ${key.slice(0, 64)}: key and value exceed ${MAX_LABEL} bytes`,
      );
    }
    out[key] = value;
  }
  return out;
}

function timestamp(ms: number): { seconds: number; nanos: number } {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

function info(rec: SnapshotRecord): Info {
  return {
    name: rec.name,
    parent: rec.parent,
    kind: rec.kind,
    created_at: timestamp(rec.createdAt),
    updated_at: timestamp(rec.updatedAt),
    labels: { ...rec.labels },
  };
}

/** Runs one mutation at a time: they check the catalog, then change store and catalog. */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

export async function startSnapshotter(opts: SnapshotterOptions): Promise<Snapshotter> {
  const { store, mountpoint, logger: log } = opts;
  await mkdir(opts.catalogDir, { recursive: true });
  const catalog = new SnapshotCatalog(opts.catalogDir);
  const serial = new Serial();

  const record = (name: string): SnapshotRecord => {
    const rec = catalog.get(name);
    if (!rec) throw notFound(name);
    return rec;
  };
  const mounts = (rec: SnapshotRecord): Mount[] => [
    {
      type: 'bind',
      source: join(mountpoint, rec.layer),
      target: '',
      options: ['rbind', rec.kind === 'VIEW' ? 'ro' : 'rw'],
    },
  ];

  /**
   * Whether a committed snapshot holds chain `ref` on `parent`. containerd names snapshots
   * `<namespace>/<n>/<key>`, so the chain is found by its label, as containerd itself then
   * looks it up (`labels."containerd.io/snapshot.ref"==<ref>,parent==<parent>`); a snapshot
   * named by the bare chain counts too.
   */
  const holdsChain = (ref: string, parent: string): boolean =>
    catalog.get(ref)?.kind === 'COMMITTED' ||
    catalog
      .all()
      .some((r) => r.kind === 'COMMITTED' && r.labels[TARGET_REF] === ref && r.parent === parent);

  async function create(
    kind: SnapshotKind,
    key: string,
    parent: string,
    rawLabels?: Record<string, string>,
  ): Promise<Mount[]> {
    if (!key) throw new SnapshotError(grpc.status.INVALID_ARGUMENT, 'key must not be empty');
    const labels = validLabels(rawLabels);
    return serial.run(async () => {
      if (catalog.get(key))
        throw new SnapshotError(grpc.status.ALREADY_EXISTS, `snapshot ${key} already exists`);
      // A remote snapshotter answers "already exists" for a chain it holds, and containerd
      // skips the download and unpack.
      const target = labels[TARGET_REF];
      if (kind === 'ACTIVE' && target && holdsChain(target, parent)) {
        throw new SnapshotError(
          grpc.status.ALREADY_EXISTS,
          `target snapshot ${target} already exists`,
        );
      }
      let parentLayer: string | null = null;
      if (parent) {
        const p = catalog.get(parent);
        if (!p) throw notFound(`parent ${parent}`);
        if (p.kind !== 'COMMITTED')
          throw new SnapshotError(
            grpc.status.FAILED_PRECONDITION,
            `parent ${parent} is not committed`,
          );
        parentLayer = p.layer;
      }
      const layer = layerIdFor(key);
      // A layer by that id is an orphan of a crash between the store and the catalog.
      if (store.exists(layer) && store.layer(layer).children === 0) await store.removeLayer(layer);
      await store.createLayer(layer, parentLayer);
      const now = Date.now();
      const rec: SnapshotRecord = {
        name: key,
        layer,
        kind,
        parent,
        labels,
        createdAt: now,
        updatedAt: now,
      };
      await catalog.write([rec]);
      return mounts(rec);
    });
  }

  const handlers: SnapshotsHandlers = {
    Prepare: (call, cb) => {
      const r = call.request;
      create('ACTIVE', r.key, r.parent, r.labels).then(
        (m) => cb(null, { mounts: m }),
        (err: unknown) => cb(grpcError(err)),
      );
    },
    View: (call, cb) => {
      const r = call.request;
      create('VIEW', r.key, r.parent, r.labels).then(
        (m) => cb(null, { mounts: m }),
        (err: unknown) => cb(grpcError(err)),
      );
    },
    Mounts: (call, cb) => {
      try {
        const rec = record(call.request.key);
        if (rec.kind === 'COMMITTED')
          throw new SnapshotError(
            grpc.status.FAILED_PRECONDITION,
            `snapshot ${rec.name} is committed; it has no mounts`,
          );
        cb(null, { mounts: mounts(rec) });
      } catch (err) {
        cb(grpcError(err));
      }
    },
    Commit: (call, cb) => {
      const { name, key, labels: raw } = call.request;
      serial
        .run(async () => {
          if (!name)
            throw new SnapshotError(grpc.status.INVALID_ARGUMENT, 'name must not be empty');
          const labels = validLabels(raw);
          const rec = record(key);
          if (rec.kind !== 'ACTIVE')
            throw new SnapshotError(
              grpc.status.FAILED_PRECONDITION,
              `snapshot ${key} is not active`,
            );
          if (catalog.get(name))
            throw new SnapshotError(grpc.status.ALREADY_EXISTS, `snapshot ${name} already exists`);
          await store.freeze(rec.layer);
          const committed: SnapshotRecord = {
            ...rec,
            name,
            kind: 'COMMITTED',
            labels: { ...rec.labels, ...labels },
            updatedAt: Date.now(),
          };
          await catalog.write([committed], [key]);
        })
        .then(
          () => cb(null, {}),
          (err: unknown) => cb(grpcError(err)),
        );
    },
    Remove: (call, cb) => {
      const { key } = call.request;
      serial
        .run(async () => {
          const rec = record(key);
          if (catalog.hasChildren(key))
            throw new SnapshotError(
              grpc.status.FAILED_PRECONDITION,
              `snapshot ${key} has children; remove them first`,
            );
          // The catalog first: a crash in between leaves an orphan layer, which start removes.
          await catalog.write([], [key]);
          if (store.exists(rec.layer)) await store.removeLayer(rec.layer);
        })
        .then(
          () => cb(null, {}),
          (err: unknown) => cb(grpcError(err)),
        );
    },
    Stat: (call, cb) => {
      try {
        cb(null, { info: info(record(call.request.key)) });
      } catch (err) {
        cb(grpcError(err));
      }
    },
    Update: (call, cb) => {
      const { info: given, update_mask } = call.request;
      serial
        .run(async () => {
          if (!given?.name)
            throw new SnapshotError(grpc.status.INVALID_ARGUMENT, 'info.name must be set');
          const rec = record(given.name);
          const incoming = validLabels(given.labels ?? {});
          const paths = update_mask?.paths ?? [];
          let labels: Record<string, string>;
          if (paths.length === 0) labels = incoming;
          else {
            labels = { ...rec.labels };
            for (const path of paths) {
              if (path === 'labels') labels = { ...incoming };
              else if (path.startsWith('labels.')) {
                const key = path.slice('labels.'.length);
                if (incoming[key] === undefined) delete labels[key];
                else labels[key] = incoming[key];
              } else {
                throw new SnapshotError(
                  grpc.status.INVALID_ARGUMENT,
                  `cannot update ${path}: only labels may change`,
                );
              }
            }
          }
          const updated: SnapshotRecord = { ...rec, labels, updatedAt: Date.now() };
          await catalog.write([updated]);
          return updated;
        })
        .then(
          (rec) => cb(null, { info: info(rec) }),
          (err: unknown) => cb(grpcError(err)),
        );
    },
    List: (call) => {
      try {
        const match = parseFilters(call.request.filters ?? []);
        const infos = catalog.all().filter(match).map(info);
        // In pages, as containerd's own snapshotters stream them.
        for (let i = 0; i < infos.length; i += 100) call.write({ info: infos.slice(i, i + 100) });
        call.end();
      } catch (err) {
        // A server stream sends its status from end() or an 'error' event; destroy() sends none.
        call.emit('error', grpcError(err));
      }
    },
    Usage: (call, cb) => {
      (async () => {
        const rec = record(call.request.key);
        const parent = rec.parent ? record(rec.parent).layer : null;
        const changes = await store.changes(rec.layer, parent);
        return {
          size: await store.diffSize(rec.layer, parent),
          inodes: changes.filter((c) => c.kind !== ChangeKind.Delete).length,
        };
      })().then(
        (usage) => cb(null, usage),
        (err: unknown) => cb(grpcError(err)),
      );
    },
    Cleanup: (_call, cb) => {
      serial
        .run(() => removeOrphans(store, catalog, log))
        .then(
          () => cb(null, {}),
          (err: unknown) => cb(grpcError(err)),
        );
    },
  };

  await serial.run(() => removeOrphans(store, catalog, log));

  const definition = loadSync('containerd/services/snapshots/v1/snapshots.proto', {
    includeDirs: [protoRoot()],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  const server = new grpc.Server();
  server.addService(proto.containerd.services.snapshots.v1.Snapshots.service, handlers);
  await mkdir(dirname(opts.socketPath), { recursive: true });
  await rm(opts.socketPath, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${opts.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
  await chmod(opts.socketPath, 0o660);
  log?.info({ socket: opts.socketPath }, 'containerd snapshotter listening');

  return {
    socketPath: opts.socketPath,
    async close() {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await serial.run(() => catalog.close());
      await rm(opts.socketPath, { force: true });
    },
  };
}

/** The repository's proto folder, from the sources (agent/) or the build (dist/agent/). */
function protoRoot(): string {
  const candidates = ['../proto', '../../proto'].map((rel) =>
    fileURLToPath(new URL(rel, import.meta.url)),
  );
  return candidates.find((dir) => existsSync(join(dir, 'containerd'))) ?? candidates[0];
}

/**
 * Layers the snapshotter made that the catalog no longer names: a crash between a store change
 * and the catalog's. Removed children first.
 */
async function removeOrphans(
  store: LayerStore,
  catalog: SnapshotCatalog,
  log?: Logger,
): Promise<void> {
  const named = new Set(catalog.all().map((r) => r.layer));
  let removed = true;
  while (removed) {
    removed = false;
    for (const layer of store.listLayers()) {
      if (
        !layer.id.startsWith('ctd-') ||
        named.has(layer.id) ||
        layer.children > 0 ||
        layer.refs > 0
      )
        continue;
      await store.removeLayer(layer.id);
      log?.info({ layer: layer.id }, 'removed a snapshot layer no snapshot names');
      removed = true;
    }
  }
}
