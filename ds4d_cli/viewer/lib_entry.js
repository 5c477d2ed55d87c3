// Entry of the viewer's one vendored script: three.js, its OrbitControls and Spark, bundled by
// esbuild at `make setup` into web/vendor/ds4d-lib.js as a classic (non-module) script, so the
// page also runs from file:// (browsers refuse ES modules there). Our own code is web/viewer.js.
import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

window.DS4DLib = { THREE, OrbitControls, SparkRenderer, SplatMesh };
