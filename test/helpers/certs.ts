import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

const OPENSSL = 'openssl';

/** Validity of the test certificates; they live only as long as one test file. */
const VALID_DAYS = '2';

/** A certificate with its private key, as PEM file paths. */
export interface CertificateFiles {
  cert: string;
  key: string;
}

/**
 * Certificates made fresh for one test file by `createTestCertificates`, in a temporary directory
 * that `remove()` deletes. No private key is ever committed.
 */
export interface TestCertificates {
  dir: string;
  /** The test CA that signs the server and the client certificates. */
  ca: CertificateFiles;
  /** Server certificate for localhost and 127.0.0.1. */
  server: CertificateFiles;
  /** A second server certificate (CN outpost-renewed) for reload tests. */
  renewedServer: CertificateFiles;
  /** Client certificate with subject CN=sensor-1, O=Plant, signed by the test CA. */
  client: CertificateFiles;
  /** Client certificate with CN=intruder, signed by another CA that the broker does not trust. */
  untrustedClient: CertificateFiles;
  remove(): Promise<void>;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await execFileAsync(OPENSSL, args, { cwd, timeout: 20_000 });
  } catch (error) {
    const stderr = typeof error === 'object' && error !== null && 'stderr' in error ? String(error.stderr) : '';
    throw new Error(`openssl ${args[0]} failed: ${error instanceof Error ? error.message : String(error)}\n${stderr}`);
  }
}

/** Makes a self-signed CA certificate with an EC P-256 key. */
async function makeCa(dir: string, name: string, subject: string): Promise<CertificateFiles> {
  const files = { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
  await openssl(
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', files.key, '-out', files.cert, '-days', VALID_DAYS, '-subj', subject,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  return files;
}

/** Makes a key and a certificate signed by `ca` with the given subject and X.509 v3 extensions. */
async function makeSigned(dir: string, name: string, ca: CertificateFiles, subject: string, extensions: string): Promise<CertificateFiles> {
  const files = { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
  const request = path.join(dir, `${name}.csr`);
  const extensionFile = path.join(dir, `${name}.ext`);
  await writeFile(extensionFile, extensions);
  await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', files.key, '-out', request, '-subj', subject], dir);
  await openssl(
    ['x509', '-req', '-in', request, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', `0x${randomBytes(8).toString('hex')}`, '-out', files.cert, '-days', VALID_DAYS, '-extfile', extensionFile],
    dir,
  );
  return files;
}

const SERVER_EXTENSIONS = 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n';
const CLIENT_EXTENSIONS = 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n';

/** Generates a test CA, server and client certificates with openssl in a new temporary directory. */
export async function createTestCertificates(): Promise<TestCertificates> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'outpost-certs-'));
  try {
    const ca = await makeCa(dir, 'ca', '/CN=Outpost Test CA');
    const otherCa = await makeCa(dir, 'other-ca', '/CN=Untrusted Test CA');
    // Each certificate gets a random serial number, so the four can be signed in parallel.
  const [server, renewedServer, client, untrustedClient] = await Promise.all([
      makeSigned(dir, 'server', ca, '/CN=localhost', SERVER_EXTENSIONS),
      makeSigned(dir, 'server-renewed', ca, '/CN=outpost-renewed', SERVER_EXTENSIONS),
      makeSigned(dir, 'client', ca, '/O=Plant/CN=sensor-1', CLIENT_EXTENSIONS),
      makeSigned(dir, 'intruder', otherCa, '/CN=intruder', CLIENT_EXTENSIONS),
    ]);
    return { dir, ca, server, renewedServer, client, untrustedClient, remove: () => rm(dir, { recursive: true, force: true }) };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}
