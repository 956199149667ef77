"""Task accuracy through lm-evaluation-harness: what a job's `--tasks`
names, the task directory a user may give (`--tasks-dir`), and the one task
qfarm ships, `builtin`, which needs no network.

`builtin` (lm-eval task `qfarm_cloze`) is written here from the held-out
public-domain book qfarm ships for perplexity (api_client/data): each item
is a passage of the book and the first words of its next sentence, and the
model must pick the sentence's true last word among four (the others are
last words of other sentences of the book, chosen by a fixed seed).
Accuracy is scored by lm-eval's log-likelihood of each choice (`acc`, and
`acc_norm`, normalized by length). A random guess scores 25 %.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from api_client.contract import task_yaml
from api_client.errors import SpecError

BUILTIN = "builtin"
BUILTIN_TASK = "qfarm_cloze"
BUILTIN_ITEMS = 500
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# A task directory travels with the job through the store, like a local
# calibration file: bounded so a mistaken path does not upload a disk.
MAX_TASKS_DIR_BYTES = 64 * 2**20
MAX_TASKS_DIR_FILES = 10_000
# A sentence runs to its closing punctuation and any quote or bracket after it.
_SENTENCE = re.compile(r"[^.!?]*[A-Za-z][^.!?]*[.!?]+[\"')\]]*")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


def describe() -> str:
    return (f"builtin: {BUILTIN_ITEMS} four-way cloze items written from the held-out book qfarm ships (pick a sentence's "
            f"last word given the passage before it), lm-eval task {BUILTIN_TASK}; chance is 25 %")


def parse_names(text: str | None) -> list[str]:
    """'builtin,hellaswag' → the lm-eval task names a job runs."""
    if text is None:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SpecError("--tasks names no task: give e.g. --tasks builtin or --tasks builtin,arc_easy")
    for name in names:
        if not _NAME.match(name):
            raise SpecError(f"--tasks: {name!r} is not a task name (letters, digits, '_', '-', '.')")
    return [BUILTIN_TASK if n == BUILTIN else n for n in names]


def check_tasks_dir(path_text: str, names: list[str], allow_code: bool = False) -> Path:
    """A local directory of lm-eval task YAML files (and the data files they
    name, relative to it): it exists, is not too large, holds no link
    leaving it, is data (api_client/contract/task_yaml.py: no Python, no include or
    data file outside it, no template reaching Python) unless the job may
    run code (--allow-remote-code), and defines the tasks asked for that
    lm-eval's registry would not know."""
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise SpecError(f"--tasks-dir {path_text}: not a directory")
    root = path.resolve()
    total = 0
    items = task_yaml.entries(root)
    for item in items:
        if item.is_symlink() and not item.resolve().is_relative_to(root):
            raise SpecError(f"--tasks-dir: {item.relative_to(root)} links outside the directory")
        if item.is_file():
            total += item.stat().st_size
    if total > MAX_TASKS_DIR_BYTES or len(items) > MAX_TASKS_DIR_FILES:
        raise SpecError(f"--tasks-dir {path_text} holds {total / 2**20:.0f} MiB in {len(items)} files and folders, "
                        f"more than the {MAX_TASKS_DIR_BYTES // 2**20} MiB or {MAX_TASKS_DIR_FILES} a job may carry")
    try:
        tasks = task_yaml.load(root, allow_code)
    except task_yaml.RunsCode as exc:
        raise SpecError(f"--tasks-dir: {exc}, which lm-eval would run on the worker: pass --allow-remote-code "
                        f"(workers started with --allow-remote-code take such jobs)") from None
    except SpecError as exc:
        raise SpecError(f"--tasks-dir: {exc}") from None
    if not tasks.defined:
        raise SpecError(f"--tasks-dir {path_text} has no task YAML (a .yaml file with a 'task:' key)")
    # A name the directory does not define would go to lm-eval's registry,
    # which needs the hub; with a directory given, it is more likely a typo.
    missing = [n for n in names if n not in tasks.defined and n != BUILTIN_TASK]
    if missing:
        raise SpecError(f"--tasks-dir {path_text} defines {', '.join(sorted(tasks.defined))}, not {', '.join(missing)} "
                        f"(submit registry tasks without --tasks-dir)")
    return root


def cloze_items(text: str, count: int = BUILTIN_ITEMS, seed: int = 1234) -> list[dict]:
    """The builtin task's items, the same every time for the same text. The
    passage is the book's own text (whitespace collapsed) up to the word
    taken out."""
    flat = " ".join(text.split())
    spans = [m.span() for m in _SENTENCE.finditer(flat)]
    candidates = []
    for i in range(3, len(spans)):
        sentence = flat[spans[i][0]:spans[i][1]]
        if not sentence.endswith("."):
            continue  # a question or a quote: its last word is less determined
        words = sentence[:-1].split()
        if len(words) >= 6 and _WORD.match(words[-1]):
            cut = spans[i][1] - 1 - len(words[-1])
            candidates.append((flat[spans[i - 3][0]:cut].strip(), words[-1]))
    finals = sorted({last for _, last in candidates})
    rng = random.Random(seed)
    rng.shuffle(candidates)
    items = []
    for context, last in candidates[:count]:
        # Wrong choices written like the answer (capitalized or not), so its
        # case does not give it away.
        pool = [w for w in finals if w.lower() != last.lower() and w[0].isupper() == last[0].isupper()]
        wrong = rng.sample(sorted({w.lower(): w for w in pool}.values()), 3)
        label = rng.randrange(4)
        items.append({"context": context[-1200:], "choices": wrong[:label] + [last] + wrong[label:], "label": label})
    return items


def write_builtin(dest: Path, text: str) -> Path:
    """Write the builtin task (YAML + JSONL) into `dest`; returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    data = dest / f"{BUILTIN_TASK}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in cloze_items(text)))
    # Read through api_client/contract/task_yaml.py like a user's task directory.
    (dest / f"{BUILTIN_TASK}.yaml").write_text(
        f"task: {BUILTIN_TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data.name}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\n"
        "target_delimiter: \" \"\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return dest
