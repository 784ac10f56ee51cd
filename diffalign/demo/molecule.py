"""``diffalign demo molecule``: measure the shipped pocket-conditioned molecule model, align it to binding affinity,
measure again.

The model is diffalign/assets/molecule_demo_model (an EGNN trained on MOSES ligands placed in two bundled pockets by
scripts/train_molecule_demo_model.py). The pocket is 1s3v (diffalign/assets/molecule_pocket): the one with a
documented Vina run of its crystal ligand (pocket.json: -9.41 kcal/mol minimised), so the demo's energies have a
reference. Stages, as the image demo's (:func:`diffalign.demo.run.measure_alignment`):

1. before: sample ``samples`` ligands for the pocket with fixed seeds (SEED_BASE + index; the atom count and the
   noise both follow the seed) and score them: AutoDock Vina after local minimisation (TargetDiff's and AliDiff's
   "Vina Min"), QED, SA, validity, connectivity, diversity, PoseBusters;
2. align through the trainer with a shipped ``diffalign/configs/demo_molecule_<algo>.yaml``. Offline algorithms
   (E2PO, DPO) first sample ligands from the base model, rank them by the config's reward (AI feedback: minimised
   Vina) and train on same-pocket pairs; online ones (DDPO, GRPO) roll out against the reward;
3. sample and score the same seeds again; write ``report.json`` / ``report.md`` (the image demo's schema with
   ``modality: molecule``), ``grid.png`` (2-D depictions before/after with their scores), ``histograms.png``
   (Vina and QED before/after) and every valid molecule as ``samples/{before,after}/NNNN.sdf`` with
   ``samples/prompts.json`` (file -> pocket, seed, scores; invalid samples listed with why, without a file).
"""
from __future__ import annotations

import collections
import json
import math
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

DEFAULT_MOLECULE_ALGO = "e2po"
CONFIG_PREFIX = "molecule_"        # demo_molecule_<algo>.yaml among the demo configs
# evaluation ligands (one pocket, one seed each): the paired test has 48 pairs; sampling and Vina for 48 take
# about a minute on 2 shared cores
SAMPLES_PER_KIND = 48
QUICK_SAMPLES = 4
# the evaluation sampler; every shipped demo_molecule config samples with the same, so the policy is scored as trained
EVAL_SAMPLING = {"num_steps": 20, "eta": 1.0, "batch_size": 16}
QUICK_OVERRIDES = {"sampling.num_steps": 20, "sampling.batch_size": 8, "train.batch_size": 1, "epochs": 1}
# offline algorithms' AI feedback: base samples, scored by the reward, paired within consecutive groups of `group`
# when their energies differ by more than `threshold` kcal/mol (a gap under Vina's noise is no preference)
FEEDBACK = {"samples": 128, "group": 8, "threshold": 0.5}
QUICK_FEEDBACK = {"samples": 16, "group": 8, "threshold": 0.0}
# how the demo scores: minimised Vina in the pocket's box (see demo_pocket), two worker processes
VINA_EVAL = {"mode": "minimize", "workers": 2, "timeout": 60.0}
BOX_MARGIN = 4.0                   # angstrom added to pocket.json's box: generated ligands spill past the crystal's
GRID_SAMPLES = 6                   # before/after columns in grid.png

Molecules = List[Any]              # RDKit Mol or None (invalid), in seed order
Sampler = Callable[[Sequence[dict], Sequence[int]], Molecules]


def assets_dir(name: str) -> str:
    import diffalign
    return os.path.join(os.path.dirname(os.path.abspath(diffalign.__file__)), "assets", name)


def shipped_model() -> str:
    """The folder of the shipped model (config.json + model.safetensors)."""
    return assets_dir("molecule_demo_model")


def demo_pocket() -> Dict[str, Any]:
    """The demo's prompt item: the bundled 1s3v pocket with pocket.json's centre and its box widened by
    BOX_MARGIN (one box for every ligand, so Vina's workers reuse their grid maps)."""
    folder = assets_dir("molecule_pocket")
    with open(os.path.join(folder, "pocket.json"), encoding="utf-8") as f:
        meta = json.load(f)
    return {"pocket": os.path.join(folder, meta["pocket"]), "center": [float(c) for c in meta["center"]],
            "box": [float(b) + BOX_MARGIN for b in meta["box"]]}


def molecule_algos() -> List[str]:
    """Algorithms with a shipped molecule demo config (diffalign/configs/demo_molecule_<algo>.yaml)."""
    from diffalign.demo.run import available_algos
    return [a[len(CONFIG_PREFIX):] for a in available_algos("molecule")]


def molecule_eval_set(samples: int = SAMPLES_PER_KIND) -> Tuple[List[dict], List[int]]:
    """(items, seeds): the demo pocket ``samples`` times, seeds SEED_BASE + index."""
    from diffalign.demo.run import eval_seeds
    if samples < 1:
        raise ValueError(f"molecule demo: samples must be >= 1, got {samples}")
    items, seeds = eval_seeds([json.dumps(demo_pocket())] * samples)
    return [json.loads(i) for i in items], seeds


# ---- sampling ------------------------------------------------------------------------------------------
def molecule_sampler(policy, batch_size: int, desc: str = "sample") -> Sampler:
    """``(items, seeds) -> molecules`` over a DiffusionPolicy: a sample's atom count and noise follow its seed
    only (diffalign.inference.sampler.encode_items), so before and after share them."""
    from diffalign.inference.sampler import encode_items
    adapter = policy.adapter

    @torch.no_grad()
    def sample(items: Sequence[dict], seeds: Sequence[int]) -> Molecules:
        if len(items) != len(seeds):
            raise ValueError(f"molecule demo: {len(items)} items but {len(seeds)} seeds")
        adapter.denoiser.eval()
        out: Molecules = []
        for lo in range(0, len(items), batch_size):
            chunk, chunk_seeds = list(items[lo:lo + batch_size]), list(seeds[lo:lo + batch_size])
            cond = encode_items(adapter, chunk, chunk_seeds)
            gens = [torch.Generator().manual_seed(int(s)) for s in chunk_seeds]
            out.extend(adapter.decode(policy.sample(cond, generator=gens).x0, cond))
        return out
    return sample


def base_molecule_sampler(model: str, sampling: Optional[Dict[str, Any]] = None) -> Sampler:
    """The base model's sampler with the evaluation settings (EVAL_SAMPLING, or ``sampling``)."""
    from diffalign.mdp.steps import make_step_rule
    from diffalign.mdp.trajectory import DiffusionPolicy
    from diffalign.modalities.molecule.adapter import MoleculeAdapter
    s = dict(EVAL_SAMPLING, **(sampling or {}))
    adapter = MoleculeAdapter(model)
    rule = make_step_rule("ddim", adapter.scheduler, s["num_steps"], eta=s["eta"])
    return molecule_sampler(DiffusionPolicy(adapter, rule, 1.0), s["batch_size"], desc="sample base")


# ---- scoring -------------------------------------------------------------------------------------------
def demo_vina(quick: bool = False):
    """The demo's one Vina reward (VINA_EVAL; one worker for --quick): its workers keep their grid maps for the
    demo's box across the before, feedback and after evaluations. Close it when done."""
    from diffalign.rewards.docking import VinaReward
    return VinaReward(**dict(VINA_EVAL, workers=1 if quick else VINA_EVAL["workers"]))


def largest_fragment(mol):
    """The molecule's largest connected fragment with its coordinates (the whole molecule when connected): what
    TargetDiff docks of a disconnected sample; meeko prepares single fragments only. None stays None."""
    if mol is None:
        return None
    from rdkit import Chem
    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return mol if len(frags) == 1 else max(frags, key=lambda m: m.GetNumAtoms())


def vina_energies(vina, mols: Molecules, items: Sequence[dict]) -> Tuple[List[Optional[float]], Dict[str, int]]:
    """Energies (kcal/mol, None where the sample is invalid or Vina failed) of each sample's largest fragment
    by ``vina`` (a VinaReward) and this call's counts by reason (``connectivity`` reports the disconnected share)."""
    before = collections.Counter(vina.stats)
    energies = vina.energies([largest_fragment(m) for m in mols], items)
    return energies, dict(vina.stats - before)


def stage_metrics(mols: Molecules, items: Sequence[dict], energies: Sequence[Optional[float]],
                  base_median: float, posebusters: bool = True) -> Dict[str, Any]:
    """The issue's metrics of one evaluation. Vina statistics are over the samples Vina scored (``vina_ok``
    says what share that is); ``better_than_base_median`` counts every sample (a failed one is not better)."""
    from diffalign.rewards.molecule_properties import molecule_metrics
    from diffalign.rewards.posebusters_checks import posebusters_pass_rate
    ok = [e for e in energies if e is not None]
    out = dict(molecule_metrics(mols))
    out.update({"vina_min_mean": statistics.fmean(ok) if ok else None,
                "vina_min_median": statistics.median(ok) if ok else None,
                "vina_ok": len(ok) / len(energies),
                "better_than_base_median": sum(e is not None and e < base_median for e in energies) / len(energies)})
    if posebusters:
        out["posebusters_pass_rate"] = posebusters_pass_rate(mols, items)["pass_rate"]
    return out


def per_sample_qed(mols: Molecules) -> List[Optional[float]]:
    from diffalign.rewards.molecule_properties import qed, sanitized
    clean = [sanitized(m) if m is not None else None for m in mols]
    return [None if m is None else float(qed([m])[0]) for m in clean]


def paired_energy_change(before: Sequence[Optional[float]], after: Sequence[Optional[float]]) -> Dict[str, Any]:
    """The headline's significance over the seeds Vina scored both times: the mean paired change (after - before,
    kcal/mol; negative binds better) with its 95% normal interval, and the exact two-sided sign test (McNemar's
    exact test is that binomial test on the improved / worsened counts)."""
    from diffalign.eval.paired import Z95, mcnemar_exact_p
    d = [a - b for b, a in zip(before, after) if a is not None and b is not None]
    n = len(d)
    if n == 0:
        return {"n": 0, "delta": None, "ci95": None, "improved": 0, "worsened": 0, "sign_test_p": None}
    mean = statistics.fmean(d)
    half = Z95 * statistics.stdev(d) / math.sqrt(n) if n > 1 else None  # one pair has no spread
    improved, worsened = sum(x < 0 for x in d), sum(x > 0 for x in d)
    return {"n": n, "delta": mean, "ci95": None if half is None else [mean - half, mean + half], "improved": improved, "worsened": worsened,
            "sign_test_p": mcnemar_exact_p(improved, worsened)}


def evaluate_molecules(sampler: Sampler, items: Sequence[dict], seeds: Sequence[int], vina) -> Dict[str, Any]:
    """Sample and score: molecules, energies, Vina's failure counts and seconds of each part."""
    t = time.perf_counter()
    mols = sampler(items, seeds)
    t_sample = time.perf_counter() - t
    energies, stats = vina_energies(vina, mols, items)
    return {"mols": mols, "energies": energies, "vina_stats": stats,
            "seconds": {"sample": t_sample, "vina": time.perf_counter() - t - t_sample}}


# ---- AI feedback and the training stage ----------------------------------------------------------------
def group_pairs(energies: Sequence[Optional[float]], group: int, threshold: float) -> List[Tuple[int, int]]:
    """(chosen, rejected) index pairs within consecutive groups of ``group`` samples: every pair of scored
    samples whose energies differ by more than ``threshold``, the lower energy chosen."""
    pairs = []
    for lo in range(0, len(energies), group):
        idx = [i for i in range(lo, min(lo + group, len(energies))) if energies[i] is not None]
        for k, a in enumerate(idx):
            for b in idx[k + 1:]:
                if abs(energies[a] - energies[b]) > threshold:
                    pairs.append((a, b) if energies[a] < energies[b] else (b, a))
    return pairs


def save_sdf(mol, folder: str, name: str) -> str:
    """write_feedback's ``save``: the molecule as folder/name.sdf; returns the file name."""
    from diffalign.modalities.molecule.sdf import write_sdf
    os.makedirs(folder, exist_ok=True)
    write_sdf(mol, os.path.join(folder, f"{name}.sdf"))
    return f"{name}.sdf"


def molecule_feedback(cfg, model: str, out_dir: str, quick: bool, vina) -> Dict[str, Any]:
    """AI feedback for offline algorithms: base samples for the config's pocket items (seeds from cfg.seed),
    minimised Vina energies by ``vina`` (the demo's, the config's reward settings), same-pocket pairs (:func:`group_pairs`) written as a
    molecule_jsonl file with the rewards (-energy) E2PO's soft labels use. Returns its path and counts."""
    from diffalign.inference.feedback import write_feedback
    from diffalign.seeding import derive_seed
    plan = QUICK_FEEDBACK if quick else FEEDBACK
    items = [cfg.prompts.list[i % len(cfg.prompts.list)] for i in range(plan["samples"])]
    seeds = [derive_seed(cfg.seed, "molecule_feedback", i) for i in range(len(items))]
    s = cfg.sampling
    mols = base_molecule_sampler(model, {"num_steps": s.num_steps, "eta": s.eta, "batch_size": s.batch_size})(
        items, seeds)
    energies, stats = vina_energies(vina, mols, items)
    pairs = group_pairs(energies, plan["group"], plan["threshold"])
    if not pairs:
        raise ValueError(f"molecule demo feedback: no pair among {len(items)} samples (Vina {stats}) differs by more "
                         f"than {plan['threshold']} kcal/mol")
    rewards = torch.tensor([0.0 if e is None else -e for e in energies], dtype=torch.float64)
    path = write_feedback(out_dir, mols, items, rewards, pairs, save=save_sdf)
    return {"path": path, "samples": len(items), "pairs": len(pairs), "vina_stats": stats, **plan}


def molecule_train_stage(algo: str, vina, overrides: Optional[Dict[str, Any]] = None):
    """The after stage: ``demo_molecule_<algo>.yaml`` through the trainer (offline ones on :func:`molecule_feedback`
    scored by ``vina``) for ``ctx.minutes`` in all, feedback included."""
    from diffalign.demo.run import AfterResult, _is_offline, demo_config_path, load_demo_config
    name = CONFIG_PREFIX + algo
    demo_config_path(name)  # an unknown name fails before anything runs

    def stage(ctx) -> AfterResult:
        extra = dict(QUICK_OVERRIDES) if ctx.quick else {}
        extra.update(overrides or {})
        extra["seed"] = ctx.seed
        out_dir = os.path.join(ctx.output, "train")
        cfg = load_demo_config(name, out_dir, ctx.train_prompts, ctx.model, extra)
        info: Dict[str, Any] = {"config": demo_config_path(name), "overrides": extra}
        start = time.perf_counter()
        budget = ctx.minutes
        if _is_offline(cfg):
            info["feedback"] = molecule_feedback(cfg, ctx.model, os.path.join(ctx.output, "feedback"), ctx.quick,
                                                  vina)
            info["feedback_seconds"] = time.perf_counter() - start
            budget = max(ctx.minutes - info["feedback_seconds"] / 60, 0.05)
            cfg = load_demo_config(name, out_dir, ctx.train_prompts, ctx.model, extra,
                                   data_path=info["feedback"]["path"])
        cfg.train.max_minutes = budget  # the trainer stops between batches once spent
        from diffalign.trainer import make_trainer
        trainer = make_trainer(cfg)
        offset = time.perf_counter() - start
        history = trainer.train()
        curve = []
        for m in history:
            row = {"seconds": offset + m["elapsed_s"],
                   **{k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "elapsed_s"}}
            reward = m.get("reward_mean", m.get("eval_reward"))
            if reward is not None:
                row["reward"] = float(reward)
            curve.append(row)
        info.update(epochs=len(curve), train_seconds=time.perf_counter() - start,
                    stopped_by_budget=bool(history and history[-1].get("stopped_by_budget")),
                    metrics=os.path.join(out_dir, "metrics.jsonl"), final=os.path.join(out_dir, "final"))
        return AfterResult(molecule_sampler(trainer.policy, cfg.sampling.batch_size, "sample aligned"), curve, info)
    return stage


# ---- outputs -------------------------------------------------------------------------------------------
def save_molecule_samples(output: str, items: Sequence[dict], seeds: Sequence[int], mols: Dict[str, Molecules],
                          energies: Dict[str, Sequence[Optional[float]]]) -> Dict[str, dict]:
    """samples/{before,after}/NNNN.sdf for every valid molecule and samples/prompts.json (file -> pocket, seed,
    Vina, QED; an invalid sample under its would-be name with ``valid: false``)."""
    from diffalign.modalities.molecule.sdf import write_sdf
    index: Dict[str, dict] = {}
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(assets_dir("x"))))  # the folder holding diffalign/
    for stage, stage_mols in mols.items():
        folder = os.path.join(output, "samples", stage)
        os.makedirs(folder, exist_ok=True)
        for i, (mol, item, seed, e, q) in enumerate(zip(stage_mols, items, seeds, energies[stage],
                                                        per_sample_qed(stage_mols))):
            name = f"{stage}/{i:04d}.sdf"
            if mol is not None:
                write_sdf(mol, os.path.join(output, "samples", name))
            index[name] = {"pocket": os.path.relpath(item["pocket"], package_parent), "seed": int(seed),
                           "valid": mol is not None, "vina_min": e, "qed": q}
    with open(os.path.join(output, "samples", "prompts.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def save_grid(path: str, mols: Dict[str, Molecules], energies: Dict[str, Sequence[Optional[float]]],
              n: int = GRID_SAMPLES) -> None:
    """RDKit 2-D depictions: the first ``n`` seeds before (top row) and after (bottom row) with Vina and QED."""
    from rdkit import Chem
    from rdkit.Chem import Draw
    cells, legends = [], []
    for stage in ("before", "after"):
        qeds = per_sample_qed(mols[stage][:n])
        for i in range(min(n, len(mols[stage]))):
            m, e = mols[stage][i], energies[stage][i]
            cells.append(Chem.Mol() if m is None else Chem.RemoveHs(Chem.Mol(m), sanitize=False))
            if m is None:
                legends.append(f"{stage} #{i}: invalid")
            else:
                vina = "vina failed" if e is None else f"vina {e:.2f}"
                legends.append(f"{stage} #{i}: {vina}, QED {qeds[i]:.2f}" if qeds[i] is not None else f"{stage} #{i}: {vina}")
    for m in cells:
        m.RemoveAllConformers()  # depict in 2-D, not the 3-D pose projected
    Draw.MolsToGridImage(cells, molsPerRow=max(1, len(cells) // 2), subImgSize=(260, 220), legends=legends).save(path)


def save_histograms(path: str, energies: Dict[str, Sequence[Optional[float]]], qeds: Dict[str, Sequence[Optional[float]]]
                    ) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, values, label in ((axes[0], energies, "minimised Vina (kcal/mol, lower binds better)"),
                              (axes[1], qeds, "QED")):
        for stage, colour in (("before", "tab:gray"), ("after", "tab:blue")):
            v = [x for x in values[stage] if x is not None]
            if v:
                ax.hist(v, bins=15, alpha=0.6, color=colour, label=f"{stage} (n={len(v)})")
        ax.set_xlabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def molecule_markdown(report: dict) -> str:
    b, a, p = report["before"], report["after"], report["paired"]["vina_min"]
    ci = "n/a" if p["ci95"] is None else f"[{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]"
    hw = report["hardware"]
    lines = [f"# diffalign demo molecule: algo {report['algo']}", "",
             f"Mean minimised Vina {_fmt(b['vina_min_mean'], 2)} -> {_fmt(a['vina_min_mean'], 2)} kcal/mol (lower binds "
             f"better) over {report['eval']['samples']} ligands for pocket {report['eval']['pocket']}, same seeds "
             f"before and after; alignment {report['seconds']['after_stage']:.0f} s.", "",
             f"Paired over the {p['n']} seeds Vina scored both times: change {_fmt(p['delta'], 2)} kcal/mol, 95% CI {ci}; "
             f"{p['improved']} improved, {p['worsened']} worsened, sign test p = {_fmt(p['sign_test_p'], 3)}.", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    for k in b:
        if k in ("n", "n_invalid"):
            continue
        change = "" if b[k] is None or a.get(k) is None else f"{a[k] - b[k]:+.3f}"
        lines.append(f"| {k} | {_fmt(b[k])} | {_fmt(a.get(k))} | {change} |")
    lines += ["", "![before/after](grid.png)", "", "![histograms](histograms.png)", "",
              "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()), "",
              f"Machine: {hw.get('model')}, {report['torch_threads']} torch threads, float32.", "",
              "Every valid molecule is an SDF in `samples/before` and `samples/after`; `samples/prompts.json` maps each "
              "file to its pocket, seed and scores (invalid samples are listed without a file)."]
    if report.get("quick"):
        lines += ["", "**--quick run**: a few ligands and training steps; the numbers only check the pipeline."]
    return "\n".join(lines) + "\n"


def summary(report: dict) -> str:
    """The CLI's one line."""
    b, a = report["before"]["vina_min_mean"], report["after"]["vina_min_mean"]
    return (f"diffalign demo molecule ({report['algo']}): mean minimised Vina {_fmt(b, 2)} -> {_fmt(a, 2)} kcal/mol, "
            f"validity {_fmt(report['before']['validity'], 2)} -> {_fmt(report['after']['validity'], 2)}; "
            f"report in {report['output']}/report.md")


def run_molecule_demo(output: str, algo: str = DEFAULT_MOLECULE_ALGO, quick: bool = False, minutes: float = 10.0,
                      samples_per_kind: int = SAMPLES_PER_KIND, seed: int = 0, overrides: Optional[Dict[str, Any]] = None,
                      model: Optional[str] = None) -> dict:
    """Before -> align with ``demo_molecule_<algo>.yaml`` -> after -> report in ``output``; returns the report.
    ``samples_per_kind``: evaluation ligands (one kind: the demo pocket)."""
    from diffalign.demo.run import DemoContext, measure_alignment
    from diffalign.trainer.precision import cpu_info
    if algo not in molecule_algos():
        raise ValueError(f"unknown molecule demo algorithm {algo!r}; choose one of {molecule_algos()}")
    t_total = time.perf_counter()
    model = model or shipped_model()
    samples, sampling = samples_per_kind, None
    if quick:
        samples, sampling = QUICK_SAMPLES, {"num_steps": QUICK_OVERRIDES["sampling.num_steps"], "batch_size": QUICK_SAMPLES}
    os.makedirs(output, exist_ok=True)
    items, seeds = molecule_eval_set(samples)
    ctx = DemoContext(model=model, reward=None, train_prompts=[demo_pocket()], output=output, minutes=minutes,
                      quick=quick, seed=seed)
    vina = demo_vina(quick)
    try:
        before, result, after, seconds = measure_alignment(
            lambda sampler: evaluate_molecules(sampler, items, seeds, vina), base_molecule_sampler(model, sampling),
            molecule_train_stage(algo, vina, overrides), ctx, "no")
    finally:
        vina.close()
    base_ok = [e for e in before["energies"] if e is not None]
    base_median = statistics.median(base_ok) if base_ok else float("-inf")
    t = time.perf_counter()
    metrics = {s: stage_metrics(r["mols"], items, r["energies"], base_median, posebusters=True)
               for s, r in (("before", before), ("after", after))}
    seconds["metrics"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_total
    b, a = metrics["before"], metrics["after"]
    report = {
        "modality": "molecule", "algo": algo, "model": model, "output": output,
        "before": b, "after": a,
        "delta": {k: a[k] - b[k] for k in b if k not in ("n", "n_invalid") and b[k] is not None and a.get(k) is not None},
        "paired": {"vina_min": paired_energy_change(before["energies"], after["energies"])},
        "vina_failures": {"before": before["vina_stats"], "after": after["vina_stats"]},
        "seconds": dict(seconds, sample_before=before["seconds"]["sample"], vina_before=before["seconds"]["vina"],
                        sample_after=after["seconds"]["sample"], vina_after=after["seconds"]["vina"]),
        "curve": result.curve, "info": result.info,
        "eval": {"pocket": "1s3v", "samples": len(items), "seeds": [seeds[0], seeds[-1]],
                 "sampling": dict(EVAL_SAMPLING, **(sampling or {})), "vina": VINA_EVAL, "item": items[0]},
        "quick": quick, "torch_threads": torch.get_num_threads(), "hardware": cpu_info(),
        "load_average": list(os.getloadavg()),
        "precision": {"requested": "no", "chosen": "float32", "reason": "the demo configs train in float32"},
    }
    mols = {"before": before["mols"], "after": after["mols"]}
    energies = {"before": before["energies"], "after": after["energies"]}
    save_molecule_samples(output, items, seeds, mols, energies)
    save_grid(os.path.join(output, "grid.png"), mols, energies)
    save_histograms(os.path.join(output, "histograms.png"), energies,
                    {s: per_sample_qed(m) for s, m in mols.items()})
    report["files"] = {"grid": "grid.png", "histograms": "histograms.png", "samples": "samples",
                       "prompts": "samples/prompts.json", "markdown": "report.md"}
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output, "report.md"), "w") as f:
        f.write(molecule_markdown(report))
    return report
