import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Returns the nearest directory above this file with a package.json. It searches rather than
 * using '../..', because `npm run demo` runs these helpers compiled to build/demo/.
 */
function findRepoRoot(): string {
  let directory = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(directory, 'package.json'))) {
    const parent = path.dirname(directory);
    if (parent === directory) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    directory = parent;
  }
  return directory;
}

/** The repository's root directory. */
export const REPO_ROOT = findRepoRoot();
