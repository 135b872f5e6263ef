/** Topic templates such as `{prefix}/{device}/{point}`: placeholders in braces, replaced by values. */

const PLACEHOLDER = /\{([^{}]*)\}/g;

/** Lists the placeholder names of `template`, or returns an error message for unbalanced braces. */
export function templatePlaceholders(template: string): string[] | string {
  const names: string[] = [];
  for (const match of template.matchAll(PLACEHOLDER)) {
    const name = match[1] ?? '';
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) return `invalid placeholder {${name}}; placeholders are names such as {device}`;
    names.push(name);
  }
  if (/[{}]/.test(template.replace(PLACEHOLDER, ''))) return `unbalanced brace in ${JSON.stringify(template)}; placeholders are written {name}`;
  return names;
}

/**
 * Replaces each placeholder with its value. A value is made safe for one topic level: `/`, `+`,
 * `#` and U+0000 become `_`. A placeholder without a value is left as it is.
 */
export function expandTemplate(template: string, values: Readonly<Record<string, string | number>>): string {
  return template.replace(PLACEHOLDER, (whole, name: string) => {
    const value = values[name];
    return value === undefined ? whole : String(value).replace(/[/+#\0]/g, '_');
  });
}
