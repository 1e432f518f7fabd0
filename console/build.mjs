// Builds the console into ../daemon/console/static (where the daemon serves it from):
// assets/main-<hash>.js and .css (content-hashed, so they can be cached for good) and
// index.html pointing at them. No CDN: Leaflet and everything else is in the bundle.
import { build } from "esbuild";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, "../daemon/console/static");
const assets = path.join(out, "assets");

await rm(out, { recursive: true, force: true });
await mkdir(assets, { recursive: true });

const result = await build({
  entryPoints: [path.join(here, "src/main.ts")],
  bundle: true,
  minify: true,
  sourcemap: "linked",
  target: ["chrome109", "firefox115", "safari15"],
  outdir: assets,
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  loader: { ".png": "file", ".svg": "file" },
  legalComments: "linked",
  metafile: true,
  logLevel: "warning",
});

// The entry's JS output names its CSS bundle (Leaflet's stylesheet and ours).
const entry = Object.entries(result.metafile.outputs).find(
  ([file, meta]) => meta.entryPoint !== undefined && file.endsWith(".js"),
);
if (entry === undefined || entry[1].cssBundle === undefined) {
  throw new Error("the build produced no JS entry with a CSS bundle");
}
const js = path.basename(entry[0]);
const css = path.basename(entry[1].cssBundle);

const template = await readFile(path.join(here, "src/index.html"), "utf8");
await writeFile(
  path.join(out, "index.html"),
  template.replace("{{js}}", js).replace("{{css}}", css),
);
console.log(`console built: ${path.relative(process.cwd(), out)} (${js}, ${css})`);
