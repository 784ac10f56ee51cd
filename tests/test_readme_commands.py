"""README.md's commands run, from a clean checkout's layout.

Every command in README's ```bash blocks runs in a copy of the repository's tracked files (``git ls-files``;
``README_TEST_UNTRACKED=1`` adds untracked files that git does not ignore) with the environment this test runs in (``.venv`` there is a link to this interpreter's environment; nothing
is reinstalled). Code blocks whose first line is ``# <file name>`` (``# my_run.yaml``, ``# my_rewards.py``) are
files the README tells the reader to save: they are written into the copy first. A command runs as written
unless ``PLANS`` gives a smaller setting (and says why), or ``SKIPPED`` says why a test cannot run it (GPUs,
hub weights, several processes); the ``--help`` of every command's subcommand runs either way. The README's
Python blocks run as scripts, its YAML blocks must load as configs, its table of algorithms must match the
code, and every ``diffalign`` command in README.md and docs/*.md must parse with the real command line.

A README command that fails fails this test. Everything runs in the CI command (`-m "not slow"`), the demo as
``--quick``: about two minutes in all on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README] + sorted((ROOT / "docs").glob("*.md"))
VENV = Path(sys.executable).parent.parent  # the environment running this test (not resolved: a venv's python is a link)
FILE_HEADER = re.compile(r"#\s*([\w./-]+\.(?:py|ya?ml|json|txt))\b")


# ---- reading the README ------------------------------------------------------------------------------------
def code_blocks(text: str, lang: str) -> List[str]:
    return [m.group(1) for m in re.finditer(rf"^```{lang}[ \t]*\n(.*?)^```", text, re.M | re.S)]


def strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # outside quotes, at the start or after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(block: str) -> List[str]:
    """One string per command: continuation lines joined, comments dropped, whitespace normalised."""
    out, pending = [], ""
    for raw in block.splitlines():
        line = strip_comment(raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append(" ".join(line.split()))
    return out


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def readme_commands() -> List[str]:
    return [c for block in code_blocks(readme_text(), "bash") for c in shell_commands(block)]


def readme_files(text: str) -> Dict[str, str]:
    """Blocks that start with '# <file name>': files the reader is told to save."""
    files = {}
    for block in code_blocks(text, r"\w+"):
        first = block.splitlines()[0] if block.strip() else ""
        m = FILE_HEADER.match(first)
        if m:
            files[m.group(1)] = block
    return files


def runnable_python_blocks(text: str) -> List[str]:
    return [b for b in code_blocks(text, "python") if not FILE_HEADER.match(b.splitlines()[0] if b.strip() else "")]


# ---- how each README command is checked ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    run: Tuple[str, ...]  # shell commands run instead, in order, in the checkout copy
    why: str              # why the test runs these rather than the command as written
    slow: bool = False


SMALL = "epochs=1 sampling.batch_size=8 train.batch_size=8 train.gradient_accumulation_steps=1"

PLANS: Dict[str, Plan] = {
    "bash scripts/install.sh && .venv/bin/diffalign demo --output demo_out": Plan(
        ("bash -n scripts/install.sh", ".venv/bin/diffalign demo --quick --output demo_out"),
        "the install made the environment this test runs in (a test must not reinstall): the script is only "
        "syntax-checked; the 10-minute demo runs as --quick, the same pipeline on a few prompts and steps"),
    "diffalign demo video --output video_out": Plan(
        (".venv/bin/diffalign demo video --quick --output video_out",),
        "the video demo (10 minutes of alignment and two evaluations) runs as --quick, the same pipeline on a "
        "few captions and steps"),
    "diffalign demo editing --output editing_out": Plan(
        (".venv/bin/diffalign demo editing --quick --output editing_out",),
        "the editing demo (10 minutes of alignment and two evaluations) runs as --quick, the same pipeline on a "
        "few edits and steps"),
    "diffalign demo threed --output threed_out": Plan(
        (".venv/bin/diffalign demo threed --quick --output threed_out",),
        "the text-to-3D demo (two field optimisations and their 16-view evaluations) runs as --quick, the same "
        "pipeline on a few steps"),
    "diffalign demo planning --output planning_out": Plan(
        (".venv/bin/diffalign demo planning --quick --output planning_out",),
        "the planning demo runs as --quick; slow here because tests/demo/test_planning_demo.py runs the same "
        "--quick pipeline in CI (the CI budget)", slow=True),
    "diffalign demo molecule --output molecule_out": Plan(
        (".venv/bin/diffalign demo molecule --quick --output molecule_out",),
        "the molecule demo (10 minutes of alignment, Vina on both evaluations) runs as --quick, the same pipeline "
        "on a few ligands and steps"),
    '.venv/bin/python -m pytest -q -m "not slow" tests': Plan(
        ('.venv/bin/python -m pytest -q -m "not slow" tests --collect-only -p no:cacheprovider',),
        "this test is part of that run; collecting the suite from the clean layout checks that every test "
        "module imports there (the failure a shadowed package once caused)"),
    ".venv/bin/diffalign train my_run.yaml": Plan(
        (f".venv/bin/diffalign train my_run.yaml {SMALL}",), "one epoch of 8 samples instead of 30 of 32"),
    ".venv/bin/diffalign train my_run.yaml resume_from=latest": Plan(
        (f".venv/bin/diffalign train my_run.yaml resume_from=latest {SMALL.replace('epochs=1', 'epochs=2')}",),
        "resumes the small run above for one more epoch (or trains two small epochs when run alone)"),
    "PYTHONPATH=. .venv/bin/diffalign train draft_tiny reward.name=my_rewards:redness 'reward.kwargs={weight: 2.0}'":
        Plan(("PYTHONPATH=. .venv/bin/diffalign train draft_tiny reward.name=my_rewards:redness "
              "'reward.kwargs={weight: 2.0}' epochs=1 output_dir=runs/readme_draft",),
             "one epoch instead of 30"),
}

SKIPPED: Dict[str, str] = {
    ".venv/bin/accelerate launch --multi_gpu --num_processes 2 .venv/bin/diffalign train ddpo_tiny":
        "two training processes for 30 epochs; tests/trainer/test_distributed.py runs this launch (one gloo "
        "group of two CPU processes) on a small config",
    ".venv/bin/accelerate launch --num_processes 8 .venv/bin/diffalign train ddpo_sd15":
        "needs 8 GPUs and the Stable Diffusion 1.5 weights from the hub",
}


def help_commands(command: str) -> List[str]:
    """The --help of the command's subcommand(s): what still runs for a command the test cannot run."""
    out = []
    m = re.search(r"(?:^|\s)\S*diffalign\s+([\w-]+)", command)  # subcommands may hold a hyphen (export-3d)
    if m:
        out.append(f".venv/bin/diffalign {m.group(1)} --help")
    m = re.search(r"(?:^|\s)\S*accelerate\s+(\w+)", command)
    if m:
        out.append(f".venv/bin/accelerate {m.group(1)} --help")
    m = re.search(r"(?:^|\s)\S*python3?\s+(benchmarks/\S+\.py|scripts/\S+\.py)", command)
    if m:
        out.append(f".venv/bin/python {m.group(1)} --help")
    return out


def _id(command: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", command.replace(".venv/bin/", ""))[:70]


def _params(slow_of):
    params = []
    for c in readme_commands():
        slow = slow_of(c)
        params.append(pytest.param(c, id=_id(c), marks=[pytest.mark.slow] if slow else []))
    return params


# ---- the checkout copy -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    if not (VENV / "bin" / "diffalign").exists():
        pytest.skip(f"diffalign is not installed in {VENV} (run scripts/install.sh)")
    # tracked files only, as a clone has them; README_TEST_UNTRACKED=1 adds the untracked, not ignored ones
    # (the layout the next commit will have, for a check before committing)
    extra = ["--others", "--exclude-standard"] if os.environ.get("README_TEST_UNTRACKED") == "1" else []
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", *extra], cwd=ROOT, capture_output=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout, so there is no list of tracked files to copy ({exc})")
    dest = tmp_path_factory.mktemp("checkout")
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(VENV, target_is_directory=True)
    for name, content in readme_files(readme_text()).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(content, encoding="utf-8")
    return dest


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"  # a hub id that is not cached fails at once instead of retrying
    env["TRANSFORMERS_OFFLINE"] = "1"
    # one thread per command unless the caller chose: with 2 cores and the other one busy, OpenMP's spinning
    # threads made `diffalign train toy_ddpo epochs=5` take 39 s instead of 6 s (measured)
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def run_shell(command: str, cwd: Path, timeout: int = 900) -> None:
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    out = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"`{command}` exited with {proc.returncode} in {cwd}:\n{out}"


# ---- the tests -------------------------------------------------------------------------------------------------
def test_the_plans_name_commands_that_are_in_the_readme():
    commands = readme_commands()
    assert commands, "README.md has no ```bash block"
    stale = [c for c in list(PLANS) + list(SKIPPED) if c not in commands]
    assert not stale, f"PLANS / SKIPPED name commands that README.md no longer has: {stale}"
    assert not set(PLANS) & set(SKIPPED)
    for command, reason in SKIPPED.items():
        assert reason and help_commands(command), f"a skipped command needs a reason and a --help to run: {command}"


def test_the_set_up_commands_are_the_two_of_the_readme():
    first = code_blocks(readme_text(), "bash")[0]
    assert shell_commands(first) == ["bash scripts/install.sh && .venv/bin/diffalign demo --output demo_out",
                                     '.venv/bin/python -m pytest -q -m "not slow" tests']


@pytest.mark.parametrize("command", sorted({h for c in readme_commands() for h in help_commands(c)}))
def test_subcommand_help(command, checkout):
    run_shell(command, checkout, timeout=300)


@pytest.mark.parametrize("command", _params(lambda c: c in PLANS and PLANS[c].slow))
def test_readme_command(command, checkout):
    if command in SKIPPED:
        pytest.skip(f"not run here: {SKIPPED[command]} (its --help runs in test_subcommand_help)")
    for step in (PLANS[command].run if command in PLANS else (command,)):
        run_shell(step, checkout)


def test_readme_python_blocks_run(checkout, tmp_path):
    blocks = runnable_python_blocks(readme_text())
    assert blocks, "README.md has no runnable ```python block"
    for i, block in enumerate(blocks):
        script = tmp_path / f"readme_block_{i}.py"
        script.write_text(block, encoding="utf-8")
        run_shell(f".venv/bin/python {script}", checkout, timeout=600)


def test_readme_yaml_blocks_are_valid_configs(checkout, monkeypatch):
    """my_run.yaml loads as written; every other YAML block, put in its place, still loads."""
    from diffalign.config import load_config
    text = readme_text()
    files = readme_files(text)
    assert "my_run.yaml" in files, "README.md's complete example config (# my_run.yaml) is missing"
    monkeypatch.chdir(checkout)
    monkeypatch.syspath_prepend(str(checkout))  # package.module:function rewards defined in the README
    base = yaml.safe_load(files["my_run.yaml"])
    sections = {"output_dir", "seed", "epochs", "modality", "prompts", "sampling", "reward", "algorithm", "train",
                "data", "logging", "checkpoint"}
    assert sections <= set(base), f"the example config lacks sections {sorted(sections - set(base))}"
    load_config("my_run.yaml")
    snippets = [b for b in code_blocks(text, "yaml") if not FILE_HEADER.match(b.splitlines()[0])]
    assert snippets
    for snippet in snippets:
        data = copy.deepcopy(base)
        data.update(yaml.safe_load(snippet))
        load_config(data=data)
    sys.modules.pop("my_rewards", None)


def test_readme_algorithm_table_matches_the_code():
    """Each row: the algorithm's name, its shipped configs (which use it) and its data path (as declared)."""
    from diffalign.algorithms import ALGORITHMS
    from diffalign.cli.train import shipped_config
    rows = [line for line in readme_text().splitlines()
            if line.startswith("|") and re.search(r"\|\s*`(online_rollout|offline_\w+|differentiable_sampling|"
                                                  r"step_pairs|generator)`\s*\|\s*$", line)]
    assert len(rows) == len(ALGORITHMS), f"the table has {len(rows)} rows for {len(ALGORITHMS)} algorithms"
    listed = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = cells[1].strip("`")
        configs = re.findall(r"`([\w.]+)`", cells[2])
        path = cells[3].strip("`")
        assert name in ALGORITHMS, row
        assert ALGORITHMS[name].data_path.value == path, row
        for config in configs:
            found = shipped_config(config)
            assert found, f"{config} is not a shipped config ({row})"
            assert yaml.safe_load(Path(found).read_text())["algorithm"]["name"] == name, row
            listed.add(config)
    shipped = {p.stem for p in (ROOT / "diffalign" / "configs").glob("*.yaml")
               if "algorithm" in yaml.safe_load(p.read_text())}   # reward-model configs train no algorithm
    assert shipped <= listed, f"shipped configs missing from the README's table: {sorted(shipped - listed)}"


def _cli_parser() -> argparse.ArgumentParser:
    from diffalign.cli import SUBCOMMANDS
    parser = argparse.ArgumentParser(prog="diffalign", exit_on_error=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f"diffalign.cli.{module}").add_arguments(sub.add_parser(name))
    return parser


def _diffalign_argv(command: str):
    """The arguments after `diffalign` in each part of a shell command (None where there is none)."""
    for part in re.split(r"&&|\|\||;", command):
        words = shlex.split(part)
        for i, word in enumerate(words):
            if word == "diffalign" or word.endswith("/diffalign"):
                yield words[i + 1:]
                break


def test_every_documented_diffalign_command_parses(capsys):
    """README.md and docs/*.md: each `diffalign ...` line parses with the real command line, and its config
    (train, sample, feedback, reward train) is a shipped one or a file the README tells the reader to save."""
    from diffalign.cli.train import shipped_config
    parser = _cli_parser()
    saved = set(readme_files(readme_text()))
    checked = 0
    for doc in DOC_FILES:
        for block in code_blocks(doc.read_text(encoding="utf-8"), "bash"):
            for command in shell_commands(block):
                for argv in _diffalign_argv(command):
                    try:
                        args = parser.parse_args(argv)
                    except (SystemExit, argparse.ArgumentError) as exc:
                        pytest.fail(f"{doc.name}: `{command}` does not parse: {exc} {capsys.readouterr().err}")
                    config = getattr(args, "config", None)
                    if config is not None:
                        assert shipped_config(config) or config in saved or (ROOT / config).is_file(), \
                            f"{doc.name}: `{command}`: config {config!r} is neither shipped nor saved by the README"
                    checked += 1
    assert checked >= 5
