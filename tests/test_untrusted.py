"""Untrusted input (issue 18): a task directory is read as data, never run;
nothing outside the job's own files is read; inputs are bounded. Each
refusal is checked at submit (`spec.resolve`, what `qfarm submit` runs) and
again on the worker, from an archive that did not come through submit."""

import json
import os
import tarfile

import pytest

from api_client.contract import inputs
from api_client.contract.spec import EvalSpec, JobSpec, resolve
from api_client.errors import QFarmError, SpecError
from tests.test_tasks import write_task_dir
from worker import lm_eval_inputs

# -- task directories ------------------------------------------------------------------


def _yaml(d, text):
    """The task's YAML with the top-level keys that `text` sets replaced by it."""
    path = d / "animals.yaml"
    keys = {line.split(":", 1)[0] for line in text.splitlines() if line and not line[0].isspace()}
    out, skip = [], False
    for line in path.read_text().splitlines(keepends=True):
        if not line[0].isspace():
            skip = line.split(":", 1)[0] in keys
        if not skip:
            out.append(line)
    path.write_text("".join(out) + text)


def jinja_escape(d, tmp_path):
    _yaml(d, f"doc_to_text: \"{{{{ lipsum.__globals__['os'].popen('touch {tmp_path}/ran').read() }}}}\"\n")


def encoded_function_tag(d, tmp_path):
    (d / "utils.txt").write_text("not python\n")
    _yaml(d, "doc_to_text: !fun%63tion utils.text\n")


def function_in_included_txt(d, tmp_path):
    (d / "common.txt").write_text("doc_to_text: !function utils.text\n")
    _yaml(d, "include: common.txt\n")


def function_in_included_yaml(d, tmp_path):
    (d / "_common_yaml").write_text("doc_to_text: !function utils.text\n")
    _yaml(d, "include: _common_yaml\n")


def module_at_x_dot_py(d, tmp_path):
    (d / "x").mkdir()
    (d / "x" / ".py").write_text(f"import os\nos.system('touch {tmp_path}/ran')\ndef text(doc):\n    return 'x'\n")
    _yaml(d, "doc_to_text: !fun%63tion x..text\n")


def include_absolute(d, tmp_path):
    (tmp_path / "outside.yaml").write_text("doc_to_text: '{{q}}'\n")
    _yaml(d, f"include: {tmp_path / 'outside.yaml'}\n")


def include_parent(d, tmp_path):
    (tmp_path / "outside.yaml").write_text("doc_to_text: '{{q}}'\n")
    _yaml(d, "include: ../outside.yaml\n")


def dataset_path_absolute(d, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    _yaml(d, f"dataset_path: {tmp_path / 'elsewhere'}\n")


def dataset_path_parent(d, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    _yaml(d, "dataset_path: ../elsewhere\n")


def data_files_absolute(d, tmp_path):
    (tmp_path / "other.jsonl").write_text((d / "data.jsonl").read_text())
    _yaml(d, f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'other.jsonl'}\n")


def data_files_parent(d, tmp_path):
    (tmp_path / "other.jsonl").write_text((d / "data.jsonl").read_text())
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: ../other.jsonl\n")


def data_files_proc_environ(d, tmp_path):
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: /proc/self/environ\n")


def class_key(d, tmp_path):
    _yaml(d, "class: !function utils.Task\n")


def cache_dir_option(d, tmp_path):
    _yaml(d, f"dataset_kwargs:\n  data_files:\n    test: data.jsonl\n  cache_dir: {tmp_path}\n")


def prompt_file(d, tmp_path):
    (tmp_path / "p.yaml").write_text("prompts:\n  p: '{{q}}'\n")
    _yaml(d, f"use_prompt: '{tmp_path / 'p.yaml'}:p'\n")


def python_tag(d, tmp_path):
    _yaml(d, f"doc_to_text: !!python/object/apply:os.system ['touch {tmp_path}/ran']\n")


def hub_generation_code(d, tmp_path):
    _yaml(d, "output_type: generate_until\ngeneration_kwargs:\n  until: ['.']\n  custom_generate: evil/code\n"
             "  trust_remote_code: true\n")


def hub_metric(d, tmp_path):
    _yaml(d, "metric_list:\n  - metric: evil\n    hf_evaluate: true\n")


def cycler_globals(d, tmp_path):
    _yaml(d, "doc_to_text: \"{{ cycler.__init__.__globals__.os.popen('id').read() }}\"\n")


def template_self_context(d, tmp_path):
    _yaml(d, "doc_to_text: \"{{ self._TemplateReference__context.cycler }}\"\n")


def attr_filter(d, tmp_path):
    _yaml(d, "doc_to_text: \"{{ (lipsum|attr('__globals__'))['os'] }}\"\n")


def image_template(d, tmp_path):
    _yaml(d, "doc_to_image: \"{{ [].__class__.__mro__ }}\"\n")


def until_template(d, tmp_path):
    _yaml(d, "output_type: generate_until\ngeneration_kwargs:\n  until: [\"{{ namespace.__init__ }}\"]\n")


def function_by_merge_key(d, tmp_path):
    _yaml(d, "common: &common\n  doc_to_text: !function utils.text\n<<: *common\n")


def function_verbatim_tag(d, tmp_path):
    _yaml(d, "doc_to_text: !<!function> utils.text\n")


def python_name_tag(d, tmp_path):
    _yaml(d, "process_results: !!python/name:os.system\n")


def data_files_list_with_absolute(d, tmp_path):
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: [data.jsonl, /etc/passwd]\n")


def data_files_root_glob(d, tmp_path):
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: '/**'\n")


def data_files_hub_url(d, tmp_path):
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: hf://datasets/owner/name/x.jsonl\n")


def data_files_http_url(d, tmp_path):
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: http://127.0.0.1:1/x.jsonl\n")


def hub_dataset_absolute_file(d, tmp_path):
    _yaml(d, "dataset_path: owner/name\ndataset_kwargs:\n  data_files:\n    test: /proc/self/environ\n")


def alias_bomb(d, tmp_path):
    # 2^30 values once expanded, as lm-eval expands them (a few hundred bytes of YAML).
    levels = "".join(f"  l{i}: &l{i} {{a: {f'*l{i - 1}' if i else 1}, b: {f'*l{i - 1}' if i else 1}}}\n"
                     for i in range(30))
    _yaml(d, "metadata:\n" + levels)


def deep_nesting(d, tmp_path):
    _yaml(d, "metadata: " + "[" * 600 + "]" * 600 + "\n")


def alias_bombs_spread_over_files(d, tmp_path):
    # Each task just under the bound; together far past it.
    levels = "".join(f"  l{i}: &l{i} {{a: {f'*l{i - 1}' if i else 1}, b: {f'*l{i - 1}' if i else 1}}}\n"
                     for i in range(16))
    for n in range(8):
        (d / f"t{n}.yaml").write_text((d / "animals.yaml").read_text().replace("task: animals", f"task: t{n}")
                                      + "metadata:\n" + levels)


def include_fan_out(d, tmp_path):
    # 30^5 includes, each parsed again where it is named.
    for i in range(5):
        (d / f"i{i}_yaml").write_text("include: [" + ", ".join([f"i{i + 1}_yaml"] * 30) + "]\n")
    (d / "i5_yaml").write_text("description: ''\n")
    _yaml(d, "include: i0_yaml\n")


def include_cycle(d, tmp_path):
    (d / "a_yaml").write_text("include: b_yaml\n")
    (d / "b_yaml").write_text("include: a_yaml\n")
    _yaml(d, "include: a_yaml\n")


def metric_by_module_path(d, tmp_path):
    _yaml(d, "metric_list:\n  - metric: os.path.exists\n")


def metric_by_local_path(d, tmp_path):
    _yaml(d, "metric_list:\n  - metric: ./metrics/evil\n")


def link_to_environ(d, tmp_path):
    (d / "rows.jsonl").symlink_to("/proc/self/environ")
    _yaml(d, "dataset_kwargs:\n  data_files:\n    test: rows.jsonl\n")


VARIANTS = [
    (cycler_globals, r"reaches Python internals \(__(init|globals)__\)"),
    (template_self_context, r"reaches Python internals \(_TemplateReference__context\)"),
    (attr_filter, r"reaches Python internals \(__globals__\)"),
    (image_template, r"doc_to_image: the template reaches Python internals"),
    (until_template, r"until: the template reaches Python internals \(__init__\)"),
    (function_by_merge_key, "!function utils.text names Python code"),
    (function_verbatim_tag, "!function utils.text names Python code"),
    (python_name_tag, "could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'"),
    (data_files_list_with_absolute, "data_files /etc/passwd is outside the task directory"),
    (data_files_root_glob, r"data_files /\*\* is outside the task directory"),
    (data_files_hub_url, "data_files hf://datasets/owner/name/x.jsonl is outside the task directory"),
    (data_files_http_url, "data_files http://127.0.0.1:1/x.jsonl is outside the task directory"),
    (hub_dataset_absolute_file, "data_files /proc/self/environ is outside the task directory"),
    (alias_bomb, r"the directory's configs hold more than 200000 values \(YAML aliases expanded\)"),
    (alias_bombs_spread_over_files, r"the directory's configs hold more than 200000 values"),
    (deep_nesting, r"animals.yaml:? nests deeper than 64 levels"),
    (include_fan_out, r"includes, counted each time one is followed, come to more than 1000 files"),
    (include_cycle, r"a_yaml includes itself \(a_yaml → b_yaml → a_yaml\)"),
    (metric_by_module_path, r"metric 'os.path.exists' is no lm-eval metric name"),
    (metric_by_local_path, r"metric './metrics/evil' is no lm-eval metric name"),
    (link_to_environ, r"rows\.jsonl'? (links outside the directory|is a link to an absolute path)"),
    (jinja_escape, r"reaches Python internals \(__globals__\)"),
    (encoded_function_tag, "!function utils.text names Python code"),
    (function_in_included_txt, "include 'common.txt' is not a YAML file"),
    (function_in_included_yaml, "!function utils.text names Python code"),
    (module_at_x_dot_py, r"x/\.py is Python code"),
    (include_absolute, "outside the task directory"),
    (include_parent, "outside the task directory"),
    (dataset_path_absolute, "neither a file builder"),
    (dataset_path_parent, "neither a file builder"),
    (data_files_absolute, "outside the task directory"),
    (data_files_parent, "outside the task directory"),
    (data_files_proc_environ, "data_files /proc/self/environ is outside the task directory"),
    (class_key, "names Python code"),
    (cache_dir_option, "dataset_kwargs cache_dir not allowed"),
    (prompt_file, "only lm-eval's own prompts"),
    (hub_metric, "fetched from the hub is code"),
    (python_tag, "is not plain YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply"),
    (hub_generation_code, "generation_kwargs custom_generate, trust_remote_code not allowed"),
]


def archive(d, dest):
    """The directory as the worker fetches it, packed without `qfarm submit`."""
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(d, arcname=".")
    return dest.as_uri()


@pytest.mark.parametrize(("variant", "reason"), VARIANTS, ids=[v.__name__ for v, _ in VARIANTS])
def test_a_hostile_task_directory_is_refused_at_submit_and_on_the_worker(variant, reason, tiny_model, tmp_path):
    d = write_task_dir(tmp_path / "t")
    variant(d, tmp_path)
    job = JobSpec(model=str(tiny_model), method="rtn", eval=EvalSpec(tasks=["animals"], tasks_dir=str(d)))
    with pytest.raises(SpecError, match=reason) as submitted:
        resolve(job)
    assert str(submitted.value).startswith("--tasks-dir: ") and "\n" not in str(submitted.value)
    uri = archive(d, tmp_path / "tasks.tar.gz")
    with pytest.raises(QFarmError, match=reason):
        lm_eval_inputs.prepare(EvalSpec(tasks=["animals"], tasks_dir=uri), tmp_path / "job", allow_code=False)
    assert not (tmp_path / "ran").exists()


def test_a_task_directory_of_plain_data_is_accepted_and_its_files_resolved_inside_it(tiny_model, tmp_path):
    """Includes inside the directory (lm-eval's `_yaml` convention too),
    a group, data files in a sub-folder, a link to itself: accepted, and the worker's configs
    name the unpacked files by absolute paths inside its directory."""
    d = write_task_dir(tmp_path / "t")
    (d / "data").mkdir()
    (d / "data.jsonl").rename(d / "data" / "rows.jsonl")
    (d / "_base_yaml").write_text("output_type: multiple_choice\ndoc_to_target: label\n")
    _yaml(d, "include: _base_yaml\ndataset_kwargs:\n  data_files:\n    test: data/rows.jsonl\n")
    (d / "group.yaml").write_text("group: zoo\ntask:\n  - animals\n")
    (d / "loop").symlink_to(".", target_is_directory=True)  # walked once, not forever
    job = JobSpec(model=str(tiny_model), method="rtn", eval=EvalSpec(tasks=["zoo"], tasks_dir=str(d)))
    assert resolve(job).eval.tasks_dir == str(d.resolve())
    run = lm_eval_inputs.prepare(EvalSpec(tasks=["zoo"], tasks_dir=archive(d, tmp_path / "a.tar.gz")), tmp_path / "job", False)
    assert run.offline and run.names == ["zoo"]
    from api_client.contract import task_yaml

    loaded = task_yaml.load(run.include[0])
    [animals] = [c for c in loaded.configs if c.get("task") == "animals"]
    files = animals["dataset_kwargs"]["data_files"]["test"]
    assert files == str((tmp_path / "job" / "user" / "data" / "rows.jsonl").resolve())
    assert animals["output_type"] == "multiple_choice" and "include" not in animals


def test_a_template_that_escapes_at_run_time_fails_the_tasks_figure_and_runs_nothing(tiny_model, tmp_path, monkeypatch):
    """A template whose escape is built from the data passes any reading of
    the YAML; the sandbox stops it as it renders. Control: lm-eval's own
    (plain) environment runs the same template's command."""
    from lm_eval import utils as lm_utils
    from transformers import AutoTokenizer

    from worker import evaluators, texts
    from worker.evaluators.task_accuracy import TaskRun
    from worker.gpu import Device

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    template = "{{ (lipsum|attr(g))['os'].popen('touch ' ~ m).read() }}{{q}}"
    control = tmp_path / "control-ran"
    lm_utils.apply_template(template, {"g": "__globals__", "m": str(control), "q": "x"})
    assert control.exists()  # the template is a real escape where nothing sandboxes it

    d = write_task_dir(tmp_path / "t")
    marker = tmp_path / "ran"
    rows = [dict(json.loads(line), g="__globals__", m=str(marker)) for line in (d / "data.jsonl").read_text().splitlines()]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _yaml(d, f"doc_to_text: \"{template}\"\n")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 64, 2)
    run = TaskRun(["animals"], [d], limit=2, offline=True)
    figures = evaluators.run(evaluators.Inputs(Device("cpu", None, "cpu"), tok, windows, None, 0, tmp_path / "s",
                                               tasks=run), tiny_model, tiny_model)
    assert "SecurityError" in figures.metrics["tasks_error"] and "__globals__" in figures.metrics["tasks_error"]
    assert not marker.exists()
    assert figures.columns["ppl_ratio"] == 1.0  # the other figures stand
    assert lm_utils.env.__class__.__name__ == "Environment"  # lm-eval's own environment is back


@pytest.mark.parametrize("template", [
    "{{ '{0.__class__.__mro__}'.format(q) }}",
    "{{ '{x.__class__}'.format_map({'x': q}) }}",
    "{{ ('{0.' ~ g ~ '}')|attr('format')(q) }}",
    "{{ q[g] }}",
    "{{ (q|attr(g)).mro() }}",
], ids=["format", "format_map", "attr-format", "getitem-built", "attr-built"])
def test_a_template_that_reaches_python_only_as_it_renders_is_stopped_by_the_sandbox(template):
    """Format strings and names read from the data hold no `_` a reading of
    the YAML could see: they pass task_yaml's check, and lm-eval's plain
    environment hands them Python's internals; in the sandbox the worker
    renders with (the same lm-eval call), they raise SecurityError."""
    from jinja2.sandbox import SecurityError
    from lm_eval import utils as lm_utils

    from api_client.contract import task_yaml
    from worker.evaluators.task_accuracy import sandboxed_templates

    doc = {"q": "text", "g": "__class__"}
    task_yaml.check_template(template, "doc_to_text")
    assert "class" in lm_utils.apply_template(template, doc)  # reaches internals where nothing sandboxes it
    with sandboxed_templates(), pytest.raises(SecurityError, match="__class__"):
        lm_utils.apply_template(template, doc)


def test_a_task_directory_with_code_runs_where_the_job_and_the_worker_allow_it(tiny_model, tmp_path, monkeypatch):
    """--allow-remote-code on the job and the worker: `!function` is imported
    from the directory (and only from it) and lm-eval calls it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from api_client.contract import lm_eval_tasks
    from worker.evaluators import Inputs, Loaded
    from worker.evaluators.task_accuracy import Tasks
    from worker.gpu import Device

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = write_task_dir(tmp_path / "t")
    called = tmp_path / "called"
    (d / "utils.py").write_text(f"def text(doc):\n    open({str(called)!r}, 'a').write('x')\n    return doc['q']\n")
    _yaml(d, "doc_to_text: !function utils.text\n")
    assert lm_eval_tasks.check_tasks_dir(str(d), ["animals"], allow_code=True) == d.resolve()
    run = lm_eval_inputs.prepare(EvalSpec(tasks=["animals"], tasks_dir=archive(d, tmp_path / "a.tar.gz")), tmp_path / "job",
                              allow_code=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    inputs = Inputs(Device("cpu", None, "cpu"), AutoTokenizer.from_pretrained(tiny_model), [], None, 0, tmp_path / "s",
                    tasks=run)
    scores = Tasks().measure(Loaded(model, "baseline", "dense"), inputs, {})
    assert scores["animals"]["items"] == 5 and called.read_text().count("x") >= 5


# -- bounded inputs ------------------------------------------------------------------


def test_a_job_that_outgrows_its_memory_fails_naming_memory_and_is_not_retried(qfarm_env, monkeypatch):
    """The job process is stopped past QFARM_JOB_MEMORY_LIMIT; the job fails
    at once with a reason naming memory, not "killed by SIGKILL; given up
    after 3 attempts" as a lost worker's would after three more tries."""
    import psutil

    from api_client.config import Settings
    from api_client.infra.db import Database, Job, JobState, jobs
    from worker import runner, tasks

    monkeypatch.setenv("QFARM_JOB_MEMORY_LIMIT", str(psutil.Process().memory_info().rss + 200 * 2**20))
    settings = Settings.from_env()
    db = Database(settings.database_url)
    db.upgrade()
    job = Job(id="membomb00001", state=JobState.QUEUED.value, method="rtn", format="compressed-tensors", params={},
              model="/m", eval={}, queue="q", submitted_by="ann", attempts=0, weights="auto")
    jobs.create(db, job)
    jobs.transition(db, job.id, expect=[JobState.QUEUED], state=JobState.RUNNING, worker="worker", attempts=1)

    def bomb(job_id, settings, worker, farm=None):
        held = []
        for _ in range(40):
            held.append(b"\1" * (64 * 2**20))
            import time

            time.sleep(0.05)
        return runner.Outcome.DONE

    monkeypatch.setattr(runner, "execute", bomb)
    assert tasks.run_job.run(job.id) == f"job {job.id} failed"
    row = jobs.get(db, job.id)
    assert row.state == "failed" and row.attempts == 1
    assert row.error.startswith("out of memory: the job used") and "QFARM_JOB_MEMORY_LIMIT" in row.error
    assert "SIGKILL" not in row.error
    db.dispose()


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_a_text_past_the_cap_is_refused_at_submit_and_on_the_worker_without_being_read(tmp_path, monkeypatch):
    from worker import texts

    # 2 GiB that take no disk (sparse): refused by its size, never read.
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(2 * 2**30)
    before = _peak_rss()
    with pytest.raises(SpecError, match=r"huge.txt is 2048.0 MiB, more than the 256 MiB a text may be \(QFARM_MAX_TEXT_BYTES\)"):
        inputs.resolve_text(str(huge), "calibration")
    with pytest.raises(QFarmError, match="more than the 256 MiB a text may be"):
        texts.load_text(huge.as_uri(), "eval")
    assert _peak_rss() - before < 64 * 2**20

    # The cap is the farm's to set.
    monkeypatch.setenv("QFARM_MAX_TEXT_BYTES", str(2**20))
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "word " * 300_000}) + "\n")
    with pytest.raises(SpecError, match=r"text.jsonl is 1.4 MiB, more than the 1 MiB"):
        inputs.resolve_text(str(text), "evaluation")
    with pytest.raises(QFarmError, match=r"is 1.4 MiB, more than the 1 MiB"):
        texts.load_text(str(text), "calib")


def test_an_s3_text_past_the_cap_is_refused_before_it_is_downloaded(bucket, aws_env, monkeypatch):
    from api_client.infra.storage.s3 import s3_client
    from worker import texts

    monkeypatch.setenv("QFARM_MAX_TEXT_BYTES", str(2**20))
    s3_client(aws_env).put_object(Bucket=bucket, Key="inputs/x/calib.txt", Body=b"a" * (2 * 2**20))
    with pytest.raises(QFarmError, match=r"calib.txt is 2.0 MiB, more than the 1 MiB a text may be"):
        texts.load_text(f"s3://{bucket}/inputs/x/calib.txt", "calib")


@pytest.mark.parametrize(("make", "what"), [
    (lambda p: p.mkdir(), "is a directory, not a regular file"),
    (lambda p: __import__("os").mkfifo(p), r"is a FIFO \(named pipe\), not a regular file"),
    (None, "is a device, not a regular file"),
], ids=["directory", "fifo", "dev-zero"])
def test_a_directory_fifo_or_device_as_a_text_is_named_for_what_it_is(make, what, tmp_path):
    from worker import texts

    path = tmp_path / "calib.txt"
    if make is None:
        path = "/dev/zero"
    else:
        make(path)
    with pytest.raises(SpecError, match=f"calibration file {path} {what}"):
        inputs.resolve_text(str(path), "calibration")
    with pytest.raises(QFarmError, match=f"calib file {path} {what}"):
        texts.load_text(str(path), "calib")


def _copy_model(src, dest):
    import shutil

    shutil.copytree(src, dest)
    return dest


def test_a_huge_tokenizer_file_is_refused_at_submit_and_on_the_worker(tiny_model, tmp_path):
    from worker import model_source

    model = _copy_model(tiny_model, tmp_path / "m")
    with open(model / "tokenizer.json", "r+b") as f:
        f.truncate(2 * 2**30)  # sparse: 2 GiB that take no disk
    before = _peak_rss()
    reason = r"tokenizer.json is 2048.0 MiB, more than the 64 MiB a config or tokenizer file may be: refused"
    with pytest.raises(SpecError, match=reason):
        resolve(JobSpec(model=str(model), method="gptq"))
    with pytest.raises(QFarmError, match=reason):
        model_source.fetch(str(model), tmp_path / "job")
    assert _peak_rss() - before < 64 * 2**20


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("num_hidden_layers", 100_000, r"says num_hidden_layers 100000, but the weights hold 2 in model.layers"),
    ("hidden_size", 4096, r"says hidden_size 4096, but the weights' embedding is \d+ × 128"),
    ("vocab_size", 10_000_000, r"says vocab_size 10000000, but the weights' embedding is \d+ × 128"),
])
def test_a_config_that_disagrees_with_its_weights_is_refused_at_submit_and_on_the_worker(key, value, reason, tiny_model,
                                                                                         tmp_path):
    from api_client.contract import checkpoint
    from worker import model_source

    model = _copy_model(tiny_model, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(SpecError, match=reason) as submitted:
        resolve(JobSpec(model=str(model), method="rtn"))
    assert "refused" in str(submitted.value)
    # The worker checks what it fetched before loading anything (runner._run).
    fetched = model_source.fetch(str(model), tmp_path / "job")
    with pytest.raises(QFarmError, match=reason):
        checkpoint.check_quantizable(fetched.info, None)


# -- inputs are read with the submitter's rights --------------------------------------


def test_an_s3_text_is_read_by_the_client_with_its_credentials_and_travels_with_the_job(
        qfarm_env, bucket, aws_env, tiny_model, monkeypatch):
    from api_client import Client
    from api_client.contract.spec import CalibSpec
    from api_client.infra.db import jobs
    from api_client.infra.storage import open_store
    from api_client.infra.storage.s3 import s3_client

    text = ("It was a bright cold day in April, and the clocks were striking thirteen. " * 400).encode()
    s3_client(aws_env).put_object(Bucket=bucket, Key="team/calib.txt", Body=text)
    source = f"s3://{bucket}/team/calib.txt"
    client = Client()
    from api_client.infra.db import Database

    migrate = Database(client.settings.database_url)
    migrate.upgrade()
    migrate.dispose()
    spec = JobSpec(model=str(tiny_model), method="gptq", calib=CalibSpec(source=source, samples=1, seqlen=16))

    # Without credentials of its own, the client cannot read it: refused at
    # submit, nothing queued (the worker's credentials are never asked).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(QFarmError, match=f"cannot list {source}"):
        client.submit(spec)
    assert jobs.list_jobs(client.db) == []

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    job = client.submit(spec)
    stored = jobs.get(client.db, job.id).calib["source"]
    store = open_store(client.settings.storage_url)
    assert stored == store.uri(f"inputs/{job.id}/calib.txt") and store.get_bytes(f"inputs/{job.id}/calib.txt") == text
    client.close()


def _job(**fields):
    from api_client.infra.db import Job

    base = dict(id="inputs000001", state="queued", method="gptq", format="compressed-tensors", params={}, model="/m",
                calib={"source": "builtin"}, eval={"source": "builtin"}, queue="q", submitted_by="ann", attempts=0,
                weights="auto")
    return Job(**{**base, **fields})


@pytest.mark.parametrize(("fields", "reason"), [
    (dict(calib={"source": "s3://otherteam/secret.txt"}), "calibration text s3://otherteam/secret.txt is not among the inputs"),
    (dict(calib={"source": "/proc/self/environ"}), "calibration text /proc/self/environ is not among the inputs"),
    (dict(eval={"source": "file:///etc/passwd"}), "evaluation text file:///etc/passwd is not among the inputs"),
    (dict(eval={"source": "STORE/inputs/../../x.txt"}), "is not among the inputs"),
    (dict(calib={"source": "STORE/inputs/otherjob0001/calib.txt"}), "is not among the inputs uploaded with it"),
    (dict(calib={"source": "STORE/inputs/calib.txt"}), "is not among the inputs uploaded with it"),
    (dict(eval={"source": "builtin", "tasks": ["t"], "tasks_dir": "/home/bob/tasks"}), "task directory /home/bob/tasks"),
    (dict(model="s3://otherteam/model/"), r"not under QFARM_INPUT_PREFIXES \(none is set\)"),
])
def test_the_worker_reads_only_what_the_job_carries(fields, reason, tmp_path):
    from api_client.infra.storage import open_store
    from worker import job_inputs

    store = open_store((tmp_path / "store").as_uri())
    if "STORE" in str(fields):
        fields = {k: {kk: vv.replace("STORE", store.uri("").rstrip("/")) for kk, vv in v.items()} for k, v in fields.items()}
    with pytest.raises(QFarmError, match=reason):
        job_inputs.check(_job(**fields), store)
    # What submit writes passes: the job's (or its group's) inputs, builtin and hub texts.
    job_inputs.check(_job(calib={"source": store.uri("inputs/inputs000001/calib.txt")},
                          eval={"source": "hf:wikitext", "tasks_dir": store.uri("inputs/inputs000001/tasks.tar.gz")}), store)
    job_inputs.check(_job(group_id="g-abc", calib={"source": store.uri("inputs/g-abc/calib.txt")}), store)


def test_the_worker_reads_what_submit_and_compare_uploaded_and_not_another_job_s(qfarm_env, redis_conn, tiny_model,
                                                                               tmp_path):
    """Through the client: a job's texts and task directory, and a compare
    group's shared calibration text, pass the worker's check; the same
    source on another job does not."""
    from api_client import Client
    from api_client.contract.spec import CalibSpec
    from api_client.infra.db import Database, jobs
    from api_client.infra.storage import open_store
    from tests.test_tasks import write_task_dir
    from worker import job_inputs

    migrate = Database(os.environ["QFARM_DATABASE_URL"])
    migrate.upgrade()
    migrate.dispose()
    calib = tmp_path / "calib.txt"
    calib.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 200)
    spec = JobSpec(model=str(tiny_model), method="gptq", calib=CalibSpec(source=str(calib), samples=1, seqlen=16),
                   eval=EvalSpec(tasks=["animals"], tasks_dir=str(write_task_dir(tmp_path / "t"))))
    client = Client()
    store = open_store(client.settings.storage_url)
    job = jobs.get(client.db, client.submit(spec).id)
    _, members = client.compare(str(tiny_model), ["gptq", "rtn"], spec)
    for row in [job, *(jobs.get(client.db, m.id) for m in members)]:
        job_inputs.check(row, store)
    other = _job(id="otherjob0001", calib=job.calib)
    with pytest.raises(QFarmError, match="is not among the inputs uploaded with it"):
        job_inputs.check(other, store)
    client.close()


def test_a_job_naming_another_team_s_object_fails_on_the_worker_before_anything_is_read(qfarm_env):
    """Through the runner: a row written without `qfarm submit`."""
    from api_client.config import Settings
    from api_client.infra.db import Database, jobs
    from worker import runner

    settings = Settings.from_env()
    db = Database(settings.database_url)
    db.upgrade()
    jobs.create(db, _job(calib={"source": "s3://otherteam/secret.txt"}))
    assert runner.execute("inputs000001", settings, worker="w1") is runner.Outcome.DONE
    row = jobs.get(db, "inputs000001")
    assert row.state == "failed" and "s3://otherteam/secret.txt is not among the inputs uploaded with it" in row.error
    assert [e.stage for e in jobs.events(db, row.id)] == [None, None, None]  # never reached loading
    db.dispose()


def test_s3_models_only_from_the_prefixes_the_farm_allows(monkeypatch):
    from api_client.contract import sources

    monkeypatch.setenv("QFARM_INPUT_PREFIXES", "s3://farm/models/, s3://shared/llama")
    assert resolve(JobSpec(model="s3://farm/models/llama/", method="rtn")).model_kind == "s3"
    sources.check_model_prefix("s3://shared/llama/8b", on_worker=True)
    for model in ("s3://otherteam/models/x", "s3://shared/llama-evil/x", "s3://farm/models/../secret/x"):
        with pytest.raises(SpecError, match="is not under QFARM_INPUT_PREFIXES"):
            resolve(JobSpec(model=model, method="rtn"))
    monkeypatch.delenv("QFARM_INPUT_PREFIXES")
    assert resolve(JobSpec(model="s3://otherteam/x", method="rtn")).model_kind == "s3"  # the worker decides
    with pytest.raises(SpecError, match="none is set"):
        sources.check_model_prefix("s3://otherteam/x", on_worker=True)


@pytest.mark.parametrize("name", ["..", "../scratch", "./x", "json", "pandas", "here"])
def test_an_hf_dataset_name_that_is_no_hub_name_is_refused_at_submit_and_on_the_worker(name, tmp_path, monkeypatch):
    from worker import texts

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    with pytest.raises(SpecError, match="dataset"):
        inputs.resolve_text(f"hf:{name}", "calibration")
    with pytest.raises(QFarmError, match="dataset"):
        texts.load_text(f"hf:{name}", "calib")


def test_a_hub_dataset_is_loaded_from_an_empty_directory(tmp_path, monkeypatch):
    """`datasets` reads a name that is a path of its working directory from
    disk: the load runs from an empty directory of its own."""
    import datasets

    from worker import texts

    monkeypatch.chdir(tmp_path)
    (tmp_path / "other-job-scratch").mkdir()
    seen = {}

    def load_dataset(name, config=None, split=None):
        seen.update(cwd=os.getcwd(), listing=os.listdir("."))
        return datasets.Dataset.from_dict({"text": ["hello from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert texts.load_text("hf:owner/name", "calib") == "hello from the hub"
    assert seen["listing"] == [] and seen["cwd"] != str(tmp_path) and os.getcwd() == str(tmp_path)
