import { execFile } from 'node:child_process';
import type { Logger } from 'pino';

/**
 * Tells systemd the agent is ready (Type=notify), so that dockerd and containerd, ordered after
 * lcfs.service, start only once the volume is mounted and the plugin sockets listen. Node cannot
 * send on a unix datagram socket, so the notification goes through systemd-notify, which the unit
 * allows with NotifyAccess=all. Outside systemd (no NOTIFY_SOCKET) this does nothing.
 */
export function notifySystemdReady(log: Logger): void {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile('systemd-notify', ['--ready', `--pid=${process.pid}`], (err) => {
    if (err) log.warn({ err }, 'could not tell systemd the agent is ready');
  });
}
