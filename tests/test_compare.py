"""The compare table's recommendation: the best accuracy among the members
that succeeded within the group's limits, with the reason; rows outside a
limit or failed say why."""

from api_client.compare import compare
from api_client.db.models import Job, JobGroup

GiB = 2**30


def member(job_id, method, fmt, state="succeeded", ratio=None, recovery=None, artifact=None, serve=None, error=None,
           baseline="perplexity", tasks=None, **extra):
    return Job(id=job_id, method=method, format=fmt, state=state, ppl_ratio=ratio, task_recovery=recovery,
               artifact_bytes=artifact, serve_vram_bytes=serve, error=error, eval={"baseline": baseline},
               metrics={"tasks": tasks or {}}, **extra)


def group(**limits):
    return JobGroup(id="gabc", kind="compare", model="/m", methods=[], limits=limits, submitted_by="ann")


def test_best_recovery_within_the_limits_is_recommended():
    members = [
        member("a1", "gptq", "compressed-tensors", ratio=1.010, recovery=0.99, artifact=4 * GiB, serve=5 * GiB),
        member("a2", "int8", "bitsandbytes", ratio=1.001, recovery=1.00, artifact=7 * GiB, serve=8 * GiB),
        member("a3", "nf4", "bitsandbytes", ratio=1.020, recovery=0.97, artifact=4 * GiB, serve=5 * GiB,
               baseline="full", model_bytes=13 * GiB, weights_bytes_baseline=13 * GiB),
        member("a4", "awq", "compressed-tensors", state="failed", error="out of GPU memory"),
    ]
    table = compare(group(max_size_bytes=5 * GiB, max_vram_bytes=6 * GiB), members)
    rows = {r.label: r for r in table.rows}
    assert table.recommended == "gptq" and rows["gptq"].recommended
    assert "> --max-size" in rows["int8"].excluded and rows["awq"].excluded == "out of GPU memory"
    assert "best task recovery (99.0 %)" in table.why and "size 5.00 GiB and serve VRAM 6.00 GiB" in table.why
    assert rows["original"].job_id == "a3" and rows["original"].weights_bytes == 13 * GiB
    # Without limits the original-quality int8 wins.
    assert compare(group(), members).recommended == "int8"


def test_perplexity_decides_where_a_candidate_has_no_task_score_and_unmeasured_vram_is_not_assumed():
    members = [
        member("b1", "rtn", "compressed-tensors", ratio=1.05, recovery=0.9, artifact=GiB, serve=None, baseline="full"),
        member("b2", "gptq", "gptq", ratio=1.01, artifact=GiB, serve=2 * GiB),
        member("b3", "awq", "compressed-tensors", ratio=1.02, recovery=0.99, artifact=GiB, serve=2 * GiB),
    ]
    table = compare(group(), members)
    assert table.recommended == "gptq:gptq" and "lowest perplexity ratio (1.0100)" in table.why
    limited = compare(group(max_vram_bytes=3 * GiB), members)
    rows = {r.label: r for r in limited.rows}
    assert "not measured" in rows["rtn"].excluded and limited.recommended == "gptq:gptq"


def test_recovery_against_the_groups_one_baseline():
    base_tasks = {"qfarm_cloze": {"metric": "acc_norm", "baseline": 0.40, "quantized": 0.40, "recovery": 1.0, "items": 500}}
    other_tasks = {"qfarm_cloze": {"metric": "acc_norm", "quantized": 0.38, "items": 500}}
    members = [member("c1", "nf4", "bitsandbytes", ratio=1.0, baseline="full", tasks=base_tasks, recovery=1.0),
               member("c2", "gptq", "compressed-tensors", ratio=1.0, tasks=other_tasks)]
    rows = {r.label: r for r in compare(group(), members).rows}
    assert abs(rows["gptq"].task_recovery - 0.95) < 1e-9
    assert rows["original"].tasks["qfarm_cloze"]["score"] == 0.40


def test_a_group_is_queued_slowest_first(qfarm_env, tiny_model):
    # On N free GPUs the group ends sooner when the last member to start is
    # a short one: the broker hands the members out longest estimate first.
    from api_client import Client, JobSpec, queue
    from api_client.db import Database

    client = Client()
    Database(client.settings.database_url).upgrade()
    _, members = client.compare(str(tiny_model), ["rtn", "gptq", "nf4", "awq"], JobSpec(model=str(tiny_model), method="rtn"))
    longest = {j.id: max(e["seconds"] for e in j.estimates) for j in members}
    taken = []
    with queue.app(client.settings.broker_url).connection_for_read() as conn:
        q = conn.SimpleQueue(members[0].queue)
        for _ in members:
            message = q.get(timeout=5)
            taken.append(message.headers["id"])
            message.ack()
        q.close()
    assert [longest[i] for i in taken] == sorted(longest.values(), reverse=True)
    assert len(set(longest.values())) > 2  # the order says something
    assert {j.method for j in members if j.id == taken[0]} == {"awq"}


def test_an_offloaded_original_says_so_in_its_row():
    """Under --max-vram a 13B original does not fit: its serve VRAM and speed
    are those of an offloaded model, and its row and the table say so."""
    from rich.console import Console

    from api_client.render import comparison_table

    base = member("d1", "gptq", "compressed-tensors", ratio=1.008, artifact=7 * GiB, serve=9 * GiB, baseline="full",
                  serve_vram_baseline_bytes=10 * GiB)
    base.metrics = {"serve_offloaded_baseline": True, "serve_offloaded": False}
    table = compare(group(max_vram_bytes=16 * GiB), [base])
    rows = {r.label: r for r in table.rows}
    assert rows["original"].serve_offloaded and not rows["gptq"].serve_offloaded
    console = Console(width=250, record=True)
    console.print(comparison_table(table))
    lines = {line.split("│")[2].strip(): line for line in console.export_text().splitlines() if line.count("│") > 3}
    assert "10.00 GiB (offloaded)" in lines["original"] and "offloaded" not in lines["gptq"]


def test_the_narrow_table_fits_100_columns_and_says_why_members_failed():
    from rich.console import Console

    from api_client.render import comparison_notes, comparison_table

    members = [
        member("e1", "gptq", "gptq", ratio=1.0123, recovery=0.991, artifact=4 * GiB, serve=9 * GiB, serve_kernel="gptq-torchaten",
               serve_tokens_per_s=45.1, baseline="full", model_bytes=13 * GiB, serve_vram_baseline_bytes=10 * GiB,
               serve_tokens_per_s_baseline=123.4),
        member("e2", "int8", "bitsandbytes", ratio=1.001, recovery=1.0, artifact=7 * GiB, serve=8 * GiB, serve_kernel="bnb-int8"),
        member("e3", "awq", "compressed-tensors", state="failed", error="cannot read s3://bucket/no/such-calibration.txt: NoSuchKey"),
    ]
    members[0].metrics = {"serve_offloaded_baseline": True}
    table = compare(group(max_vram_bytes=16 * GiB), members)
    console = Console(width=100, record=True)
    console.print(comparison_table(table, wide=False))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100
    rows = {line.split("│")[1].strip(): line for line in lines if line.count("│") > 3}
    assert set(rows) == {"original", "gptq:gptq", "int8 ★", "awq"}
    assert "10.00 GiB*" in rows["original"] and "gptq-torchaten" in rows["gptq:gptq"] and "succeeded" in rows["int8 ★"]
    assert comparison_notes(table, wide=False) == [
        "awq failed: cannot read s3://bucket/no/such-calibration.txt: NoSuchKey",
        "* some weights stayed in CPU memory while serving (under --max-vram)"]
