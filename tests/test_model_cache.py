"""Models fetched once per host: against moto's S3 server, a second job's
fetch is a hit, two at once download once, a changed file is a new entry,
and the least recently used entry that no job holds goes first."""

import threading
from contextlib import ExitStack

import pytest

from api_client.infra.storage.s3 import endpoint_from_env, s3_client
from worker import model_source
from worker.model_cache import ModelCache


def upload(bucket, prefix, model_dir):
    client = s3_client(endpoint_from_env())
    for f in model_dir.iterdir():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{f.name}", Body=f.read_bytes())
    return f"s3://{bucket}/{prefix}"


@pytest.fixture
def counted_gets(monkeypatch):
    from api_client.infra.storage.s3 import S3Store

    calls = []
    original = S3Store.get_file

    def get_file(self, key, dest):
        calls.append(key)
        return original(self, key, dest)

    monkeypatch.setattr(S3Store, "get_file", get_file)
    return calls


def test_a_second_fetch_is_a_hit_and_two_at_once_download_once(bucket, tiny_model, tmp_path, counted_gets):
    uri = upload(bucket, "models/tiny", tiny_model)
    cache = ModelCache(tmp_path / "cache", limit_bytes=10**9)
    results, errors = [], []

    def job(n):
        try:
            with ExitStack() as held:
                results.append(model_source.fetch(uri, tmp_path / f"job{n}", stack=held, cache=cache).cache)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == ["hit", "miss"]
    files = {f.name for f in tiny_model.iterdir()}
    assert sorted(counted_gets) == sorted(files)  # every object once
    with ExitStack() as held:
        again = model_source.fetch(uri, tmp_path / "job3", stack=held, cache=cache)
        assert again.cache == "hit" and (again.path / "config.json").read_text() == (tiny_model / "config.json").read_text()
    assert len(counted_gets) == len(files)


def test_jobs_running_on_a_model_do_not_hold_up_the_next_one(bucket, tiny_model, tmp_path):
    # Five methods of one model on five GPUs: each job holds the entry while
    # it runs, and the next job must still find it at once, not wait for them.
    uri = upload(bucket, "models/tiny", tiny_model)
    cache = ModelCache(tmp_path / "cache", limit_bytes=10**9)
    with ExitStack() as first, ExitStack() as second:
        assert model_source.fetch(uri, tmp_path / "a", stack=first, cache=cache).cache == "miss"
        got = []
        t = threading.Thread(target=lambda: got.append(model_source.fetch(uri, tmp_path / "b", stack=second, cache=cache)))
        t.start()
        t.join(20)
        assert not t.is_alive(), "a hit waited for the job holding the entry"
        assert got[0].cache == "hit"


def test_a_changed_file_is_a_new_entry(bucket, tiny_model, tmp_path):
    uri = upload(bucket, "models/tiny", tiny_model)
    cache = ModelCache(tmp_path / "cache", limit_bytes=10**9)
    with ExitStack() as held:
        assert model_source.fetch(uri, tmp_path / "a", stack=held, cache=cache).cache == "miss"
    changed = (tiny_model / "generation_config.json").read_text().replace("{", '{\n  "changed": true,', 1)
    s3_client(endpoint_from_env()).put_object(Bucket=bucket, Key="models/tiny/generation_config.json", Body=changed.encode())
    with ExitStack() as held:
        fetched = model_source.fetch(uri, tmp_path / "b", stack=held, cache=cache)
        assert fetched.cache == "miss" and '"changed": true' in (fetched.path / "generation_config.json").read_text()


def test_least_recently_used_goes_first_but_never_one_in_use(bucket, tiny_model, tmp_path):
    a, b, c = (upload(bucket, f"models/{n}", tiny_model) for n in "abc")
    size = sum(f.stat().st_size for f in tiny_model.iterdir())
    cache = ModelCache(tmp_path / "cache", limit_bytes=int(size * 1.5))  # room for one model
    with ExitStack() as held:
        model_source.fetch(a, tmp_path / "ja", stack=held, cache=cache)
    with ExitStack() as holding_b:
        model_source.fetch(b, tmp_path / "jb", stack=holding_b, cache=cache)  # evicts a
        model_source.fetch(c, tmp_path / "jc", stack=holding_b, cache=cache)  # b is in use: stays, over the bound
        entries = {p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()}
        assert len(entries) == 2
    with ExitStack() as held:
        assert model_source.fetch(a, tmp_path / "ja2", stack=held, cache=cache).cache == "miss"


def _fill_until_disk_full(dest):
    (dest / "model-00001.safetensors").write_bytes(b"x" * 4096)  # what landed before the disk filled
    with open("/dev/full", "wb") as disk:  # a write the kernel refuses: ENOSPC, as on a full disk
        disk.write(b"y" * 4096)
        disk.flush()


def test_a_fill_that_hits_a_full_disk_leaves_nothing_behind(tmp_path):
    import errno

    cache = ModelCache(tmp_path / "cache", limit_bytes=10**9)
    with pytest.raises(OSError) as failed:
        with cache.entry("k1", _fill_until_disk_full):
            pass
    assert failed.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k1.lock"]


def test_a_killed_fill_s_part_is_removed_and_a_fill_in_progress_counts_toward_the_bound(tmp_path):
    import fcntl

    root = tmp_path / "cache"
    cache = ModelCache(root, limit_bytes=3000)
    with cache.entry("old", lambda d: (d / "w.safetensors").write_bytes(b"o" * 2000)):
        pass
    # Left by a fill that was killed: no process holds its lock any more.
    (root / "killed.part").mkdir()
    (root / "killed.part" / "w.safetensors").write_bytes(b"k" * 5000)
    # Being filled by another worker of the host right now: its lock is held.
    (root / "busy.part").mkdir()
    (root / "busy.part" / "w.safetensors").write_bytes(b"b" * 2000)
    with open(root / "busy.lock", "a+") as busy:
        fcntl.flock(busy, fcntl.LOCK_EX)
        removed = cache.evict()
        # The fill in progress (2000) and the old entry (2000) exceed the
        # bound (3000): the old entry goes; the killed fill's bytes go too.
        assert removed == ["old"]
        assert not (root / "killed.part").exists() and not (root / "old").exists()
        assert (root / "busy.part" / "w.safetensors").is_file()
