"""A user's lm-eval task directory read as data, by qfarm, before lm-eval sees it.

lm-eval's own loader runs what a task directory says: `!function mod.fn`
imports the directory's Python however the tag is spelled (PyYAML decodes
`!fun%63tion` as `!function`), `include:` follows any path (`/etc/x`,
`../../y`, a `.txt`), `dataset_path`/`data_files` read any file
(`/proc/self/environ`), and every `doc_to_*` template is a Python expression
(`{{ lipsum.__globals__['os'].popen('id').read() }}`). Text matching cannot
decide any of this. So qfarm parses every YAML file itself and hands lm-eval
finished configs (worker/evaluators/task_accuracy.py), never a path to load:

- YAML is parsed safely (`yaml.SafeLoader`): no Python objects; the one
  extra tag, `!function`, is refused unless the job and the worker allow
  remote code, as are `class:`, `unsafe_code: true` and any `*.py` file;
- `include:` is resolved here, to YAML files inside the directory only (no
  absolute path, no `..`);
- every data path is resolved here: `dataset_path` is a plain file builder
  (json, csv, parquet, text, arrow) whose `data_files`/`data_dir` lie inside
  the directory (rewritten to absolute paths there), or a hub dataset name
  that is no path; other `dataset_kwargs` only from a list of format options;
  no prompt file (`use_prompt` with a path), no metric fetched from the hub
  (`hf_evaluate`);
- every template must parse in Jinja's sandbox and reach no attribute or key
  starting with `_` (what every known escape needs); the worker renders them
  in the sandbox too, which stops what a template builds at run time.

The client runs this at submit and the worker again on what it unpacked (a
message need not come through `qfarm submit`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from api_client.contract.sources import hub_dataset_problem
from api_client.errors import SpecError, first_line

# lm-eval indexes these as task files; includes may also be `.yml` or lm-eval's
# own convention, a name ending in `_yaml` (`_default_template_yaml`).
TASK_SUFFIX = ".yaml"
# Python that lm-eval would import (`!function`, `class:`).
CODE_SUFFIXES = (".py", ".pyc", ".so")
BUILDERS = ("json", "csv", "parquet", "text", "arrow")
# What `dataset_kwargs` may hold beside the data files: how a file is read,
# never where a cache, a credential or code comes from.
FORMAT_OPTIONS = ("field", "sep", "delimiter", "column_names", "header", "names", "encoding", "encoding_errors",
                  "keep_linebreaks", "sample_by", "columns", "quotechar", "skiprows", "revision")
# What `generation_kwargs` may set: how text is sampled. The rest of
# `generate`'s arguments include `custom_generate` (code from the hub) and
# `trust_remote_code`.
GENERATION_OPTIONS = ("until", "max_gen_toks", "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p",
                      "top_k", "min_p", "typical_p", "num_beams", "repetition_penalty", "length_penalty",
                      "no_repeat_ngram_size", "early_stopping", "epsilon_cutoff", "eta_cutoff")
_PROMPT = re.compile(r"^[\w\-]+:[\w\-]+$")
_METRIC = re.compile(r"^[A-Za-z_][\w+\-]*$")
# Configs are data: a cap on a directory's values, counted as lm-eval
# expands them, keeps an alias bomb (`&a [*a, *a]`, nested) from taking the
# worker's memory and time.
MAX_NODES = 200_000
MAX_DEPTH = 64
# Includes are followed each time they are named (lm-eval's rule): a file
# naming another thirty times, which names another thirty times, would parse
# without end. A directory follows at most this many, or this many bytes.
MAX_INCLUDES = 1000
MAX_INCLUDED_BYTES = 16 * 2**20


class RunsCode(SpecError):
    """The directory holds Python lm-eval would run, and the job may not."""


@dataclass(frozen=True)
class FunctionRef:
    """`!function module.name` of a job that may run code: imported on the
    worker from the directory of the YAML file that named it."""

    name: str
    base: Path


@dataclass
class TaskDir:
    root: Path
    # Every config that defines a task or a group, fully resolved.
    configs: list[dict[str, Any]] = field(default_factory=list)
    # Names it defines: tasks, groups and tags.
    defined: set[str] = field(default_factory=set)
    # Hub datasets its tasks read (the worker then needs the hub).
    hub_datasets: set[str] = field(default_factory=set)
    # Why it runs code (only when allowed; otherwise it was refused).
    code: str | None = None


def load(root: Path, allow_code: bool = False) -> TaskDir:
    """Every task YAML of `root`, resolved and checked (see the module's
    docstring); SpecError naming the file and the problem otherwise."""
    root = root.resolve()
    out = TaskDir(root)
    items = entries(root)
    reader = _Reader(root, allow_code)
    nodes = 0  # values walked, over all configs (lm-eval copies each config it builds)
    for item in items:
        if item.name.endswith(CODE_SUFFIXES):
            if not allow_code:
                raise RunsCode(f"{_rel(item, root)} is Python code")
            out.code = out.code or f"{_rel(item, root)} is Python code"
    for path in items:
        if not path.name.endswith(TASK_SUFFIX) or not path.is_file() \
                or any(part in ("__pycache__", ".ipynb_checkpoints") for part in path.parts):
            continue
        cfg = reader.config(path)
        if not isinstance(cfg, dict) or not ({"task", "group"} & cfg.keys()):
            continue
        checker = _Checker(root, path, allow_code, MAX_NODES - nodes)
        checker.walk(cfg)
        nodes += checker.nodes
        out.hub_datasets |= checker.hub_datasets
        out.code = out.code or checker.code
        out.configs.append(cfg)
        for key in ("task", "group"):
            if isinstance(cfg.get(key), str):
                out.defined.add(cfg[key])
        tags = cfg.get("tag")
        out.defined.update(t for t in ([tags] if isinstance(tags, str) else tags or []) if isinstance(t, str))
    return out


def entries(root: Path) -> list[Path]:
    """Everything under `root`, sorted, without descending into a linked
    directory (a link to `.` would make a walk that follows it endless)."""
    out = []
    for base, dirs, files in os.walk(root, followlinks=False):
        out += [Path(base) / name for name in dirs + files]
    return sorted(out)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class _Reader:
    """YAML files of one directory, `include:` resolved as lm-eval would
    (the included keys first, the file's own win) but only inside it."""

    def __init__(self, root: Path, allow_code: bool):
        self.root, self.allow_code = root, allow_code
        self.includes = self.included_bytes = 0

    def config(self, path: Path, seen: tuple[Path, ...] = ()) -> Any:
        if path in seen:
            chain = " → ".join(_rel(p, self.root) for p in (*seen[seen.index(path):], path))
            raise SpecError(f"{_rel(path, self.root)} includes itself ({chain})")
        if seen:
            self.includes += 1
            self.included_bytes += path.stat().st_size
            if self.includes > MAX_INCLUDES or self.included_bytes > MAX_INCLUDED_BYTES:
                raise SpecError(f"{_rel(seen[-1], self.root)}: the directory's includes, counted each time one is "
                                f"followed, come to more than {MAX_INCLUDES} files or "
                                f"{MAX_INCLUDED_BYTES // 2**20} MiB")
        cfg = self.parse(path)
        if not isinstance(cfg, dict) or "include" not in cfg:
            return cfg
        includes = cfg.pop("include")
        merged: dict[str, Any] = {}
        for name in includes if isinstance(includes, list) else [includes]:
            inc = self.config(self.included(path, name), (*seen, path))
            if not isinstance(inc, dict):
                raise SpecError(f"{_rel(path, self.root)} includes {name}, which is not a YAML mapping")
            inc.pop("task_list", None)
            merged.update(inc)
        merged.update(cfg)
        return merged

    def included(self, path: Path, name: Any) -> Path:
        where = f"{_rel(path, self.root)}: include {name!r}"
        if not isinstance(name, str) or not name:
            raise SpecError(f"{where} is not a file name")
        pure = PurePosixPath(name)
        if pure.is_absolute() or name.startswith("~") or "://" in name or ".." in pure.parts or "\\" in name:
            raise SpecError(f"{where} is outside the task directory (an include names a file inside it, "
                            f"relative, without '..')")
        if not (pure.suffix in (".yaml", ".yml") or pure.name.endswith("_yaml")):
            raise SpecError(f"{where} is not a YAML file (.yaml, .yml or *_yaml)")
        target = (path.parent / name).resolve()
        if not target.is_relative_to(self.root):
            raise SpecError(f"{where} leads outside the task directory")
        if not target.is_file():
            raise SpecError(f"{where}: no such file in the task directory")
        return target

    def parse(self, path: Path) -> Any:
        rel = _rel(path, self.root)
        allow_code = self.allow_code

        class Loader(yaml.SafeLoader):
            pass

        def function(loader: yaml.SafeLoader, node: yaml.Node) -> FunctionRef:
            name = str(loader.construct_scalar(node))
            if not allow_code:
                raise RunsCode(f"{rel}: !function {name} names Python code")
            return FunctionRef(name, path.parent)

        Loader.add_constructor("!function", function)
        try:
            return yaml.load(path.read_text(errors="replace"), Loader=Loader)
        except yaml.YAMLError as exc:
            raise SpecError(f"{rel} is not plain YAML: {first_line(exc)}") from None
        except RecursionError:  # the parser recurses per level: `[[[[...]]]]`
            raise SpecError(f"{rel} nests deeper than {MAX_DEPTH} levels") from None


class _Checker:
    """Every node of one resolved config: data paths, templates, code."""

    def __init__(self, root: Path, path: Path, allow_code: bool, max_nodes: int = MAX_NODES):
        self.root, self.where, self.allow_code, self.max_nodes = root, _rel(path, root), allow_code, max_nodes
        self.hub_datasets: set[str] = set()
        self.code: str | None = None
        self.nodes = 0
        # Mappings and templates already checked: an alias (`*kw`) names the
        # same one twice.
        self.seen: set[int] = set()
        self.templates: set[str] = set()

    def refuse(self, what: str) -> SpecError:
        return SpecError(f"{self.where}: {what}")

    def needs_code(self, what: str) -> None:
        if not self.allow_code:
            raise RunsCode(f"{self.where}: {what} names Python code")
        self.code = self.code or f"{self.where}: {what}"

    def walk(self, node: Any, key: str = "", depth: int = 0) -> None:
        self.nodes += 1
        if depth > MAX_DEPTH:
            # The same line as the parser's RecursionError: which of the two
            # sees it first depends on the interpreter's recursion limit.
            raise self.refuse(f"nests deeper than {MAX_DEPTH} levels")
        if self.nodes > self.max_nodes:
            raise self.refuse(f"the directory's configs hold more than {MAX_NODES} values (YAML aliases expanded)")
        if isinstance(node, dict):
            # Checked once, but counted each time it is named: lm-eval copies
            # it each time (an alias bomb of mappings, `&b {x: *a, y: *a}`
            # nested thirty deep, is a billion values to it).
            if id(node) not in self.seen:
                self.seen.add(id(node))
                self.check_mapping(node)
            for k, v in node.items():
                self.walk(v, str(k), depth + 1)
        elif isinstance(node, list):
            for v in node:
                self.walk(v, key, depth + 1)
        elif isinstance(node, str) and node not in self.templates:
            check_template(node, f"{self.where}: {key or 'a value'}")
            self.templates.add(node)

    def check_mapping(self, node: dict[str, Any]) -> None:
        if "class" in node:
            self.needs_code("class:")
        if node.get("unsafe_code"):
            self.needs_code("unsafe_code: true (model output run as code)")
        if "dataset_path" in node or "dataset_kwargs" in node:
            self.check_dataset(node)
        prompt = node.get("use_prompt")
        if prompt is not None and (not isinstance(prompt, str) or not _PROMPT.match(prompt)
                                   or prompt.startswith("promptsource:")):
            raise self.refuse(f"use_prompt {prompt!r}: only lm-eval's own prompts (category:name), no file")
        generation = node.get("generation_kwargs")
        if isinstance(generation, dict):
            unknown = sorted(str(k) for k in generation if k not in GENERATION_OPTIONS)
            if unknown:
                raise self.refuse(f"generation_kwargs {', '.join(unknown)} not allowed ({', '.join(GENERATION_OPTIONS)})")
        for metric in node.get("metric_list") or []:
            if isinstance(metric, dict) and metric.get("hf_evaluate"):
                raise self.refuse(f"metric {metric.get('metric')!r} with hf_evaluate: a metric fetched from the hub "
                                  f"is code")
            # A name lm-eval does not register is handed to `evaluate.load`,
            # which runs a script from a path or the hub: one that looks like
            # a path or module is refused here (the worker checks the rest
            # against lm-eval's registry).
            name = metric.get("metric") if isinstance(metric, dict) else None
            if isinstance(name, str) and not _METRIC.match(name) and not self.allow_code:
                raise self.refuse(f"metric {name!r} is no lm-eval metric name: it would be loaded from a path or the "
                                  f"hub and run")

    def check_dataset(self, node: dict[str, Any]) -> None:
        path, kwargs = node.get("dataset_path"), node.get("dataset_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise self.refuse("dataset_kwargs is not a mapping")
        unknown = sorted(str(k) for k in kwargs if k not in ("data_files", "data_dir", *FORMAT_OPTIONS))
        if unknown:
            raise self.refuse(f"dataset_kwargs {', '.join(unknown)} not allowed (data_files, data_dir, "
                              f"{', '.join(FORMAT_OPTIONS)})")
        if path in BUILDERS:
            if "data_files" not in kwargs and "data_dir" not in kwargs:
                raise self.refuse(f"dataset_path {path} needs dataset_kwargs.data_files (files of the task directory)")
            # Files of the directory, named relative to it, handed to
            # `datasets` as absolute paths there (it reads relative ones
            # against the working directory).
            if "data_files" in kwargs:
                kwargs["data_files"] = self.local_files(kwargs["data_files"])
            if "data_dir" in kwargs:
                kwargs["data_dir"] = str(self.local_path(kwargs["data_dir"], "data_dir", directory=True))
            return
        if not isinstance(path, str) or hub_dataset_problem(path, self.root):
            raise self.refuse(f"dataset_path {path!r} is neither a file builder ({', '.join(BUILDERS)}, with "
                              f"data_files inside the task directory) nor a hub dataset name (owner/name)")
        # Files of a hub dataset are named inside its repository.
        for name in _file_names(kwargs.get("data_files")) + _file_names(kwargs.get("data_dir")):
            self.relative(name, "data_files")
        self.hub_datasets.add(path)

    def relative(self, name: Any, what: str) -> PurePosixPath:
        if not isinstance(name, str) or not name:
            raise self.refuse(f"{what} {name!r} is not a file name")
        pure = PurePosixPath(name)
        if pure.is_absolute() or name.startswith("~") or "://" in name or ".." in pure.parts or "\\" in name:
            raise self.refuse(f"{what} {name} is outside the task directory (name files relative to it, "
                              f"without '..')")
        return pure

    def local_path(self, name: Any, what: str, directory: bool = False) -> Path:
        pure = self.relative(name, what)
        target = (self.root / pure).resolve()
        if not target.is_relative_to(self.root):
            raise self.refuse(f"{what} {name} leads outside the task directory")
        if not any(c in str(pure) for c in "*?[") and not (target.is_dir() if directory else target.is_file()):
            raise self.refuse(f"{what} {name}: no such {'directory' if directory else 'file'} in the task directory")
        return target

    def local_files(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {split: self.local_files(v) for split, v in value.items()}
        if isinstance(value, list):
            return [self.local_files(v) for v in value]
        return str(self.local_path(value, "data_files"))


def _file_names(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [n for v in value.values() for n in _file_names(v)]
    if isinstance(value, list):
        return [n for v in value for n in _file_names(v)]
    return [value]


def check_template(text: str, where: str) -> None:
    """Refuse a Jinja template that does not parse in the sandbox or reaches
    an attribute or key starting with `_` (`__globals__`, `__class__`,
    `_TemplateReference__context`): every known escape from Jinja into Python
    goes through one. What a template only builds at run time (a name read
    from the data) the sandbox refuses as it renders (worker)."""
    if "{{" not in text and "{%" not in text and "{#" not in text:
        return
    from jinja2 import nodes
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        tree = ImmutableSandboxedEnvironment().parse(text)
    except TemplateSyntaxError as exc:
        raise SpecError(f"{where}: not a valid Jinja template: {first_line(exc)}") from None
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        reached = None
        if isinstance(node, nodes.Getattr):
            reached = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            reached = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            reached = node.args[0].value
        if isinstance(reached, str) and reached.startswith("_"):
            raise SpecError(f"{where}: the template reaches Python internals ({reached}): refused")
