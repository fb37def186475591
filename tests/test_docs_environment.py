"""README.md and docs/ work in an environment built **exactly as they say**, not only in the
test environment (which has every extra installed).

Building a fresh virtualenv with a non-editable install in CI costs minutes (torch alone is
5.5 GB), so the environment is simulated instead, from the metadata of the installed packages:

1. The README names the install command (``pip install '.[examples]'``). From ``pyproject.toml``
   and the installed distributions' own requirements we compute every distribution that command
   installs (the closure of the core dependencies and the extra, markers evaluated).
2. Static check: every third-party module that ``examples/`` imports (at module level or inside
   functions, except ``try: ... except ImportError`` fallbacks) is provided by that closure; the
   same for ``benchmarks/`` against the ``[benchmarks]`` extra that docs/benchmarks.md names.
3. Dynamic check: one subprocess installs an import guard that makes every module of a
   distribution *outside* the closure unimportable (``ModuleNotFoundError``, as in a fresh
   environment), then runs the README quickstart, the runnable code blocks of docs/, the imports
   of the other (fragment) blocks, and the documented ``python examples/...`` commands (shortened
   with ``--max-steps``; the ImageNet / COCO trainers, which need the datasets, with ``--help``).

Regression: the quickstart imported scikit-learn, which only the ``[test]`` extra installed.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"
# Pages whose python blocks run as they stand (the others are fragments of a training loop:
# their imports are checked). test_docs_have_only_known_pages keeps this list honest.
RUNNABLE = {"README.md", "kd.md", "methods.md", "datasets.md"}
# Commands that cannot run here as written (GPU datasets) run with --help (imports and options);
# --compile compiles for minutes on two cores and imports nothing that the other runs do not
# (the static check covers the script; tests/test_example_stack.py runs it).
HELP_ONLY = ("imagenet_kd.py", "coco_kd.py", "imagenet_deit_kd.py", "cifar100_kd.py")
# Examples documented with another install (docs/frameworks.md: pip install '...[frameworks]').
FRAMEWORK_EXAMPLES = ("lightning_kd.py", "accelerate_kd.py")


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def documented_extras() -> list[str]:
    """The extras of the install command the README gives for the quickstart and examples."""
    match = re.search(r"pip install '\.\[([a-z,-]+)\]'", README.read_text())
    assert match, "README.md names no `pip install '.[extra]'` command"
    return match.group(1).split(",")


def closure(extras: list[str]) -> set[str]:
    """Canonical names of every distribution ``pip install '.[extras]'`` installs (the project's
    core dependencies and those extras, and recursively what they require)."""
    project = _pyproject()["project"]
    requirements = [(Requirement(r), "") for r in project["dependencies"]]
    for extra in extras:
        requirements += [(Requirement(r), "") for r in project["optional-dependencies"][extra]]
    environment = default_environment()
    seen: set[tuple[str, str]] = set()
    names: set[str] = {canonicalize_name(project["name"])}
    while requirements:
        requirement, extra = requirements.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(
            {**environment, "extra": extra}
        ):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ("", *sorted(requirement.extras)):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            names.add(name)
            try:
                requires = metadata.distribution(name).requires or []
            except metadata.PackageNotFoundError:  # declared, not installed: a fresh env has it
                continue
            requirements += [(Requirement(r), wanted) for r in requires]
    return names


def module_owners() -> dict[str, set[str]]:
    """Top-level importable name -> canonical names of the distributions that provide it."""
    return {
        module: {canonicalize_name(d) for d in dists}
        for module, dists in metadata.packages_distributions().items()
    }


def stdlib() -> set[str]:
    names = set(getattr(sys, "stdlib_module_names", ()))
    return names | set(sys.builtin_module_names)


def imports_of(path: Path) -> set[str]:
    """Top-level names a file imports anywhere (module level and inside functions), except in
    the ``try`` body of a ``try: ... except ImportError/ModuleNotFoundError`` (optional)."""
    tree = ast.parse(path.read_text())
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            handler.type is not None
            and any(
                isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                for n in ast.walk(handler.type)
            )
            for handler in node.handlers
        ):
            for statement in node.body:
                optional.update(id(n) for n in ast.walk(statement))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def missing_modules(files: list[Path], extras: list[str]) -> dict[str, set[str]]:
    """``{file: third-party modules it imports that pip install '.[extras]' does not provide}``."""
    allowed, owners = closure(extras), module_owners()
    local = {"mokd_optim", "examples", "benchmarks"}
    missing = {}
    for path in files:
        siblings = {p.stem for p in path.parent.glob("*.py")}
        unknown = {
            name
            for name in imports_of(path) - stdlib() - local - siblings - {"__future__"}
            if not owners.get(name, set()) & allowed
        }
        if unknown:
            missing[str(path.relative_to(ROOT))] = unknown
    return missing


def test_examples_import_only_what_the_documented_install_provides() -> None:
    extras = documented_extras()
    assert extras == ["examples"]
    examples = sorted((ROOT / "examples").glob("*.py"))
    plain = [p for p in examples if p.name not in FRAMEWORK_EXAMPLES]
    assert missing_modules(plain, extras) == {}
    frameworks = [p for p in examples if p.name in FRAMEWORK_EXAMPLES]
    assert "pip install 'mokd-optim[frameworks]'" in (ROOT / "docs" / "frameworks.md").read_text()
    assert len(frameworks) == 2
    assert missing_modules(frameworks, [*extras, "frameworks"]) == {}
    assert missing_modules(frameworks, extras) != {}  # they do need the frameworks extra


def test_the_package_imports_only_its_core_dependencies() -> None:
    files = sorted((ROOT / "mokd_optim").rglob("*.py"))
    missing = missing_modules(files, [])
    # plot_log and StatsLogger's TensorBoard output import theirs in try/except with an error
    # naming the `logging` extra (tests/test_logging.py); load_fashion_mnist(download=True)
    # needs torchvision (docs/datasets.md). Nothing else may be missing.
    assert missing == {"mokd_optim/datasets.py": {"torchvision"}}


def test_benchmarks_import_only_what_their_documented_extra_provides() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    extras = re.search(r"pip install (?:-e )?'\.\[([a-z,-]+)\]'", page).group(1).split(",")
    assert missing_modules(sorted((ROOT / "benchmarks").glob("*.py")), extras) == {}


def test_a_module_outside_the_extra_is_reported() -> None:
    """The checks above can fail: scikit-learn (used by the quickstart) is outside the core."""
    quickstart = ROOT / "examples" / "digits_stack.py"
    assert missing_modules([quickstart], []) == {"examples/digits_stack.py": {"sklearn"}}


# The dynamic check -------------------------------------------------------------------------


def visible_site(directory: Path, allowed: set[str]) -> Path:
    """A site-packages folder with only the distributions of ``allowed``: links to their
    top-level files and folders (taken from each distribution's RECORD) in ``directory``."""
    directory.mkdir()
    for dist in metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in allowed:
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            source, link = Path(str(dist.locate_file(top))), directory / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return directory


# Runs the plan's items in one process (torch is imported once). `python -S` skips the
# environment's site-packages: only the linked folder (and the checkout, for mokd_optim) is
# importable, as in a fresh environment built with the documented command.
RUNNER = r"""
import contextlib, json, os, runpy, sys, traceback
plan = json.load(open(sys.argv[1]))
namespaces = {}  # the blocks of one page run in order, in one namespace
for item in plan["items"]:
    os.chdir(item["cwd"])
    try:
        if item["kind"] == "code":
            namespace = namespaces.setdefault(item.get("page"), {"__name__": "__main__"})
            exec(compile(item["code"], item["name"], "exec"), namespace)
        else:
            sys.argv = item["argv"]
            sys.path[0] = os.path.dirname(item["argv"][0])
            with contextlib.redirect_stdout(open(os.devnull, "w")):
                try:
                    runpy.run_path(item["argv"][0], run_name="__main__")
                except SystemExit as done:
                    if done.code not in (0, None):
                        raise
    except BaseException:
        print("FAILED:", item["name"], flush=True)
        traceback.print_exc()
        sys.exit(1)
    print("ok:", item["name"], flush=True)
"""


def run_plan(tmp_path: Path, extras: list[str], items: list[dict]) -> subprocess.CompletedProcess:
    """Run ``items`` (see RUNNER) where only ``pip install '.[extras]'``'s packages exist."""
    site = visible_site(tmp_path / "site", closure(extras))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"items": items}))
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONHOME"},
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        [sys.executable, "-S", "-c", RUNNER, str(plan)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def example_commands(path: Path) -> list[list[str]]:
    """``python examples/...`` commands of the page's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python examples/"):
                commands.append(shlex.split(line)[1:])
    return commands


def import_lines(code: str) -> str:
    """The imports of a fragment and its settings of ``torch.*`` attributes (e.g.
    ``torch._functorch.config.donated_buffer = False``, which fails unless its module was
    imported: regression of docs/compile.md)."""
    tree = ast.parse(code)
    return "\n".join(
        ast.get_source_segment(code, node)
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        or (
            isinstance(node, ast.Assign)
            and all(ast.unparse(target).startswith("torch.") for target in node.targets)
        )
    )


def test_docs_have_only_known_pages() -> None:
    pages = {p.name for p in DOCS if python_blocks(p)} | {"README.md"}
    assert RUNNABLE <= pages, RUNNABLE - pages


def test_docs_run_in_the_documented_environment(tmp_path: Path) -> None:
    items = []
    # docs/frameworks.md documents another install (the frameworks extra); its blocks run in
    # tests/test_frameworks_docs.py
    for page in [README, *(d for d in DOCS if d.name != "frameworks.md")]:
        for index, code in enumerate(python_blocks(page)):
            runnable = page.name in RUNNABLE
            items.append(
                {
                    "name": f"{page.name} block {index}" + ("" if runnable else " (imports)"),
                    "kind": "code",
                    "code": code if runnable else import_lines(code),
                    "page": page.name,
                    "cwd": str(tmp_path),
                }
            )
        for argv in example_commands(page):
            script = argv[0]
            if "--compile" in argv:
                continue
            if Path(script).name in HELP_ONLY:
                argv = [script, "--help"]
            elif Path(script).name == "digits_stack.py":
                argv = [*argv, "--max-steps", "2"]
            items.append(
                {
                    "name": f"{page.name}: python {shlex.join(argv)}",
                    "kind": "script",
                    "argv": [str(ROOT / script), *argv[1:]],
                    "cwd": str(tmp_path),
                }
            )
    items = list({item["name"]: item for item in items}.values())  # a command documented twice
    names = [item["name"] for item in items]
    assert "README.md block 0" in names
    assert any(n.startswith("logging.md: python examples/digits_stack.py") for n in names)
    done = run_plan(tmp_path, documented_extras(), items)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert done.stdout.count("ok:") == len(items), done.stdout


def test_the_environment_lacks_what_the_extras_do_not_install(tmp_path: Path) -> None:
    """The simulated environment is strict: with the core dependencies only, the quickstart's
    scikit-learn import fails as it did for users; test-only packages are absent even with the
    documented extra."""
    check = "import importlib.util as u; assert u.find_spec('hypothesis') is None; import torch"
    items = [
        {"name": "no test packages", "kind": "code", "code": check, "cwd": str(tmp_path)},
        {"name": "sklearn", "kind": "code", "code": "import sklearn", "cwd": str(tmp_path)},
    ]
    done = run_plan(tmp_path, [], items)
    assert done.returncode == 1
    assert "ok: no test packages" in done.stdout
    assert "No module named 'sklearn'" in done.stderr
