// Runs the Khronos glTF validator (npm gltf-validator) on one .glb and prints its JSON report.
//   node validate_gltf.mjs FILE.glb
import fs from "node:fs";
import validator from "gltf-validator";

const file = process.argv[2];
const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
  uri: file, maxIssues: 50, format: "glb",
});
process.stdout.write(JSON.stringify(report));
