"""The plugin author guide's walkthrough (section 2.10) stays true: its code is contrib/esper-lora-ladder, and its steps work.

The end-to-end test follows the steps in a throwaway virtual environment: it copies the template and
renames it with the guide's own commands, drops in the guide's module, tests and run config, installs
the plugin, lists it with ``esper plugins --json``, runs the guide's run config, runs the plugin's
tests and uninstalls it. That environment sees this one's packages (esper-core, torch, the
first-party plugins) through a folder of links that leaves out the repository's own installed copy of
esper-lora-ladder, so the author's copy is the only one, and nothing is installed into or removed from
this environment: plugin discovery in other test processes never changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugin-author-guide.md"
HEADING = "### 2.10 Walkthrough: `esper-lora-ladder` from an empty folder"
SHIPPED = REPO / "contrib" / "esper-lora-ladder"
TEMPLATE = REPO / "contrib" / "template"
PLUGIN_FOLDER = "esper-lora-ladder"  # what the guide's `cp -r` creates
PLACEHOLDERS = ("my-seed-plugin", "my_seed_plugin", "my_family")
#: Files the author writes from the guide after the renames (the rest comes from the template).
WRITTEN_FROM_THE_GUIDE = ("esper_lora_ladder/plugin.py", "tests/test_rank_ladder.py")
#: Files of the shipped plugin that are neither the renamed template nor shown in the guide.
SHIPPED_EXTRAS = {"README.md", "tests/test_with_esper.py"}
RUN_CONFIG = "lora-pydoc.toml"
#: The entry points loaded in the throwaway environment: the author's plugin and what the run needs.
RUN_PLUGINS = ("lora_ladder", "transformer", "text", "heuristic", "sinks")
#: Names of the installed files of the repository's own copy (dist-info, editable finder and .pth).
SHIPPED_INSTALL_FILES = re.compile(r"esper[-_]lora[-_]ladder", re.IGNORECASE)


# -- the guide's text --------------------------------------------------------------------------------


def walkthrough() -> str:
    """The text under the walkthrough's heading, up to the next heading of level 1 to 3."""
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    assert HEADING in lines, f"{GUIDE.name} has no heading {HEADING!r}"
    body: list[str] = []
    fenced = False
    for line in lines[lines.index(HEADING) + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,3} ", line):
            break
        body.append(line)
    return "\n".join(body) + "\n"


def fenced_blocks() -> list[tuple[str, str]]:
    """(info string, content) of every fenced block of the walkthrough."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```$", walkthrough(), flags=re.MULTILINE | re.DOTALL)


def guide_file(name: str) -> str:
    """The content the walkthrough gives a file: a block whose info string names it (```toml pyproject.toml),
    or a block whose first line is ``# name`` (that line left out)."""
    found = []
    for info, content in fenced_blocks():
        if info.split()[1:] == [name]:
            found.append(content)
        elif content.startswith(f"# {name}\n"):
            found.append(content.split("\n", 1)[1])
    assert len(found) == 1, f"the walkthrough should have exactly one block for {name}, found {len(found)}"
    return found[0]


def scaffold_commands() -> list[str]:
    """The shell commands of step 1 (the walkthrough's first console block)."""
    consoles = [content for info, content in fenced_blocks() if info == "console"]
    assert consoles, "the walkthrough has no console block"
    commands = [line[2:] for line in consoles[0].splitlines() if line.startswith("$ ")]
    assert any(command.startswith("cp -r ") for command in commands) and any("sed " in c for c in commands)
    return commands


def scaffold(workspace: Path) -> Path:
    """Step 1 as written: the guide's commands, run in a folder that holds a link named ``esper`` to this repository."""
    workspace.mkdir(parents=True)
    (workspace / "esper").symlink_to(REPO, target_is_directory=True)
    script = "set -euo pipefail\n" + "\n".join(scaffold_commands()) + "\n"
    result = subprocess.run(["bash", "-c", script], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"step 1 failed:\n{script}\n{result.stderr}"
    plugin = workspace / PLUGIN_FOLDER
    assert plugin.is_dir(), f"step 1 did not create {PLUGIN_FOLDER}/"
    return plugin


#: Folders that building, installing or testing a plugin leaves behind (git ignores them too).
LEFTOVERS = {"__pycache__", "build", "dist", ".pytest_cache", ".hypothesis"}


def source_files(folder: Path) -> set[str]:
    """Relative paths of the files in ``folder``, without build, install and bytecode leftovers."""
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part in LEFTOVERS or part.endswith(".egg-info") for part in path.relative_to(folder).parts)
    }


# -- fast checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pyproject.toml", *WRITTEN_FROM_THE_GUIDE])
def test_the_guide_shows_the_shipped_plugins_code(name: str) -> None:
    assert guide_file(name) == (SHIPPED / name).read_text(encoding="utf-8"), (
        f"the walkthrough's {name} differs from contrib/esper-lora-ladder/{name}; update one to match the other"
    )


def test_the_template_is_not_installed_by_bootstrap() -> None:
    assert not (TEMPLATE / "pyproject.toml").exists(), "contrib/template must not have a pyproject.toml"
    assert '[ -f "$dir/pyproject.toml" ] || continue' in (REPO / "scripts" / "bootstrap").read_text()
    assert (TEMPLATE / "pyproject.toml.template").is_file()


def test_the_template_renamed_as_the_guide_says_is_the_shipped_plugin(tmp_path: Path) -> None:
    plugin = scaffold(tmp_path / "work")
    assert not (plugin / "pyproject.toml.template").exists() and not (plugin / "my_seed_plugin").exists()
    assert (plugin / "pyproject.toml").read_text() == guide_file("pyproject.toml")
    renamed = source_files(plugin) - {"README.md"}  # the README keeps the template's instructions
    for name in renamed:
        text = (plugin / name).read_text(encoding="utf-8")
        assert not [p for p in PLACEHOLDERS if p in text], f"{name} still has a placeholder after the renames"
        if name not in WRITTEN_FROM_THE_GUIDE:
            assert text == (SHIPPED / name).read_text(encoding="utf-8"), f"{name} differs from the shipped plugin's"
    assert source_files(SHIPPED) == source_files(plugin) | set(WRITTEN_FROM_THE_GUIDE) | SHIPPED_EXTRAS


# -- the walkthrough, end to end, in a throwaway environment -----------------------------------------


def throwaway_venv(root: Path) -> tuple[Path, Path]:
    """A venv (no pip of its own) whose site-packages adds a folder of links to this environment's
    site-packages, minus the repository's installed copy of esper-lora-ladder. Returns (python, site-packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip())
    view = root / "site-view"
    view.mkdir()
    paths = sysconfig.get_paths()
    for source in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in Path(source).iterdir():
            if not SHIPPED_INSTALL_FILES.search(entry.name) and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    (site / "zz_esper_site_view.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return python, site


def run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: int = 240) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def esper_plugins(python: Path, cwd: Path, env: dict[str, str]) -> dict:
    # -I: no working directory on sys.path, as for the `esper` console script
    return json.loads(run(python, "-I", "-m", "esper_core.cli", "plugins", "--json", cwd=cwd, env=env))


def test_the_walkthrough_installs_lists_runs_and_uninstalls_the_plugin(tmp_path: Path) -> None:
    plugin = scaffold(tmp_path / "work")
    for name in WRITTEN_FROM_THE_GUIDE:
        (plugin / name).write_text(guide_file(name), encoding="utf-8")
    (plugin / RUN_CONFIG).write_text(guide_file(RUN_CONFIG), encoding="utf-8")
    python, site = throwaway_venv(tmp_path)
    venv = python.parents[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ESPER_", "PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv),
        ESPER_PLUGINS=",".join(RUN_PLUGINS), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1",
        PIP_NO_INPUT="1", PIP_NO_CACHE_DIR="1", OMP_NUM_THREADS="1",
    )
    where = "import importlib.util as u; spec = u.find_spec('esper_lora_ladder'); print(spec.origin if spec else '')"
    assert run(python, "-I", "-c", where, cwd=tmp_path, env=env).strip() == "", "the shipped copy leaked in"

    # step 4: install (no network: dependencies come from this environment), then `esper plugins`
    run(python, "-I", "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", plugin, cwd=tmp_path, env=env)
    assert run(python, "-I", "-c", where, cwd=tmp_path, env=env).strip().startswith(str(site))
    listing = esper_plugins(python, tmp_path, env)
    assert listing["failures"] == []
    assert sorted(p["name"] for p in listing["plugins"]) == sorted(["esper_core", *RUN_PLUGINS])
    (ours,) = [p for p in listing["plugins"] if p["name"] == "lora_ladder"]
    assert (ours["distribution"], ours["version"], ours["registered"]) == (
        "esper-lora-ladder", "0.1.0", {"seed_families": ["lora_ladder"]}
    )

    # step 3 (after installing, so the entry-point test runs too): the plugin's own tests
    tests = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=plugin, env=env)
    assert re.search(r"\b\d+ passed\b", tests) and "skipped" not in tests and "failed" not in tests, tests

    # step 5: the guide's run config, as written
    runs = tmp_path / "runs"
    run(python, "-I", "-m", "esper_core.cli", "run", RUN_CONFIG, "-s", f"run.output_dir={json.dumps(str(runs))}",
        cwd=plugin, env=env)
    (run_dir,) = list(runs.iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "completed"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    germinated = [e["data"] for e in events if e["event"] == "SEED_GERMINATED"]
    assert germinated and {g["blueprint_id"] for g in germinated} == {"lora_ladder"}
    assert all(g["internal_level"] == 1 for g in germinated)  # seeds start at rank 4

    # step 6: uninstall; the plugin is gone and nothing else changed
    assert "Successfully uninstalled esper-lora-ladder" in run(
        python, "-I", "-m", "pip", "uninstall", "-y", "esper-lora-ladder", cwd=tmp_path, env=env
    )
    assert run(python, "-I", "-c", where, cwd=tmp_path, env=env).strip() == ""
    after = esper_plugins(python, tmp_path, env)
    assert after["failures"] == []
    assert sorted(p["name"] for p in after["plugins"]) == sorted(["esper_core", *RUN_PLUGINS[1:]])
