"""Artifact stores: S3 through moto's HTTP server, and a local directory."""

import json
import os
import threading
import time

import pytest

from api_client.app import artifacts
from api_client.errors import QFarmError, ServiceUnavailable
from api_client.infra.storage import StoreError, TransferCancelled, open_store, sha256_file
from api_client.infra.storage.s3 import MiB


@pytest.fixture(params=["s3", "file"])
def store(request, tmp_path):
    if request.param == "s3":
        bucket = request.getfixturevalue("bucket")
        return open_store(f"s3://{bucket}/farm")
    return open_store((tmp_path / "store").as_uri())


@pytest.fixture
def artifact_dir(tmp_path):
    d = tmp_path / "artifact"
    (d / "sub").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(os.urandom(12 * MiB + 123))
    (d / "config.json").write_text('{"a": 1}')
    (d / "sub" / "extra.txt").write_text("x")
    return d


def manifest_for(d):
    return {"job": {"id": "j1"}}


def test_publish_then_download_roundtrip(store, artifact_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QFARM_S3_PART_SIZE", str(5 * MiB))
    store = open_store(store.url)  # part size is read at open
    uri = artifacts.publish(store, "j1", artifact_dir, manifest_for(artifact_dir))
    keys = {o.key: o.size for o in store.list("jobs/j1/")}
    assert keys["jobs/j1/model.safetensors"] == 12 * MiB + 123
    assert set(keys) == {"jobs/j1/model.safetensors", "jobs/j1/config.json", "jobs/j1/sub/extra.txt", "jobs/j1/manifest.json"}
    manifest = json.loads(store.get_bytes("jobs/j1/manifest.json"))
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["model.safetensors"]["sha256"] == sha256_file(artifact_dir / "model.safetensors")

    dest = tmp_path / "dl"
    got = artifacts.download(uri, dest)
    assert got == manifest
    assert sha256_file(dest / "model.safetensors") == by_path["model.safetensors"]["sha256"]
    assert (dest / "sub" / "extra.txt").read_text() == "x"
    with pytest.raises(QFarmError, match="exists and is not an empty directory"):
        artifacts.download(uri, dest)


def test_multipart_upload_is_verified_part_by_part(bucket, artifact_dir, monkeypatch):
    monkeypatch.setenv("QFARM_S3_PART_SIZE", str(5 * MiB))
    store = open_store(f"s3://{bucket}/p")
    path = artifact_dir / "model.safetensors"
    store.put_file(path, "big.bin")
    etag = store.client.head_object(Bucket=bucket, Key="p/big.bin")["ETag"].strip('"')
    assert etag.endswith("-3")  # 12 MiB in 5 MiB parts
    store.verify(path, "big.bin", sha256_file(path))
    # The same size with other bytes must not pass.
    other = artifact_dir / "other.bin"
    data = bytearray(path.read_bytes())
    data[7 * MiB] ^= 0xFF
    other.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not hold the bytes uploaded"):
        store.verify(other, "big.bin", sha256_file(other))


def test_an_object_uploaded_elsewhere_with_other_parts_is_verified(bucket, artifact_dir, monkeypatch):
    # A model put on S3 with `aws s3 cp` (8 MiB parts) is fetched by workers
    # whose own part size is another: its ETag must still be checked.
    from boto3.s3.transfer import TransferConfig

    path = artifact_dir / "model.safetensors"
    store = open_store(f"s3://{bucket}/m")
    store.client.upload_file(str(path), bucket, "m/w.bin", Config=TransferConfig(multipart_threshold=8 * MiB,
                                                                                 multipart_chunksize=8 * MiB))
    assert store.client.head_object(Bucket=bucket, Key="m/w.bin")["ETag"].strip('"').endswith("-2")
    monkeypatch.setenv("QFARM_S3_PART_SIZE", str(5 * MiB))
    store = open_store(f"s3://{bucket}/m")
    store.verify(path, "w.bin", "")
    other = artifact_dir / "other.bin"
    data = bytearray(path.read_bytes())
    data[9 * MiB] ^= 0xFF
    other.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not hold the bytes uploaded"):
        store.verify(other, "w.bin", "")


def test_corrupt_object_fails_download_and_leaves_nothing(store, artifact_dir, tmp_path):
    uri = artifacts.publish(store, "j2", artifact_dir, manifest_for(artifact_dir))
    store.put_bytes(b'{"a": 2}', "jobs/j2/config.json")  # same length, other bytes
    dest = tmp_path / "dl"
    with pytest.raises(QFarmError, match="config.json is corrupt"):
        artifacts.download(uri, dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dl")] == []


def test_failed_publish_removes_what_it_wrote(store, artifact_dir):
    manifest = manifest_for(artifact_dir)
    manifest["metrics"] = {"not json": object()}  # fails after every file went up
    with pytest.raises(TypeError):
        artifacts.publish(store, "j3", artifact_dir, manifest)
    assert store.list("jobs/j3/") == []


def test_aborted_upload_leaves_nothing(store, artifact_dir):
    seen, go_on = [], threading.Event()

    def progress(path):
        seen.append(path)
        if len(seen) == 2:  # the first file is up and verified
            go_on.wait(30)

    upload = artifacts.Upload(store, "j4", artifact_dir, progress)
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [o.key for o in store.list("jobs/j4/")] == ["jobs/j4/config.json"]
    go_on.set()
    upload.abort()
    assert store.list("jobs/j4/") == []


def test_s3_upload_stops_midway_when_asked(bucket, artifact_dir, monkeypatch):
    monkeypatch.setenv("QFARM_S3_PART_SIZE", str(5 * MiB))
    store = open_store(f"s3://{bucket}/c")
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(TransferCancelled):
        store.put_file(artifact_dir / "model.safetensors", "big.bin", should_stop=should_stop)
    assert not store.exists("big.bin")
    # The multipart upload was aborted, not left to hold storage.
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_unreachable_bucket_is_one_line(aws_env):
    store = open_store("s3://no-such-bucket-here/x")
    with pytest.raises(ServiceUnavailable, match="cannot reach the S3 bucket no-such-bucket-here at http://127.0.0.1"):
        store.check()


@pytest.mark.parametrize("bad", ["../../x", "/etc/cron.d/evil", "a/../../x", "sub/./x", "", "manifest.json"])
def test_a_manifest_that_leaves_dest_writes_nothing(store, artifact_dir, tmp_path, bad):
    uri = artifacts.publish(store, "j5", artifact_dir, manifest_for(artifact_dir))
    manifest = json.loads(store.get_bytes("jobs/j5/manifest.json"))
    manifest["files"].insert(1, {"path": bad, "bytes": 1, "sha256": "0" * 64})
    store.put_bytes(json.dumps(manifest).encode(), "jobs/j5/manifest.json")
    dest = tmp_path / "deep" / "dl"
    with pytest.raises(QFarmError, match="refused"):
        artifacts.download(uri, dest)
    # Nothing written anywhere: not in DEST, not beside it, not where the path pointed.
    assert not (tmp_path / "deep").exists()
    assert not (tmp_path / "x").exists()


def test_an_artifact_holding_a_symlink_is_not_published(store, artifact_dir):
    (artifact_dir / "leak.txt").symlink_to("/etc/passwd")
    with pytest.raises(StoreError, match="leak.txt is not a regular file"):
        artifacts.publish(store, "j6", artifact_dir, manifest_for(artifact_dir))
    assert store.list("jobs/j6/") == []


def test_incomplete_artifacts_are_found_by_age(store, artifact_dir):
    artifacts.publish(store, "done1", artifact_dir, manifest_for(artifact_dir))
    store.put_bytes(b"half", "jobs/half1/model.safetensors")
    assert [a.job_id for a in artifacts.incomplete(store, older_than_s=0)] == ["half1"]
    assert artifacts.incomplete(store, older_than_s=3600) == []  # just written: may be an upload in flight
    found = artifacts.incomplete(store, older_than_s=0)[0]
    assert found.prefix == "jobs/half1/" and found.objects == 1 and found.bytes == 4
