"""``diffalign export-3d CONFIG [dotted.key=value ...] [--run DIR] [--out DIR]``: a threed run's turntable and mesh.

Reads the radiance field a text-to-3D run trained (``final/generator.safetensors``, else the latest checkpoint's
generator), renders ``--views`` views evenly around it (turntable.png grid and turntable.gif) and writes the
marching-cubes mesh of its density (mesh.ply and mesh.obj) into ``--out`` (default RUN/export).
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the run's YAML config (a path or a shipped config name such as threed_sds_tiny)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides the run was trained with")
    p.add_argument("--run", help="the run folder (default: the config's output_dir)")
    p.add_argument("--out", help="where to write (default: RUN/export)")
    p.add_argument("--views", type=int, default=16, help="turntable views evenly around the object (default 16)")
    p.add_argument("--elevation", type=float, default=15.0, help="turntable elevation in degrees (default 15)")
    p.add_argument("--mesh-resolution", type=int, default=64, help="density grid side for marching cubes")
    p.add_argument("--level", type=float, default=2.0, help="density iso-level of the mesh (default 2)")


def read_generator_state(run_dir: str):
    """The trained generator's weights of a run: final/generator.safetensors, else the latest checkpoint's."""
    import torch
    from safetensors.torch import load_file

    from diffalign.trainer.checkpoint import latest_checkpoint
    final = os.path.join(run_dir, "final", "generator.safetensors")
    if os.path.isfile(final):
        return load_file(final)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise ValueError(f"{run_dir!r} has neither final/generator.safetensors nor a checkpoint: train it first")
    modules = torch.load(os.path.join(latest, "state.pt"), map_location="cpu", weights_only=False).get("modules") or {}
    if "generator" not in modules:
        raise ValueError(f"checkpoint {latest!r} holds no generator (modules {sorted(modules)}): not a threed run")
    return modules["generator"]


def run(args) -> int:
    from diffalign.config import ConfigError, load_config, modality_options, resolve_config_path
    try:
        cfg = load_config(resolve_config_path(args.config), args.overrides)
        if cfg.modality.name != "threed":
            raise ConfigError(f"config key 'modality.name' must be 'threed' to export 3-D, got {cfg.modality.name!r}")
        options = modality_options(cfg)
    except ConfigError as exc:
        print(f"diffalign export-3d: bad config: {exc}", file=sys.stderr)
        return 2
    if args.views < 1 or args.mesh_resolution < 8:
        print("diffalign export-3d: --views must be >= 1 and --mesh-resolution >= 8", file=sys.stderr)
        return 2
    from diffalign.modalities.threed.export import export_mesh, load_radiance_field, render_turntable, save_turntable
    run_dir = args.run or cfg.output_dir
    out = args.out or os.path.join(run_dir, "export")
    try:
        field = load_radiance_field(options, read_generator_state(run_dir))
        distance = sum(options.distance) / 2
        fov = sum(options.fov) / 2
        # the background the field was trained against (a random one: white)
        background = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0), "random": (1.0, 1.0, 1.0)}.get(
            options.background, options.background) if isinstance(options.background, str) else options.background
        views = render_turntable(field, args.views, args.elevation, distance, fov, background)
        paths = save_turntable(views["images"], out)
        for suffix in ("ply", "obj"):
            paths[suffix] = os.path.join(out, f"mesh.{suffix}")
            mesh = export_mesh(field, paths[suffix], args.mesh_resolution, args.level)
    except ValueError as exc:
        print(f"diffalign export-3d: {exc}", file=sys.stderr)
        return 2
    print(f"turntable: {paths['png']}, {paths['gif']}; mesh ({len(mesh.vertices)} vertices, {len(mesh.faces)} "
          f"faces): {paths['ply']}, {paths['obj']}")
    return 0


HELP = "export a text-to-3D run: turntable renders (PNG grid, GIF) and a marching-cubes mesh (.ply, .obj)"
