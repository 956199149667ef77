"""The fault suite's tools in one namespace (``from tests.support import faults as fk``).

Every helper starts its OWN process on a free loopback port and only ever
signals processes it started itself, by pid (or by the process group it made).
The shared Redis and PostgreSQL are never touched.

    with PrivateRedis(tmp_path / "redis", appendonly=True) as r:
        ...; r.kill(); r.start()          # same port, same dir, AOF replayed
    with PrivatePostgres(tmp_path / "pg") as pg:
        ...; pg.stop(); pg.start()        # data kept; pg.kill() = immediate stop
    with MotoS3(tmp_path / "moto", cuttable=True) as s3:
        s3.cut(); ...; s3.restore()       # network fault between client and S3
    with ProcessGroup([...], tmp_path / "worker.log") as g:
        g.wait_for_log("ready"); g.signal_group(signal.SIGTERM); g.wait(30)
"""

from tests.support.cleanup import close_all
from tests.support.moto import MotoS3, list_keys, make_bucket, s3_client
from tests.support.ports import LOOPBACK, free_port, port_open, wait_port
from tests.support.postgres_server import PrivatePostgres
from tests.support.processes import ProcessGroup, kill_tree
from tests.support.proxy import CuttableProxy
from tests.support.redis_server import PrivateRedis

__all__ = [
    "LOOPBACK", "CuttableProxy", "MotoS3", "PrivatePostgres", "PrivateRedis", "ProcessGroup", "close_all",
    "free_port", "kill_tree", "list_keys", "make_bucket", "port_open", "s3_client", "wait_port",
]
