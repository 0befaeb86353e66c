/**
 * Generates the commented sample config from the schema, so `config.sample.yaml` can never
 * disagree with what the loader accepts (a unit test compares the checked-in file with this).
 */
import YAML from "yaml";
import { z, type ZodTypeAny } from "zod";
import { configSchema } from "./schema";

interface Unwrapped {
  inner: ZodTypeAny;
  description?: string;
  defaultValue?: unknown;
}

function unwrap(schema: ZodTypeAny): Unwrapped {
  let description = schema.description;
  let defaultValue: unknown;
  let current = schema;
  for (;;) {
    if (current instanceof z.ZodDefault) {
      defaultValue = current._def.defaultValue();
      current = current._def.innerType;
    } else if (current instanceof z.ZodOptional || current instanceof z.ZodNullable) {
      current = current._def.innerType;
    } else if (current instanceof z.ZodEffects) {
      current = current._def.schema;
    } else {
      break;
    }
    description ??= current.description;
  }
  return { inner: current, description, defaultValue };
}

/** Example values shown instead of the default (required keys, and lists that are empty by default). */
const EXAMPLES: Record<string, unknown> = {
  "homeserver.url": "http://127.0.0.1:8008",
  "homeserver.domain": "hive.example",
  operators: ["@alice:hive.example"],
};

function flow(value: unknown): string {
  return YAML.stringify(value, { collectionStyle: "flow", flowCollectionPadding: false }).trimEnd();
}

function renderObject(shape: Record<string, ZodTypeAny>, prefix: string, indent: string): string[] {
  const lines: string[] = [];
  for (const [key, child] of Object.entries(shape)) {
    const path = prefix ? `${prefix}.${key}` : key;
    const { inner, description, defaultValue } = unwrap(child);
    if (description) lines.push(`${indent}# ${description}`);
    if (inner instanceof z.ZodObject) {
      lines.push(`${indent}${key}:`);
      lines.push(...renderObject(inner.shape as Record<string, ZodTypeAny>, path, `${indent}  `));
      continue;
    }
    const required = defaultValue === undefined;
    const value = path in EXAMPLES ? EXAMPLES[path] : defaultValue;
    if (required) lines.push(`${indent}# (required)`);
    if (!required && path in EXAMPLES) lines.push(`${indent}# (default: ${flow(defaultValue)}; an example is shown)`);
    lines.push(`${indent}${key}: ${flow(value)}`);
  }
  return lines;
}

export function renderSampleConfig(): string {
  const header = [
    "# hive-matrix configuration. Generated from the schema (src/config/schema.ts) by",
    "# `npm run sample-config`. Keys marked (required) have no default; the others show their default",
    "# unless marked as an example.",
    "# Unknown keys and wrong types are errors. Check a file with `hive-matrix check-config --config FILE`.",
    "",
  ];
  return [...header, ...renderObject(configSchema.shape as Record<string, ZodTypeAny>, "", "")].join("\n") + "\n";
}
