/**
 * Reads the TOML file, lays command-line overrides on top, and validates the
 * result, turning every problem into one message that names the key.
 */
import fs from 'node:fs';
import { parse as parseToml } from 'smol-toml';
import * as v from 'valibot';
import { ConfigSchema, FerryConfig } from './schema';
import { DaemonConfigSchema, type DaemonConfig } from './daemon-schema';
import { arraysForObjects, issueKeys, PARSE_CONFIG, unknownKeys } from '../util/schema-issues';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Tree = Record<string, unknown>;

/** Overrides are dotted keys (`serve.listen`) with values already typed; undefined means not given. */
export function loadConfig(file: string | undefined, overrides: Record<string, unknown> = {}): FerryConfig {
  return loadWithSchema(ConfigSchema, file, overrides);
}

/** `ferry daemon`'s ferryd.toml: its own schema, the same reading and the same error messages. */
export function loadDaemonConfig(file: string | undefined, overrides: Record<string, unknown> = {}): DaemonConfig {
  return loadWithSchema(DaemonConfigSchema, file, overrides);
}

function loadWithSchema<T>(
  schema: v.GenericSchema<unknown, T>,
  file: string | undefined,
  overrides: Record<string, unknown>,
): T {
  const tree: Tree = file ? readToml(file) : {};
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) continue;
    setDotted(tree, key, value);
  }
  const where = file ? ` (in ${file} or the command line)` : '';
  const arrays = arraysForObjects(schema, tree);
  if (arrays.length > 0)
    throw new ConfigError(
      arrays.map((keys) => `config: ${keys.join('.')} must be a table, not an array${where}`).join('\n'),
    );
  const result = v.safeParse(schema, tree, PARSE_CONFIG);
  if (!result.success) throw new ConfigError(describe(schema, result.issues, tree, where));
  return result.output;
}

function readToml(file: string): Tree {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`config: cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    return parseToml(text) as Tree;
  } catch (e) {
    throw new ConfigError(`config: ${file} is not valid TOML: ${(e as Error).message}`);
  }
}

function setDotted(tree: Tree, key: string, value: unknown): void {
  const parts = key.split('.');
  let node = tree;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
    node = node[part] as Tree;
  }
  node[parts[parts.length - 1]] = value;
}

function getDotted(tree: Tree, path: PropertyKey[]): unknown {
  let node: unknown = tree;
  for (const part of path) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<PropertyKey, unknown>)[part];
  }
  return node;
}

function describe(
  schema: v.GenericSchema,
  issues: ReadonlyArray<v.BaseIssue<unknown>>,
  tree: Tree,
  where: string,
): string {
  const lines = issues.map((issue) => {
    const path = issueKeys(issue);
    const unknown = unknownKeys(schema, issue);
    if (unknown.length > 0) {
      const prefix = path
        .slice(0, -1)
        .map((key) => `${key}.`)
        .join('');
      return `config: unknown key ${unknown.map((key) => prefix + key).join(', ')}${where}`;
    }
    const got = getDotted(tree, path);
    return `config: ${path.join('.')} ${issue.message} (got ${JSON.stringify(got)})${where}`;
  });
  return lines.join('\n');
}
