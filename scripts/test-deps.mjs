#!/usr/bin/env node
// Checks that what the tests need is installed, before `npm test` builds and runs them.
//
// The tests need Debian's Mosquitto programs (the clients `mosquitto_pub` and `mosquitto_sub`,
// and the broker `mosquitto`) and the npm packages from package.json. Run as root on a system
// with apt-get, this script installs missing Debian packages itself. Otherwise it prints the
// command to run and exits with status 1. It prints nothing when everything is present.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repositoryRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Programs the tests start, with the Debian package that ships each. */
const requiredPrograms = [
  { path: '/usr/bin/mosquitto_pub', debianPackage: 'mosquitto-clients' },
  { path: '/usr/bin/mosquitto_sub', debianPackage: 'mosquitto-clients' },
  { path: '/usr/sbin/mosquitto', debianPackage: 'mosquitto' },
  // Makes mosquitto_sub line-buffered when its output is a pipe. Debian always has coreutils.
  { path: '/usr/bin/stdbuf', debianPackage: 'coreutils' },
  // test/systemd.test.ts: the sender of systemd notifications, and the receiving socket's program.
  { path: '/usr/bin/systemd-notify', debianPackage: 'systemd' },
  { path: '/usr/bin/python3', debianPackage: 'python3' },
  // test/helpers/certs.ts makes the test CA and certificates with openssl.
  { path: '/usr/bin/openssl', debianPackage: 'openssl' },
  // test/field-*.test.ts: socat makes the pty pairs that stand in for RS-485 adapters, and
  // test/fixtures/modbus_device.py serves the Modbus device with Debian's pymodbus, whose serial
  // server needs pyserial-asyncio (only recommended by python3-pymodbus, so named here).
  { path: '/usr/bin/socat', debianPackage: 'socat' },
  { path: '/usr/lib/python3/dist-packages/pymodbus/__init__.py', debianPackage: 'python3-pymodbus' },
  { path: '/usr/lib/python3/dist-packages/serial_asyncio/__init__.py', debianPackage: 'python3-serial-asyncio' },
];

const aptGetPath = '/usr/bin/apt-get';
const policyRcPath = '/usr/sbin/policy-rc.d';

const missingPrograms = requiredPrograms.filter((program) => !existsSync(program.path));
const missingPackages = [...new Set(missingPrograms.map((program) => program.debianPackage))];
const missingNpmPackages = findMissingNpmPackages();

let failed = false;

if (missingPackages.length > 0) {
  if (!(await installDebianPackages(missingPackages, missingPrograms))) {
    failed = true;
  }
}

if (missingNpmPackages.length > 0) {
  const listedNames = missingNpmPackages.slice(0, 5).join(', ');
  const more = missingNpmPackages.length > 5 ? ` and ${missingNpmPackages.length - 5} more` : '';
  console.error(`test-deps: npm packages not installed in node_modules: ${listedNames}${more}. Run: npm install`);
  failed = true;
}

process.exitCode = failed ? 1 : 0;

/** Returns the dependencies and devDependencies of package.json that have no folder in node_modules. */
function findMissingNpmPackages() {
  const manifest = JSON.parse(readFileSync(join(repositoryRoot, 'package.json'), 'utf8'));
  const names = [
    ...Object.keys(manifest.dependencies ?? {}),
    ...Object.keys(manifest.devDependencies ?? {}),
  ];
  return names.filter((name) => !existsSync(join(repositoryRoot, 'node_modules', name, 'package.json')));
}

/**
 * Installs the given Debian packages with apt-get when this process may, or prints the command
 * for the user. Returns true when the packages are installed afterwards.
 */
async function installDebianPackages(packages, programs) {
  const missingPaths = programs.map((program) => program.path).join(', ');
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

  if (!existsSync(aptGetPath)) {
    console.error(
      `test-deps: missing ${missingPaths}. The tests need Mosquitto 2 (broker and clients) at these paths; ` +
        `on Debian, Ubuntu and Raspberry Pi OS the packages are: ${packages.join(' ')}`,
    );
    return false;
  }

  const installArguments = ['install', '-y', '--no-install-recommends', ...packages];
  if (!isRoot) {
    const sudo = existsSync('/usr/bin/sudo') ? 'sudo ' : '';
    console.error(
      `test-deps: missing ${missingPaths}. Install the Debian packages as root, then run npm test again:\n` +
        `  ${sudo}apt-get update && ${sudo}apt-get ${installArguments.join(' ')}`,
    );
    return false;
  }

  console.log(`test-deps: installing Debian packages ${packages.join(' ')} (missing ${missingPaths})`);
  const serviceStartBlocked = blockServiceStarts();
  const interruption = deferInterruptions();
  let installed = false;
  try {
    installed =
      (await runAptGet(['update'])) &&
      interruption.signal === undefined &&
      (await runAptGet(['-o', 'DPkg::Lock::Timeout=120', ...installArguments]));
  } finally {
    if (serviceStartBlocked) {
      rmSync(policyRcPath, { force: true });
    }
    interruption.restore();
  }
  if (interruption.signal !== undefined) {
    console.error(`test-deps: stopped by ${interruption.signal}`);
    process.exit(128 + osConstants.signals[interruption.signal]);
  }
  if (!installed) {
    return false;
  }

  const stillMissing = programs.filter((program) => !existsSync(program.path)).map((program) => program.path);
  if (stillMissing.length > 0) {
    console.error(`test-deps: apt-get installed ${packages.join(' ')}, but these are still missing: ${stillMissing.join(', ')}`);
    return false;
  }
  if (serviceStartBlocked && packages.includes('mosquitto') && existsSync('/run/systemd/system')) {
    // Debian enables mosquitto.service even when its start is blocked, so it starts at the
    // next boot and takes port 1883, the port of Outpost's default listener.
    console.log('test-deps: mosquitto.service was not started; run `systemctl disable mosquitto` to keep it off at boot');
  }
  return true;
}

/**
 * Creates /usr/sbin/policy-rc.d that denies every service start, unless such a file exists.
 * Debian's maintainer scripts (invoke-rc.d, deb-systemd-invoke) consult it, so installing the
 * `mosquitto` package does not start a broker on port 1883 as a side effect of `npm test`.
 * Returns true when this script created the file and must remove it.
 */
function blockServiceStarts() {
  if (existsSync(policyRcPath)) {
    return false;
  }
  writeFileSync(policyRcPath, '#!/bin/sh\n# Written by Outpost scripts/test-deps.mjs during apt-get install.\nexit 101\n', {
    mode: 0o755,
  });
  return true;
}

/**
 * Keeps SIGINT and SIGTERM from ending this process while apt-get runs, so the policy-rc.d file
 * is removed first. A Ctrl-C in the terminal also reaches apt-get, which stops. A SIGTERM sent
 * to this process alone takes effect when apt-get has finished.
 */
function deferInterruptions() {
  const state = { signal: undefined, restore };
  const record = (signal) => {
    state.signal = signal;
  };
  process.on('SIGINT', record);
  process.on('SIGTERM', record);

  function restore() {
    process.off('SIGINT', record);
    process.off('SIGTERM', record);
  }
  return state;
}

/** Runs apt-get quietly and prints its output only when it fails. Returns true on success. */
async function runAptGet(aptArguments) {
  const child = spawn(aptGetPath, ['-q', ...aptArguments], {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk) => {
    output += chunk.toString('utf8');
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);

  const reason = await new Promise((resolve) => {
    child.once('error', (error) => resolve(error.message));
    child.once('close', (status, signal) => {
      if (status === 0) {
        resolve(undefined);
      } else {
        resolve(signal ? `signal ${signal}` : `exit status ${status}`);
      }
    });
  });
  if (reason === undefined) {
    return true;
  }

  const lastLines = output.trim().split('\n').slice(-20).join('\n');
  console.error(`test-deps: apt-get ${aptArguments.join(' ')} failed (${reason}):\n${lastLines}`);
  return false;
}
