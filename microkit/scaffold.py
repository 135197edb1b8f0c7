"""`microkit new`: render templates into files, then write them in a separate, all-or-nothing step.

Rendering never touches the disk it writes to: it returns a `Plan` (new files, plus a replacement
microkit.toml), which `--dry-run` prints instead of applying. `apply` checks the plan against the
disk, stages every new file in a temporary folder beside its destination and moves each new folder
into place with one rename, so a refusal or a failure leaves the project exactly as it was.
A template folder may carry a `template.toml` (its description, its own variables, the
microkit.toml table it adds); it is read, never copied.
"""

from __future__ import annotations

import difflib
import importlib.util
import keyword
import os
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import tomlkit
import tomlkit.exceptions

from . import config as cfg
from .errors import ConfigError, ScaffoldError

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
DOT_PREFIX = "dot-"  # templates store ".gitignore" as "dot-gitignore": package data skips dotfiles
SKIP = {"__pycache__", ".DS_Store"}
PROJECT_TEMPLATE = "project"
METADATA = "template.toml"
BUILTIN_VARIABLES = ("project", "service", "route", "model")
ADDED_KEYS = ("route", "workers")  # from the command line, after the template's own table


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
    before: tuple[File, ...] = field(default=())  # what the replaced files hold now, for --dry-run

    def describe(self) -> str:
        """What applying the plan would do, as `--dry-run` prints it: the new files, then a diff of each edit."""
        lines = [f"would create {file.path} ({len(file.content)} bytes)" for file in self.create]
        old = {file.path: file.content for file in self.before}
        for file in self.replace:
            lines.append(f"would change {file.path}:")
            diff = difflib.unified_diff(old.get(file.path, b"").decode("utf-8").splitlines(),
                                        file.content.decode("utf-8").splitlines(),
                                        f"{file.path}", f"{file.path}", lineterm="")
            lines.extend(diff)
        lines.append("nothing was written (--dry-run)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Template:
    """A service template folder and what its template.toml says about it."""

    name: str
    path: Path
    description: str
    variables: Mapping[str, str]  # its own {{placeholders}}, with their defaults (--var NAME=VALUE)
    table: Mapping[str, Any]      # the keys of the [services.NAME] table it adds, before route and workers



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


def load_template(name: str) -> Template:
    """A template and its template.toml; without one: no variables and an `app` table."""
    path = template_dir(name)
    meta_path = path / METADATA
    label = str(meta_path)
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = tomllib.loads(meta_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ScaffoldError(f"{label}: invalid TOML: {exc}") from None
    for key in meta:
        if key not in ("description", "variables", "service"):
            raise ScaffoldError(f"{label}: {key}: unknown key (known: description, variables, service)")
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise ScaffoldError(f"{label}: description: expected a string")
    variables = meta.get("variables", {})
    if not isinstance(variables, dict):
        raise ScaffoldError(f'{label}: variables: expected a table of NAME = "default"')
    for var, default in variables.items():
        if not var.isidentifier() or var in BUILTIN_VARIABLES:
            raise ScaffoldError(f"{label}: variables.{var}: expected an identifier other than "
                                f"{', '.join(BUILTIN_VARIABLES)}")
        if not isinstance(default, str):
            raise ScaffoldError(f'{label}: variables.{var}: expected a string default, e.g. {var} = "..."')
    table = meta.get("service", {"app": "services.{{service}}.app:app"})
    if not isinstance(table, dict):
        raise ScaffoldError(f"{label}: service: expected a table (the keys of [services.NAME])")
    for key in ADDED_KEYS:
        if key in table:
            raise ScaffoldError(f"{label}: service.{key}: set by `microkit new service --{key}`, not here")
    return Template(path.name, path, description.strip() or "(no description: its folder has no template.toml)",
                    MappingProxyType(dict(variables)), MappingProxyType(dict(table)))


def catalogue() -> list[Template]:
    """The built-in service templates, for `microkit new service --list`."""
    return [load_template(name) for name in builtin_templates()]


def render(template: Path, variables: dict[str, str], dest: PurePosixPath) -> list[File]:
    """Every file of a template folder with its {{placeholders}} filled in, placed under `dest`."""
    files = []
    for source in sorted(template.rglob("*")):
        relative = source.relative_to(template)
        if source.is_dir() or SKIP.intersection(relative.parts) or source.suffix in (".pyc", ".pyo"):
            continue
        if relative == Path(METADATA):
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


def _fill_values(value: Any, variables: dict[str, str], template: Path) -> Any:
    """A template.toml value with the placeholders of its strings filled, inside tables and arrays too."""
    if isinstance(value, str):
        return _fill(value, variables, template, Path(METADATA))
    if isinstance(value, dict):
        return {key: _fill_values(item, variables, template) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill_values(item, variables, template) for item in value]
    return value


def check_name(kind: str, name: str, *, shadow_check: bool) -> None:
    """Refuse names that cannot be Python packages, or that would shadow a module the code imports."""
    if not name.isidentifier() or not name.isascii():
        suggestion = re.sub(r"[^A-Za-z0-9_]", "_", name).lstrip("0123456789")
        offered = suggestion.strip("_") and suggestion.isidentifier() and not keyword.iskeyword(suggestion)
        hint = f" (e.g. {suggestion!r})" if offered else ""
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


def plan_project(name: str, parent: Path | None = None) -> Plan:
    """A new project folder NAME under `parent` (default: here); an existing non-empty folder is refused."""
    check_name("project", name, shadow_check=True)
    folder = (parent or Path.cwd()) / name
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ScaffoldError(f"{name}/ already exists; nothing was written (a new project needs a new or empty folder)")
    return Plan(tuple(render(templates_root() / PROJECT_TEMPLATE, {"project": name}, PurePosixPath(name))))


def plan_service(project: cfg.Config, name: str, template: str = "rest",
                 route: str | None = None, workers: int = 1, values: Mapping[str, str] | None = None) -> Plan:
    """The files of a new service, and microkit.toml with its [services.NAME] table added.
    `values` sets the template's own variables (`--var NAME=VALUE`)."""
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

    chosen = load_template(template)
    for var in values or {}:
        if var not in chosen.variables:
            known = ", ".join(chosen.variables) or "none"
            raise ScaffoldError(f"--var {var}: template {chosen.name!r} has no such variable (its variables: {known})")
    variables = {**chosen.variables, **(values or {}),
                 "project": project.project.name, "service": name, "route": route, "model": model_name(name)}
    files = render(chosen.path, variables, PurePosixPath("services", name))
    if not (project.root / "services" / "__init__.py").exists():
        files.append(File(PurePosixPath("services", "__init__.py"), b'"""The project\'s services, one package each."""\n'))

    meta = chosen.path / METADATA
    table = {key: _fill_values(value, variables, chosen.path) for key, value in chosen.table.items()}
    if table and not {"app", "command"} & set(table):  # consumers only (the events template): no route
        added = {**table, "consumers": workers}
    else:
        added = {**table, "route": route, "workers": workers}
    toml_text = _add_service_table(project.path, name, added)
    try:
        cfg.parse(toml_text, project.path)  # the edit must leave a valid config, or nothing is written
    except ConfigError as exc:
        if meta.is_file():
            raise ScaffoldError(f"{exc} (from the [service] table of {meta})") from None
        raise
    toml_path = PurePosixPath(os.path.relpath(project.path, project.root))
    before = File(toml_path, project.path.read_bytes())
    return Plan(tuple(files), (File(toml_path, toml_text.encode("utf-8")),), (before,))


def _add_service_table(path: Path, name: str, keys: Mapping[str, Any]) -> str:
    """microkit.toml with [services.NAME] appended, its comments and layout kept as they were."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ScaffoldError(f"{cfg.display_path(path)}: invalid TOML: {exc}") from None
    table = tomlkit.table()
    for key, value in keys.items():
        if isinstance(value, dict):  # env = { ... } stays on its line, as people write it
            inline = tomlkit.inline_table()
            inline.update(value)
            value = inline
        table.add(key, value)
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
