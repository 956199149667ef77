"""qfarm's client side: the job specification, the client API and the `qfarm` CLI.

The worker imports the shared pieces (settings, database, storage, the job
specification) from here, so a client machine and a GPU worker agree on them.
"""

from api_client.client import Client
from api_client.errors import QFarmError
from api_client.spec import CalibSpec, EvalSpec, JobSpec

__all__ = ["Client", "QFarmError", "JobSpec", "CalibSpec", "EvalSpec"]
