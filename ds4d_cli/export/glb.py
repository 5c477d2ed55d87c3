"""Animated mesh files: one glTF binary with a morph target per frame, or one OBJ per frame.

glTF (``.glb``): one mesh, one node, vertex colours (``COLOR_0``), an unlit material (the colours
are the splats' own, lighting included, so a lit material would shade them twice), and one morph
target per clip frame holding that frame's vertex displacement from the reference frame. The
animation drives the node's morph weights, one-hot at each frame's time (linear in between), so
frame k plays exactly as ``base + target_k``. Blender imports the targets as shape keys with their
animation; three.js's GLTFLoader plays them with an AnimationMixer.

Axes: glTF is Y up with the front facing +Z; ds4d's world is Z up with the input camera on -Y,
so positions become ``(x, z, -y)`` (the same rotation as the SPZ export).

Written with pygltflib (the glTF 2.0 schema as dataclasses, and the GLB chunk layout), so the
file's JSON and binary structure are not hand-rolled here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ds4d_cli.export.mesh import AnimatedMesh
from ds4d_cli.fsutil import atomic_path

#: ds4d world (Z up, front -Y) -> glTF (Y up, front +Z).
GLTF_FROM_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=np.float32)


def target_name(frame_index: int) -> str:
    return f"frame_{frame_index:04d}"


def write_glb(path: Path, mesh: AnimatedMesh, frame_indices: list[int]) -> dict[str, int]:
    """Write ``mesh`` with one morph target per frame as a binary glTF, atomically."""
    import pygltflib as g

    R = GLTF_FROM_WORLD
    positions = (mesh.vertices @ R.T).astype(np.float32)
    normals = (mesh.normals @ R.T).astype(np.float32)
    colors = np.clip(mesh.colors, 0.0, 1.0).astype(np.float32)
    indices = mesh.faces.astype(np.uint32).reshape(-1)
    offsets = (mesh.offsets @ R.T).astype(np.float32)  # [T,V,3]
    count = len(frame_indices)
    times = np.asarray(mesh.times, dtype=np.float32)
    weights = np.eye(count, dtype=np.float32).reshape(-1)  # key k: target k at weight 1

    blob = bytearray()
    views: list[g.BufferView] = []
    accessors: list[g.Accessor] = []

    def add(array: np.ndarray, kind: str, component: int, target: int | None, with_bounds: bool) -> int:
        while len(blob) % 4:
            blob.append(0)
        data = np.ascontiguousarray(array).tobytes()
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob.extend(data)
        rows = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
        acc = g.Accessor(bufferView=len(views) - 1, componentType=component, count=len(rows), type=kind)
        if with_bounds:
            acc.min = [float(v) for v in rows.min(axis=0)]
            acc.max = [float(v) for v in rows.max(axis=0)]
        accessors.append(acc)
        return len(accessors) - 1

    FLOAT, UINT = g.FLOAT, g.UNSIGNED_INT
    pos = add(positions, g.VEC3, FLOAT, g.ARRAY_BUFFER, True)
    nrm = add(normals, g.VEC3, FLOAT, g.ARRAY_BUFFER, False)
    col = add(colors, g.VEC3, FLOAT, g.ARRAY_BUFFER, False)
    idx = add(indices, g.SCALAR, UINT, g.ELEMENT_ARRAY_BUFFER, False)
    targets = [{"POSITION": add(offsets[t], g.VEC3, FLOAT, g.ARRAY_BUFFER, True)} for t in range(count)]
    t_in = add(times, g.SCALAR, FLOAT, None, True)
    w_out = add(weights, g.SCALAR, FLOAT, None, False)

    names = [target_name(i) for i in frame_indices]
    primitive = g.Primitive(attributes=g.Attributes(POSITION=pos, NORMAL=nrm, COLOR_0=col), indices=idx,
                            material=0, mode=g.TRIANGLES, targets=targets)
    gltf = g.GLTF2(
        asset=g.Asset(version="2.0", generator="ds4d export --format glb"),
        scene=0,
        scenes=[g.Scene(nodes=[0])],
        nodes=[g.Node(mesh=0, name="ds4d_object")],
        meshes=[g.Mesh(primitives=[primitive], weights=[0.0] * count, name="ds4d_object",
                       extras={"targetNames": names})],
        materials=[g.Material(
            name="vertex_colour", doubleSided=True,
            pbrMetallicRoughness=g.PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                                        roughnessFactor=1.0),
            extensions={"KHR_materials_unlit": {}})],
        extensionsUsed=["KHR_materials_unlit"],
        animations=[g.Animation(
            name="clip",
            samplers=[g.AnimationSampler(input=t_in, output=w_out, interpolation="LINEAR")],
            channels=[g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="weights"))])],
        accessors=accessors,
        bufferViews=views,
        buffers=[g.Buffer(byteLength=len(blob))],
    )
    gltf.set_binary_blob(bytes(blob))
    with atomic_path(path) as tmp:
        gltf.save_binary(str(tmp))
        Path(tmp).chmod(0o644)  # a file to share: readable like any other download
    return {"vertices": int(len(positions)), "faces": int(len(mesh.faces)), "morph_targets": count,
            "bytes": int(Path(path).stat().st_size)}


def write_obj_sequence(out_dir: Path, mesh: AnimatedMesh, frame_indices: list[int]) -> list[str]:
    """One Wavefront OBJ per frame (``frame_0000.obj`` ...), equal faces, vertex colours after xyz."""
    R = GLTF_FROM_WORLD
    faces = mesh.faces.astype(np.int64) + 1
    normals = mesh.normals @ R.T
    face_lines = "\n".join(f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in faces)
    normal_lines = "\n".join(f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in normals)
    names = []
    for t, i in enumerate(frame_indices):
        verts = mesh.frame_vertices(t) @ R.T
        vert_lines = "\n".join(f"v {x:.6f} {y:.6f} {z:.6f} {r:.4f} {g_:.4f} {b:.4f}"
                               for (x, y, z), (r, g_, b) in zip(verts, mesh.colors))
        name = f"{target_name(i)}.obj"
        text = (f"# ds4d export --format obj: clip frame {i}, t = {mesh.times[t]:.4f} s; Y up\n"
                f"o ds4d_object\n{vert_lines}\n{normal_lines}\n{face_lines}\n")
        with atomic_path(out_dir / name) as tmp:
            Path(tmp).write_text(text)
            Path(tmp).chmod(0o644)
        names.append(name)
    return names
