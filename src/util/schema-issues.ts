/**
 * How a failed schema check reads: every issue's message is what the value
 * must be ("must be at least 1", "must be one of ..."), written to follow
 * the name of the key, so a config error, a control error and a damaged
 * record all read "KEY must be ..." alike. A message given in a schema
 * ("must be HOST:PORT") is kept as given.
 */
import * as v from 'valibot';

type Issue = v.BaseIssue<unknown>;

/** The parse options every caller uses: one message per key (a pipe stops at its first failed check), worded here. */
export const PARSE_CONFIG: v.Config<Issue> = { abortPipeEarly: true, message: (issue) => expectation(issue) };

/** The key a strict object does not know, when that is the issue. */
export function unknownKey(issue: Issue): string | undefined {
  if (issue.kind !== 'schema' || issue.type !== 'strict_object' || issue.expected !== 'never' || !issue.path)
    return undefined;
  return String(issue.path[issue.path.length - 1].key);
}

/**
 * Every key that the object holding an unknown key has and its schema does
 * not know (a strict object reports only the first), in the object's order.
 */
export function unknownKeys(schema: v.GenericSchema, issue: Issue): string[] {
  const first = unknownKey(issue);
  if (first === undefined || !issue.path) return [];
  const holder = issue.path[issue.path.length - 1].input;
  const known = entriesAt(schema, issueKeys(issue).slice(0, -1));
  if (!known || typeof holder !== 'object' || holder === null) return [first];
  return Object.keys(holder).filter((key) => !Object.hasOwn(known, key));
}

const field = (node: unknown, name: string): unknown =>
  typeof node === 'object' && node !== null ? (node as Record<string, unknown>)[name] : undefined;

/** The schema inside optional and nullable wrappers (a pipe carries its first schema's fields already). */
function unwrap(node: unknown): unknown {
  while (['optional', 'nullable', 'nullish', 'exact_optional'].includes(String(field(node, 'type'))))
    node = field(node, 'wrapped');
  return node;
}

/**
 * The keys of every array found where the schema wants an object. Valibot's
 * object schemas take an array for an object, so an empty one (TOML's
 * `dest = []`) would pass as an object with every default.
 */
export function arraysForObjects(schema: unknown, value: unknown): Array<Array<string | number>> {
  const found: Array<Array<string | number>> = [];
  const walk = (node: unknown, at: unknown, keys: Array<string | number>): void => {
    node = unwrap(node);
    const type = String(field(node, 'type'));
    if (/^(strict_|loose_)?object$/.test(type)) {
      if (Array.isArray(at)) found.push(keys);
      else if (typeof at === 'object' && at !== null) {
        const entries = field(node, 'entries') as Record<string, unknown>;
        for (const key of Object.keys(entries))
          if (Object.hasOwn(at, key)) walk(entries[key], (at as Record<string, unknown>)[key], [...keys, key]);
      }
    } else if (type === 'array' && Array.isArray(at)) {
      at.forEach((item, i) => walk(field(node, 'item'), item, [...keys, i]));
    }
  };
  walk(schema, value, []);
  return found;
}

/** The entries of the object schema under `keys` (through optional, nullable, arrays and pipes), if there is one. */
function entriesAt(schema: unknown, keys: ReadonlyArray<string | number>): object | undefined {
  let node = unwrap(schema);
  for (const key of keys) {
    const entries = field(node, 'entries');
    node = unwrap(typeof key === 'number' ? field(node, 'item') : field(entries, key));
  }
  const entries = field(node, 'entries');
  return typeof entries === 'object' && entries !== null ? entries : undefined;
}

/** The keys from the top down to the value at fault: [] for the value itself. */
export function issueKeys(issue: Issue): Array<string | number> {
  return (issue.path ?? []).map((item) => (typeof item.key === 'number' ? item.key : String(item.key)));
}

/** A path for an issue raised by a check over a whole value, to the value under `keys`. */
export function pathTo(
  root: unknown,
  keys: ReadonlyArray<string | number>,
): [v.UnknownPathItem, ...v.UnknownPathItem[]] {
  let input = root;
  const items = keys.map((key) => {
    const value =
      typeof input === 'object' && input !== null ? (input as Record<PropertyKey, unknown>)[key] : undefined;
    const item: v.UnknownPathItem = { type: 'unknown', origin: 'value', input, key, value };
    input = value;
    return item;
  });
  if (items.length === 0) throw new Error('pathTo needs at least one key');
  return items as [v.UnknownPathItem, ...v.UnknownPathItem[]];
}

const TYPE_NAMES: Record<string, string> = {
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  Array: 'an array',
  Object: 'an object',
  null: 'null',
};

/** What the value must be, for an issue whose schema gave no message of its own. */
function expectation(issue: Issue): string {
  const count = (n: unknown): string =>
    `${String(n)} ${Array.isArray(issue.input) ? 'item' : 'character'}${n === 1 ? '' : 's'}`;
  switch (issue.type) {
    case 'min_value':
      return `must be at least ${String(issue.requirement)}`;
    case 'max_value':
      return `must be at most ${String(issue.requirement)}`;
    case 'gt_value':
      return `must be greater than ${String(issue.requirement)}`;
    case 'integer':
      return 'must be an integer';
    case 'safe_integer':
      return Number.isInteger(issue.input)
        ? `must be an integer from ${Number.MIN_SAFE_INTEGER} to ${Number.MAX_SAFE_INTEGER}`
        : 'must be an integer';
    case 'min_length':
      return issue.requirement === 1 && typeof issue.input === 'string'
        ? 'must not be empty'
        : `must have at least ${count(issue.requirement)}`;
    case 'max_length':
      return `must have at most ${count(issue.requirement)}`;
    case 'regex':
      return `must match ${String(issue.requirement)}`;
    case 'picklist':
      return `must be one of ${(issue.expected ?? '')
        .replace(/^\(|\)$/g, '')
        .split(' | ')
        .join(', ')}`;
  }
  if (issue.kind === 'schema' && issue.path && /^(strict_|loose_)?object$/.test(issue.type)) {
    if (issue.expected === 'never') return 'is not a known key';
    if (issue.input === undefined) return 'is missing';
  }
  if (issue.expected === 'never') return 'is not expected here';
  if (issue.expected === null) return 'is not valid';
  return `must be ${TYPE_NAMES[issue.expected] ?? issue.expected}`;
}
