"""`microkit new`: render templates into files, then write them in a separate, all-or-nothing step.

Rendering never touches the disk it writes to: it returns a `Plan` (new files, plus a replacement
microkit.toml). `apply` checks the plan against the disk, stages every new file in a temporary folder
beside its destination and moves each new folder into place with one rename, so a refusal or a
failure leaves the project exactly as it was.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

import tomlkit
import tomlkit.exceptions

from . import config as cfg
from .errors import ScaffoldError

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
DOT_PREFIX = "dot-"  # templates store ".gitignore" as "dot-gitignore": package data skips dotfiles
SKIP = {"__pycache__", ".DS_Store"}
PROJECT_TEMPLATE = "project"


@dataclass(frozen=True)
class File:
    """One rendered file, its path relative to the folder the plan is applied in."""

    path: PurePosixPath
    content: bytes


@dataclass(frozen=True)
class Plan:
    """What `microkit new` will do: files to create (none may exist) and files to replace whole."""

    create: tuple[File, ...]
    replace: tuple[File, ...] = field(default=())


SERVICE_TABLE = "service.toml"  # a template's own [services.NAME] table, rendered; not written as a file


def templates_root() -> Path:
    """The built-in templates: package data when installed, the top-level templates/ in a checkout."""
    try:
        root = Path(str(resources.files("microkit.templates")))
        if root.is_dir():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "templates"


def builtin_templates() -> list[str]:
    root = templates_root()
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name not in SKIP and p.name != PROJECT_TEMPLATE)


def template_dir(name: str) -> Path:
    """A built-in template by name, or a user's own template folder by path."""
    if "/" in name or os.sep in name or name.startswith("."):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ScaffoldError(f"--template: {name}: no such folder")
        return path
    if name == PROJECT_TEMPLATE or name not in builtin_templates():
        known = ", ".join(builtin_templates())
        raise ScaffoldError(f"--template: unknown template {name!r} (built in: {known}; or give a folder path)")
    return templates_root() / name


def render(template: Path, variables: dict[str, str], dest: PurePosixPath) -> list[File]:
    """Every file of a template folder with its {{placeholders}} filled in, placed under `dest`."""
    files = []
    for source in sorted(template.rglob("*")):
        relative = source.relative_to(template)
        if source.is_dir() or SKIP.intersection(relative.parts) or source.suffix in (".pyc", ".pyo"):
            continue
        parts = [_fill(part, variables, template, relative) for part in relative.parts]
        parts = [("." + p[len(DOT_PREFIX):]) if p.startswith(DOT_PREFIX) else p for p in parts]
        raw = source.read_bytes()
        try:
            content = _fill(raw.decode("utf-8"), variables, template, relative).encode("utf-8")
        except UnicodeDecodeError:
            content = raw
        files.append(File(dest.joinpath(*parts), content))
    if not files:
        raise ScaffoldError(f"--template: {template}: the template folder has no files")
    return files


def _fill(text: str, variables: dict[str, str], template: Path, relative: Path) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in variables:
            known = ", ".join("{{%s}}" % k for k in sorted(variables))
            raise ScaffoldError(f"{template / relative}: unknown placeholder {{{{{name}}}}} (known: {known})")
        return variables[name]
    return PLACEHOLDER.sub(value, text)


def check_name(kind: str, name: str, *, shadow_check: bool) -> None:
    """Refuse names that cannot be Python packages, or that would shadow a module the code imports."""
    if not name.isidentifier() or not name.isascii():
        suggestion = re.sub(r"\W", "_", name)
        hint = f" (e.g. {suggestion!r})" if suggestion.isidentifier() else ""
        raise ScaffoldError(f"{kind} name {name!r} is not a Python identifier: use letters, digits and _{hint}")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ScaffoldError(f"{kind} name {name!r} is a Python keyword: choose another name")
    if kind == "service" and name in cfg.RESERVED_NAMES:
        raise ScaffoldError(f"service name {name!r} is reserved for microkit's own process: choose another name")
    if shadow_check and (name in sys.stdlib_module_names or _installed(name)):
        raise ScaffoldError(f"{kind} name {name!r} would shadow the Python module {name!r}: choose another name")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return True


def model_name(service: str) -> str:
    """A class name for the service's model: `users` -> `User`, `order_items` -> `OrderItem`."""
    words = [w for w in service.split("_") if w]
    last = words[-1]
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        words[-1] = last[:-1]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Item"
    return name if name.isidentifier() and not name[0].isdigit() else "Item"


def plan_project(name: str) -> Plan:
    check_name("project", name, shadow_check=False)
    return Plan(tuple(render(templates_root() / PROJECT_TEMPLATE, {"project": name}, PurePosixPath(name))))


def plan_service(project: cfg.Config, name: str, template: str = "rest",
                 route: str | None = None, workers: int = 1) -> Plan:
    """The files of a new service, and microkit.toml with its [services.NAME] table added."""
    check_name("service", name, shadow_check=True)
    route = "/" + name if route is None else route
    try:
        cfg.route(route)
    except cfg.Invalid as exc:
        raise ScaffoldError(f"--route: {exc}") from None
    if name in project.services:
        raise ScaffoldError(f"service {name!r} already exists in {cfg.display_path(project.path)}")
    if (project.root / "services" / name).exists():
        raise ScaffoldError(f"service {name!r} already exists: services/{name} is there")

    variables = {"project": project.project.name, "service": name, "route": route, "model": model_name(name),
                 "workers": str(workers)}
    files = render(template_dir(template), variables, PurePosixPath("services", name))
    own_table = next((f for f in files if f.path == PurePosixPath("services", name, SERVICE_TABLE)), None)
    files = [f for f in files if f is not own_table]
    if not (project.root / "services" / "__init__.py").exists():
        files.append(File(PurePosixPath("services", "__init__.py"), b'"""The project\'s services, one package each."""\n'))

    toml_text = _add_service_table(project.path, name, route, workers,
                                   own_table.content.decode("utf-8") if own_table else None)
    cfg.parse(toml_text, project.path)  # the edit must leave a valid config, or nothing is written
    toml_path = PurePosixPath(os.path.relpath(project.path, project.root))
    return Plan(tuple(files), (File(toml_path, toml_text.encode("utf-8")),))


def _add_service_table(path: Path, name: str, route: str, workers: int, own: str | None = None) -> str:
    """microkit.toml with [services.NAME] appended, its comments and layout kept as they were. A template's
    own `service.toml` (the events template's, say) gives the table instead of app, route and workers."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ScaffoldError(f"{cfg.display_path(path)}: invalid TOML: {exc}") from None
    table = tomlkit.table()
    if own is not None:
        try:
            for key, value in tomlkit.parse(own).items():
                table.add(key, value)
        except tomlkit.exceptions.ParseError as exc:
            raise ScaffoldError(f"--template: {SERVICE_TABLE}: invalid TOML: {exc}") from None
    else:
        table.add("app", f"services.{name}.app:app")
        table.add("route", route)
        table.add("workers", workers)
    if "services" not in doc:
        doc.add("services", tomlkit.table(is_super_table=True))
    doc["services"][name] = table
    result = tomlkit.dumps(doc)
    return result if result.endswith("\n") else result + "\n"


def apply(plan: Plan, root: Path) -> list[Path]:
    """Write a plan under `root`, all or nothing. Returns the paths created, top-most first."""
    for file in plan.create:
        if (root / file.path).exists():
            raise ScaffoldError(f"{root / file.path} already exists; nothing was written")
    new_roots = sorted({_topmost_new(root, file.path) for file in plan.create})
    moved: list[Path] = []
    replacements: list[tuple[Path, Path]] = []
    stage = Path(tempfile.mkdtemp(prefix=".microkit-new-", dir=root))
    try:
        for file in plan.create:
            target = stage / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.content)
        for number, file in enumerate(plan.replace):
            destination = root / file.path
            staged = destination.with_name(f".{destination.name}.microkit-new-{number}")
            staged.write_bytes(file.content)
            shutil.copymode(destination, staged)
            replacements.append((staged, destination))
        for new in new_roots:
            os.rename(stage / new, root / new)
            moved.append(root / new)
        for staged, destination in replacements:
            os.replace(staged, destination)
    except BaseException:
        for path in reversed(moved):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for staged, _ in replacements:
            staged.unlink(missing_ok=True)
    return moved


def _topmost_new(root: Path, relative: PurePosixPath) -> PurePosixPath:
    """The first component of `relative` that does not exist yet under root: the unit moved into place."""
    for depth in range(1, len(relative.parts) + 1):
        prefix = PurePosixPath(*relative.parts[:depth])
        if not (root / prefix).exists():
            return prefix
    return relative
