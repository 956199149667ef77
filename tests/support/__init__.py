"""What the tests stand on, one module a concept. Nothing here is a pytest
fixture: tests/conftest.py makes fixtures of it, and tests import it directly.

    ports            free_port, port_open, wait_port
    services         the machine's Redis and PostgreSQL, a database of each per test process
    moto             moto's S3 server over HTTP (optionally behind a cuttable proxy), s3_client
    models           the tiny Llama every model test runs on
    cli              `qfarm` in-process (invoke) or as a subprocess (run_cli), their output searched for secrets
    secrets          the secrets planted for the whole session, and the search for them in what the suite wrote
    fakehub          a model hub over real HTTP, speaking the Hub API `qfarm publish` uses
    faults           the fault suite's tools in one namespace: private Redis and
                     PostgreSQL to kill, a proxy to cut, process groups
    cleanup          whatever a test starts is stopped again, even if pytest is killed
"""
