"""The broker, against the real Redis: priorities decide which message a
worker takes first, and the reconciler's view of waiting messages sees every
priority's list and the unacknowledged ones."""

import json

from api_client.infra import queue


def test_high_priority_is_taken_first_and_every_waiting_message_is_seen(redis_conn, redis_url):
    name = "qfarm.testfarm"
    for job_id, priority in (("low000000001", "low"), ("normal000001", "normal"), ("high00000001", "high"),
                             ("normal000002", "normal")):
        queue.enqueue(redis_url, job_id, name, "testfarm", priority)
    assert queue.waiting_job_ids(redis_url, [name]) == {"low000000001", "normal000001", "high00000001", "normal000002"}
    taken = []
    with queue.app(redis_url).connection_for_read() as conn:
        q = conn.SimpleQueue(name)
        for _ in range(4):
            message = q.get(timeout=5)
            taken.append(message.headers["id"])
            message.ack()
        q.close()
    assert taken == ["high00000001", "normal000001", "normal000002", "low000000001"]
    assert queue.waiting_job_ids(redis_url, [name]) == set()


def test_a_delivered_unacknowledged_message_still_counts_as_waiting(redis_conn, redis_url):
    name = "qfarm.testfarm2"
    queue.enqueue(redis_url, "inflight0001", name, "testfarm2")
    [key] = [k for k in redis_conn.keys(f"{name}*") if not k.startswith(b"_kombu")]  # normal: the list of step 3
    raw = redis_conn.rpop(key)  # as a worker takes it: out of the list, into `unacked`
    redis_conn.hset("unacked", "tag-1", json.dumps([json.loads(raw), "", name]))
    assert queue.waiting_job_ids(redis_url, [name]) == {"inflight0001"}
