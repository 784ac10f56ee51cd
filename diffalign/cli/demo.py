"""``diffalign demo [image|video|editing|threed|planning] [--output DIR] [--algo NAME | --method NAME [--budget N]]
[--quick]``: align the shipped tiny model on a CPU, measured: by training (``--algo``) or training-free at inference
time (``--method``, see diffalign/inference; the report adds the model evaluations the method spent). ``video`` aligns
the shipped tiny text-to-video model (diffalign/demo/video.py), ``editing`` the shipped tiny instruction editor
(diffalign/demo/editing.py), ``threed`` a small radiance field by SDS against DreamFL for ``--prompt``
(diffalign/demo/threed.py), ``planning`` the shipped attribute-conditioned Hopper planner (diffalign/demo/planning.py)."""
from __future__ import annotations

import argparse
import sys

HELP = "measure, align and re-measure the shipped tiny text-to-image model against a compositional reward (CPU)"


MODALITIES = ("image", "video", "editing", "threed", "molecule", "planning")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from diffalign.demo.run import DEFAULT_ALGO, SAMPLES_PER_KIND, available_algos
    # optional: a first positional that is a dotted.key=value is an override of the image demo (run() moves it)
    p.add_argument("modality", nargs="?", default="image",
                   help=f"what to align: {' or '.join(MODALITIES)} (default image; video: the tiny text-to-video "
                        "model, its own --algo choices: diffalign/configs/demo_video_<algo>.yaml)")
    p.add_argument("--output", default="demo_output", help="folder for report.json, report.md, PNGs and samples")
    p.add_argument("--algo", default=None,
                   help=f"alignment algorithm, one of {', '.join(available_algos())} (a shipped "
                        f"diffalign/configs/demo_<algo>.yaml; default {DEFAULT_ALGO}; for video see diffalign demo video)")
    p.add_argument("--prompt", default=None, help="threed only: the shapes-world prompt of the 3D result "
                                                  "(default 'a red circle')")
    p.add_argument("--quick", action="store_true", help="a few prompts and training steps (checks the pipeline)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the alignment stage")
    p.add_argument("--samples-per-kind", type=int, default=None,
                   help="evaluation samples of each caption kind (single, count, relation), over the held-out "
                        f"captions (default {SAMPLES_PER_KIND}; video: moving, still)")
    p.add_argument("--model", default="demo", help="'demo' (the shipped model) or a folder saved by "
                                                  "scripts/train_demo_model.py")
    p.add_argument("--seed", type=int, default=0, help="training seed (evaluation seeds are fixed)")
    from diffalign.inference.methods import METHODS
    p.add_argument("--method", default=None, choices=METHODS,
                   help="instead of training, a training-free method on the base model (diffalign/inference)")
    p.add_argument("--budget", type=int, default=None, help="--method's budget: best_of_n N, rejection most samples, "
                   "noise_opt gradient steps, prompt_opt candidates, attend_excite refinement iterations")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the demo config, "
                                                "e.g. train.learning_rate=1e-4 epochs=20; the demo's own "
                                                "demo.train_kinds=[single,count,relation] (caption kinds trained on)")


def _check(args) -> str:
    """An error message for bad arguments, or '' (checked before anything is loaded)."""
    from diffalign.demo.model import resolve_demo_path
    from diffalign.demo.run import available_algos
    algos = available_algos()
    if args.algo not in algos:
        return f"unknown --algo {args.algo!r}; choose one of: {', '.join(algos)}"
    if not args.minutes > 0:
        return f"--minutes must be > 0, got {args.minutes}"
    if args.samples_per_kind < 1:
        return f"--samples-per-kind must be >= 1, got {args.samples_per_kind}"
    if args.budget is not None and args.method is None:
        return "--budget applies to --method (a training-free method); give --method too"
    if args.method is not None and args.budget is not None and args.budget < 1 and args.method != "plain":
        return f"--budget must be >= 1, got {args.budget}"
    if args.method is not None and args.overrides:
        return "config overrides apply to --algo training runs, not to --method"
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        return f"overrides must be dotted.key=value, got {bad}"
    if resolve_demo_path(args.model) is None:
        return f"--model {args.model!r} is neither 'demo' nor a folder saved by scripts/train_demo_model.py"
    return ""


def _check_modality(args, modality: str) -> str:
    from diffalign.demo.run import available_algos
    algos = [a[len(modality) + 1:] for a in available_algos(modality)]
    if args.algo not in algos:
        return f"unknown --algo {args.algo!r} for {modality}; choose one of: {', '.join(algos)}"
    if args.method is not None or args.budget is not None or args.model != "demo":
        return "--method, --budget and --model apply to the image demo only"
    if not args.minutes > 0:
        return f"--minutes must be > 0, got {args.minutes}"
    if args.samples_per_kind < 1:
        return f"--samples-per-kind must be >= 1, got {args.samples_per_kind}"
    bad = [o for o in args.overrides if "=" not in o]
    return f"overrides must be dotted.key=value, got {bad}" if bad else ""


def _overrides(items):
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in items)}
    if overrides.get("train.mixed_precision") is False:  # YAML reads a bare `no` as false
        overrides["train.mixed_precision"] = "no"
    return overrides


# the other modalities' demos: module (with DEFAULT_<NAME>_ALGO, SAMPLES_PER_KIND and run_<name>_demo), and what
# their accuracy counts
OTHER_DEMOS = {"video": ("diffalign.demo.video", "video"), "editing": ("diffalign.demo.editing", "edit"),
               "threed": ("diffalign.demo.threed", "multi-view"),
               "planning": ("diffalign.demo.planning", "request"),
               "molecule": ("diffalign.demo.molecule", "molecule")}


def run_other(args) -> int:
    """``diffalign demo video|editing|threed|molecule|planning``: the modality's demo module runs before -> align -> after."""
    import importlib
    name = args.modality
    module_name, unit = OTHER_DEMOS[name]
    module = importlib.import_module(module_name)
    args.algo = getattr(module, f"DEFAULT_{name.upper()}_ALGO") if args.algo is None else args.algo
    args.samples_per_kind = module.SAMPLES_PER_KIND if args.samples_per_kind is None else args.samples_per_kind
    # a module's own checks (threed: --algo may not be its baseline, --prompt must be a shapes caption)
    error = getattr(module, "check_algo", lambda algo: "")(args.algo) or _check_modality(args, name)
    if getattr(args, "prompt", None) is not None and name != "threed":
        error = error or "--prompt applies to the threed demo only"
    if getattr(args, "prompt", None) is not None and hasattr(module, "check_prompt"):
        error = error or module.check_prompt(args.prompt)
    if error:
        print(f"diffalign demo {name}: {error}", file=sys.stderr)
        return 2
    extra = {"prompt": args.prompt} if getattr(args, "prompt", None) is not None else {}
    report = getattr(module, f"run_{name}_demo")(args.output, args.algo, quick=args.quick, minutes=args.minutes,
                                                 samples_per_kind=args.samples_per_kind, seed=args.seed,
                                                 overrides=_overrides(args.overrides), **extra)
    if hasattr(module, "headline"):  # a demo whose headline is not an accuracy (planning: match rate and MAE)
        print(f"diffalign demo {name} ({args.algo}): {module.headline(report)}; report in {args.output}/report.md")
        return 0
    if hasattr(module, "summary"):  # a demo whose headline is not an accuracy (molecule: Vina energies)
        print(module.summary(report))
        return 0
    b, a = report["before"]["accuracy"], report["after"]["accuracy"]
    label = getattr(module, "ACCURACY_LABEL", f"held-out {unit} accuracy")
    print(f"diffalign demo {name} ({args.algo}): {label} {100 * b:.1f}% -> {100 * a:.1f}% "
          f"({100 * (a - b):+.1f} points); report in {args.output}/report.md")
    return 0


def run(args) -> int:
    if "=" in args.modality:  # no modality given: the first positional is an override
        args.overrides, args.modality = [args.modality, *args.overrides], "image"
    if args.modality not in MODALITIES:
        print(f"diffalign demo: unknown modality {args.modality!r}; choose one of: {', '.join(MODALITIES)}",
              file=sys.stderr)
        return 2
    if args.modality in OTHER_DEMOS:
        return run_other(args)
    from diffalign.demo.run import DEFAULT_ALGO, SAMPLES_PER_KIND
    args.algo = DEFAULT_ALGO if args.algo is None else args.algo
    args.samples_per_kind = SAMPLES_PER_KIND if args.samples_per_kind is None else args.samples_per_kind
    error = _check(args)
    if error:
        print(f"diffalign demo: {error}", file=sys.stderr)
        return 2
    from diffalign.demo.run import demo_precision, run_demo, train_stage
    overrides = _overrides(args.overrides)
    stage, label = train_stage(args.algo, overrides), {"algo": args.algo}
    precision = demo_precision(args.algo, overrides) if args.method is None else "auto"
    if args.method is not None:
        from diffalign.demo.inference_stage import inference_stage
        from diffalign.inference.methods import DEFAULT_BUDGETS
        budget = DEFAULT_BUDGETS[args.method] if args.budget is None else args.budget
        stage, label = inference_stage(args.method, budget), {"method": args.method, "budget": budget}
    report = run_demo(args.output, stage, label, model=args.model,
                      quick=args.quick,
                      minutes=args.minutes, samples_per_kind=args.samples_per_kind,
                      seed=args.seed, precision=precision)
    b, a = report["before"]["accuracy"], report["after"]["accuracy"]
    spent = f", {report['model_evaluations']} model evaluations" if "model_evaluations" in report else ""
    print(f"diffalign demo ({args.method or args.algo}): held-out compositional accuracy {100 * b:.1f}% -> "
          f"{100 * a:.1f}% ({100 * (a - b):+.1f} points{spent}); report in {args.output}/report.md")
    return 0
