#!/usr/bin/env node
// Helper of scripts/build-deb.sh for the parts that are easier in JavaScript than in shell.
//
//   node stage.mjs prune APP_DIR DEB_ARCH
//       Removes from APP_DIR/node_modules what does not run on DEB_ARCH: prebuilt binaries of
//       other platforms and architectures, musl builds, compiler leftovers, C/C++ sources of
//       native packages, tests, docs and TypeScript sources. Keeps every license file.
//   node stage.mjs native-packages APP_DIR
//       Prints one line per package under node_modules that has a binding.gyp:
//       "NAME<TAB>DIR<TAB>prebuilt" when it ships prebuilds/ (node-gyp-build packages), else
//       "NAME<TAB>DIR<TAB>source" (it must be compiled for the target).
//   node stage.mjs check-elf APP_DIR DEB_ARCH
//       Fails when an ELF file under APP_DIR is built for another machine than DEB_ARCH, or when
//       no ELF file is left at all. Prints each ELF file and the glibc version it needs.
//   node stage.mjs depends APP_DIR
//       Prints the Debian dependencies of the ELF files: libc6 with the highest GLIBC_ symbol
//       version they use, and libstdc++6/libgcc-s1 when they link those libraries.
//   node stage.mjs copyright APP_DIR PACKAGE_LICENSE
//       Prints a machine-readable debian/copyright file for Outpost and every bundled npm package.

import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, lstatSync, openSync, readdirSync, readFileSync, readSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';

/** Node.js names of the Debian architectures, and the ELF e_machine value of each. */
const ARCHITECTURES = {
  amd64: { nodeArch: 'x64', elfMachine: 62, prebuildTags: [] },
  arm64: { nodeArch: 'arm64', elfMachine: 183, prebuildTags: ['armv8'] },
  // Debian's armhf is ARMv7. Raspberry Pi OS builds armhf for ARMv6 as well, so both prebuilds stay.
  armhf: { nodeArch: 'arm', elfMachine: 40, prebuildTags: ['armv6', 'armv7'] },
};

/**
 * Folders that no package needs at run time, removed only at the top of a package: deeper down
 * the same names can hold code (yaml keeps modules in dist/doc/).
 */
const PRUNED_DIRECTORIES = new Set([
  'test', 'tests', '__tests__', 'spec', 'example', 'examples', 'benchmark', 'benchmarks', 'docs', 'doc',
  'coverage', '.github', '.circleci', '.vscode', '.idea', '.nyc_output',
]);

/** File names (lower case) and endings that no package needs at run time. */
const PRUNED_FILE_NAMES = new Set([
  '.npmignore', '.gitignore', '.gitattributes', '.editorconfig', '.travis.yml', '.eslintrc', '.eslintrc.js',
  '.eslintrc.json', '.eslintrc.yml', '.prettierrc', '.nycrc', 'makefile', 'tsconfig.json', 'binding.gyp',
  'appveyor.yml', '.airtap.yml', '.taprc', 'yarn.lock', 'package-lock.json', 'changelog.md', 'history.md',
  'readme.md', 'readme', 'contributing.md', 'security.md',
]);
const PRUNED_FILE_ENDINGS = [
  '.ts', '.mts', '.cts', '.map', '.md', '.markdown', '.c', '.cc', '.cpp', '.cxx', '.h', '.hh', '.hpp', '.gyp',
  '.gypi', '.o', '.a', '.mk', '.tsbuildinfo', '.d.ts.map', '.flow',
];

const LICENSE_FILE = /^(licen[cs]e|copying|notice|authors)(\.|-|$)/i;

const [command, ...args] = process.argv.slice(2);
switch (command) {
  case 'prune':
    prune(requireArgument(args[0], 'APP_DIR'), architecture(args[1]));
    break;
  case 'native-packages':
    listNativePackages(requireArgument(args[0], 'APP_DIR'));
    break;
  case 'check-elf':
    checkElf(requireArgument(args[0], 'APP_DIR'), architecture(args[1]));
    break;
  case 'depends':
    printDepends(requireArgument(args[0], 'APP_DIR'));
    break;
  case 'copyright':
    printCopyright(requireArgument(args[0], 'APP_DIR'), requireArgument(args[1], 'PACKAGE_LICENSE'));
    break;
  default:
    fail(`unknown command ${JSON.stringify(command)}; expected prune, native-packages, check-elf, depends or copyright`);
}

function fail(message) {
  process.stderr.write(`stage.mjs: ${message}\n`);
  process.exit(1);
}

function requireArgument(value, name) {
  if (value === undefined || value === '') fail(`missing argument ${name}`);
  return value;
}

function architecture(name) {
  const found = ARCHITECTURES[name];
  if (found === undefined) fail(`unknown Debian architecture ${JSON.stringify(name)}; expected one of ${Object.keys(ARCHITECTURES).join(', ')}`);
  return { name, ...found };
}

/** Returns [name, folder] of every installed package, scoped ones included, nested ones too. */
function findPackages(nodeModules) {
  const found = [];
  if (!existsSync(nodeModules)) return found;
  for (const entry of readdirSync(nodeModules, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name === '.bin') continue;
    if (entry.name.startsWith('@')) {
      for (const scoped of readdirSync(join(nodeModules, entry.name), { withFileTypes: true })) {
        if (scoped.isDirectory()) addPackage(found, `${entry.name}/${scoped.name}`, join(nodeModules, entry.name, scoped.name));
      }
    } else if (!entry.name.startsWith('.')) {
      addPackage(found, entry.name, join(nodeModules, entry.name));
    }
  }
  return found;
}

function addPackage(found, name, folder) {
  if (!existsSync(join(folder, 'package.json'))) return;
  found.push([name, folder]);
  found.push(...findPackages(join(folder, 'node_modules')));
}

function listNativePackages(appDir) {
  for (const [name, folder] of findPackages(join(appDir, 'node_modules'))) {
    if (!existsSync(join(folder, 'binding.gyp'))) continue;
    const kind = existsSync(join(folder, 'prebuilds')) ? 'prebuilt' : 'source';
    process.stdout.write(`${name}\t${folder}\t${kind}\n`);
  }
}

function prune(appDir, arch) {
  const nodeModules = join(appDir, 'node_modules');
  rmSync(join(nodeModules, '.bin'), { recursive: true, force: true });
  rmSync(join(nodeModules, '.package-lock.json'), { force: true });

  for (const [, folder] of findPackages(nodeModules)) {
    if (existsSync(join(folder, 'binding.gyp'))) pruneNativePackage(folder, arch);
    pruneTree(folder, true);
  }
  // Packages of type declarations only (@types/*, undici-types) have nothing left to run.
  for (const [, folder] of findPackages(nodeModules)) {
    if (existsSync(folder) && !containsRuntimeFile(folder)) rmSync(folder, { recursive: true, force: true });
  }
  removeEmptyDirectories(nodeModules);
  fixExecutableBits(appDir);
}

/** Returns true when `folder`, not counting nested packages, has a file that Node.js can load. */
function containsRuntimeFile(folder) {
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory()) {
      if (entry.name !== 'node_modules' && containsRuntimeFile(path)) return true;
    } else if (/\.(c|m)?js$|\.node$|\.wasm$/.test(entry.name) || (entry.name.endsWith('.json') && entry.name !== 'package.json')) {
      return true;
    }
  }
  return false;
}

/** Removes empty folders below `folder` and returns true when `folder` itself ended up empty. */
function removeEmptyDirectories(folder) {
  let empty = true;
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory() && removeEmptyDirectories(path)) {
      rmSync(path, { recursive: true, force: true });
    } else {
      empty = false;
    }
  }
  return empty;
}

/**
 * Makes a file executable exactly when it starts with `#!`, as Debian expects: npm packages ship
 * scripts without the executable bit and plain modules with it.
 */
function fixExecutableBits(folder) {
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory()) {
      fixExecutableBits(path);
    } else if (entry.isFile() && readElfMachine(path) === undefined) {
      chmodSync(path, startsWithShebang(path) ? 0o755 : 0o644);
    }
  }
}

function startsWithShebang(path) {
  const start = Buffer.alloc(2);
  const fd = openSync(path, 'r');
  try {
    return readSync(fd, start, 0, 2, 0) === 2 && start.toString('latin1') === '#!';
  } finally {
    closeSync(fd);
  }
}

/** Keeps only the compiled addon of a native package: its prebuild for `arch`, or build/Release/*.node. */
function pruneNativePackage(folder, arch) {
  const prebuilds = join(folder, 'prebuilds');
  if (existsSync(prebuilds)) {
    for (const platform of readdirSync(prebuilds)) {
      if (platform !== `linux-${arch.nodeArch}`) {
        rmSync(join(prebuilds, platform), { recursive: true, force: true });
        continue;
      }
      for (const file of readdirSync(join(prebuilds, platform))) {
        if (!keepPrebuild(file, arch)) rmSync(join(prebuilds, platform, file), { force: true });
      }
    }
    // node-gyp-build prefers build/ over prebuilds/, so a host build left here would be loaded.
    rmSync(join(folder, 'build'), { recursive: true, force: true });
  } else {
    const release = join(folder, 'build', 'Release');
    for (const entry of existsSync(join(folder, 'build')) ? readdirSync(join(folder, 'build')) : []) {
      if (entry !== 'Release') rmSync(join(folder, 'build', entry), { recursive: true, force: true });
    }
    for (const entry of existsSync(release) ? readdirSync(release) : []) {
      if (!entry.endsWith('.node')) rmSync(join(release, entry), { recursive: true, force: true });
    }
  }

  // C and C++ sources and bundled libraries (better-sqlite3's deps/ holds the SQLite amalgamation).
  for (const sourceFolder of ['src', 'deps']) {
    const path = join(folder, sourceFolder);
    if (existsSync(path) && !containsJavaScript(path)) rmSync(path, { recursive: true, force: true });
  }
}

/** Keeps glibc builds for the architecture, with the ARM version tag where the package uses one. */
function keepPrebuild(file, arch) {
  if (!file.endsWith('.node') || file.includes('.musl.')) return false;
  const tags = file.split('.').slice(1, -1);
  const armTag = tags.find((tag) => /^armv\d$/.test(tag));
  if (armTag !== undefined && !arch.prebuildTags.includes(armTag)) return false;
  return true;
}

function containsJavaScript(folder) {
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory() && containsJavaScript(path)) return true;
    if (entry.isFile() && /\.(c|m)?js$/.test(entry.name)) return true;
  }
  return false;
}

/** Removes pruned folders and files below `folder`, but not nested packages (they are pruned on their own). */
function pruneTree(folder, isPackageRoot) {
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory()) {
      if (entry.name === 'node_modules') continue;
      if (isPackageRoot && PRUNED_DIRECTORIES.has(entry.name.toLowerCase())) {
        rmSync(path, { recursive: true, force: true });
      } else {
        pruneTree(path, false);
      }
      continue;
    }
    if (isPrunedFile(entry.name, isPackageRoot)) rmSync(path, { force: true });
  }
}

function isPrunedFile(name, isPackageRoot) {
  const lower = name.toLowerCase();
  if (LICENSE_FILE.test(name)) return false;
  if (isPackageRoot && lower === 'package.json') return false;
  if (PRUNED_FILE_NAMES.has(lower)) return true;
  return PRUNED_FILE_ENDINGS.some((ending) => lower.endsWith(ending));
}

/** Returns the paths of every regular ELF file below `folder`. */
function findElfFiles(folder) {
  const found = [];
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory()) {
      found.push(...findElfFiles(path));
    } else if (entry.isFile() && readElfMachine(path) !== undefined) {
      found.push(path);
    }
  }
  return found;
}

/** Returns the e_machine field of an ELF file, or undefined for any other file. */
function readElfMachine(path) {
  const header = Buffer.alloc(20);
  const fd = openSync(path, 'r');
  try {
    if (readSync(fd, header, 0, 20, 0) < 20) return undefined;
  } finally {
    closeSync(fd);
  }
  if (header.readUInt32BE(0) !== 0x7f454c46) return undefined;
  const littleEndian = header[5] === 1;
  return littleEndian ? header.readUInt16LE(18) : header.readUInt16BE(18);
}

/** Returns the versioned symbols (e.g. GLIBC_2.34) and needed libraries of an ELF file, read with readelf. */
function readElfNeeds(path) {
  const dynamic = execFileSync('readelf', ['--dynamic', '--version-info', '--wide', path], { encoding: 'utf8' });
  const libraries = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((match) => match[1]);
  const glibcVersions = [...dynamic.matchAll(/Name: GLIBC_(\d+(?:\.\d+)*)/g)].map((match) => match[1]);
  return { libraries, glibcVersions };
}

function compareVersions(a, b) {
  const left = a.split('.').map(Number);
  const right = b.split('.').map(Number);
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const difference = (left[i] ?? 0) - (right[i] ?? 0);
    if (difference !== 0) return difference;
  }
  return 0;
}

function maxGlibcVersion(paths) {
  let max = '2.17';
  for (const path of paths) {
    for (const version of readElfNeeds(path).glibcVersions) {
      if (compareVersions(version, max) > 0) max = version;
    }
  }
  return max;
}

function checkElf(appDir, arch) {
  const files = findElfFiles(appDir);
  if (files.length === 0) fail(`no native addon found under ${appDir}; the build of the native packages failed`);
  const wrong = files.filter((path) => readElfMachine(path) !== arch.elfMachine);
  for (const path of files) {
    const { glibcVersions } = readElfNeeds(path);
    const needed = glibcVersions.length === 0 ? 'none' : glibcVersions.sort(compareVersions).at(-1);
    process.stdout.write(`  ${relative(appDir, path)} (machine ${readElfMachine(path)}, needs GLIBC_${needed})\n`);
  }
  if (wrong.length > 0) {
    fail(`ELF files for another machine than ${arch.name} (e_machine ${arch.elfMachine}): ${wrong.map((path) => relative(appDir, path)).join(', ')}`);
  }
}

function printDepends(appDir) {
  const files = findElfFiles(appDir);
  const libraries = new Set(files.flatMap((path) => readElfNeeds(path).libraries));
  const depends = [`libc6 (>= ${maxGlibcVersion(files)})`];
  // Both toolchains used here are GCC 12 (Debian 12's g++ and its cross compilers).
  if (libraries.has('libstdc++.so.6')) depends.push('libstdc++6 (>= 12)');
  if (libraries.has('libgcc_s.so.1')) depends.push('libgcc-s1 (>= 3.0)');
  process.stdout.write(`${depends.join(', ')}\n`);
}

function printCopyright(appDir, outpostLicense) {
  const lines = [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
    'Upstream-Name: outpost',
    'Comment: Outpost bundles the npm packages it runs with under /usr/lib/outpost/node_modules.',
    ' Each package folder there keeps its own license file.',
    '',
    'Files: *',
    `Copyright: ${new Date(Number(process.env.SOURCE_DATE_EPOCH ?? Date.now() / 1000) * 1000).getUTCFullYear()} Outpost contributors`,
    `License: ${outpostLicense}`,
  ];
  if (outpostLicense === 'Apache-2.0') {
    lines.push(' On Debian systems, the full text of the Apache License 2.0 is in', ' /usr/share/common-licenses/Apache-2.0.');
  }

  const packages = findPackages(join(appDir, 'node_modules')).sort((a, b) => a[0].localeCompare(b[0]));
  const licenses = new Set();
  for (const [name, folder] of packages) {
    const manifest = JSON.parse(readFileSync(join(folder, 'package.json'), 'utf8'));
    const license = typeof manifest.license === 'string' ? manifest.license : 'unknown';
    const licenseFiles = readdirSync(folder).filter((file) => LICENSE_FILE.test(file) && lstatSync(join(folder, file)).isFile());
    licenses.add(license);
    lines.push(
      '',
      `Files: usr/lib/outpost/${relative(appDir, folder)}/*`,
      `Copyright: the authors of the npm package ${name} ${manifest.version}, see the license file`,
      `License: ${license}`,
      licenseFiles.length > 0
        ? ` The license text is in ${licenseFiles.map((file) => `usr/lib/outpost/${relative(appDir, join(folder, file))}`).join(', ')}.`
        : ` The package ships no license file; its package.json names the license ${license}.`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  process.stderr.write(`copyright: ${packages.length} bundled npm packages, licenses: ${[...licenses].sort().join(', ')}\n`);
}
