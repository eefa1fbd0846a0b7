// Runs the pinned solc (solcjs, from node_modules) on a standard-JSON input read from stdin
// and writes the standard-JSON output to stdout. Imports (only @openzeppelin/contracts) are
// read from node_modules beside this file; build.py passes every file of src/ itself.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const solc = require("solc");

function findImports(path) {
  const clean = normalize(path);
  if (!clean.startsWith("@openzeppelin/contracts/") || clean.includes("..")) {
    return { error: `import outside @openzeppelin/contracts: ${path}` };
  }
  try {
    return { contents: readFileSync(join(here, "node_modules", clean), "utf8") };
  } catch (err) {
    return { error: `cannot read ${path}: ${err.message}` };
  }
}

if (process.argv[2] === "--version") {
  process.stdout.write(solc.version() + "\n");
} else {
  const input = readFileSync(0, "utf8");
  process.stdout.write(solc.compile(input, { import: findImports }));
}
