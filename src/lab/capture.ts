/** Packet captures in a lab host with dumpcap (from the tshark package), read back as fields for assertions and demos. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireLabPrerequisites, run } from './exec.ts';
import type { Lab, LabProcess } from './lab.ts';

/** Capture directories not yet disposed; removed at exit, so a failed test leaves no pcap behind. */
const openDirs = new Set<string>();
process.on('exit', () => {
  for (const d of openDirs) rmSync(d, { recursive: true, force: true });
});

export interface CaptureOptions {
  /** A pcap (BPF) capture filter, e.g. "esp or udp port 4500". */
  filter?: string;
}

export class Capture {
  private constructor(
    private readonly proc: LabProcess,
    private readonly dir: string,
    readonly file: string,
  ) {}

  /**
   * Starts dumpcap on `iface` inside `host` and resolves once it is capturing. (dumpcap, not tshark:
   * tshark's wrapper around dumpcap loses a short capture when both get the stop signal.)
   */
  static async start(lab: Lab, host: string, iface: string, options: CaptureOptions = {}): Promise<Capture> {
    requireLabPrerequisites(['tshark']);
    const dir = mkdtempSync(join(tmpdir(), 'consec-cap-'));
    openDirs.add(dir);
    const file = join(dir, `${host}-${iface}.pcapng`);
    const argv = ['dumpcap', '-q', '-i', iface, '-w', file];
    if (options.filter) argv.push('-f', options.filter);
    const proc = lab.spawn(host, argv);
    try {
      await proc.waitFor(/File: /, 15_000);
    } catch (err) {
      await proc.stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      openDirs.delete(dir);
      throw err;
    }
    // dumpcap announces the file just before the capture is armed.
    await new Promise((r) => setTimeout(r, 300));
    return new Capture(proc, dir, file);
  }

  /**
   * Stops capturing. dumpcap writes on SIGINT only what the kernel has already handed over; the
   * last packets sit in the TPACKET block until its poll timeout retires it (≤ 300 ms measured here),
   * so wait that out first.
   */
  async stop(): Promise<void> {
    if (!this.proc.running) return;
    await new Promise((r) => setTimeout(r, 500));
    await this.proc.stop('SIGINT', 5000);
  }

  /** Stops if needed, then returns one row per packet with the requested tshark fields. */
  async fields(fields: readonly string[], displayFilter?: string): Promise<string[][]> {
    await this.stop();
    const argv = ['tshark', '-n', '-r', this.file, '-T', 'fields', '-E', 'separator=\t'];
    for (const f of fields) argv.push('-e', f);
    if (displayFilter) argv.push('-Y', displayFilter);
    const { stdout } = await run(argv);
    return stdout
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => l.split('\t'));
  }

  /** The protocol stack of each packet (frame.protocols), e.g. "eth:ethertype:ip:esp". */
  async protocols(displayFilter?: string): Promise<string[]> {
    return (await this.fields(['frame.protocols'], displayFilter)).map((r) => r[0] ?? '');
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
    openDirs.delete(this.dir);
  }
}
