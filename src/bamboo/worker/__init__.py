"""The built-in worker (`bamboo worker`): runs the jobs of one queue on this machine as a pilot does.

It talks to the server only over HTTP(S) with the v1 pilot calls (``client.py``), stages files
from and to Bamboo's local storage (``bamboo.storage.datasets``), runs each payload in a sandbox
directory under time and memory limits (``payload.py``, ``launcher.py``), reports what a pilot
reports (``report.py``), and schedules jobs on its slots (``loop.py``, ``job.py``). Nothing is
imported here: the payload launcher starts as ``python -m bamboo.worker.launcher`` and should
load nothing it does not need.
"""
