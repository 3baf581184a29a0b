"""What a script's Hub Job (or the app's Space) ships, read from the code: the project files a script imports (in
functions too), the data files those modules declare in `SHIPPED_FILES`, and the third-party modules all of them
import, checked against the script's PEP 723 block before anything is uploaded (lymphus_ml.hub.launch_job).
"""

import ast
import functools
import re
import sys
from pathlib import Path


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_module_files(module_name: str, root=PROJECT_ROOT) -> list[str]:
    """Project files (relative paths) that `import module_name` loads: `name.py`, or a package's `__init__.py`s
    and the submodule's file; [] for anything outside the project (the standard library, installed packages)."""
    parts, files = module_name.split("."), []
    for depth in range(1, len(parts) + 1):
        path = Path(*parts[:depth])
        if (root / path / "__init__.py").is_file():
            files.append(str(path / "__init__.py"))
        elif (root / path.with_suffix(".py")).is_file():
            files.append(str(path.with_suffix(".py")))
            break
        else:
            break
    return files


def imported_module_names(source: str) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in `source` names (in functions too), with the
    `from a import b` form also giving `a.b` in case `b` is a submodule."""
    return set(_imported_module_names(source))


@functools.lru_cache(maxsize=256)
def _imported_module_names(source: str) -> frozenset[str]:
    # Keyed by the source text itself: each Job launch parses the same ~30 files twice (~0.3 s).
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(names)


def declared_shipped_files(source: str) -> tuple[str, ...]:
    """The module's `SHIPPED_FILES` (a top-level tuple of project-relative paths it reads at run time), or ()."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SHIPPED_FILES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def job_files(script, root=PROJECT_ROOT) -> list[str]:
    """What a Job of `script` needs beside it, as paths relative to `root`: the script, the project modules it can
    import (transitively) and the files those modules declare in SHIPPED_FILES. Sorted, script first."""
    root = Path(root)
    script = str(Path(script).resolve().relative_to(root.resolve()))
    files, queue = {script}, [script]
    while queue:
        path = queue.pop()
        source = (root / path).read_text()
        found = [file for name in imported_module_names(source) for file in project_module_files(name, root)]
        found += list(declared_shipped_files(source))
        for file in found:
            if not (root / file).is_file():
                raise FileNotFoundError(f"{path} needs {file}, which is not in {root}.")
            if file not in files:
                files.add(file)
                if file.endswith(".py"):
                    queue.append(file)
    return [script] + sorted(files - {script})


# The PEP 723 block, as the PEP's reference implementation finds it.
PEP723_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


def distribution_key(name: str) -> str:
    """A distribution name as PEP 503 compares them (`scikit_learn` == `Scikit-Learn`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pep723_dependencies(script) -> list[str]:
    """The `dependencies` of `script`'s PEP 723 block (what `uv run` installs in a Job), [] without a block."""
    import tomllib  # Python >= 3.11; a Job imports this module on 3.10 too (nothing there reads a block)

    for match in PEP723_BLOCK.finditer(Path(script).read_text()):
        if match.group("type") == "script":
            content = "".join(line[2:] if line.startswith("# ") else line[1:]
                              for line in match.group("content").splitlines(keepends=True))
            return list(tomllib.loads(content).get("dependencies", []))
    return []


def third_party_imports(files, root=PROJECT_ROOT) -> dict[str, list[str]]:
    """{top-level module: [the .py files importing it]} for every module `files` import (in functions too) that is
    neither the standard library nor a project module: what must be installed where they run."""
    root, found = Path(root), {}
    for file in (f for f in files if f.endswith(".py")):
        for name in imported_module_names((root / file).read_text()):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or project_module_files(top, root) or top == "__future__":
                continue
            found.setdefault(top, [])
            if file not in found[top]:
                found[top].append(file)
    return found


def undeclared_imports(script, root=PROJECT_ROOT) -> dict[str, list[str]]:
    """{module: [files]} of the third-party modules that a Job of `script` would import but its PEP 723 block does not
    install (module -> distribution by `importlib.metadata.packages_distributions`, else the module's own name)."""
    root = Path(root)
    declared = {distribution_key(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
                for requirement in pep723_dependencies(root / Path(script).resolve().relative_to(root.resolve()))}
    distributions = _packages_distributions()
    return {
        module: files
        for module, files in sorted(third_party_imports(job_files(script, root), root).items())
        if not {distribution_key(d) for d in distributions.get(module, [module])} & declared
    }


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    """importlib.metadata.packages_distributions() once per process (~0.3 s: every installed distribution's files)."""
    from importlib.metadata import packages_distributions

    return packages_distributions()


def check_job_dependencies(script, root=PROJECT_ROOT) -> None:
    """Refuse a Job that would stop at an import: every third-party module its shipped files import must be in the
    script's PEP 723 block (it would otherwise train on paid hardware and fail at, say, the saliency step)."""
    missing = undeclared_imports(script, root)
    if missing:
        listed = "; ".join(f"{module} (imported by {', '.join(files)})" for module, files in missing.items())
        raise ValueError(
            f"A Hub Job of {Path(script).name} would fail: its PEP 723 block does not install {listed}. Add the "
            "distribution(s) to the block's dependencies; nothing was submitted."
        )
