import { Flags } from '@oclif/core';
import { CONFIG_KEYS, describeKey, type ConfigKey } from '../agent/config.js';

/**
 * One flag per configuration key, made from the agent's config schema so a new key needs no CLI
 * change. Flags stay strings here: the schema validates them with the same messages as the file
 * and environment values.
 */
export const configFlags = Object.fromEntries(
  CONFIG_KEYS.map((key) => {
    const { description, defaultText, env } = describeKey(key);
    return [
      describeKey(key).flag,
      Flags.string({
        summary: `${description} [env ${env}] (default ${defaultText})`,
        helpValue: key === 'logLevel' ? 'LEVEL' : '<value>',
      }),
    ];
  }),
);

/** Picks the config keys out of parsed flags, keyed by config key. */
export function configFlagValues(
  parsed: Record<string, unknown>,
): Partial<Record<ConfigKey, string>> {
  const values: Partial<Record<ConfigKey, string>> = {};
  for (const key of CONFIG_KEYS) {
    const value = parsed[describeKey(key).flag];
    if (typeof value === 'string') values[key] = value;
  }
  return values;
}
